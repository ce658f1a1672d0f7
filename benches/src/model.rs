//! Benchmark inputs: transformer-shaped state dicts and many-tensor files.

use safeckpt_format::{Dtype, RawTensor};

/// A state dict held in memory: names, shapes and little-endian f32 bytes.
pub(crate) struct StateDict {
    pub(crate) tensors: Vec<(String, Vec<usize>, Vec<u8>)>,
}

impl StateDict {
    /// A GPT-style model of width 1024 with as many layers as fit `size_mib`, plus embeddings.
    pub(crate) fn transformer(size_mib: usize) -> StateDict {
        let d = 1024usize;
        let vocab = 32000usize;
        let mut shapes: Vec<(String, Vec<usize>)> =
            vec![("wte.weight".into(), vec![vocab, d]), ("wpe.weight".into(), vec![2048, d])];
        let budget = size_mib << 20;
        let per_layer = 4 * (d * 3 * d + d * d + 2 * d * 4 * d);
        let mut used: usize = 4 * (vocab * d + 2048 * d);
        let mut i = 0;
        while used + per_layer <= budget || i == 0 {
            let p = format!("h.{i}.");
            for (n, s) in [
                ("ln_1.weight", vec![d]),
                ("ln_1.bias", vec![d]),
                ("attn.c_attn.weight", vec![d, 3 * d]),
                ("attn.c_attn.bias", vec![3 * d]),
                ("attn.c_proj.weight", vec![d, d]),
                ("attn.c_proj.bias", vec![d]),
                ("ln_2.weight", vec![d]),
                ("ln_2.bias", vec![d]),
                ("mlp.c_fc.weight", vec![d, 4 * d]),
                ("mlp.c_fc.bias", vec![4 * d]),
                ("mlp.c_proj.weight", vec![4 * d, d]),
                ("mlp.c_proj.bias", vec![d]),
            ] {
                shapes.push((format!("{p}{n}"), s));
            }
            used += per_layer;
            i += 1;
        }
        let mut seed = 0x9e3779b97f4a7c15u64;
        let tensors = shapes
            .into_iter()
            .map(|(n, s)| {
                let count: usize = s.iter().product();
                let mut bytes = Vec::with_capacity(count * 4);
                for _ in 0..count {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let v = ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04;
                    bytes.extend_from_slice(&v.to_le_bytes());
                }
                (n, s, bytes)
            })
            .collect();
        StateDict { tensors }
    }

    /// `n` tiny tensors with realistic names (for header parsing).
    pub(crate) fn many_small(n: usize) -> StateDict {
        let tensors = (0..n)
            .map(|i| (format!("model.layers.{}.block.{}.weight", i / 16, i % 16), vec![2, 2], vec![0u8; 16]))
            .collect();
        StateDict { tensors }
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.2.len() as u64).sum()
    }

    pub(crate) fn raw(&self) -> Vec<(&str, RawTensor<'_>)> {
        self.tensors.iter().map(|(n, s, b)| (n.as_str(), RawTensor::borrowed(Dtype::F32, s.clone(), b))).collect()
    }

    pub(crate) fn st_views(&self) -> Vec<(&str, safetensors::tensor::TensorView<'_>)> {
        self.tensors
            .iter()
            .map(|(n, s, b)| {
                (n.as_str(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
            })
            .collect()
    }
}
