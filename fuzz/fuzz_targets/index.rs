//! Shard index parsing on arbitrary bytes: never panics; accepted paths are always relative and
//! free of `..`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use safeckpt_format::ShardIndex;

fuzz_target!(|data: &[u8]| {
    if let Ok(i) = ShardIndex::parse(data) {
        for shard in i.weight_map.values() {
            assert!(!shard.starts_with('/'));
            assert!(!shard.split('/').any(|c| c == ".." || c.is_empty()));
        }
        let again = ShardIndex::parse(i.to_json().as_bytes()).expect("our own output parses");
        assert_eq!(again.weight_map, i.weight_map);
    }
});
