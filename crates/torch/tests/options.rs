//! Conversion options: sub-tree selection, casting, aliases, sharding, and the library views.

use std::path::{Path, PathBuf};

use half::bf16;
use safeckpt_format::Dtype;
use safeckpt_reader::{Reader, ShardedReader};
use safeckpt_torch::{CastPolicy, CastTo, ConvertOptions, TorchArchive};
use safeckpt_writer::WriteOptions;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/pytorch").join(name)
}

fn opts() -> ConvertOptions {
    ConvertOptions { write: WriteOptions::new().fsync(false), ..Default::default() }
}

#[test]
fn key_selects_a_subtree_without_its_prefix() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("m.safetensors");
    let a = TorchArchive::open(fixture("checkpoint_adam.pth")).unwrap();
    a.convert(&out, &ConvertOptions { key: Some("model_state_dict".into()), ..opts() }, &|_| {}).unwrap();
    let r = Reader::open(&out).unwrap();
    assert_eq!(r.names(), ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight", "fc3.bias", "fc3.weight"]);
    let err = a
        .convert(&d.path().join("x.safetensors"), &ConvertOptions { key: Some("nope".into()), ..opts() }, &|_| {})
        .unwrap_err();
    assert!(err.to_string().contains("model_state_dict"), "{err}");
}

#[test]
fn dtype_casts_floating_tensors_only() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("bf16.safetensors");
    let a = TorchArchive::open(fixture("dtypes.pth")).unwrap();
    let bf16_all = CastPolicy::new(CastTo::BF16, &[], &[]).unwrap();
    let s = a.convert(&out, &ConvertOptions { cast: Some(bf16_all), ..opts() }, &|_| {}).unwrap();
    assert_eq!(s.cast, 3, "f32, f16 and f64 become bf16");
    let r = Reader::open(&out).unwrap();
    for (name, want) in [
        ("f32", Dtype::BF16),
        ("f16", Dtype::BF16),
        ("f64", Dtype::BF16),
        ("bf16", Dtype::BF16),
        ("i64", Dtype::I64),
        ("f8_e4m3", Dtype::F8_E4M3),
        ("c64", Dtype::C64),
    ] {
        assert_eq!(r.tensor(name).unwrap().dtype(), want, "{name}");
    }
    // Values round-trip through the cast like torch's `.to(torch.bfloat16)`.
    let orig = a.tensors(None).unwrap().into_iter().find(|(n, _)| n == "f32").unwrap().1;
    let f: Vec<f32> = orig.data.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    let b: &[bf16] = r.tensor("f32").unwrap().as_slice().unwrap();
    assert_eq!(b, f.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>());
}

/// A training checkpoint cast to bf16: the weights are, the optimizer's moments and its float
/// step counters (which bf16 cannot count past 256) are not.
#[test]
fn dtype_leaves_optimizer_state_alone() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("bf16.safetensors");
    let a = TorchArchive::open(fixture("checkpoint_adam.pth")).unwrap();
    let policy = CastPolicy::new(CastTo::BF16, &[], &[]).unwrap();
    let s = a.convert(&out, &ConvertOptions { cast: Some(policy), ..opts() }, &|_| {}).unwrap();
    let r = Reader::open(&out).unwrap();
    let mut seen = (0, 0);
    for t in r.tensors() {
        if t.name().starts_with("model_state_dict.") {
            assert_eq!(t.dtype(), Dtype::BF16, "{}", t.name());
            seen.0 += 1;
        } else {
            assert!(t.name().starts_with("optimizer_state_dict."), "{}", t.name());
            assert_eq!(t.dtype(), Dtype::F32, "{}", t.name());
            seen.1 += 1;
        }
    }
    assert_eq!(seen, (6, 18));
    assert_eq!(s.cast, 6);
}

