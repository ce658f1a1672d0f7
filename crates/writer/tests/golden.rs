//! The example in docs/format.md is a real file: `fixtures/format/example.safetensors`.

use std::path::Path;

use half::f16;
use safeckpt_format::{Dtype, Metadata, RawTensor};
use safeckpt_writer::{WriteOptions, write_file};

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// The example's tensors, exactly as docs/format.md describes them.
fn example(path: &Path) {
    let weight: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let bias: Vec<u8> = [0.5f32, -0.5].iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect();
    let tensors = [
        ("layer.weight", RawTensor::borrowed(Dtype::F32, [2, 2], &weight)),
        ("layer.bias", RawTensor::borrowed(Dtype::F16, [2], &bias)),
    ];
    let meta = Metadata::from([("format".to_string(), "pt".to_string())]);
    write_file(path, &tensors, Some(meta), &WriteOptions::new().fsync(false)).unwrap();
}

#[test]
fn format_doc_example_is_the_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let written = dir.path().join("example.safetensors");
    example(&written);
    let fixture = root().join("fixtures/format/example.safetensors");
    if std::env::var_os("SAFECKPT_BLESS").is_some() {
        std::fs::copy(&written, &fixture).unwrap();
    }
    let bytes = std::fs::read(&written).unwrap();
    assert_eq!(bytes, std::fs::read(&fixture).unwrap(), "writer output drifted from the documented example");
    // The header JSON printed in the spec is the fixture's header, character for character.
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap().trim_end();
    let doc = std::fs::read_to_string(root().join("docs/format.md")).unwrap();
    let start = doc.find("<!-- example-header -->").expect("marker in docs/format.md");
    let block = &doc[start..];
    let json_start = block.find("```json\n").unwrap() + 8;
    let json_end = block[json_start..].find("\n```").unwrap();
    assert_eq!(&block[json_start..json_start + json_end], header);
    // And its length prefix.
    assert!(doc.contains(&format!("header length N = {n}")), "docs/format.md must state N = {n}");
}
