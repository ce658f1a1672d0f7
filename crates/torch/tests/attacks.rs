//! Resource attacks on the importer (`fixtures/pytorch/attacks`, made by `make_attacks.py`): each
//! is refused with its named error, or converted within its bound, without an abort. The
//! reliability report measures the time and peak memory of each.

use std::path::{Path, PathBuf};

use safeckpt_reader::Reader;
use safeckpt_torch::pickle::{Limits, StorageResolver, unpickle};
use safeckpt_torch::value::{Arena, Value};
use safeckpt_torch::{ConvertOptions, TorchArchive, TorchError};
use safeckpt_writer::WriteOptions;

fn attacks() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/pytorch/attacks")
}

fn opts() -> ConvertOptions {
    ConvertOptions { write: WriteOptions::new().fsync(false), ..Default::default() }
}

#[test]
fn every_attack_is_refused_or_bounded() {
    assert_eq!(crate::corpus::check_corpus(&attacks()), 14);
}

#[test]
fn inspecting_a_huge_expanded_view_reads_nothing() {
    // A 4-byte storage viewed as 2^34 floats: described (64 GiB) without materialising it.
    let a = TorchArchive::open(attacks().join("expand_2_34.pth")).unwrap();
    let d = a.describe(None).unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].shape, vec![1usize << 34]);
    assert_eq!(d[0].bytes, 1u64 << 36);
    assert!(!d[0].contiguous);
    // Materialising it is refused by the default limit, naming the file and the way out.
    let err = a.tensors(None).unwrap_err();
    assert!(matches!(err, TorchError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("expand_2_34.pth"), "{err}");
    // Converting it with an explicit limit too small is refused before anything is written.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.safetensors");
    let err = a.convert(&out, &ConvertOptions { max_output_size: Some(1 << 30), ..opts() }, &|_| {}).unwrap_err();
    assert!(err.to_string().contains("--max-output-size"), "{err}");
    assert!(!out.exists());
    // Within an explicit limit it converts: the view written out element by element.
    let a = TorchArchive::open(attacks().join("key_int_and_bool.pth")).unwrap();
    a.convert(&out, &ConvertOptions { max_output_size: Some(8), ..opts() }, &|_| {}).unwrap();
    assert!(a.convert(&out, &ConvertOptions { max_output_size: Some(7), ..opts() }, &|_| {}).is_err());
}

