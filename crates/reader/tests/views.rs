//! Typed views, alignment fallbacks, slices and owned loads.

use std::borrow::Cow;

use half::bf16;
use proptest::prelude::*;
use safeckpt_format::Dtype;
use safeckpt_reader::{LoadMethod, LoadOptions, OwnedData, ReadError, Reader, swap_bytes_in_place};

use crate::common::{f32_bytes, raw_file, write};

#[test]
fn typed_views_are_zero_copy_and_aligned_for_every_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("all.safetensors");
    let tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = Dtype::ALL
        .iter()
        .map(|&d| (d.as_str(), d, vec![8], (0..d.byte_len(8).unwrap()).map(|i| i as u8).collect()))
        .collect();
    write(&path, &tensors, None);
    let r = Reader::open(&path).unwrap();
    assert!(r.is_mapped());
    let base = r.bytes().as_ptr() as usize;
    for t in r.tensors() {
        let addr = t.data().as_ptr() as usize - base;
        assert_eq!(addr % t.dtype().alignment(), 0, "{} misaligned in file", t.name());
    }
    let f: &[f32] = r.tensor("F32").unwrap().as_slice().unwrap();
    assert_eq!(f.len(), 8);
    assert_eq!(f[0].to_bits(), u32::from_le_bytes([0, 1, 2, 3]));
    let b: &[bf16] = r.tensor("BF16").unwrap().as_slice().unwrap();
    assert_eq!(b[1].to_bits(), u16::from_le_bytes([2, 3]));
    assert!(matches!(r.tensor("F64").unwrap().typed::<f64>().unwrap(), Cow::Borrowed(_)));
    let c: &[[f32; 2]] = r.tensor("C64").unwrap().as_slice().unwrap();
    assert_eq!(c.len(), 8);
    let e = r.tensor("F16").unwrap().as_slice::<f32>().unwrap_err();
    assert!(matches!(e, ReadError::DtypeMismatch { actual: Dtype::F16, .. }), "{e}");
    let u: &[u8] = r.tensor("F8_E4M3").unwrap().as_slice().unwrap();
    assert_eq!(u, &[0, 1, 2, 3, 4, 5, 6, 7]);
}

#[test]
fn misaligned_files_fall_back_to_a_copy() {
    // A U8 first puts the F32 at offset 1, which the reference reader accepts.
    let header =
        r#"{"u":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"f":{"dtype":"F32","shape":[2],"data_offsets":[1,9]}}"#;
    let mut data = vec![7u8];
    data.extend_from_slice(&f32_bytes(&[1.5, -2.0]));
    let r = Reader::from_bytes(&raw_file(header, &data), "misaligned").unwrap();
    let f = r.tensor("f").unwrap();
    assert!(matches!(f.as_slice::<f32>(), Err(ReadError::Misaligned { align: 4, .. })));
    let typed = f.typed::<f32>().unwrap();
    assert!(matches!(typed, Cow::Owned(_)));
    assert_eq!(&*typed, &[1.5, -2.0]);
    assert_eq!(f.to_vec::<f32>().unwrap(), vec![1.5, -2.0]);
}

#[test]
fn byte_swapping_reverses_each_unit() {
    let mut b = [1u8, 2, 3, 4, 5, 6, 7, 8];
    swap_bytes_in_place(&mut b, 4);
    assert_eq!(b, [4, 3, 2, 1, 8, 7, 6, 5]);
    swap_bytes_in_place(&mut b, 1);
    assert_eq!(b, [4, 3, 2, 1, 8, 7, 6, 5]);
    swap_bytes_in_place(&mut b, 2);
    assert_eq!(b, [3, 4, 1, 2, 7, 8, 5, 6]);
}

#[test]
fn narrow_rows_are_contiguous_and_columns_are_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let values: Vec<f32> = (0..12).map(|i| i as f32).collect();
    write(&path, &[("m", Dtype::F32, vec![3, 4], f32_bytes(&values))], None);
    let r = Reader::open(&path).unwrap();
    let m = r.tensor("m").unwrap();
    let rows = m.narrow(0, 1..3).unwrap();
    assert_eq!(rows.shape(), &[2, 4]);
    let contiguous = rows.as_contiguous().unwrap();
    assert_eq!(contiguous.as_ptr(), m.data()[16..].as_ptr(), "rows must borrow the map");
    assert_eq!(rows.to_vec::<f32>().unwrap(), (4..12).map(|i| i as f32).collect::<Vec<_>>());
    let cols = m.narrow(1, 1..3).unwrap();
    assert!(cols.as_contiguous().is_none());
    assert_eq!(cols.byte_ranges().collect::<Vec<_>>(), vec![4..12, 20..28, 36..44]);
    assert_eq!(cols.to_vec::<f32>().unwrap(), vec![1.0, 2.0, 5.0, 6.0, 9.0, 10.0]);
    assert!(matches!(m.narrow(2, 0..1), Err(ReadError::InvalidSlice { .. })));
    assert!(matches!(m.slice(&[0..4, 0..1, 0..1]), Err(ReadError::InvalidSlice { .. })));
    assert!(matches!(m.slice(&[std::ops::Range { start: 2, end: 1 }, 0..4]), Err(ReadError::InvalidSlice { .. })));
    assert_eq!(m.slice(&[1..1, 0..4]).unwrap().byte_len(), 0);
}

