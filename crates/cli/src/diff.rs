//! `safeckpt diff`: two checkpoints compared tensor by tensor, and their metadata. Either side may
//! be a safetensors file, a sharded set (tensors compared as the saving program saw them, split
//! ones assembled from their pieces, so a multi-rank save equals its merged file), or a PyTorch
//! file (read without running it, so a conversion can be checked against its source).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::Result;
use half::{bf16, f16};
use safeckpt_format::{Dtype, INTEGRITY_KEY, Metadata};
use safeckpt_reader::{GlobalTensor, ShardedReader};
use safeckpt_torch::TorchArchive;

use crate::util::{EXIT_FAILURE, EXIT_OK, printable};

/// One tensor of a side: dtype, shape, little-endian bytes.
type Entry<'a> = (Dtype, Vec<usize>, Cow<'a, [u8]>);

/// What a side holds.
enum Side {
    Safetensors(ShardedReader),
    Torch(TorchArchive),
}

impl Side {
    fn open(p: &Path) -> Result<Side> {
        // Before the first bytes are sniffed: opening a FIFO would block.
        crate::util::require_file_or_dir(p)?;
        Ok(if crate::torch_cmd::is_torch_file(p) {
            Side::Torch(TorchArchive::open(p)?)
        } else {
            Side::Safetensors(ShardedReader::open(p)?)
        })
    }

    fn tensors(&self) -> Result<BTreeMap<String, Entry<'_>>> {
        Ok(match self {
            Side::Safetensors(set) => set
                .global_names()
                .into_iter()
                .map(|n| -> Result<(String, Entry<'_>)> {
                    let entry = match set.global(n) {
                        Some(GlobalTensor::Whole(v)) => (v.dtype(), v.shape().to_vec(), Cow::Borrowed(v.data())),
                        Some(g) => (g.dtype(), g.shape().to_vec(), Cow::Owned(set.read_global(n)?)),
                        None => anyhow::bail!("{}: tensor `{n}` vanished", set.path().display()),
                    };
                    Ok((n.to_string(), entry))
                })
                .collect::<Result<_>>()?,
            Side::Torch(a) => a.tensors(None)?.into_iter().map(|(n, t)| (n, (t.dtype, t.shape, t.data))).collect(),
        })
    }

    /// Metadata compared, when both sides are safetensors (a PyTorch file has none).
    fn metadata(&self) -> Option<Metadata> {
        match self {
            Side::Safetensors(set) => Some(metadata(set)),
            Side::Torch(_) => None,
        }
    }
}

/// Values of a floating tensor as f64, if it is one.
fn floats(dtype: Dtype, b: &[u8]) -> Option<Vec<f64>> {
    Some(match dtype {
        Dtype::F64 => b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
        Dtype::F32 => {
            b.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes(c.try_into().expect("4 bytes")))).collect()
        }
        Dtype::F16 => b.chunks_exact(2).map(|c| f64::from(f16::from_le_bytes([c[0], c[1]]))).collect(),
        Dtype::BF16 => b.chunks_exact(2).map(|c| f64::from(bf16::from_le_bytes([c[0], c[1]]))).collect(),
        _ => return None,
    })
}

fn metadata(set: &ShardedReader) -> Metadata {
    set.shards().first().and_then(|s| s.metadata().cloned()).unwrap_or_default()
}

/// Metadata as compared: the integrity record and the train state's creation time dropped.
fn comparable(mut m: Metadata, all: bool) -> Metadata {
    if all {
        return m;
    }
    m.remove(INTEGRITY_KEY);
    if let Some(ts) = m.get_mut(safeckpt_candle::TRAIN_STATE_KEY)
        && let Ok(mut v) = serde_json::from_str::<serde_json::Value>(ts)
    {
        if let Some(o) = v.as_object_mut() {
            o.remove("created_unix");
        }
        *ts = v.to_string();
    }
    m
}

/// One difference between the two sides.
enum Finding {
    OnlyIn { name: String, side: char },
    Layout { name: String, a: (Dtype, Vec<usize>), b: (Dtype, Vec<usize>) },
    Values { name: String, count: usize, of: usize, max: f64 },
    Bytes { name: String, count: usize, of: usize },
    Metadata { key: String, a: Option<String>, b: Option<String> },
}

impl Finding {
    fn text(&self, a: &Path, b: &Path) -> String {
        let p = |s: &str| printable(s, false).into_owned();
        match self {
            Finding::OnlyIn { name, side: 'a' } => format!("- {}: only in {}", p(name), a.display()),
            Finding::OnlyIn { name, .. } => format!("+ {}: only in {}", p(name), b.display()),
            Finding::Layout { name, a, b } => format!("~ {}: {} {:?} vs {} {:?}", p(name), a.0, a.1, b.0, b.1),
            Finding::Values { name, count, of, max } => {
                format!("~ {}: {count} of {of} values differ, max |a-b| = {max:.3e}", p(name))
            }
            Finding::Bytes { name, count, of } => format!("~ {}: {count} of {of} bytes differ", p(name)),
            Finding::Metadata { key, a, b } => {
                let show = |v: &Option<String>| {
                    v.as_deref().map_or("(absent)".to_string(), |s| {
                        if s.chars().count() > 80 { s.chars().take(77).collect::<String>() + "..." } else { s.into() }
                    })
                };
                format!("~ metadata {}: {} vs {}", p(key), p(&show(a)), p(&show(b)))
            }
        }
    }

