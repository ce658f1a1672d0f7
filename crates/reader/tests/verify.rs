//! Checksum verification finds damage and names it.

use std::os::unix::fs::FileExt;

use safeckpt_format::{Dtype, Metadata};
use safeckpt_reader::{IntegrityFailure, Reader};

use crate::common::{f32_bytes, write};

fn sample(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("s.safetensors");
    let meta = Metadata::from([("epoch".to_string(), "7".to_string())]);
    write(
        &p,
        &[
            ("w", Dtype::F32, vec![64], f32_bytes(&[0.25; 64])),
            ("b", Dtype::F32, vec![4], f32_bytes(&[1.0; 4])),
            ("ids", Dtype::I32, vec![3], vec![0; 12]),
        ],
        Some(meta),
    );
    p
}

#[test]
fn clean_file_verifies() {
    let d = tempfile::tempdir().unwrap();
    let r = Reader::open(sample(d.path())).unwrap();
    let rep = r.verify().unwrap();
    assert!(rep.is_ok() && rep.has_checksums);
    assert_eq!(rep.tensors_checked, 3);
    assert_eq!(rep.bytes_checked, 256 + 16 + 12);
    assert_eq!(r.verify_tensor("w").unwrap(), Some(true));
}

#[test]
fn every_data_byte_flip_names_its_tensor() {
    let d = tempfile::tempdir().unwrap();
    let p = sample(d.path());
    let clean = std::fs::read(&p).unwrap();
    let r = Reader::open(&p).unwrap();
    let start = r.header().data_start();
    let owners: Vec<(String, usize, usize)> =
        r.tensors().map(|t| (t.name().to_string(), t.info().data_offsets.0, t.info().data_offsets.1)).collect();
    drop(r);
    for at in start..clean.len() {
        let mut bad = clean.clone();
        bad[at] ^= 1 << (at % 8);
        let r = Reader::from_bytes(&bad, "damaged").unwrap();
        let rep = r.verify().unwrap();
        let owner = owners.iter().find(|(_, b, e)| (*b..*e).contains(&(at - start))).unwrap();
        assert_eq!(rep.failures.len(), 1, "byte {at}");
        assert!(
            matches!(&rep.failures[0], IntegrityFailure::Tensor { name, .. } if *name == owner.0),
            "byte {at}: {:?}",
            rep.failures
        );
    }
}

#[test]
fn altered_metadata_or_shape_fails_the_header_check() {
    let d = tempfile::tempdir().unwrap();
    let p = sample(d.path());
    let text = std::fs::read(&p).unwrap();
    let edit = |from: &str, to: &str| {
        assert_eq!(from.len(), to.len());
        let at = text.windows(from.len()).position(|w| w == from.as_bytes()).unwrap();
        let mut bytes = text.clone();
        bytes[at..at + to.len()].copy_from_slice(to.as_bytes());
        Reader::from_bytes(&bytes, "edited").unwrap().verify().unwrap()
    };
    let rep = edit("\"epoch\":\"7\"", "\"epoch\":\"8\"");
    assert_eq!(rep.failures, vec![IntegrityFailure::HeaderMismatch]);
    // Renaming a tensor leaves it without a recorded checksum and the header digest wrong.
    let rep = edit("\"ids\":{", "\"idz\":{");
    assert!(rep.failures.contains(&IntegrityFailure::HeaderMismatch));
    assert!(rep.failures.contains(&IntegrityFailure::NoChecksum { name: "idz".into() }));
}

#[test]
fn files_without_checksums_report_structure_only() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("plain.safetensors");
    let data = vec![1u8; 8];
    let views = vec![("a", safetensors::tensor::TensorView::new(safetensors::Dtype::U8, vec![8], &data).unwrap())];
    safetensors::serialize_to_file(views, None, &p).unwrap();
    let rep = Reader::open(&p).unwrap().verify().unwrap();
    assert!(rep.is_ok() && !rep.has_checksums);
    assert_eq!(Reader::open(&p).unwrap().verify_tensor("a").unwrap(), None);
}

#[test]
fn a_file_truncated_or_rewritten_under_the_map_is_reported() {
    let d = tempfile::tempdir().unwrap();
    let p = sample(d.path());
    let len = std::fs::metadata(&p).unwrap().len();
    let r = Reader::open(&p).unwrap();
    assert!(r.is_mapped());
    // Another process rewrites bytes in place: the shared map sees them, the checksum catches them.
    let mut bytes = std::fs::read(&p).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::OpenOptions::new().write(true).open(&p).unwrap().write_all_at(&bytes[last..], last as u64).unwrap();
    let rep = r.verify().unwrap();
    assert_eq!(rep.failures.len(), 1, "{rep:?}");
    assert!(matches!(&rep.failures[0], IntegrityFailure::Tensor { name, .. } if name == "ids"), "{rep:?}");
    // Then truncates it: reported without touching the lost pages.
    for cut in [len - 10, 50, 0] {
        std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(cut).unwrap();
        let rep = r.verify().unwrap();
        assert_eq!(rep.failures, vec![IntegrityFailure::Truncated { mapped: len, now: cut }]);
        assert!(rep.failures[0].to_string().contains("truncated while open"));
    }
}
