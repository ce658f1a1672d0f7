//! Files written by Python's `safetensors` read identically.

use sha2::{Digest, Sha256};

use safeckpt_reader::Reader;

use crate::common::fixtures;

fn check(file: &str, expected: &serde_json::Value) {
    let r = Reader::open(fixtures().join("interop").join(file)).unwrap();
    let want = expected.as_object().unwrap();
    assert_eq!(r.len(), want.len(), "{file}");
    for (name, w) in want {
        let t = r.tensor(name).unwrap();
        assert_eq!(t.dtype().as_str(), w["dtype"].as_str().unwrap(), "{name}");
        let shape: Vec<usize> = w["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        assert_eq!(t.shape(), &shape[..], "{name}");
        assert_eq!(hex(&Sha256::digest(t.data())), w["sha256"].as_str().unwrap(), "{name}");
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn python_written_files_read_identically() {
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("interop/expected.json")).unwrap()).unwrap();
    check("python_all_dtypes.safetensors", &expected["tensors"]);
    check("python_numpy.safetensors", &expected["numpy"]);
    let r = Reader::open(fixtures().join("interop/python_all_dtypes.safetensors")).unwrap();
    let meta = r.metadata().unwrap();
    for (k, v) in expected["metadata"].as_object().unwrap() {
        assert_eq!(meta.get(k).map(String::as_str), v.as_str(), "{k}");
    }
    let bf: &[half::bf16] = r.tensor("layers.0.attn.q_proj.weight").unwrap().as_slice().unwrap();
    assert_eq!(bf.len(), 16);
}
