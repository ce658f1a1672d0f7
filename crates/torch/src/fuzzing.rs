//! The bodies of the fuzz targets (`fuzz/fuzz_targets/pickle.rs` and `torch_archive.rs`), kept
//! here so that the test suite replays every committed seed and regression through exactly the
//! code the fuzzers run. Each returns normally for any input; a panic is a bug.

use crate::globals::TorchDtype;
use crate::pickle::{Limits, StorageResolver, unpickle};
use crate::value::{Arena, Value};
use crate::{ConvertOptions, TorchArchive};

/// Accepts any storage id, up to 1000 of them, each 64 bytes longer than the last.
struct AnyStorage(u32);

impl StorageResolver for AnyStorage {
    fn persistent_load(&mut self, _pid: &Value, _arena: &Arena) -> Result<u32, String> {
        self.0 += 1;
        if self.0 > 1000 { Err("too many".into()) } else { Ok(self.0) }
    }
    fn storage_bytes(&self, storage: u32) -> u64 {
        u64::from(storage) * 64
    }
    fn storage_dtype(&self, _storage: u32) -> TorchDtype {
        TorchDtype::Float32
    }
}

/// The restricted pickle VM on arbitrary bytes, then the flattener on whatever it built.
pub fn pickle(data: &[u8]) {
    let mut arena = Arena::default();
    let limits =
        Limits { max_values: 200_000, max_memo: 100_000, max_marks: 10_000, max_rank: 64, max_bytes: 16 << 20 };
    if let Ok((root, used)) = unpickle(data, &mut arena, &mut AnyStorage(0), limits) {
        assert!(used <= data.len());
        let _ = crate::flatten::flatten_with_limit(&arena, &root, None, 200_000);
    }
}

/// A whole PyTorch file (zip or legacy) on arbitrary bytes: open, describe and list tensors and
/// values, and plan a conversion.
pub fn torch_archive(data: &[u8]) {
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
}
