//! Parsing and validating safetensors headers.

use std::collections::BTreeMap;

use crate::dtype::{Dtype, numel};
use crate::error::{FormatError, Result};
use crate::json::Cursor;

/// Largest header accepted or written, in bytes (the reference implementation's limit).
pub const MAX_HEADER_LEN: u64 = 100_000_000;
/// Length of the little-endian `u64` header-length prefix.
pub const LEN_PREFIX: usize = 8;
/// The reserved header key holding the string-to-string metadata map.
pub const METADATA_KEY: &str = "__metadata__";

/// The `__metadata__` map. Sorted, so headers we encode are deterministic.
pub type Metadata = BTreeMap<String, String>;

/// One tensor entry of a header.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorInfo {
    /// The tensor's name (the JSON key).
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions, row-major; empty for a scalar.
    pub shape: Vec<usize>,
    /// `[begin, end)` byte range relative to the start of the data section.
    pub data_offsets: (usize, usize),
}

impl TensorInfo {
    /// Number of elements (1 for a scalar). Headers are validated, so this cannot overflow for a
    /// parsed tensor; for a hand-built one it saturates.
    pub fn numel(&self) -> usize {
        numel(&self.shape).unwrap_or(usize::MAX)
    }

    /// Length in bytes of the tensor's data.
    pub fn byte_len(&self) -> usize {
        self.data_offsets.1.saturating_sub(self.data_offsets.0)
    }
}

/// A parsed and validated safetensors header.
///
/// Validation is at least as strict as the reference reader (length prefix, header cap, UTF-8,
/// string-only metadata, data ranges that tile the data section exactly, byte lengths that match
/// dtype and shape with overflow checks, exact file length) and stricter where it is lax:
/// duplicate tensor names, duplicate metadata keys and a second `__metadata__` are errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    header_len: usize,
    tensors: Vec<TensorInfo>,
    /// (hash of name, position), sorted: the name lookup table.
    by_name: Vec<(u64, u32)>,
    metadata: Option<Metadata>,
    data_len: usize,
}

/// Reads the header length from the first 8 bytes of a file of `file_len` bytes and checks it
/// against the cap and the file length.
pub fn read_header_len(prefix: &[u8], file_len: u64) -> Result<usize> {
    let Some(bytes) = prefix.get(..LEN_PREFIX) else {
        return Err(FormatError::HeaderTooSmall { len: file_len.min(prefix.len() as u64) });
    };
    if file_len < LEN_PREFIX as u64 {
        return Err(FormatError::HeaderTooSmall { len: file_len });
    }
    let mut le = [0u8; LEN_PREFIX];
    le.copy_from_slice(bytes);
    let n = u64::from_le_bytes(le);
    if (n > MAX_HEADER_LEN || n > file_len - LEN_PREFIX as u64)
        && let Some(kind) = other_format(&le)
    {
        return Err(FormatError::OtherFormat { kind });
    }
    if n > MAX_HEADER_LEN {
        return Err(FormatError::HeaderTooLarge { len: n, max: MAX_HEADER_LEN });
    }
    if n > file_len - LEN_PREFIX as u64 {
        return Err(FormatError::HeaderPastEnd { header_len: n, file_len });
    }
    usize::try_from(n).map_err(|_| FormatError::TooLargeForPlatform { what: "header length", value: n })
}

/// What the first bytes of a file that is not safetensors say it is, for files often mistaken
/// for safetensors.
fn other_format(first: &[u8; LEN_PREFIX]) -> Option<&'static str> {
    Some(match first {
        [b'P', b'K', 3, 4, ..] => "a zip archive (a PyTorch `torch.save` file? `safeckpt convert` reads those)",
        [0x80, 2..=5, ..] => "a pickle (a legacy PyTorch file? `safeckpt convert` reads those)",
        [b'G', b'G', b'U', b'F', ..] => "a GGUF file",
        [0x89, b'H', b'D', b'F', ..] => "an HDF5 file",
        [0x93, b'N', b'U', b'M', b'P', b'Y', ..] => "a NumPy array file",
        _ => return None,
    })
}

fn to_usize(v: u64, what: &'static str) -> Result<usize> {
    usize::try_from(v).map_err(|_| FormatError::TooLargeForPlatform { what, value: v })
}