#[test]
fn sub_byte_slices_must_fall_on_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f4.safetensors");
    write(&path, &[("q", Dtype::F4, vec![4, 4], vec![0x21, 0x43, 0x65, 0x87, 0xa9, 0xcb, 0xed, 0x0f])], None);
    let r = Reader::open(&path).unwrap();
    let q = r.tensor("q").unwrap();
    assert_eq!(q.narrow(0, 1..2).unwrap().to_bytes(), vec![0x65, 0x87]);
    assert!(matches!(q.narrow(1, 1..2), Err(ReadError::InvalidSlice { .. })));
}

/// Reference: slice by visiting every element.
fn naive(values: &[u32], shape: &[usize], ranges: &[std::ops::Range<usize>]) -> Vec<u32> {
    let mut out = Vec::new();
    let total: usize = shape.iter().product();
    for (flat, &value) in values.iter().enumerate().take(total) {
        let mut rem = flat;
        let mut inside = true;
        for (d, &size) in shape.iter().enumerate().rev() {
            let i = rem % size;
            rem /= size;
            if !ranges[d].contains(&i) {
                inside = false;
            }
        }
        if inside {
            out.push(value);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn slices_match_a_naive_gather(shape in proptest::collection::vec(1usize..5, 1..4), seeds in proptest::collection::vec((0usize..5, 0usize..5), 4)) {
        let ranges: Vec<std::ops::Range<usize>> = shape.iter().zip(&seeds).map(|(&d, &(a, b))| {
            let (a, b) = (a % (d + 1), b % (d + 1));
            a.min(b)..a.max(b)
        }).collect();
        let n: usize = shape.iter().product();
        let values: Vec<u32> = (0..n as u32).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let header = format!(r#"{{"t":{{"dtype":"U32","shape":{shape:?},"data_offsets":[0,{}]}}}}"#, bytes.len());
        let r = Reader::from_bytes(&raw_file(&header, &bytes), "t").unwrap();
        let s = r.tensor("t").unwrap().slice(&ranges).unwrap();
        prop_assert_eq!(s.to_vec::<u32>().unwrap(), naive(&values, &shape, &ranges));
        prop_assert_eq!(s.shape().iter().product::<usize>() * 4, s.byte_len());
    }
}

#[test]
fn owned_loads_match_the_views_by_every_method() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.safetensors");
    let big: Vec<f32> = (0..3_000_000).map(|i| i as f32 * 0.5).collect();
    write(
        &path,
        &[
            ("big", Dtype::F32, vec![3000, 1000], f32_bytes(&big)),
            ("flags", Dtype::BOOL, vec![3], vec![1, 0, 1]),
            ("ids", Dtype::I64, vec![2], [5i64, -6].iter().flat_map(|v| v.to_le_bytes()).collect()),
            ("q", Dtype::F4, vec![2], vec![0x21]),
        ],
        None,
    );
    let r = Reader::open(&path).unwrap();
    for (method, huge_pages) in [(LoadMethod::Auto, false), (LoadMethod::Mmap, true), (LoadMethod::Pread, true)] {
        let all = r.load_all_with(&LoadOptions { method, huge_pages }).unwrap();
        assert_eq!(all.len(), 4);
        for t in &all {
            assert_eq!(t.data.as_bytes(), r.tensor(&t.name).unwrap().data(), "{method:?} {}", t.name);
        }
        let big_t = all.iter().find(|t| t.name == "big").unwrap();
        assert!(matches!(&big_t.data, OwnedData::F32(v) if v[2] == 1.0));
    }
    assert_eq!(r.load_vec::<i64>("ids").unwrap(), vec![5, -6]);
    assert!(matches!(r.load_vec::<f32>("ids"), Err(ReadError::DtypeMismatch { .. })));
    r.prefetch(["big", "ids"]).unwrap();
    assert!(matches!(r.prefetch(["nope"]), Err(ReadError::TensorNotFound { .. })));
}
