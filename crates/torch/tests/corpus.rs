//! Every file of both PyTorch corpora (`fixtures/pytorch`, made by torch 2.15, and
//! `fixtures/pytorch/extra`, made by `make_extra.py`) converts to exactly what its manifest says,
//! or is refused with the error its manifest names, leaving no output and running no code.

use std::path::{Path, PathBuf};

use safeckpt_reader::Reader;
use safeckpt_torch::{ConvertOptions, TorchArchive};
use safeckpt_writer::WriteOptions;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/pytorch")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// JSON equality with a relative tolerance on floats (and NaN equal to NaN).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                return x == y;
            }
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
                _ => x.to_string() == y.to_string(),
            }
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// Parses JSON as Python's `json` does (NaN, Infinity), mapping those to strings for comparison.
fn parse_pythonish(s: &str) -> Value {
    let t = s.replace("-Infinity", "\"-inf\"").replace("Infinity", "\"inf\"").replace("NaN", "\"nan\"");
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("metadata value is not JSON: {s}: {e}"))
}

pub(crate) fn check_corpus(dir: &Path) -> usize {
    let manifest = parse_pythonish(&std::fs::read_to_string(dir.join("manifest.json")).unwrap());
    let files = manifest["files"].as_object().unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for (name, want) in files {
        let src = dir.join(name);
        let out = work.path().join(format!("{name}.safetensors"));
        let opts = ConvertOptions { write: WriteOptions::new().fsync(false), ..Default::default() };
        let result = TorchArchive::open(&src).and_then(|a| a.convert(&out, &opts, &|_| {}));
        if want["expect"] == "reject" {
            let err = result.expect_err(name);
            assert!(err.is_bad_input(), "{name}: {err}");
            let msg = err.to_string();
            assert!(msg.contains(name.as_str()), "{name}: message does not name the file: {msg}");
            if let Some(e) = want.get("error").and_then(Value::as_str) {
                assert!(msg.contains(e), "{name}: expected `{e}` in `{msg}`");
            }
            assert!(!out.exists(), "{name}: output left behind");
            let left: Vec<String> = std::fs::read_dir(work.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|f| f.contains(name.as_str()))
                .collect();
            assert!(left.is_empty(), "{name}: files left behind: {left:?}");
            checked += 1;
            continue;
        }
        result.unwrap_or_else(|e| panic!("{name}: {e}"));
        let r = Reader::open(&out).unwrap();
        assert!(r.verify().unwrap().is_ok(), "{name}: output does not verify");
        let meta = r.metadata().cloned().unwrap_or_default();
        assert_eq!(meta.get("format").map(String::as_str), Some("pt"), "{name}");
        let aliases = want["aliases"].as_object().cloned().unwrap_or_default();
        for (tname, t) in want["tensors"].as_object().unwrap() {
            if let Some(v) = r.get(tname) {
                assert_eq!(v.dtype().as_str(), t["dtype"], "{name}: {tname}");
                let shape: Vec<usize> =
                    t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
                assert_eq!(v.shape(), &shape[..], "{name}: {tname}");
                assert_eq!(hex(&Sha256::digest(v.data())), t["sha256"], "{name}: {tname} bytes differ");
            } else {
                let kept = meta.get(tname).unwrap_or_else(|| panic!("{name}: tensor {tname} missing and not an alias"));
                assert!(r.get(kept).is_some(), "{name}: alias {tname} -> {kept} points nowhere");
                assert_eq!(
                    aliases.get(tname),
                    aliases.get(kept),
                    "{name}: {tname} and {kept} are not the same storage"
                );
            }
        }
        for (k, v) in want["metadata"].as_object().unwrap() {
            let got = meta.get(k).unwrap_or_else(|| panic!("{name}: metadata {k} missing"));
            let want_v = parse_pythonish(&v.to_string());
            let got_v = parse_pythonish(got);
            assert!(same_json(&got_v, &want_v), "{name}: metadata {k}: got {got}, want {v}");
        }
        checked += 1;
    }
    checked
}

#[test]
fn torch_made_corpus() {
    assert_eq!(check_corpus(&fixtures()), 10);
}

#[test]
fn extra_corpus() {
    assert!(check_corpus(&fixtures().join("extra")) >= 50);
}

#[test]
fn malicious_files_never_run_code() {
    // The canaries their code would create, in the directory the process runs in.
    let manifest = parse_pythonish(&std::fs::read_to_string(fixtures().join("extra/manifest.json")).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let prev = std::env::current_dir().unwrap();
    let mut n = 0;
    for (name, want) in manifest["files"].as_object().unwrap() {
        let Some(canary) = want.get("canary").and_then(Value::as_str) else { continue };
        let err = TorchArchive::open(fixtures().join("extra").join(name)).unwrap_err();
        assert!(err.is_bad_input(), "{name}");
        assert!(!prev.join(canary).exists() && !dir.path().join(canary).exists(), "{name} ran code");
        n += 1;
    }
    assert!(n >= 19, "{n} malicious files");
}

#[test]
fn fuzz_regressions_stay_fixed() {
    use safeckpt_torch::globals::TorchDtype;
    use safeckpt_torch::pickle::{Limits, StorageResolver, unpickle};
    use safeckpt_torch::value::Arena;

    struct NoStorage;
    impl StorageResolver for NoStorage {
        fn persistent_load(&mut self, _: &safeckpt_torch::value::Value, _: &Arena) -> Result<u32, String> {
            Err("none".into())
        }
        fn storage_bytes(&self, _: u32) -> u64 {
            0
        }
        fn storage_dtype(&self, _: u32) -> TorchDtype {
            TorchDtype::UInt8
        }
    }
    // A 510-byte pickle whose doubling tuples made the flattener allocate without bound while
    // walking (found by the `pickle` fuzz target): now refused as a memo bomb.
    let data = std::fs::read(fixtures().join("../fuzz-regressions/pickle-memo-bomb-tuples.pkl")).unwrap();
    let mut arena = Arena::default();
    let (root, _) = unpickle(&data, &mut arena, &mut NoStorage, Limits::default()).unwrap();
    let err = safeckpt_torch::flatten::flatten(&arena, &root, None).unwrap_err();
    assert!(err.contains("memo bomb"), "{err}");

    // A 521-byte pickle whose doubling tuples share 138-byte integers: each was printed in decimal
    // again at every visit (seconds per input). Now printed once, and the JSON it would make is
    // refused by size.
    let data = std::fs::read(fixtures().join("../fuzz-regressions/pickle-shared-bigints.pkl")).unwrap();
    let mut arena = Arena::default();
    let outcome = unpickle(&data, &mut arena, &mut NoStorage, Limits::default())
        .map_err(|e| e.to_string())
        .and_then(|(root, _)| safeckpt_torch::flatten::flatten(&arena, &root, None).map(|f| f.metadata.len()));
    let err = outcome.unwrap_err();
    assert!(err.contains("bytes of JSON metadata"), "{err}");
}
