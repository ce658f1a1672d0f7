//! A whole PyTorch file (zip or legacy) on arbitrary bytes: open, describe and list tensors and
//! values, and plan a conversion; never panics, and never produces more than the output limit.
//! The body lives in `safeckpt_torch::fuzzing`, where the test suite replays the seeds through it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| safeckpt_torch::fuzzing::torch_archive(data));
