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

use crate::util::{EXIT_FAILURE, EXIT_OK, count, printable};

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

    /// Every tensor by name; on a safetensors side the aliases its metadata records (a name
    /// that is no tensor of the file, mapped to one that is: how `convert` and safetensors'
    /// `save_model` store tied weights once) resolve to the tensor they name.
    fn tensors(&self) -> Result<BTreeMap<String, Entry<'_>>> {
        let mut map = self.stored()?;
        if let Side::Safetensors(set) = self {
            for (alias, target) in aliases(&metadata(set), &map) {
                if let Some(entry) = map.get(&target).cloned() {
                    map.insert(alias, entry);
                }
            }
        }
        Ok(map)
    }

    fn stored(&self) -> Result<BTreeMap<String, Entry<'_>>> {
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

/// The aliases a file's metadata records: keys that are no tensor of the file whose value is one.
fn aliases<T>(meta: &Metadata, tensors: &BTreeMap<String, T>) -> Vec<(String, String)> {
    meta.iter()
        .filter(|(k, v)| !tensors.contains_key(*k) && tensors.contains_key(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A tensor's values, widened without loss: floats as f64, integers as i128.
enum Values {
    Float(Vec<f64>),
    Int(Vec<i128>),
}

impl Values {
    fn of(dtype: Dtype, b: &[u8]) -> Option<Values> {
        fn each<const N: usize, T>(b: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
            b.chunks_exact(N).map(|c| f(c.try_into().expect("N bytes"))).collect()
        }
        Some(match dtype {
            Dtype::F64 => Values::Float(each(b, f64::from_le_bytes)),
            Dtype::F32 => Values::Float(each(b, |c| f64::from(f32::from_le_bytes(c)))),
            Dtype::F16 => Values::Float(each(b, |c| f64::from(f16::from_le_bytes(c)))),
            Dtype::BF16 => Values::Float(each(b, |c| f64::from(bf16::from_le_bytes(c)))),
            Dtype::I8 => Values::Int(each(b, |c| i128::from(i8::from_le_bytes(c)))),
            Dtype::U8 => Values::Int(each(b, |c| i128::from(u8::from_le_bytes(c)))),
            Dtype::I16 => Values::Int(each(b, |c| i128::from(i16::from_le_bytes(c)))),
            Dtype::U16 => Values::Int(each(b, |c| i128::from(u16::from_le_bytes(c)))),
            Dtype::I32 => Values::Int(each(b, |c| i128::from(i32::from_le_bytes(c)))),
            Dtype::U32 => Values::Int(each(b, |c| i128::from(u32::from_le_bytes(c)))),
            Dtype::I64 => Values::Int(each(b, |c| i128::from(i64::from_le_bytes(c)))),
            Dtype::U64 => Values::Int(each(b, |c| i128::from(u64::from_le_bytes(c)))),
            _ => return None,
        })
    }
}

/// numpy's `allclose` rule: `|a - b| <= atol + rtol * |b|`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Absolute tolerance.
    pub atol: f64,
    /// Relative tolerance (of `b`'s magnitude).
    pub rtol: f64,
}

impl Tolerance {
    fn exact(&self) -> bool {
        self.atol == 0.0 && self.rtol == 0.0
    }
}

/// The largest difference in a tensor: where, and the two values.
#[derive(Debug, Clone, PartialEq)]
struct Worst {
    index: usize,
    a: String,
    b: String,
    abs: f64,
}

/// Compares two tensors' values element by element under `tol`: how many elements are outside
/// it, and the largest difference. NaN equals NaN; NaN against a number is infinitely far.
fn compare(x: &Values, y: &Values, tol: Tolerance) -> Option<(usize, Option<Worst>)> {
    let mut outside = 0;
    let mut worst: Option<Worst> = None;
    let mut note = |i: usize, d: f64, b: f64, show: &dyn Fn() -> (String, String)| {
        if d > tol.atol + tol.rtol * b.abs() || d.is_nan() {
            outside += 1;
        }
        let d = if d.is_nan() { f64::INFINITY } else { d };
        if d > 0.0 && worst.as_ref().is_none_or(|w| d > w.abs) {
            let (a, b) = show();
            worst = Some(Worst { index: i, a, b, abs: d });
        }
    };
    match (x, y) {
        (Values::Float(x), Values::Float(y)) => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                let d = if p.is_nan() && q.is_nan() {
                    0.0
                } else if p.is_nan() || q.is_nan() {
                    f64::NAN
                } else if p == q {
                    0.0
                } else {
                    (p - q).abs()
                };
                note(i, d, *q, &|| (p.to_string(), q.to_string()));
            }
        }
        (Values::Int(x), Values::Int(y)) => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                let d = p.abs_diff(*q) as f64;
                note(i, d, *q as f64, &|| (p.to_string(), q.to_string()));
            }
        }
        _ => return None,
    }
    Some((outside, worst))
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
    Values { name: String, count: usize, of: usize, worst: Worst },
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
            Finding::Values { name, count, of, worst } => format!(
                "~ {}: {count} of {of} values outside the tolerance, largest |a-b| = {:.3e} (element {}: {} vs {})",
                p(name),
                worst.abs,
                worst.index,
                worst.a,
                worst.b
            ),
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
            Finding::Values { name, count, of, worst } => json!({"kind": "values", "name": name,
                "differing": count, "of": of, "max_abs_diff": json_number(worst.abs), "at": worst.index,
                "a": worst.a, "b": worst.b}),
            Finding::Bytes { name, count, of } => json!({"kind": "bytes", "name": name, "differing": count, "of": of}),
            Finding::Metadata { key, a, b } => json!({"kind": "metadata", "key": key, "a": a, "b": b}),
        }
    }
}

