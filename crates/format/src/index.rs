//! HuggingFace shard indexes (`model.safetensors.index.json`).
//!
//! ```json
//! {"metadata": {"total_size": 123}, "weight_map": {"tensor.name": "model-00001-of-00002.safetensors"}}
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::error::{FormatError, Result};

/// Largest index file accepted, in bytes.
pub const MAX_INDEX_LEN: u64 = 100_000_000;
/// Conventional index file name for a sharded `model.safetensors`.
pub const DEFAULT_INDEX_NAME: &str = "model.safetensors.index.json";

/// A parsed shard index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardIndex {
    /// Free-form metadata; writers put `total_size` (bytes of tensor data) here.
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Tensor name to shard file name (relative to the index's directory).
    #[serde(deserialize_with = "unique_map")]
    pub weight_map: BTreeMap<String, String>,
    /// Tensors stored as pieces across shards (multi-rank saves); see [`crate::split`]. Absent
    /// from indexes where every tensor is whole, which other tools read as usual.
    #[serde(default, rename = "safeckpt.split_tensors", skip_serializing_if = "BTreeMap::is_empty")]
    pub split_tensors: BTreeMap<String, crate::split::SplitTensor>,
}

fn unique_map<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<BTreeMap<String, String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map from tensor names to shard file names")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = m.next_entry::<String, String>()? {
                if let Some(prev) = out.get(&k) {
                    return Err(serde::de::Error::custom(format!(
                        "tensor `{k}` is listed twice in weight_map (in `{prev}` and `{v}`)"
                    )));
                }
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(V)
}

impl ShardIndex {
    /// Parses an index and checks that every shard is a plain file name ([`check_shard_name`]).
    pub fn parse(bytes: &[u8]) -> Result<ShardIndex> {
        if bytes.len() as u64 > MAX_INDEX_LEN {
            return Err(FormatError::BadIndex {
                reason: format!("index is {} bytes, over the limit of {MAX_INDEX_LEN}", bytes.len()),
            });
        }
        let index: ShardIndex =
            serde_json::from_slice(bytes).map_err(|e| FormatError::BadIndex { reason: e.to_string() })?;
        for (name, shard) in &index.weight_map {
            check_shard_name(shard).map_err(|reason| FormatError::BadIndex {
                reason: format!("tensor `{name}` points at `{shard}`: {reason}"),
            })?;
        }
        crate::split::validate(&index.split_tensors, &index.weight_map)?;
        Ok(index)
    }

    /// A new index over `weight_map` with `total_size` set.
    pub fn new(weight_map: BTreeMap<String, String>, total_size: u64) -> ShardIndex {
        let mut metadata = serde_json::Map::new();
        metadata.insert("total_size".into(), total_size.into());
        ShardIndex { metadata, weight_map, split_tensors: BTreeMap::new() }
    }

    /// The distinct shard files, sorted.
    pub fn shards(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.weight_map.values().map(String::as_str).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// `metadata.total_size`, if present and an integer.
    pub fn total_size(&self) -> Option<u64> {
        self.metadata.get("total_size").and_then(serde_json::Value::as_u64)
    }

    /// The index as HuggingFace writes it: two-space indented JSON with sorted keys and a
    /// trailing newline.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// `prefix-0000K-of-0000N.safetensors`, with 1-based `k`.
pub fn shard_file_name(prefix: &str, k: usize, n: usize) -> String {
    format!("{prefix}-{k:05}-of-{n:05}.safetensors")
}

/// Checks that a shard is named by a plain file name in the index's directory, as every writer of
/// sharded sets (transformers, huggingface_hub, safeckpt) names them: not empty, no `/` or `\`
/// separator, not `.` or `..`, no drive prefix, no NUL. The file itself may be a symbolic link
/// (the HuggingFace hub cache links every snapshot file to a blob elsewhere); readers open it
/// wherever it points.
pub fn check_shard_name(p: &str) -> std::result::Result<(), &'static str> {
    if p.is_empty() {
        return Err("empty file name");
    }
    if p.contains('\0') {
        return Err("the name contains NUL");
    }
    if p.contains('/') || p.contains('\\') {
        return Err("not a plain file name (it has a path separator)");
    }
    if p == "." || p == ".." {
        return Err("not a file name");
    }
    if p.len() >= 2 && p.as_bytes().get(1) == Some(&b':') {
        return Err("the name has a drive prefix");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_writes() {
        let text = br#"{"metadata":{"total_size":12,"format":"pt"},"weight_map":{"b":"s2.safetensors","a":"s1.safetensors","c":"s1.safetensors"}}"#;
        let i = ShardIndex::parse(text).unwrap();
        assert_eq!(i.total_size(), Some(12));
        assert_eq!(i.shards(), ["s1.safetensors", "s2.safetensors"]);
        let again = ShardIndex::parse(i.to_json().as_bytes()).unwrap();
        assert_eq!(again, i);
        assert!(i.to_json().starts_with("{\n  \"metadata\""));
        assert_eq!(shard_file_name("model", 1, 3), "model-00001-of-00003.safetensors");
    }

    #[test]
    fn refuses_unsafe_or_duplicate_entries() {
        for bad in [
            r#"{"weight_map":{"a":"../x.safetensors"}}"#,
            r#"{"weight_map":{"a":"/etc/passwd"}}"#,
            r#"{"weight_map":{"a":"d/../../x"}}"#,
            r#"{"weight_map":{"a":"C:x"}}"#,
            r#"{"weight_map":{"a":"x\\y"}}"#,
            r#"{"weight_map":{"a":""}}"#,
            r#"{"weight_map":{"a":"s1","a":"s2"}}"#,
            r#"{"weight_map":{"a":1}}"#,
            r#"{"metadata":{}}"#,
            "not json",
        ] {
            assert!(matches!(ShardIndex::parse(bad.as_bytes()), Err(FormatError::BadIndex { .. })), "{bad}");
        }
        let dup = ShardIndex::parse(br#"{"weight_map":{"a":"s1","a":"s2"}}"#).unwrap_err();
        assert!(dup.to_string().contains("listed twice"), "{dup}");
        for bad in ["sub/dir/s1.safetensors", "./s1.safetensors", ".", "..", "a/", "s1\u{0}.safetensors"] {
            let text = serde_json::json!({"weight_map": {"a": bad}}).to_string();
            let e = ShardIndex::parse(text.as_bytes()).unwrap_err();
            assert!(e.to_string().contains("points at"), "{bad}: {e}");
        }
        assert!(ShardIndex::parse(br#"{"weight_map":{"a":"model-00001-of-00002.safetensors"}}"#).is_ok());
    }
}