impl Header {
    /// Parses and fully validates a complete file image (prefix, header and data section).
    pub fn parse(file: &[u8]) -> Result<Header> {
        let file_len = file.len() as u64;
        let n = read_header_len(file, file_len)?;
        let json = file
            .get(LEN_PREFIX..LEN_PREFIX + n)
            .ok_or(FormatError::HeaderPastEnd { header_len: n as u64, file_len })?;
        let header = Header::parse_json(json)?;
        header.check_file_len(file_len)?;
        Ok(header)
    }

    /// Parses and validates the JSON header bytes (everything between the length prefix and the
    /// data section, padding included). The file length is checked separately with
    /// [`Header::check_file_len`].
    pub fn parse_json(json: &[u8]) -> Result<Header> {
        let text = std::str::from_utf8(json).map_err(|e| FormatError::HeaderUtf8 { at: e.valid_up_to() })?;
        let mut c = Cursor::new(text);
        // About 80 header bytes per tensor in practice; a good first capacity saves regrowth.
        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(json.len() / 80);
        let mut metadata: Option<Metadata> = None;
        let mut seen_metadata = false;
        if !c.open(b'{', b'}')? {
            loop {
                let key = c.string()?;
                c.expect(b':')?;
                if key == METADATA_KEY {
                    if seen_metadata {
                        return Err(FormatError::ReservedName);
                    }
                    seen_metadata = true;
                    metadata = parse_metadata(&mut c)?;
                } else {
                    tensors.push(parse_tensor(&mut c, key.into_owned())?);
                }
                if !c.next_or_close(b'}')? {
                    break;
                }
            }
        }
        if !c.at_end() {
            return c.err("trailing characters after the header object");
        }
        // Names first: a duplicate would otherwise surface as a confusing overlap. The index is
        // sorted by a hash of the name (fast to sort; names share long prefixes); equal hashes
        // are resolved by comparing the names themselves.
        let by_hash = name_index(&tensors);
        let name_of = |i: usize| tensors.get(i).map_or("", |t| t.name.as_str());
        for run in by_hash.chunk_by(|a, b| a.0 == b.0).filter(|r| r.len() > 1) {
            let mut names: Vec<&str> = run.iter().map(|e| name_of(e.1 as usize)).collect();
            names.sort_unstable();
            if let Some(w) = names.windows(2).find(|w| w.first() == w.get(1)) {
                return Err(FormatError::DuplicateTensor { tensor: w.first().copied().unwrap_or("").to_string() });
            }
        }
        // Offset order. Writers nearly always emit tensors in that order already, and then
        // nothing moves. The sort is stable so zero-length tensors keep their JSON order.
        let offs = |i: usize| tensors.get(i).map_or((0, 0), |t| t.data_offsets);
        let sorted = (1..tensors.len()).all(|i| offs(i - 1) <= offs(i));
        let order: Option<Vec<u32>> = (!sorted).then(|| {
            let mut o: Vec<u32> = (0..tensors.len() as u32).collect();
            o.sort_by_key(|&i| offs(i as usize));
            o
        });
        let mut expected = 0usize;
        let mut previous: Option<usize> = None;
        for r in 0..tensors.len() {
            let i = order.as_ref().and_then(|o| o.get(r)).map_or(r, |&i| i as usize);
            let Some(t) = tensors.get(i) else { continue };
            let (begin, end) = t.data_offsets;
            if end < begin {
                return Err(FormatError::OffsetsInverted { tensor: t.name.clone(), begin, end });
            }
            if begin > expected {
                return Err(FormatError::Hole { tensor: t.name.clone(), begin, expected });
            }
            if begin < expected {
                return Err(FormatError::Overlap {
                    tensor: t.name.clone(),
                    previous: previous.map_or(String::new(), |p| name_of(p).to_string()),
                    begin,
                    expected,
                });
            }
            check_byte_len(t, end - begin)?;
            expected = end;
            previous = Some(i);
        }
        let (tensors, by_name) = match order {
            None => (tensors, by_hash),
            Some(order) => {
                let mut slots: Vec<Option<TensorInfo>> = tensors.into_iter().map(Some).collect();
                let tensors: Vec<TensorInfo> =
                    order.iter().filter_map(|&i| slots.get_mut(i as usize).and_then(Option::take)).collect();
                let by_name = name_index(&tensors);
                (tensors, by_name)
            }
        };
        Ok(Header { header_len: json.len(), tensors, by_name, metadata, data_len: expected })
    }

