//! The header parser on arbitrary bytes: never panics; whatever parses re-encodes and re-parses
//! to the same header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use safeckpt_format::{Header, Layout, LayoutOptions, TensorSpec};

fuzz_target!(|data: &[u8]| {
    let Ok(h) = Header::parse(data) else { return };
    // Every valid file is recognised as safetensors by structure (whatever its first bytes), as
    // long as its `{` comes within the bytes detection looks at.
    let brace = data.iter().skip(8).position(|&b| b == b'{').unwrap_or(usize::MAX);
    if brace + 8 < safeckpt_format::detect::HEAD_LEN {
        let tail = &data[data.len().saturating_sub(safeckpt_format::detect::TAIL_LEN)..];
        assert_eq!(safeckpt_format::detect(data, tail, data.len() as u64), safeckpt_format::FileKind::Safetensors);
    }
    // Invariants of a valid header.
    let mut end = 0;
    for t in h.tensors() {
        assert_eq!(t.data_offsets.0, end);
        end = t.data_offsets.1;
        assert_eq!(h.get(&t.name), Some(t));
    }
    assert_eq!(end, h.data_len());
    assert_eq!(h.total_len(), data.len() as u64);
    // Re-encoding what was read gives a file that parses to the same tensors and metadata.
    let specs = h.tensors().iter().map(|t| TensorSpec::new(t.name.clone(), t.dtype, t.shape.clone())).collect();
    let opts = LayoutOptions { checksums: false, ..Default::default() };
    if let Ok(layout) = Layout::plan(specs, h.metadata().cloned(), &opts) {
        let mut file = layout.header_bytes().to_vec();
        file.resize(file.len() + layout.data_len(), 0);
        let again = Header::parse(&file).expect("our own encoding parses");
        assert_eq!(again.len(), h.len());
        // The planner drops a stale integrity record; everything else survives.
        fn strip(m: Option<&safeckpt_format::Metadata>) -> Option<Vec<(&String, &String)>> {
            m.map(|m| m.iter().filter(|(k, _)| k.as_str() != safeckpt_format::INTEGRITY_KEY).collect())
        }
        assert_eq!(strip(again.metadata()), strip(h.metadata()));
        for t in h.tensors() {
            let u = again.get(&t.name).expect("same names");
            assert_eq!((u.dtype, &u.shape), (t.dtype, &t.shape));
        }
    }
});