#[test]
fn a_deflated_storage_is_inflated_once_for_all_its_views() {
    // 2,000 views of one 256 MiB deflated storage: refused by default (the inflation is counted
    // against the limit), converted with a larger limit, inflating the storage exactly once.
    let a = TorchArchive::open(attacks().join("deflated_views.pth")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("views.safetensors");
    let err = a.convert(&out, &opts(), &|_| {}).unwrap_err();
    assert!(err.to_string().contains("deflated storages to inflate"), "{err}");
    assert_eq!(a.inflated_bytes(), 0, "refused before inflating anything");
    let s = a.convert(&out, &ConvertOptions { max_output_size: Some(1 << 30), ..opts() }, &|_| {}).unwrap();
    assert_eq!(s.tensors, 2_000);
    assert_eq!(s.inflated_bytes, 256 << 20, "one inflation of the 256 MiB storage");
    let r = Reader::open(&out).unwrap();
    assert_eq!(r.tensor("v1999").unwrap().shape(), &[1024]);
    assert!(r.tensor("v1999").unwrap().data().iter().all(|&b| b == 0));
}

#[test]
fn a_zip_of_160000_storages_converts() {
    // Storage records are found through a hash index (a linear scan per storage took 50 s).
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("python3")
        .arg(attacks().join("make_attacks.py"))
        .arg("--large")
        .arg(dir.path())
        .status()
        .expect("python3 runs make_attacks.py (the test needs it)");
    assert!(status.success());
    let a = TorchArchive::open(dir.path().join("many_storages.pth")).unwrap();
    assert_eq!(a.storages().len(), 160_000);
    let out = dir.path().join("many.safetensors");
    let s = a.convert(&out, &opts(), &|_| {}).unwrap();
    assert_eq!(s.tensors, 160_000);
    let r = Reader::open(&out).unwrap();
    assert_eq!(r.tensor("t159999").unwrap().to_vec::<f32>().unwrap(), vec![159_999.0]);
}

struct NoStorage;
impl StorageResolver for NoStorage {
    fn persistent_load(&mut self, _: &Value, _: &Arena) -> Result<u32, String> {
        Err("none".into())
    }
    fn storage_bytes(&self, _: u32) -> u64 {
        0
    }
    fn storage_dtype(&self, _: u32) -> safeckpt_torch::globals::TorchDtype {
        safeckpt_torch::globals::TorchDtype::UInt8
    }
}

fn run(pickle: &[u8]) -> Result<Value, String> {
    let mut arena = Arena::default();
    unpickle(pickle, &mut arena, &mut NoStorage, Limits::default()).map(|(v, _)| v).map_err(|e| e.to_string())
}

#[test]
fn text_integers_stop_at_pythons_limit() {
    let digits = "9".repeat(4300);
    let v = run(format!("L{digits}L\n.").as_bytes()).unwrap();
    let Value::BigInt(b) = v else { panic!("{v:?}") };
    assert_eq!(safeckpt_torch::value::bigint_to_decimal(&b), digits);
    let neg = run(format!("L-{digits}\n.").as_bytes()).unwrap();
    let Value::BigInt(b) = neg else { panic!() };
    assert_eq!(safeckpt_torch::value::bigint_to_decimal(&b), format!("-{digits}"));
    let err = run(format!("L{digits}1L\n.").as_bytes()).unwrap_err();
    assert!(err.contains("LONG with 4301 digits"), "{err}");
    // INT takes big values too, as Python's does; both within the same limit.
    let v = run(b"I123456789012345678901234567890\n.").unwrap();
    let Value::BigInt(b) = v else { panic!() };
    assert_eq!(safeckpt_torch::value::bigint_to_decimal(&b), "123456789012345678901234567890");
    assert!(run(format!("I{digits}9\n.").as_bytes()).unwrap_err().contains("INT with 4301 digits"));
    assert_eq!(run(b"I-42\n.").unwrap(), Value::Int(-42));
    assert_eq!(run(b"I01\n.").unwrap(), Value::Bool(true));
}

#[test]
fn copies_made_by_calls_are_charged() {
    // `set(x)` of a memo-shared 1,000-item list, 30,000 times: 3e7 slots, over the 2e7 budget.
    let mut p = b"\x80\x02cbuiltins\nset\nq\x00(".to_vec();
    p.extend(std::iter::repeat_n(b"K\x01".as_slice(), 1000).flatten());
    p.extend_from_slice(b"lq\x01\x85q\x02]");
    for _ in 0..30_000 {
        p.extend_from_slice(b"h\x00h\x02R0");
    }
    p.extend_from_slice(b".");
    let err = run(&p).unwrap_err();
    assert!(err.contains("more than 20000000 values"), "{err}");
}

#[test]
fn a_device_is_refused_before_reading() {
    // `/dev/zero` would be read until memory runs out; a FIFO would block forever.
    let err = TorchArchive::open("/dev/zero").unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
    assert!(err.is_bad_input());
}

#[test]
fn every_fuzz_seed_and_regression_replays_through_the_fuzz_targets() {
    // The committed seeds and the inputs the fuzzers once found, through the very bodies the fuzz
    // targets run (a panic here is a crash there).
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut replayed = 0;
    for (dir, body) in [
        ("fuzz/seeds/pickle", safeckpt_torch::fuzzing::pickle as fn(&[u8])),
        ("fuzz/seeds/torch_archive", safeckpt_torch::fuzzing::torch_archive),
        ("fixtures/fuzz-regressions", safeckpt_torch::fuzzing::pickle),
    ] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            body(&std::fs::read(&p).unwrap());
            replayed += 1;
        }
    }
    assert!(replayed >= 23, "{replayed} inputs replayed");
}
