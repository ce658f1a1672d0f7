//! Sharded sets: one namespace, and every inconsistency named.

use std::path::Path;

use safeckpt_format::Dtype;
use safeckpt_reader::{ReadError, ShardedReader};

use crate::common::write;

fn shard(dir: &Path, file: &str, names: &[&str]) {
    let tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> =
        names.iter().map(|n| (*n, Dtype::U8, vec![2], n.as_bytes()[..2.min(n.len())].to_vec())).collect();
    let tensors: Vec<_> = tensors.into_iter().map(|(n, d, _, b)| (n, d, vec![b.len()], b)).collect();
    write(&dir.join(file), &tensors, None);
}

fn index(dir: &Path, entries: &[(&str, &str)]) -> std::path::PathBuf {
    let map: serde_json::Map<String, serde_json::Value> =
        entries.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect();
    let doc = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    let p = dir.join("model.safetensors.index.json");
    std::fs::write(&p, doc.to_string()).unwrap();
    p
}

fn index_error(p: &Path) -> String {
    match ShardedReader::open(p) {
        Err(ReadError::Index { reason, .. }) => reason,
        other => panic!("expected an index error, got {other:?}"),
    }
}

#[test]
fn one_namespace_over_all_shards() {
    let d = tempfile::tempdir().unwrap();
    shard(d.path(), "a.safetensors", &["x1", "x2"]);
    shard(d.path(), "b.safetensors", &["y1"]);
    let p = index(d.path(), &[("x1", "a.safetensors"), ("x2", "a.safetensors"), ("y1", "b.safetensors")]);
    let set = ShardedReader::open(&p).unwrap();
    assert_eq!(set.len(), 3);
    assert_eq!(set.names(), ["x1", "x2", "y1"]);
    assert_eq!(set.tensor("y1").unwrap().data(), b"y1");
    assert_eq!(set.shards().len(), 2);
    assert!(set.shard_of("x2").unwrap().path().ends_with("a.safetensors"));
    assert!(matches!(set.tensor("zz"), Err(ReadError::TensorNotFound { .. })));
    assert!(set.verify().unwrap().iter().all(|r| r.is_ok() && r.has_checksums));
}

#[test]
fn a_name_in_two_shards_names_both() {
    let d = tempfile::tempdir().unwrap();
    shard(d.path(), "a.safetensors", &["x1", "dup"]);
    shard(d.path(), "b.safetensors", &["dup"]);
    let p = index(d.path(), &[("x1", "a.safetensors"), ("dup", "b.safetensors")]);
    let e = index_error(&p);
    assert!(e.contains("`dup`") && e.contains("a.safetensors") && e.contains("b.safetensors"), "{e}");
}

#[test]
fn a_missing_shard_names_it_and_a_tensor() {
    let d = tempfile::tempdir().unwrap();
    shard(d.path(), "a.safetensors", &["x1"]);
    let p = index(d.path(), &[("x1", "a.safetensors"), ("gone", "b.safetensors")]);
    let e = index_error(&p);
    assert!(e.contains("b.safetensors") && e.contains("`gone`"), "{e}");
}

#[test]
fn an_entry_pointing_at_an_absent_tensor_names_both() {
    let d = tempfile::tempdir().unwrap();
    shard(d.path(), "a.safetensors", &["x1"]);
    let p = index(d.path(), &[("x1", "a.safetensors"), ("ghost", "a.safetensors")]);
    let e = index_error(&p);
    assert!(e.contains("`ghost`") && e.contains("a.safetensors"), "{e}");
}

#[test]
fn an_unlisted_tensor_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    shard(d.path(), "a.safetensors", &["x1", "extra"]);
    let p = index(d.path(), &[("x1", "a.safetensors")]);
    let e = index_error(&p);
    assert!(e.contains("`extra`") && e.contains("does not list"), "{e}");
}

#[test]
fn shard_names_that_are_not_plain_file_names_are_refused() {
    let outer = tempfile::tempdir().unwrap();
    let d = outer.path().join("set");
    std::fs::create_dir(&d).unwrap();
    shard(outer.path(), "secret.safetensors", &["s"]);
    std::fs::create_dir(d.join("sub")).unwrap();
    shard(&d.join("sub"), "inner.safetensors", &["s"]);
    for target in [
        "../secret.safetensors",
        "/etc/passwd",
        "sub/../../secret.safetensors",
        "sub/inner.safetensors",
        "..",
        "sub\\inner.safetensors",
    ] {
        let p = index(&d, &[("s", target)]);
        let e = index_error(&p);
        assert!(e.contains("points at"), "{target}: {e}");
    }
}

