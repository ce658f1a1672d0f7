//! Files we write, read by Python's reference `safetensors` package.
//!
//! Needs `python3` with `safetensors` and `numpy` (CI installs them and sets
//! `SAFECKPT_REQUIRE_PYTHON=1`, which turns a missing interpreter into a failure).

use std::process::Command;

use safeckpt_format::{Dtype, Metadata};
use safeckpt_writer::{WriteOptions, write_file};
use sha2::{Digest, Sha256};

use crate::common::{T, sources};

const CHECK: &str = r#"
import hashlib, json, sys
import numpy as np
import safetensors
from safetensors import safe_open
path, expected = sys.argv[1], json.loads(sys.argv[2])
raw = open(path, "rb").read()
got = {name: t for name, t in safetensors.deserialize(raw)}
assert sorted(got) == sorted(expected["tensors"]), (sorted(got), sorted(expected["tensors"]))
for name, want in expected["tensors"].items():
    t = got[name]
    assert t["dtype"].upper() == want["dtype"], (name, t["dtype"])
    assert list(t["shape"]) == want["shape"], (name, t["shape"])
    assert hashlib.sha256(bytes(t["data"])).hexdigest() == want["sha256"], name
with safe_open(path, framework="numpy") as f:
    meta = f.metadata()
    for k, v in expected["metadata"].items():
        assert meta[k] == v, (k, meta.get(k))
    for name, want in expected["tensors"].items():
        if want["dtype"] in ("F32", "F64", "I64", "U8", "I16", "F16", "BOOL"):
            arr = f.get_tensor(name)
            assert list(arr.shape) == want["shape"], name
            assert hashlib.sha256(arr.tobytes()).hexdigest() == want["sha256"], name
print("python ok", len(got))
"#;

fn python_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import safetensors, numpy"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok && std::env::var_os("SAFECKPT_REQUIRE_PYTHON").is_some() {
        panic!("SAFECKPT_REQUIRE_PYTHON is set but python3 with safetensors and numpy is not available");
    }
    ok
}

#[test]
fn python_reads_our_files_identically() {
    if !python_available() {
        // Past the harness's capture, so that a plain `cargo test` shows it.
        use std::io::Write;
        let _ = std::io::stderr().write_all(
            b"SKIPPED (python3 with safetensors and numpy not found; CI installs them): python_reads_our_files_identically\n",
        );
        return;
    }
    let tensors: Vec<T> = [
        ("f32", Dtype::F32, vec![3, 4]),
        ("bf16", Dtype::BF16, vec![2, 3]),
        ("f16", Dtype::F16, vec![5]),
        ("f8", Dtype::F8_E4M3, vec![7]),
        ("f8e5", Dtype::F8_E5M2, vec![2]),
        ("c64", Dtype::C64, vec![2]),
        ("i64", Dtype::I64, vec![2, 2]),
        ("u8", Dtype::U8, vec![3]),
        ("i16", Dtype::I16, vec![3]),
        ("bool", Dtype::BOOL, vec![4]),
        ("f64", Dtype::F64, vec![]),
        ("empty", Dtype::F32, vec![0, 2]),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (n, d, s))| {
        let len = d.byte_len(s.iter().product()).unwrap();
        let data = (0..len).map(|b| if d == Dtype::BOOL { (b % 2) as u8 } else { (b * 31 + i) as u8 }).collect();
        T { name: n.to_string(), dtype: d, shape: s, data }
    })
    .collect();
    let meta: Metadata = [("format", "pt"), ("epoch", "3"), ("note", "é \" \\ \n")]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ours.safetensors");
    write_file(&path, &sources(&tensors), Some(meta.clone()), &WriteOptions::default()).unwrap();
    let expected = serde_json::json!({
        "tensors": tensors.iter().map(|t| (t.name.clone(), serde_json::json!({
            "dtype": t.dtype.as_str(), "shape": t.shape,
            "sha256": Sha256::digest(&t.data).iter().map(|b| format!("{b:02x}")).collect::<String>(),
        }))).collect::<serde_json::Map<_, _>>(),
        "metadata": meta,
    });
    let out = Command::new("python3").args(["-c", CHECK]).arg(&path).arg(expected.to_string()).output().unwrap();
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
