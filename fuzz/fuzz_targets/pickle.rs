//! The restricted pickle VM on arbitrary bytes, with a resolver that accepts any storage id: never
//! panics, never runs away in memory; whatever it builds flattens or is refused cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use safeckpt_torch::globals::TorchDtype;
use safeckpt_torch::pickle::{Limits, StorageResolver, unpickle};
use safeckpt_torch::value::{Arena, Value};

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

fuzz_target!(|data: &[u8]| {
    let mut arena = Arena::default();
    let limits =
        Limits { max_values: 200_000, max_memo: 100_000, max_marks: 10_000, max_rank: 64, max_bytes: 16 << 20 };
    if let Ok((root, used)) = unpickle(data, &mut arena, &mut AnyStorage(0), limits) {
        assert!(used <= data.len());
        let _ = safeckpt_torch::flatten::flatten_with_limit(&arena, &root, None, 200_000);
    }
});