/// A float for JSON (infinite as a string: JSON has no infinity).
fn json_number(v: f64) -> serde_json::Value {
    if v.is_finite() { v.into() } else { "inf".into() }
}

/// Compares; prints the differences (as text, or as one JSON document); returns the exit status.
pub fn diff(a: &Path, b: &Path, tol: Tolerance, all_metadata: bool, as_json: bool, quiet: bool) -> Result<i32> {
    let (sa, sb) = (Side::open(a)?, Side::open(b)?);
    let (ta, tb) = (sa.tensors()?, sb.tensors()?);
    let mut findings = Vec::new();
    for n in ta.keys().filter(|n| !tb.contains_key(*n)) {
        findings.push(Finding::OnlyIn { name: n.clone(), side: 'a' });
    }
    for n in tb.keys().filter(|n| !ta.contains_key(*n)) {
        findings.push(Finding::OnlyIn { name: n.clone(), side: 'b' });
    }
    let (mut identical, mut within, mut across_dtypes) = (0usize, 0usize, 0usize);
    // The largest difference seen in any tensor (within the tolerance or not).
    let mut largest: Option<(String, Worst)> = None;
    for (name, (da, sha, xa)) in &ta {
        let Some((db, shb, xb)) = tb.get(name) else { continue };
        let layout = || Finding::Layout { name: name.clone(), a: (*da, sha.clone()), b: (*db, shb.clone()) };
        if sha != shb {
            findings.push(layout());
            continue;
        }
        if da == db && xa == xb {
            identical += 1;
            continue;
        }
        let compared = Values::of(*da, xa).zip(Values::of(*db, xb)).and_then(|(x, y)| compare(&x, &y, tol));
        match compared {
            Some((outside, worst)) => {
                across_dtypes += usize::from(da != db);
                if let Some(w) = &worst
                    && largest.as_ref().is_none_or(|(_, l)| w.abs > l.abs)
                {
                    largest = Some((name.clone(), w.clone()));
                }
                match worst {
                    Some(worst) if outside > 0 => {
                        findings.push(Finding::Values { name: name.clone(), count: outside, of: shape_len(sha), worst })
                    }
                    // Equal values in other bytes (another dtype, -0.0, NaN payloads) or within
                    // the tolerance.
                    _ => within += 1,
                }
            }
            None if da != db => findings.push(layout()),
            None => {
                let count = xa.iter().zip(xb.iter()).filter(|(p, q)| p != q).count();
                findings.push(Finding::Bytes { name: name.clone(), count, of: xa.len() });
            }
        }
    }
    let compared = sa.metadata().zip(sb.metadata());
    let (ma, mb) =
        compared.clone().map(|(x, y)| (comparable(x, all_metadata), comparable(y, all_metadata))).unwrap_or_default();
    // Aliases were compared as tensors.
    let (ma, mb) = (without_aliases(ma, &sa), without_aliases(mb, &sb));
    let keys: BTreeSet<&String> = ma.keys().chain(mb.keys()).collect();
    for k in keys {
        let (x, y) = (ma.get(k), mb.get(k));
        if x != y {
            findings.push(Finding::Metadata { key: k.clone(), a: x.cloned(), b: y.cloned() });
        }
    }
    let code = if findings.is_empty() { EXIT_OK } else { EXIT_FAILURE };
    if quiet {
        return Ok(code);
    }
    if as_json {
        let doc = serde_json::json!({
            "a": a.display().to_string(),
            "b": b.display().to_string(),
            "equal": findings.is_empty(),
            "identical_tensors": identical,
            "within_tolerance": within,
            "compared_across_dtypes": across_dtypes,
            "atol": tol.atol,
            "rtol": tol.rtol,
            "largest_difference": largest.as_ref().map(|(n, w)| serde_json::json!({
                "name": n, "abs": json_number(w.abs), "at": w.index, "a": w.a, "b": w.b})),
            "metadata_compared": compared.is_some(),
            "differences": findings.iter().map(Finding::json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(code);
    }
    for f in &findings {
        println!("{}", f.text(a, b));
    }
    let tolerance = if tol.exact() {
        "equal in value".to_string()
    } else {
        format!("within atol {:e} + rtol {:e} x |b|", tol.atol, tol.rtol)
    };
    if findings.is_empty() {
        println!(
            "equal: {} ({identical} bit for bit{}){}",
            count(identical + within, "tensor"),
            if within > 0 { format!(", {within} {tolerance}") } else { String::new() },
            match (compared.is_some(), all_metadata) {
                (false, _) => "; a PyTorch file has no metadata to compare",
                (true, true) => ", and the metadata",
                (true, false) => ", and the metadata (integrity record and creation time ignored)",
            }
        );
    } else {
        println!(
            "{}; {} identical, {within} {tolerance}",
            count(findings.len(), "difference"),
            count(identical, "tensor")
        );
    }
    if across_dtypes > 0 {
        println!("{} compared by value across dtypes", count(across_dtypes, "tensor"));
    }
    if let Some((n, w)) = &largest {
        println!(
            "largest difference: {} element {}: {} vs {} (|a-b| = {:.3e})",
            printable(n, false),
            w.index,
            w.a,
            w.b,
            w.abs
        );
    }
    Ok(code)
}

/// Elements of a shape.
fn shape_len(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Metadata less the aliases it records (compared as tensors instead).
fn without_aliases(mut m: Metadata, side: &Side) -> Metadata {
    if let Side::Safetensors(set) = side {
        let names: BTreeMap<String, ()> = set.global_names().into_iter().map(|n| (n.to_string(), ())).collect();
        for (alias, _) in aliases(&m, &names) {
            m.remove(&alias);
        }
    }
    m
}
