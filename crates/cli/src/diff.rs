//! `safeckpt diff`: two checkpoints compared tensor by tensor, and their metadata.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Result;
use half::{bf16, f16};
use safeckpt_format::{Dtype, INTEGRITY_KEY, Metadata};
use safeckpt_reader::{ShardedReader, TensorView};

use crate::util::{EXIT_FAILURE, EXIT_OK};

/// Values of a floating tensor as f64, if it is one.
fn floats(v: &TensorView<'_>) -> Option<Vec<f64>> {
    let b = v.data();
    Some(match v.dtype() {
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

/// Compares; prints the differences; returns the exit status.
pub fn diff(a: &Path, b: &Path, atol: f64, all_metadata: bool) -> Result<i32> {
    let sa = ShardedReader::open(a)?;
    let sb = ShardedReader::open(b)?;
    let na: BTreeSet<&str> = sa.names().into_iter().collect();
    let nb: BTreeSet<&str> = sb.names().into_iter().collect();
    let mut differences = 0usize;
    for n in na.difference(&nb) {
        println!("- {n}: only in {}", a.display());
        differences += 1;
    }
    for n in nb.difference(&na) {
        println!("+ {n}: only in {}", b.display());
        differences += 1;
    }
    let mut identical = 0usize;
    for n in na.intersection(&nb) {
        let (va, vb) = (sa.tensor(n)?, sb.tensor(n)?);
        if va.dtype() != vb.dtype() || va.shape() != vb.shape() {
            println!("~ {n}: {} {:?} vs {} {:?}", va.dtype(), va.shape(), vb.dtype(), vb.shape());
            differences += 1;
            continue;
        }
        if va.data() == vb.data() {
            identical += 1;
            continue;
        }
        match (floats(&va), floats(&vb)) {
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
                    println!("~ {n}: {count} of {} values differ, max |a-b| = {max:.3e}", x.len());
                    differences += 1;
                }
            }
            _ => {
                let count = va.data().iter().zip(vb.data()).filter(|(p, q)| p != q).count();
                println!("~ {n}: {count} of {} bytes differ", va.data().len());
                differences += 1;
            }
        }
    }
    let (ma, mb) = (comparable(metadata(&sa), all_metadata), comparable(metadata(&sb), all_metadata));
    let keys: BTreeSet<&String> = ma.keys().chain(mb.keys()).collect();
    for k in keys {
        match (ma.get(k), mb.get(k)) {
            (Some(x), Some(y)) if x == y => {}
            (x, y) => {
                let show = |v: Option<&String>| {
                    v.map_or("(absent)".to_string(), |s| {
                        if s.chars().count() > 80 { s.chars().take(77).collect::<String>() + "..." } else { s.clone() }
                    })
                };
                println!("~ metadata {k}: {} vs {}", show(x), show(y));
                differences += 1;
            }
        }
    }
    if differences == 0 {
        println!(
            "identical: {identical} tensors{} and the metadata{}",
            if atol > 0.0 { format!(" (within {atol:e})") } else { " bit for bit".into() },
            if all_metadata { "" } else { " (integrity record and creation time ignored)" }
        );
        Ok(EXIT_OK)
    } else {
        println!("{differences} difference(s); {identical} tensors identical");
        Ok(EXIT_FAILURE)
    }
}
