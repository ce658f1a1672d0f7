//! Helpers shared by the reader's tests.

use std::path::{Path, PathBuf};

use safeckpt_format::{Dtype, Metadata, RawTensor};
use safeckpt_writer::{WriteOptions, write_file};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Writes `(name, dtype, shape, bytes)` tensors with our writer.
pub fn write(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)], metadata: Option<Metadata>) {
    let sources: Vec<(&str, RawTensor<'_>)> =
        tensors.iter().map(|(n, d, s, b)| (*n, RawTensor::borrowed(*d, s.clone(), b))).collect();
    write_file(path, &sources, metadata, &WriteOptions::new().fsync(false)).unwrap();
}

/// Builds a raw safetensors file from a header JSON and data, with no checks.
pub fn raw_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.as_bytes().to_vec();
    while !(8 + h.len()).is_multiple_of(8) {
        h.push(b' ');
    }
    let mut v = (h.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(&h);
    v.extend_from_slice(data);
    v
}
