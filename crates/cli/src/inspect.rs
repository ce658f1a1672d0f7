//! `safeckpt inspect`: what a file or sharded set holds, from the headers alone.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use safeckpt_format::split::SplitTensor;
use safeckpt_format::{Header, INTEGRITY_KEY, Integrity, Metadata, ShardIndex};
use safeckpt_reader::ShardedReader;
use safeckpt_store::RemoteSet;
use serde_json::{Value, json};

use crate::util::{count, human_bytes, natural_cmp, printable, thousands};

/// One row of the tensor table.
struct Row<'a> {
    name: &'a str,
    dtype: &'static str,
    shape: &'a [usize],
    bytes: u64,
    offset: u64,
    shard: Option<String>,
}

/// What inspect needs of a set, local or remote: its index and each shard's name and header.
pub struct SetHeaders<'a> {
    /// The file or index, as given.
    pub path: String,
    /// The index, for a sharded set.
    pub index: Option<&'a ShardIndex>,
    /// Each shard's file name and header.
    pub shards: Vec<(String, &'a Header)>,
}

impl<'a> SetHeaders<'a> {
    /// The headers of a local file or set.
    pub fn local(path: &Path, set: &'a ShardedReader) -> Self {
        let shards = set
            .shards()
            .iter()
            .map(|r| (r.path().file_name().unwrap_or_default().to_string_lossy().into_owned(), r.header()))
            .collect();
        SetHeaders { path: path.display().to_string(), index: set.index(), shards }
    }

    /// The headers of a remote file or set.
    pub fn remote(set: &'a RemoteSet) -> Self {
        let shards = set.shards().iter().map(|f| (f.location().file_name(), f.header())).collect();
        SetHeaders { path: set.location().url(), index: set.index(), shards }
    }

    fn split_tensors(&self) -> Vec<(&'a str, &'a SplitTensor)> {
        self.index.map(|i| i.split_tensors.iter().map(|(k, v)| (k.as_str(), v)).collect()).unwrap_or_default()
    }
}

/// Renders the report for a safetensors file or index.
pub fn inspect_safetensors(path: &Path, as_json: bool) -> Result<String> {
    crate::util::require_file_or_dir(path)?;
    let set = ShardedReader::open(path)?;
    render(&SetHeaders::local(path, &set), as_json)
}

