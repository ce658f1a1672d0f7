//! The restricted pickle VM on arbitrary bytes, with a resolver that accepts any storage id: never
//! panics, never runs away in memory; whatever it builds flattens or is refused cleanly. The body
//! lives in `safeckpt_torch::fuzzing`, where the test suite replays the seeds through it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| safeckpt_torch::fuzzing::pickle(data));
