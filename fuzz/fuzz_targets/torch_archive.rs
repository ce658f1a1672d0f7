//! A whole PyTorch file (zip or legacy) on arbitrary bytes: open, describe and list tensors and
//! values, and plan a conversion; never panics, and never produces more than the output limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use safeckpt_torch::{ConvertOptions, TorchArchive};

fuzz_target!(|data: &[u8]| {
    let Ok(a) = TorchArchive::from_bytes(data, "fuzz.pth") else { return };
    let _ = a.describe(None);
    if let Ok(tensors) = a.tensors(None) {
        for (_, t) in tensors {
            let n: usize = t.shape.iter().product();
            assert_eq!(t.data.len(), n * t.dtype.bits() / 8);
        }
    }
    let _ = a.values(None);
    let _ = a.plan_conversion(&ConvertOptions::default());
});