/// Renders the report from headers.
pub fn render(set: &SetHeaders<'_>, as_json: bool) -> Result<String> {
    let path = &set.path;
    let sharded = set.index.is_some();
    let mut rows: Vec<Row<'_>> = Vec::new();
    let mut header_bytes = 0u64;
    let mut file_bytes = 0u64;
    for (name, h) in &set.shards {
        header_bytes += h.data_start() as u64;
        file_bytes += h.total_len();
        let shard_name = sharded.then(|| name.clone());
        for t in h.tensors() {
            rows.push(Row {
                name: &t.name,
                dtype: t.dtype.as_str(),
                shape: &t.shape,
                bytes: t.byte_len() as u64,
                offset: t.data_offsets.0 as u64,
                shard: shard_name.clone(),
            });
        }
    }
    rows.sort_by(|a, b| natural_cmp(a.name, b.name));
    let all = || set.shards.iter().flat_map(|(_, h)| h.tensors());
    let params: u64 = all().map(|t| t.numel() as u64).sum();
    let data_bytes: u64 = set.shards.iter().map(|(_, h)| h.data_len() as u64).sum();
    let metadata: Metadata = set.shards.first().and_then(|(_, h)| h.metadata().cloned()).unwrap_or_default();
    let checksummed =
        set.shards.iter().filter(|(_, h)| h.metadata().is_some_and(|m| m.contains_key(INTEGRITY_KEY))).count();
    let n_shards = set.shards.len();
    // Where each shard's data section starts, and the tensors whose bytes are not at a multiple
    // of their element size in the file (typed zero-copy views `&[f32]` refuse those; `as_cow`
    // and loads copy them). The map of a file starts on a page, so the file offset decides.
    let data_starts: Vec<(&str, u64)> = set.shards.iter().map(|(n, h)| (n.as_str(), h.data_start() as u64)).collect();
    let mut misaligned: Vec<(&str, u64, usize)> = Vec::new();
    for (_, h) in &set.shards {
        for t in h.tensors() {
            let at = (h.data_start() + t.data_offsets.0) as u64;
            let size = t.dtype.size_bytes().unwrap_or(1).max(1);
            if !at.is_multiple_of(size as u64) {
                misaligned.push((&t.name, at, size));
            }
        }
    }
    misaligned.sort_by(|a, b| natural_cmp(a.0, b.0));
    let mut by_dtype: BTreeMap<&str, (u64, u64, usize)> = BTreeMap::new();
    for t in all() {
        let e = by_dtype.entry(t.dtype.as_str()).or_default();
        e.0 += t.numel() as u64;
        e.1 += t.byte_len() as u64;
        e.2 += 1;
    }

    if as_json {
        let tensors: Vec<Value> = rows
            .iter()
            .map(|r| {
                let mut v = json!({"name": r.name, "dtype": r.dtype, "shape": r.shape, "bytes": r.bytes,
                                   "data_offsets": [r.offset, r.offset + r.bytes]});
                if let Some(s) = &r.shard {
                    v["shard"] = json!(s);
                }
                v
            })
            .collect();
        let mut doc = json!({
            "path": path,
            "format": if sharded { "safetensors-sharded" } else { "safetensors" },
            "tensors": tensors,
            "tensor_count": rows.len(),
            "parameters": params,
            "data_bytes": data_bytes,
            "header_bytes": header_bytes,
            "file_bytes": file_bytes,
            "metadata": metadata,
            "checksums": checksummed == n_shards && n_shards > 0,
            "aligned": misaligned.is_empty(),
            "misaligned_tensors": misaligned.iter().map(|(n, _, _)| n).collect::<Vec<_>>(),
        });
        if sharded {
            doc["shard_data_offsets"] = data_starts.iter().map(|(n, o)| (n.to_string(), json!(o))).collect();
        } else if let Some((_, o)) = data_starts.first() {
            doc["data_offset"] = json!(o);
        }
        if let Some(index) = set.index {
            doc["shards"] = json!(index.shards());
            doc["index_metadata"] = Value::Object(index.metadata.clone());
            if !index.split_tensors.is_empty() {
                doc["split_tensors"] = json!(index.split_tensors);
            }
        }
        return Ok(serde_json::to_string_pretty(&doc)? + "\n");
    }

    let mut out = String::new();
    let kind = match set.index {
        Some(i) => format!("sharded safetensors, {}", count(i.shards().len(), "shard")),
        None => "safetensors".to_string(),
    };
    writeln!(out, "{path}  ({kind})")?;
    writeln!(
        out,
        "{}, {}, {} of data, {} of headers, {} on disk",
        count(rows.len(), "tensor"),
        count(params, "parameter"),
        human_bytes(data_bytes),
        human_bytes(header_bytes),
        human_bytes(file_bytes)
    )?;
    let checks = if n_shards == 0 || checksummed == 0 {
        "none recorded (structure validated)".to_string()
    } else if checksummed == n_shards {
        "xxh3-64 per tensor and header (run `safeckpt verify` to check)".to_string()
    } else {
        format!("recorded in {checksummed} of {n_shards} shards")
    };
    writeln!(out, "checksums: {checks}")?;
    let starts = {
        let (lo, hi) = data_starts.iter().fold((u64::MAX, 0), |(lo, hi), (_, o)| (lo.min(*o), hi.max(*o)));
        match data_starts.len() {
            0 => String::new(),
            1 => format!("starts at byte {}", thousands(lo)),
            _ if lo == hi => format!("starts at byte {} in every shard", thousands(lo)),
            _ => format!("starts at byte {} to {} in the shards", thousands(lo), thousands(hi)),
        }
    };
    match misaligned.first() {
        None if rows.is_empty() => writeln!(out, "data: {starts}")?,
        None => writeln!(out, "data: {starts}; every tensor aligned to its element size (zero-copy typed views)")?,
        Some((name, at, size)) => writeln!(
            out,
            "data: {starts}; {} tensor{} not aligned to {} element size (first: `{}` at byte {}, a multiple of {size} needed): typed views of {} copy",
            misaligned.len(),
            if misaligned.len() == 1 { "" } else { "s" },
            if misaligned.len() == 1 { "its" } else { "their" },
            printable(name, false),
            thousands(*at),
            if misaligned.len() == 1 { "it" } else { "them" },
        )?,
    }
    if !metadata.is_empty() {
        writeln!(out, "\nmetadata:")?;
        for (k, v) in &metadata {
            let shown = if sharded && k == INTEGRITY_KEY {
                "xxh3-64 checksums, recorded in each shard".to_string()
            } else {
                describe_metadata(k, v)
            };
            writeln!(out, "  {}: {shown}", printable(k, false))?;
        }
    }
    if !rows.is_empty() {
        writeln!(out)?;
        let shapes: Vec<String> = rows
            .iter()
            .map(|r| format!("[{}]", r.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")))
            .collect();
        let sizes: Vec<String> = rows.iter().map(|r| human_bytes(r.bytes)).collect();
        let w_name = rows.iter().map(|r| r.name.chars().count()).max().unwrap_or(0).max(4);
        let w_dtype = rows.iter().map(|r| r.dtype.len()).max().unwrap_or(0).max(5);
        let w_shape = shapes.iter().map(String::len).max().unwrap_or(0).max(5);
        let w_size = sizes.iter().map(String::len).max().unwrap_or(0).max(4);
        let mut head = format!(
            "{:<w_name$}  {:<w_dtype$}  {:<w_shape$}  {:>w_size$}  {:>12}",
            "NAME", "DTYPE", "SHAPE", "SIZE", "OFFSET"
        );
        if sharded {
            head.push_str("  SHARD");
        }
        writeln!(out, "{}", head.trim_end())?;
        for ((r, shape), size) in rows.iter().zip(&shapes).zip(&sizes) {
            let pad = w_name.saturating_sub(r.name.chars().count());
            let mut line = format!(
                "{}{}  {:<w_dtype$}  {:<w_shape$}  {:>w_size$}  {:>12}",
                printable(r.name, false),
                " ".repeat(pad),
                r.dtype,
                shape,
                size,
                r.offset
            );
            if let Some(s) = &r.shard {
                line.push_str("  ");
                line.push_str(s);
            }
            writeln!(out, "{line}")?;
        }
        writeln!(out, "\nby dtype:")?;
        for (d, (n, b, c)) in &by_dtype {
            writeln!(
                out,
                "  {d:<11} {:>14}  {:>27}  {:>10}",
                count(*c, "tensor"),
                count(*n, "parameter"),
                human_bytes(*b)
            )?;
        }
    }
    let split = set.split_tensors();
    if !split.is_empty() {
        writeln!(out, "\nsplit tensors (stored as the pieces above; readers and `safeckpt merge` assemble them):")?;
        let w = split.iter().map(|(n, _)| n.chars().count()).max().unwrap_or(0).max(4);
        for (name, t) in split {
            let shape = t.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
            let pad = " ".repeat(w - name.chars().count());
            writeln!(
                out,
                "  {}{pad}  {:<5}  [{shape}]  {}",
                printable(name, false),
                t.dtype,
                count(t.pieces.len(), "piece")
            )?;
        }
    }
    Ok(out)
}

/// A metadata value for display: integrity records summarised, long values shortened.
fn describe_metadata(key: &str, value: &str) -> String {
    if key == INTEGRITY_KEY {
        return match Integrity::parse(value) {
            Ok(i) => format!("xxh3-64 checksums for {} and the header", count(i.tensors.len(), "tensor")),
            Err(e) => format!("(unreadable: {e})"),
        };
    }
    let one_line = printable(value, false).into_owned();
    if one_line.chars().count() > 100 {
        let cut: String = one_line.chars().take(97).collect();
        format!("{cut}... ({} bytes)", value.len())
    } else {
        one_line
    }
}