    /// Checks that a file of `file_len` bytes has exactly the length this header describes.
    pub fn check_file_len(&self, file_len: u64) -> Result<()> {
        let expected = self.total_len();
        if file_len < expected {
            Err(FormatError::Truncated { expected, actual: file_len })
        } else if file_len > expected {
            Err(FormatError::TrailingBytes { expected, extra: file_len - expected })
        } else {
            Ok(())
        }
    }

    /// Length of the JSON header in bytes, padding included (the `N` of the length prefix).
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// File offset of the data section (`8 + N`).
    pub fn data_start(&self) -> usize {
        LEN_PREFIX + self.header_len
    }

    /// Length of the data section in bytes.
    pub fn data_len(&self) -> usize {
        self.data_len
    }

    /// Length of the whole file this header describes.
    pub fn total_len(&self) -> u64 {
        (self.data_start() as u64).saturating_add(self.data_len as u64)
    }

    /// Tensors in data-offset order (the order of their bytes in the file).
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the header has no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Position (in [`Header::tensors`]) of the tensor called `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        let h = name_hash(name);
        let first = self.by_name.partition_point(|e| e.0 < h);
        self.by_name
            .iter()
            .skip(first)
            .take_while(|e| e.0 == h)
            .map(|e| e.1 as usize)
            .find(|&i| self.tensors.get(i).is_some_and(|t| t.name == name))
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.position(name).and_then(|i| self.tensors.get(i))
    }

    /// Tensors in name order (bytewise), as Python's `safe_open(...).keys()` lists them. Sorts on
    /// each call.
    pub fn by_name(&self) -> Vec<&TensorInfo> {
        let mut v: Vec<&TensorInfo> = self.tensors.iter().collect();
        v.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The `__metadata__` map, if the header has one (`null` reads as `None`).
    pub fn metadata(&self) -> Option<&Metadata> {
        self.metadata.as_ref()
    }

    /// One metadata value.
    pub fn metadata_value(&self, key: &str) -> Option<&str> {
        self.metadata.as_ref().and_then(|m| m.get(key)).map(String::as_str)
    }
}

fn name_hash(name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(name.as_bytes())
}

/// (hash, position) for every tensor, sorted.
fn name_index(tensors: &[TensorInfo]) -> Vec<(u64, u32)> {
    let mut v: Vec<(u64, u32)> = tensors.iter().enumerate().map(|(i, t)| (name_hash(&t.name), i as u32)).collect();
    v.sort_unstable();
    v
}

fn check_byte_len(t: &TensorInfo, actual: usize) -> Result<()> {
    let overflow = || FormatError::ShapeOverflow { tensor: t.name.clone(), shape: t.shape.clone() };
    let n = numel(&t.shape).ok_or_else(overflow)?;
    let bits = n.checked_mul(t.dtype.bits()).ok_or_else(overflow)?;
    if bits % 8 != 0 {
        return Err(FormatError::SubByteMisaligned { tensor: t.name.clone(), dtype: t.dtype, numel: n });
    }
    let expected = bits / 8;
    if expected != actual {
        return Err(FormatError::ByteLengthMismatch {
            tensor: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            expected,
            actual,
        });
    }
    Ok(())
}

fn parse_metadata(c: &mut Cursor<'_>) -> Result<Option<Metadata>> {
    if c.null()? {
        return Ok(None);
    }
    let mut map = Metadata::new();
    if c.open(b'{', b'}')? {
        return Ok(Some(map));
    }
    loop {
        let key = c.string()?.into_owned();
        c.expect(b':')?;
        if c.peek() != Some(b'"') {
            if key == "shape" || key == "data_offsets" {
                return Err(FormatError::ReservedName);
            }
            return Err(FormatError::MetadataNotString { key });
        }
        let value = c.string()?.into_owned();
        if map.contains_key(&key) {
            return Err(FormatError::DuplicateMetadataKey { key });
        }
        map.insert(key, value);
        if !c.next_or_close(b'}')? {
            return Ok(Some(map));
        }
    }
}

/// The canonical entry every mainstream writer emits, `{"dtype":"F32","shape":[2,3],
/// "data_offsets":[0,24]}` with no whitespace, parsed by matching its literal parts. Anything else
/// (other field order, whitespace, unknown fields, any error) returns `None` with the cursor where
/// it was, and the general parser takes over and reports errors precisely.
fn parse_canonical_tensor(c: &mut Cursor<'_>) -> Option<(Dtype, Vec<usize>, (usize, usize))> {
    let start = c.pos();
    let t = (|| {
        if !c.eat(b"{\"dtype\":\"") {
            return None;
        }
        let dtype = Dtype::from_name(c.until_quote(12)?)?;
        if !c.eat(b",\"shape\":[") {
            return None;
        }
        let mut shape = Vec::new();
        if !c.eat(b"]") {
            loop {
                shape.push(usize::try_from(c.uint().ok()?).ok()?);
                if c.eat(b"]") {
                    break;
                }
                if !c.eat(b",") {
                    return None;
                }
            }
        }
        if !c.eat(b",\"data_offsets\":[") {
            return None;
        }
        let begin = usize::try_from(c.uint().ok()?).ok()?;
        if !c.eat(b",") {
            return None;
        }
        let end = usize::try_from(c.uint().ok()?).ok()?;
        if !c.eat(b"]}") {
            return None;
        }
        Some((dtype, shape, (begin, end)))
    })();
    if t.is_none() {
        c.rewind(start);
    }
    t
}

fn parse_tensor(c: &mut Cursor<'_>, name: String) -> Result<TensorInfo> {
    if let Some((dtype, shape, data_offsets)) = parse_canonical_tensor(c) {
        return Ok(TensorInfo { name, dtype, shape, data_offsets });
    }
    let mut dtype: Option<Dtype> = None;
    let mut shape: Option<Vec<usize>> = None;
    let mut offsets: Option<(usize, usize)> = None;
    if c.peek() != Some(b'{') {
        return c.err(format!("tensor `{name}`: expected an object with dtype, shape and data_offsets"));
    }
    if !c.open(b'{', b'}')? {
        loop {
            let field = c.string()?;
            c.expect(b':')?;
            let dup = |f: &str| FormatError::DuplicateField { tensor: name.clone(), field: f.to_string() };
            match field.as_ref() {
                "dtype" => {
                    if dtype.is_some() {
                        return Err(dup("dtype"));
                    }
                    if c.peek() != Some(b'"') {
                        return c.err(format!("tensor `{name}`: dtype must be a string"));
                    }
                    let s = c.string()?;
                    dtype =
                        Some(Dtype::from_name(&s).ok_or_else(|| FormatError::UnknownDtype {
                            tensor: name.clone(),
                            dtype: s.into_owned(),
                        })?);
                }
                "shape" => {
                    if shape.is_some() {
                        return Err(dup("shape"));
                    }
                    let mut dims = Vec::new();
                    if c.peek() != Some(b'[') {
                        return c.err(format!("tensor `{name}`: shape must be an array of integers"));
                    }
                    if !c.open(b'[', b']')? {
                        loop {
                            dims.push(to_usize(c.uint()?, "shape dimension")?);
                            if !c.next_or_close(b']')? {
                                break;
                            }
                        }
                    }
                    shape = Some(dims);
                }
                "data_offsets" => {
                    if offsets.is_some() {
                        return Err(dup("data_offsets"));
                    }
                    if c.peek() != Some(b'[') {
                        return c.err(format!("tensor `{name}`: data_offsets must be [begin, end]"));
                    }
                    c.expect(b'[')?;
                    let begin = to_usize(c.uint()?, "data offset")?;
                    c.expect(b',')?;
                    let end = to_usize(c.uint()?, "data offset")?;
                    if c.peek() != Some(b']') {
                        return c.err(format!("tensor `{name}`: data_offsets must have exactly two entries"));
                    }
                    c.expect(b']')?;
                    offsets = Some((begin, end));
                }
                _ => c.skip_value(2)?,
            }
            if !c.next_or_close(b'}')? {
                break;
            }
        }
    }
    let missing = |field| FormatError::MissingField { tensor: name.clone(), field };
    let dtype = dtype.ok_or_else(|| missing("dtype"))?;
    let shape = shape.ok_or_else(|| missing("shape"))?;
    let data_offsets = offsets.ok_or_else(|| missing("data_offsets"))?;
    Ok(TensorInfo { name, dtype, shape, data_offsets })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(json: &str, data: usize) -> Vec<u8> {
        let mut v = (json.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(json.as_bytes());
        v.resize(v.len() + data, 0);
        v
    }

    #[test]
    fn parses_and_orders_by_offset() {
        let json = r#"{"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},
            "__metadata__":{"k":"v"},"a":{"shape":[],"dtype":"I32","data_offsets":[0,4],"extra":[1,{"x":null}]}}"#;
        let h = Header::parse(&file(json, 12)).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h.tensors()[0].name, "a");
        assert_eq!(h.tensors()[1].name, "b");
        assert_eq!(h.get("b").unwrap().shape, vec![2]);
        assert_eq!(h.get("a").unwrap().numel(), 1);
        assert!(h.get("c").is_none());
        assert_eq!(h.metadata_value("k"), Some("v"));
        assert_eq!(h.data_len(), 12);
        assert_eq!(h.data_start(), 8 + json.len());
    }

    #[test]
    fn errors_are_specific() {
        let p = |json: &str, data| Header::parse(&file(json, data)).unwrap_err();
        assert!(matches!(
            p(
                "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                8
            ),
            FormatError::DuplicateTensor { .. }
        ));
        assert!(matches!(p("{\"__metadata__\":{},\"__metadata__\":{}}", 0), FormatError::ReservedName));
        assert!(matches!(p("{\"__metadata__\":{\"a\":1}}", 0), FormatError::MetadataNotString { .. }));
        assert!(matches!(
            p("{\"__metadata__\":{\"a\":\"1\",\"a\":\"2\"}}", 0),
            FormatError::DuplicateMetadataKey { .. }
        ));
        assert!(matches!(
            p("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 0),
            FormatError::MissingField { field: "data_offsets", .. }
        ));
        assert!(matches!(
            p("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4),
            FormatError::DuplicateField { .. }
        ));
        assert!(matches!(
            p("{\"a\":{\"dtype\":\"X\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4),
            FormatError::UnknownDtype { .. }
        ));
        assert!(matches!(
            p("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4),
            FormatError::OffsetsInverted { .. }
        ));
        assert!(matches!(
            p("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8),
            FormatError::Hole { .. }
        ));
        assert!(matches!(
            p(
                "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                8
            ),
            FormatError::Overlap { .. }
        ));
        assert!(matches!(
            p("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8),
            FormatError::ByteLengthMismatch { .. }
        ));
        assert!(matches!(
            p("{\"a\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,1]}}", 1),
            FormatError::SubByteMisaligned { .. }
        ));
        assert!(matches!(
            p("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}", 4),
            FormatError::ShapeOverflow { .. }
        ));
        assert!(matches!(
            p("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 3),
            FormatError::Truncated { .. }
        ));
        assert!(matches!(
            p("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 5),
            FormatError::TrailingBytes { .. }
        ));
        assert!(matches!(
            p("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,5]}}", 4),
            FormatError::HeaderJson { .. }
        ));
        assert!(matches!(p("{} x", 0), FormatError::HeaderJson { .. }));
        assert!(matches!(p("[]", 0), FormatError::HeaderJson { .. }));
        assert!(matches!(Header::parse(&[1, 2, 3]), Err(FormatError::HeaderTooSmall { len: 3 })));
        let mut huge = (MAX_HEADER_LEN + 1).to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(matches!(Header::parse(&huge), Err(FormatError::HeaderTooLarge { .. })));
        // Formats often mistaken for safetensors are named.
        for (magic, word) in [
            (&b"PK\x03\x04\x00\x00\x08\x00"[..], "zip"),
            (b"\x80\x02\x8a\x0alZ", "pickle"),
            (b"GGUF\x03\0\0\0", "GGUF"),
        ] {
            let mut f = magic.to_vec();
            f.extend_from_slice(&[0; 64]);
            let e = Header::parse(&f).unwrap_err();
            assert!(matches!(e, FormatError::OtherFormat { .. }) && e.to_string().contains(word), "{e}");
        }
        let mut past = 100u64.to_le_bytes().to_vec();
        past.extend_from_slice(b"{}");
        assert!(matches!(Header::parse(&past), Err(FormatError::HeaderPastEnd { .. })));
        let mut bad = 3u64.to_le_bytes().to_vec();
        bad.extend_from_slice(b"{\xff}");
        assert!(matches!(Header::parse(&bad), Err(FormatError::HeaderUtf8 { at: 1 })));
    }

    #[test]
    fn zero_sized_tensors_may_share_an_offset_and_null_metadata_is_none() {
        let json = r#"{"__metadata__":null,"e1":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"e2":{"dtype":"F32","shape":[2,0],"data_offsets":[0,0]}}"#;
        let h = Header::parse(&file(json, 0)).unwrap();
        assert_eq!(h.len(), 2);
        assert!(h.metadata().is_none());
        assert_eq!(h.by_name().iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["e1", "e2"]);
    }
}