    fn json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Finding::OnlyIn { name, side } => json!({"kind": "only_in", "name": name, "side": side.to_string()}),
            Finding::Layout { name, a, b } => json!({"kind": "layout", "name": name,
                "a": {"dtype": a.0.as_str(), "shape": a.1}, "b": {"dtype": b.0.as_str(), "shape": b.1}}),
            Finding::Values { name, count, of, max } => {
                json!({"kind": "values", "name": name, "differing": count, "of": of, "max_abs_diff": max})
            }
            Finding::Bytes { name, count, of } => json!({"kind": "bytes", "name": name, "differing": count, "of": of}),
            Finding::Metadata { key, a, b } => json!({"kind": "metadata", "key": key, "a": a, "b": b}),
        }
    }
}

/// Compares; prints the differences (as text, or as one JSON document); returns the exit status.
pub fn diff(a: &Path, b: &Path, atol: f64, all_metadata: bool, as_json: bool) -> Result<i32> {
    let (sa, sb) = (Side::open(a)?, Side::open(b)?);
    let (ta, tb) = (sa.tensors()?, sb.tensors()?);
    let mut findings = Vec::new();
    for n in ta.keys().filter(|n| !tb.contains_key(*n)) {
        findings.push(Finding::OnlyIn { name: n.clone(), side: 'a' });
    }
    for n in tb.keys().filter(|n| !ta.contains_key(*n)) {
        findings.push(Finding::OnlyIn { name: n.clone(), side: 'b' });
    }
    let mut identical = 0usize;
    for (name, (da, sha, xa)) in &ta {
        let Some((db, shb, xb)) = tb.get(name) else { continue };
        if da != db || sha != shb {
            findings.push(Finding::Layout { name: name.clone(), a: (*da, sha.clone()), b: (*db, shb.clone()) });
            continue;
        }
        if xa == xb {
            identical += 1;
            continue;
        }
        match (floats(*da, xa), floats(*db, xb)) {
            (Some(x), Some(y)) => {
                let (mut max, mut count) = (0f64, 0usize);
                for (p, q) in x.iter().zip(&y) {
                    let d = if p.is_nan() && q.is_nan() { 0.0 } else { (p - q).abs() };
                    if d > 0.0 || p.is_nan() != q.is_nan() {
                        count += 1;
                        max = max.max(if d.is_nan() { f64::INFINITY } else { d });
                    }
                }
                if max <= atol {
                    identical += 1;
                } else {
                    findings.push(Finding::Values { name: name.clone(), count, of: x.len(), max });
                }
            }
            _ => {
                let count = xa.iter().zip(xb.iter()).filter(|(p, q)| p != q).count();
                findings.push(Finding::Bytes { name: name.clone(), count, of: xa.len() });
            }
        }
    }
    let compared = sa.metadata().zip(sb.metadata());
    let (ma, mb) =
        compared.clone().map(|(x, y)| (comparable(x, all_metadata), comparable(y, all_metadata))).unwrap_or_default();
    let keys: BTreeSet<&String> = ma.keys().chain(mb.keys()).collect();
    for k in keys {
        let (x, y) = (ma.get(k), mb.get(k));
        if x != y {
            findings.push(Finding::Metadata { key: k.clone(), a: x.cloned(), b: y.cloned() });
        }
    }
    let code = if findings.is_empty() { EXIT_OK } else { EXIT_FAILURE };
    if as_json {
        let doc = serde_json::json!({
            "a": a.display().to_string(),
            "b": b.display().to_string(),
            "equal": findings.is_empty(),
            "identical_tensors": identical,
            "atol": atol,
            "metadata_compared": compared.is_some(),
            "differences": findings.iter().map(Finding::json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(code);
    }
    for f in &findings {
        println!("{}", f.text(a, b));
    }
    if findings.is_empty() {
        println!(
            "identical: {identical} tensors{}{}",
            if atol > 0.0 { format!(" (within {atol:e})") } else { " bit for bit".into() },
            match (compared.is_some(), all_metadata) {
                (false, _) => " (a PyTorch file has no metadata to compare)",
                (true, true) => " and the metadata",
                (true, false) => " and the metadata (integrity record and creation time ignored)",
            }
        );
    } else {
        println!("{} difference(s); {identical} tensors identical", findings.len());
    }
    Ok(code)
}