/// `huggingface_hub` and candle's `hf-hub` download into `models--<org>--<name>/`: the files are
/// `blobs/<sha256>`, and `snapshots/<revision>/` holds symbolic links to them under their real
/// names (`../../blobs/<sha256>`). Builds that layout from `files` (name, bytes); returns the
/// snapshot directory.
fn hub_cache(root: &Path, files: &[(&str, Vec<u8>)]) -> std::path::PathBuf {
    use sha2::Digest;
    let repo = root.join("hub/models--org--model");
    let snapshot = repo.join("snapshots/0123456789abcdef0123456789abcdef01234567");
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123456789abcdef0123456789abcdef01234567").unwrap();
    for (name, bytes) in files {
        let hash = format!("{:x}", sha2::Sha256::digest(bytes));
        std::fs::write(repo.join("blobs").join(&hash), bytes).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/{hash}"), snapshot.join(name)).unwrap();
    }
    snapshot
}

#[test]
fn the_huggingface_hub_cache_layout_opens() {
    let src = tempfile::tempdir().unwrap();
    shard(src.path(), "model-00001-of-00002.safetensors", &["x1", "x2"]);
    shard(src.path(), "model-00002-of-00002.safetensors", &["y1"]);
    let idx = index(
        src.path(),
        &[
            ("x1", "model-00001-of-00002.safetensors"),
            ("x2", "model-00001-of-00002.safetensors"),
            ("y1", "model-00002-of-00002.safetensors"),
        ],
    );
    let read = |n: &str| std::fs::read(src.path().join(n)).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let snap = hub_cache(
        cache.path(),
        &[
            ("model-00001-of-00002.safetensors", read("model-00001-of-00002.safetensors")),
            ("model-00002-of-00002.safetensors", read("model-00002-of-00002.safetensors")),
            ("model.safetensors.index.json", std::fs::read(&idx).unwrap()),
            ("config.json", b"{}".to_vec()),
        ],
    );
    assert!(std::fs::symlink_metadata(snap.join("model.safetensors.index.json")).unwrap().file_type().is_symlink());
    // Through the index (itself a link), and through the snapshot directory.
    for open in [snap.join("model.safetensors.index.json"), snap.clone()] {
        let set = ShardedReader::open(&open).unwrap();
        assert_eq!(set.len(), 3, "{}", open.display());
        assert_eq!(set.get("y1").unwrap().data(), b"y1");
        assert!(set.verify().unwrap().iter().all(|r| r.is_ok()));
    }
    // A single-file snapshot.
    let one = tempfile::tempdir().unwrap();
    shard(one.path(), "model.safetensors", &["w1"]);
    let cache = tempfile::tempdir().unwrap();
    let snap =
        hub_cache(cache.path(), &[("model.safetensors", std::fs::read(one.path().join("model.safetensors")).unwrap())]);
    for open in [snap.join("model.safetensors"), snap.clone()] {
        let set = ShardedReader::open(&open).unwrap();
        assert_eq!(set.get("w1").unwrap().data(), b"w1", "{}", open.display());
    }
}

#[test]
fn a_single_file_opens_as_a_one_shard_set() {
    let d = tempfile::tempdir().unwrap();
    shard(d.path(), "only.safetensors", &["a1", "b1"]);
    let set = ShardedReader::open(d.path().join("only.safetensors")).unwrap();
    assert!(set.index().is_none());
    assert_eq!(set.len(), 2);
}

#[test]
fn a_directory_opens_as_the_checkpoint_it_holds() {
    let d = tempfile::tempdir().unwrap();
    let err = |p: &Path| ShardedReader::open(p).unwrap_err().to_string();
    assert!(err(d.path()).ends_with("is a directory with no safetensors file or index in it"), "{}", err(d.path()));
    // One file: that file.
    shard(d.path(), "model.safetensors", &["w"]);
    let set = ShardedReader::open(d.path()).unwrap();
    assert_eq!(set.names(), ["w"]);
    assert!(set.path().ends_with("model.safetensors"));
    // Several files and no index: the error names them.
    shard(d.path(), "other.safetensors", &["v"]);
    let e = err(d.path());
    assert!(e.contains("2 safetensors files and no index; name one (model.safetensors, other.safetensors)"), "{e}");
    // An index: the set, whatever else lies there.
    index(d.path(), &[("w", "model.safetensors"), ("v", "other.safetensors")]);
    let set = ShardedReader::open(d.path()).unwrap();
    assert_eq!(set.names(), ["v", "w"]);
    std::fs::write(d.path().join("b.safetensors.index.json"), "{}").unwrap();
    assert!(err(d.path()).contains("2 shard indexes"), "{}", err(d.path()));
    // A single-file reader refuses a directory plainly.
    let e = safeckpt_reader::Reader::open(d.path()).unwrap_err().to_string();
    assert!(e.ends_with("is a directory, not a safetensors file"), "{e}");
}
