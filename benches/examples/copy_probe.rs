//! Probes ways of copying a mapped file into fresh vectors (one variant per process).
use rayon::prelude::*;
use std::os::unix::fs::FileExt;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (variant, path) = (&args[1], &args[2]);
    let r = safeckpt_reader::Reader::open(path).unwrap();
    let f = std::fs::File::open(path).unwrap();
    let views: Vec<_> = r.tensors().collect();
    let base = r.header().data_start() as u64;
    let t = std::time::Instant::now();
    let out: Vec<Vec<u8>> = match variant.as_str() {
        "extend" => views
            .iter()
            .map(|v| {
                let mut o = Vec::with_capacity(v.data().len());
                o.extend_from_slice(v.data());
                o
            })
            .collect(),
        "extend_par" => views
            .par_iter()
            .map(|v| {
                let mut o = Vec::with_capacity(v.data().len());
                o.extend_from_slice(v.data());
                o
            })
            .collect(),
        "calloc_copy" => views
            .iter()
            .map(|v| {
                let mut o = vec![0u8; v.data().len()];
                o.copy_from_slice(v.data());
                o
            })
            .collect(),
        "calloc_pread" => views
            .iter()
            .map(|v| {
                let mut o = vec![0u8; v.data().len()];
                f.read_exact_at(&mut o, base + v.info().data_offsets.0 as u64)
                    .unwrap();
                o
            })
            .collect(),
        "calloc_pread_par" => views
            .par_iter()
            .map(|v| {
                let mut o = vec![0u8; v.data().len()];
                f.read_exact_at(&mut o, base + v.info().data_offsets.0 as u64)
                    .unwrap();
                o
            })
            .collect(),
        "calloc_copy_par" => views
            .par_iter()
            .map(|v| {
                let mut o = vec![0u8; v.data().len()];
                o.copy_from_slice(v.data());
                o
            })
            .collect(),
        _ => panic!(),
    };
    println!("{variant}: {:.3}", t.elapsed().as_secs_f64());
    std::hint::black_box(out);
}
