//! The reader on arbitrary bytes: open, verify, views, typed reads and slices never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use safeckpt_reader::Reader;

fuzz_target!(|data: &[u8]| {
    let Ok(r) = Reader::from_bytes(data, "fuzz") else { return };
    let _ = r.verify();
    for t in r.tensors() {
        let _ = t.checksum();
        let _ = t.typed::<f32>();
        let _ = t.typed::<half::bf16>();
        let _ = t.to_vec::<u8>();
        if let Some(&d0) = t.shape().first() {
            if let Ok(s) = t.narrow(0, d0 / 2..d0) {
                let _ = s.to_bytes();
            }
        }
        if t.shape().len() >= 2 {
            if let Ok(s) = t.narrow(1, 0..t.shape()[1] / 2) {
                let _ = s.byte_ranges().count();
                let _ = s.to_bytes();
            }
        }
    }
    let _ = r.load_all();
});
