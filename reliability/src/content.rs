//! Checkpoint contents that are a pure function of the step, so that "the latest checkpoint
//! equals what was saved at that step" can be checked after any crash.

use anyhow::{Result, ensure};
use candle_core::{Device, Tensor, Var};
use safeckpt_format::{Dtype, RawTensor};
use safeckpt_reader::ShardedReader;

/// Tensors per checkpoint.
pub const TENSORS: usize = 8;

/// Elements of tensor `i` (sizes vary so that files mix large and small tensors).
pub fn len_of(i: usize, scale: usize) -> usize {
    scale * (i + 1) * 1024
}

/// The values of tensor `i` at `step`.
pub fn values(step: u64, i: usize, scale: usize) -> Vec<f32> {
    let mut s = step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03) | 1;
    (0..len_of(i, scale))
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

/// Name of tensor `i`.
pub fn name(i: usize) -> String {
    format!("layers.{i}.weight")
}

/// The tensors of `step` as little-endian bytes.
pub fn raw(step: u64, scale: usize) -> Vec<(String, Vec<u8>)> {
    (0..TENSORS).map(|i| (name(i), values(step, i, scale).iter().flat_map(|v| v.to_le_bytes()).collect())).collect()
}

/// Writer inputs over [`raw`].
pub fn sources(raw: &[(String, Vec<u8>)]) -> Vec<(&str, RawTensor<'_>)> {
    raw.iter().map(|(n, b)| (n.as_str(), RawTensor::borrowed(Dtype::F32, [b.len() / 4], b))).collect()
}

/// candle variables holding the tensors of `step`.
pub fn vars(step: u64, scale: usize) -> Result<Vec<(String, Var)>> {
    (0..TENSORS)
        .map(|i| {
            let v = values(step, i, scale);
            let n = v.len();
            Ok((name(i), Var::from_tensor(&Tensor::from_vec(v, n, &Device::Cpu)?)?))
        })
        .collect()
}

/// Checks that a set holds exactly the tensors of `step` (under `prefix`).
pub fn check(set: &ShardedReader, step: u64, prefix: &str, scale: usize) -> Result<()> {
    for i in 0..TENSORS {
        let t = set.tensor(&format!("{prefix}{}", name(i)))?;
        let want = values(step, i, scale);
        let got = t.to_vec::<f32>()?;
        ensure!(got == want, "{}: tensor {} differs from what step {step} saved", set.path().display(), name(i));
    }
    Ok(())
}
