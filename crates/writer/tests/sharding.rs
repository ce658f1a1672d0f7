//! Sharded output.

use safeckpt_format::{Dtype, ShardIndex};
use safeckpt_reader::ShardedReader;
use safeckpt_writer::{WriteError, WriteOptions, write_sharded};

use crate::common::{T, listing, sources};

fn model() -> Vec<T> {
    (0..10)
        .map(|i| T { name: format!("layers.{i}.weight"), dtype: Dtype::F32, shape: vec![25], data: vec![i as u8; 100] })
        .collect()
}

#[test]
fn shards_and_index_read_back_as_one_set() {
    let tensors = model();
    let dir = tempfile::tempdir().unwrap();
    let meta = safeckpt_format::Metadata::from([("format".to_string(), "pt".to_string())]);
    let s =
        write_sharded(dir.path(), "model", &sources(&tensors), Some(meta), 300, &WriteOptions::new(), &|_| {}).unwrap();
    assert_eq!(s.shards.len(), 4);
    let index_path = s.index.unwrap();
    assert!(index_path.ends_with("model.safetensors.index.json"));
    assert_eq!(
        listing(dir.path()),
        [
            "model-00001-of-00004.safetensors",
            "model-00002-of-00004.safetensors",
            "model-00003-of-00004.safetensors",
            "model-00004-of-00004.safetensors",
            "model.safetensors.index.json"
        ]
    );
    let index = ShardIndex::parse(&std::fs::read(&index_path).unwrap()).unwrap();
    assert_eq!(index.total_size(), Some(1000));
    assert_eq!(index.weight_map["layers.3.weight"], "model-00002-of-00004.safetensors");
    let set = ShardedReader::open(&index_path).unwrap();
    assert_eq!(set.len(), 10);
    for t in &tensors {
        assert_eq!(set.tensor(&t.name).unwrap().data(), &t.data[..]);
    }
    for shard in set.shards() {
        assert_eq!(shard.metadata().unwrap()["format"], "pt");
    }
    assert!(set.verify().unwrap().iter().all(|r| r.is_ok()));
}

#[test]
fn one_shard_means_one_plain_file() {
    let tensors = model();
    let dir = tempfile::tempdir().unwrap();
    let s = write_sharded(
        dir.path(),
        "model",
        &sources(&tensors),
        None,
        1 << 30,
        &WriteOptions::new().fsync(false),
        &|_| {},
    )
    .unwrap();
    assert!(s.index.is_none());
    assert_eq!(listing(dir.path()), ["model.safetensors"]);
}

#[test]
fn refuses_zero_size_and_existing_index_without_overwrite() {
    let tensors = model();
    let dir = tempfile::tempdir().unwrap();
    let e = write_sharded(dir.path(), "model", &sources(&tensors), None, 0, &WriteOptions::new(), &|_| {}).unwrap_err();
    assert!(matches!(e, WriteError::Invalid(_)));
    write_sharded(dir.path(), "model", &sources(&tensors), None, 300, &WriteOptions::new().fsync(false), &|_| {})
        .unwrap();
    let e = write_sharded(
        dir.path(),
        "model",
        &sources(&tensors),
        None,
        300,
        &WriteOptions::new().overwrite(false),
        &|_| {},
    )
    .unwrap_err();
    assert!(matches!(e, WriteError::Exists { .. }));
}
