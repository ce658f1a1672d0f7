//! Helpers.

use std::path::{Path, PathBuf};

pub(crate) fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// Distance in units in the last place between two f32 values (0 when bit-identical).
pub(crate) fn ulps(a: f32, b: f32) -> u32 {
    if a.to_bits() == b.to_bits() {
        return 0;
    }
    let key = |x: f32| {
        let i = x.to_bits() as i32;
        if i < 0 { i32::MIN - i } else { i }
    };
    (key(a) as i64 - key(b) as i64).unsigned_abs().min(u32::MAX as u64) as u32
}

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Module, VarBuilder, VarMap};

/// The demo's MLP: 20 -> 64 -> 32 -> 1.
pub(crate) struct Mlp {
    pub(crate) fc1: candle_nn::Linear,
    pub(crate) fc2: candle_nn::Linear,
    pub(crate) fc3: candle_nn::Linear,
}

impl Mlp {
    pub(crate) fn new(vm: &VarMap) -> Mlp {
        let vb = VarBuilder::from_varmap(vm, DType::F32, &Device::Cpu);
        Mlp {
            fc1: candle_nn::linear(20, 64, vb.pp("fc1")).unwrap(),
            fc2: candle_nn::linear(64, 32, vb.pp("fc2")).unwrap(),
            fc3: candle_nn::linear(32, 1, vb.pp("fc3")).unwrap(),
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.fc1.forward(x).unwrap().relu().unwrap();
        let h = self.fc2.forward(&h).unwrap().relu().unwrap();
        self.fc3.forward(&h).unwrap()
    }
}

/// A deterministic batch: inputs and 0/1 labels.
pub(crate) fn batch(seed: u64, n: usize) -> (Tensor, Tensor) {
    let mut s = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let x: Vec<f32> = (0..n * 20).map(|_| next()).collect();
    let y: Vec<f32> = x.chunks(20).map(|r| if r[0] + r[1] * r[2] > 0.0 { 1.0 } else { 0.0 }).collect();
    (Tensor::from_vec(x, (n, 20), &Device::Cpu).unwrap(), Tensor::from_vec(y, (n, 1), &Device::Cpu).unwrap())
}

/// Every variable's bits, by name.
pub(crate) fn bits(vars: &[(String, Var)]) -> Vec<(String, Vec<u32>)> {
    vars.iter()
        .map(|(n, v)| {
            (
                n.clone(),
                v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect(),
            )
        })
        .collect()
}

/// A fresh model with every variable set to deterministic values.
pub(crate) fn seeded_model(seed: u64) -> (VarMap, Mlp, Vec<(String, Var)>) {
    let vm = VarMap::new();
    let mlp = Mlp::new(&vm);
    let vars = safeckpt_candle::varmap_vars(&vm);
    for (i, (_, v)) in vars.iter().enumerate() {
        let n = v.elem_count();
        let vals: Vec<f32> = (0..n).map(|k| (((k * 31 + i * 7) as u64 ^ seed) % 97) as f32 / 97.0 - 0.5).collect();
        v.set(&Tensor::from_vec(vals, v.dims(), &Device::Cpu).unwrap()).unwrap();
    }
    (vm, mlp, vars)
}

/// One training step on batch `step` with any optimizer.
pub(crate) fn train_step(mlp: &Mlp, opt: &mut impl candle_nn::Optimizer, step: u64) {
    let (x, y) = batch(step, 32);
    let logits = mlp.forward(&x);
    let loss = candle_nn::loss::binary_cross_entropy_with_logit(&logits, &y).unwrap();
    opt.backward_step(&loss).unwrap();
}