#[test]
fn aliases_or_copies() {
    let d = tempfile::tempdir().unwrap();
    let a = TorchArchive::open(fixture("tied.pth")).unwrap();
    let s = a.convert(&d.path().join("a.safetensors"), &opts(), &|_| {}).unwrap();
    assert_eq!(s.aliases, vec![("lm_head.weight".to_string(), "embed.weight".to_string())]);
    let r = Reader::open(d.path().join("a.safetensors")).unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(r.metadata().unwrap()["lm_head.weight"], "embed.weight");
    a.convert(&d.path().join("b.safetensors"), &ConvertOptions { keep_aliases: true, ..opts() }, &|_| {}).unwrap();
    let r = Reader::open(d.path().join("b.safetensors")).unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!(r.tensor("lm_head.weight").unwrap().data(), r.tensor("embed.weight").unwrap().data());
}

#[test]
fn sharded_output_reads_as_one_set() {
    let d = tempfile::tempdir().unwrap();
    let a = TorchArchive::open(fixture("pytorch_model.bin")).unwrap();
    let s =
        a.convert(&d.path().join("out"), &ConvertOptions { max_shard_size: Some(8 << 10), ..opts() }, &|_| {}).unwrap();
    assert!(s.outputs.len() > 1);
    let set = ShardedReader::open(s.index.unwrap()).unwrap();
    assert_eq!(set.len(), 19);
    for (name, t) in a.tensors(None).unwrap() {
        assert_eq!(set.tensor(&name).unwrap().data(), &t.data[..], "{name}");
    }
    assert!(set.verify().unwrap().iter().all(|r| r.is_ok()));
    // When everything fits one shard: one file and no index, as `save_pretrained` writes.
    let one = d.path().join("one");
    let s = a.convert(&one, &ConvertOptions { max_shard_size: Some(1 << 30), ..opts() }, &|_| {}).unwrap();
    assert_eq!((s.outputs.as_slice(), s.index), ([one.join("model.safetensors")].as_slice(), None));
    assert!(!one.join("model.safetensors.index.json").exists());
    assert_eq!(ShardedReader::open(&one).unwrap().len(), 19);
    // A single file over an existing set: refused without overwrite (the set would stay what
    // readers open); with it, the set is retired after the file is committed.
    let set = d.path().join("out");
    let small = ConvertOptions { max_shard_size: Some(1 << 30), ..opts() };
    let err = a
        .convert(
            &set,
            &ConvertOptions { write: WriteOptions::new().fsync(false).overwrite(false), ..small.clone() },
            &|_| {},
        )
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    assert!(set.join("model.safetensors.index.json").exists());
    let s = a
        .convert(&set, &ConvertOptions { write: WriteOptions::new().fsync(false).overwrite(true), ..small }, &|_| {})
        .unwrap();
    assert_eq!(s.index, None);
    let left: Vec<String> =
        std::fs::read_dir(&set).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left, ["model.safetensors"]);
    assert_eq!(ShardedReader::open(&set).unwrap().len(), 19);
}

#[test]
fn views_borrow_the_map_when_contiguous() {
    let a = TorchArchive::open(fixture("views.pth")).unwrap();
    let tensors = a.tensors(None).unwrap();
    let whole = &tensors.iter().find(|(n, _)| n == "whole").unwrap().1;
    assert!(matches!(whole.data, std::borrow::Cow::Borrowed(_)));
    let transposed = &tensors.iter().find(|(n, _)| n == "transposed").unwrap().1;
    assert!(matches!(transposed.data, std::borrow::Cow::Owned(_)));
    assert_eq!(transposed.shape, [12, 10]);
    let values = TorchArchive::open(fixture("checkpoint_adam.pth")).unwrap().values(None).unwrap();
    assert!(values.iter().any(|(k, v)| k == "epoch" && v == "10"));
}

#[test]
fn refuses_to_overwrite_unless_asked() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("x.safetensors");
    std::fs::write(&out, b"keep me").unwrap();
    let a = TorchArchive::open(fixture("state_dict_mlp.pth")).unwrap();
    let err = a
        .convert(&out, &ConvertOptions { write: WriteOptions::new().overwrite(false), ..Default::default() }, &|_| {})
        .unwrap_err();
    assert!(err.to_string().contains("already exists"));
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
}
