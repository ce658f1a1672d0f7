//! Writer -> reader round trips, and identity with the reference writer.

use std::collections::HashMap;

use proptest::prelude::*;
use safeckpt_format::Metadata;
use safeckpt_reader::Reader;
use safeckpt_writer::{WriteOptions, write_file};

use crate::common::{any_tensor, sources, unique};

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn round_trip_with_checksums(tensors in proptest::collection::vec(any_tensor(), 0..10),
                                 meta in proptest::collection::btree_map("[a-z.]{1,8}", "[ -~]{0,16}", 0..4)) {
        let tensors = unique(tensors);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let summary = write_file(&path, &sources(&tensors), Some(meta.clone()), &WriteOptions::new().fsync(false)).unwrap();
        prop_assert_eq!(summary.tensors, tensors.len());
        prop_assert_eq!(summary.bytes, std::fs::metadata(&path).unwrap().len());
        let r = Reader::open(&path).unwrap();
        prop_assert_eq!(r.len(), tensors.len());
        for t in &tensors {
            let v = r.tensor(&t.name).unwrap();
            prop_assert_eq!(v.data(), &t.data[..]);
            prop_assert_eq!(v.shape(), &t.shape[..]);
            prop_assert_eq!(v.dtype(), t.dtype);
            prop_assert_eq!((v.data().as_ptr() as usize - r.bytes().as_ptr() as usize) % t.dtype.alignment(), 0);
        }
        for (k, v) in &meta {
            prop_assert_eq!(r.metadata().unwrap().get(k), Some(v));
        }
        let rep = r.verify().unwrap();
        prop_assert!(rep.is_ok() && rep.has_checksums);
        // The reference reader accepts the file and sees the same bytes.
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for t in &tensors {
            prop_assert_eq!(st.tensor(&t.name).unwrap().data(), &t.data[..]);
        }
    }

    #[test]
    fn file_is_byte_identical_to_the_reference_writer(tensors in proptest::collection::vec(any_tensor(), 0..10),
                                                      key in proptest::option::of(("[a-z]{1,6}", "[ -~]{0,12}"))) {
        let tensors = unique(tensors);
        prop_assume!(!tensors.is_empty() || key.is_some());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ours.safetensors");
        let ours_meta = key.clone().map(|(k, v)| Metadata::from([(k, v)]));
        write_file(&path, &sources(&tensors), ours_meta, &WriteOptions::new().checksums(false).fsync(false)).unwrap();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors.iter().map(|t| {
            let dt: safetensors::Dtype = serde_json::from_value(serde_json::json!(t.dtype.as_str())).unwrap();
            (t.name.clone(), safetensors::tensor::TensorView::new(dt, t.shape.clone(), &t.data).unwrap())
        }).collect();
        let theirs = safetensors::serialize(views, key.map(|(k, v)| HashMap::from([(k, v)]))).unwrap();
        prop_assert_eq!(std::fs::read(&path).unwrap(), theirs);
    }
}

#[test]
fn output_is_deterministic_with_many_metadata_keys() {
    let t =
        crate::common::T { name: "w".into(), dtype: safeckpt_format::Dtype::U8, shape: vec![3], data: vec![1, 2, 3] };
    let meta: Metadata = (0..8).map(|i| (format!("key{i}"), format!("value{i}"))).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut outputs = Vec::new();
    for i in 0..4 {
        let p = dir.path().join(format!("{i}.safetensors"));
        write_file(&p, &sources(std::slice::from_ref(&t)), Some(meta.clone()), &WriteOptions::new().fsync(false))
            .unwrap();
        outputs.push(std::fs::read(&p).unwrap());
    }
    assert!(outputs.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn page_aligned_data_section() {
    let t =
        crate::common::T { name: "w".into(), dtype: safeckpt_format::Dtype::F32, shape: vec![3], data: vec![0; 12] };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.safetensors");
    write_file(&p, &sources(std::slice::from_ref(&t)), None, &WriteOptions::new().data_alignment(4096).fsync(false))
        .unwrap();
    let r = Reader::open(&p).unwrap();
    assert_eq!(r.header().data_start() % 4096, 0);
    assert!(safetensors::SafeTensors::deserialize(&std::fs::read(&p).unwrap()).is_ok());
}
