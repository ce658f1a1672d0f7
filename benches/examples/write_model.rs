//! Writes the benchmark's transformer-shaped model to a path (for probing by hand).
fn main() {
    let path = std::env::args().nth(1).expect("path");
    let d = 1024usize;
    let mut tensors = Vec::new();
    for i in 0..18 {
        for (n, s) in [
            ("attn", vec![d, 3 * d]),
            ("proj", vec![d, d]),
            ("fc", vec![d, 4 * d]),
            ("out", vec![4 * d, d]),
        ] {
            let count: usize = s.iter().product();
            tensors.push((format!("h.{i}.{n}"), s, vec![1u8; count * 4]));
        }
    }
    tensors.push(("wte".into(), vec![32000, d], vec![2u8; 32000 * d * 4]));
    let raw: Vec<_> = tensors
        .iter()
        .map(|(n, s, b)| {
            (
                n.as_str(),
                safeckpt_format::RawTensor::borrowed(safeckpt_format::Dtype::F32, s.clone(), b),
            )
        })
        .collect();
    safeckpt_writer::write_file(
        &path,
        &raw,
        None,
        &safeckpt_writer::WriteOptions::new().fsync(false),
    )
    .unwrap();
}
