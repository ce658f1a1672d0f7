//! Replacing a sharded set is atomic as a whole: at every step of the commit the directory reads
//! as the complete old checkpoint or the complete new one, never a mix.

use std::path::{Path, PathBuf};

use safeckpt_format::Dtype;
use safeckpt_reader::ShardedReader;
use safeckpt_writer::{WriteError, WriteOptions, stage_sharded, write_sharded};

use crate::common::{T, listing, sources};

/// Ten tensors of 100 bytes, every byte `generation`.
fn model(generation: u8) -> Vec<T> {
    (0..10)
        .map(|i| T {
            name: format!("layers.{i}.weight"),
            dtype: Dtype::F32,
            shape: vec![25],
            data: vec![generation.wrapping_mul(31).wrapping_add(i as u8); 100],
        })
        .collect()
}

/// How a loader picks the checkpoint in a directory that holds both an index and a single
/// `model.safetensors` (as it does for a moment when one replaces the other).
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// The index (safeckpt's reader).
    IndexFirst,
    /// `model.safetensors` (transformers' `from_pretrained`).
    SingleFirst,
}

/// Which generation the directory holds, if it reads as exactly one complete checkpoint.
fn generation_of(dir: &Path, candidates: &[u8], rule: Rule) -> Result<u8, String> {
    let index = dir.join("model.safetensors.index.json");
    let single = dir.join("model.safetensors");
    let path = match rule {
        Rule::IndexFirst if index.exists() => index,
        Rule::SingleFirst if single.exists() => single,
        _ if index.exists() => index,
        _ => single,
    };
    let set = ShardedReader::open(&path).map_err(|e| e.to_string())?;
    if !set.verify().map_err(|e| e.to_string())?.iter().all(|r| r.is_ok() && r.has_checksums) {
        return Err("does not verify".into());
    }
    for &g in candidates {
        let want = model(g);
        let all =
            set.len() == want.len() && want.iter().all(|t| set.tensor(&t.name).is_ok_and(|v| v.data() == &t.data[..]));
        if all {
            return Ok(g);
        }
    }
    Err(format!("a mix of generations: {:?}", listing(dir)))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Commits generation `new` (in shards of at most `max` bytes) over what `dir` holds (generation
/// `old`), copying the directory after every step of the commit, and checks every copy.
fn replace_step_by_step(dir: &Path, old: u8, new: u8, max: u64) -> Vec<String> {
    let snaps = tempfile::tempdir().unwrap();
    let tensors = model(new);
    let pending =
        stage_sharded(dir, "model", &sources(&tensors), None, max, &WriteOptions::new().fsync(false), &|_| {}).unwrap();
    let mut states: Vec<(String, PathBuf)> = Vec::new();
    let mut snap = |what: &str| {
        let to = snaps.path().join(states.len().to_string());
        copy_dir(dir, &to);
        states.push((what.to_string(), to));
    };
    snap("staged");
    pending.commit_observed(false, &mut snap).unwrap();
    let mut steps = Vec::new();
    for rule in [Rule::IndexFirst, Rule::SingleFirst] {
        let mut seen_new = false;
        for (k, (what, state)) in states.iter().enumerate() {
            match generation_of(state, &[old, new], rule) {
                Ok(g) if g == new => seen_new = true,
                Ok(_) => assert!(!seen_new, "{rule:?}, step {k} ({what}): back to the old set after the new one"),
                Err(e) => panic!("{rule:?}, step {k} ({what}): neither the old nor the new set: {e}"),
            }
        }
        assert!(seen_new, "{rule:?}");
        assert_eq!(generation_of(dir, &[new], rule), Ok(new));
    }
    steps.extend(states.iter().map(|(what, _)| what.clone()));
    steps
}

fn sharded(dir: &Path, generation: u8, max: u64) {
    write_sharded(dir, "model", &sources(&model(generation)), None, max, &WriteOptions::new().fsync(false), &|_| {})
        .unwrap();
}

#[test]
fn a_set_replaced_by_one_with_the_same_names_is_never_mixed() {
    let dir = tempfile::tempdir().unwrap();
    sharded(dir.path(), 1, 300);
    let steps = replace_step_by_step(dir.path(), 1, 2, 300);
    // Every shard, the index, and each old shard's removal are separate steps.
    assert_eq!(steps.len(), 1 + 4 + 1 + 4, "{steps:?}");
    // The new set took fresh names; the old files are gone.
    assert_eq!(
        listing(dir.path()),
        [
            "model-g1-00001-of-00004.safetensors",
            "model-g1-00002-of-00004.safetensors",
            "model-g1-00003-of-00004.safetensors",
            "model-g1-00004-of-00004.safetensors",
            "model.safetensors.index.json"
        ]
    );
    // The next replacement is free to use the usual names again.
    replace_step_by_step(dir.path(), 2, 3, 300);
    assert!(listing(dir.path()).contains(&"model-00001-of-00004.safetensors".to_string()));
    assert_eq!(listing(dir.path()).len(), 5);
}

#[test]
fn a_set_replaced_by_one_of_another_size_is_never_mixed() {
    let dir = tempfile::tempdir().unwrap();
    sharded(dir.path(), 1, 300);
    replace_step_by_step(dir.path(), 1, 2, 500);
    assert_eq!(
        listing(dir.path()),
        ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"]
    );
}

#[test]
fn a_single_file_and_a_set_replace_each_other_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    sharded(dir.path(), 1, 1 << 20);
    assert_eq!(listing(dir.path()), ["model.safetensors"]);
    replace_step_by_step(dir.path(), 1, 2, 300);
    assert_eq!(listing(dir.path()).len(), 5, "{:?}", listing(dir.path()));
    assert!(!dir.path().join("model.safetensors").exists());
    replace_step_by_step(dir.path(), 2, 3, 1 << 20);
    assert_eq!(listing(dir.path()), ["model.safetensors"]);
}

#[test]
fn a_leftover_of_an_interrupted_clean_up_is_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    sharded(dir.path(), 1, 300);
    // A copy of a tagged name, as a crash after a commit but before the clean-up could leave.
    std::fs::write(dir.path().join("model-g1-00003-of-00004.safetensors"), b"debris").unwrap();
    replace_step_by_step(dir.path(), 1, 2, 300);
    let names = listing(dir.path());
    assert!(names.contains(&"model-g2-00001-of-00004.safetensors".to_string()), "{names:?}");
    // The debris, a shard of the prefix that no index references, is gone too.
    assert_eq!(names.len(), 5, "{names:?}");
}

#[test]
fn an_unreadable_index_makes_every_existing_name_taken() {
    let dir = tempfile::tempdir().unwrap();
    sharded(dir.path(), 1, 300);
    std::fs::write(dir.path().join("model.safetensors.index.json"), b"{ not json").unwrap();
    let tensors = model(2);
    write_sharded(dir.path(), "model", &sources(&tensors), None, 300, &WriteOptions::new().fsync(false), &|_| {})
        .unwrap();
    assert_eq!(generation_of(dir.path(), &[2], Rule::IndexFirst), Ok(2));
    // The new set took fresh names (no index said what the old files were), and once committed,
    // the unreferenced shards of its prefix were removed.
    assert_eq!(
        listing(dir.path()),
        [
            "model-g1-00001-of-00004.safetensors",
            "model-g1-00002-of-00004.safetensors",
            "model-g1-00003-of-00004.safetensors",
            "model-g1-00004-of-00004.safetensors",
            "model.safetensors.index.json"
        ]
    );
}

#[test]
fn without_overwrite_a_shard_that_appears_undoes_the_whole_set() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = model(1);
    let opts = WriteOptions::new().fsync(false).overwrite(false);
    let pending = stage_sharded(dir.path(), "model", &sources(&tensors), None, 300, &opts, &|_| {}).unwrap();
    std::fs::write(dir.path().join("model-00003-of-00004.safetensors"), b"theirs").unwrap();
    let e = pending.commit(false).unwrap_err();
    assert!(matches!(&e, WriteError::Exists { path } if path.ends_with("model-00003-of-00004.safetensors")), "{e}");
    assert_eq!(listing(dir.path()), ["model-00003-of-00004.safetensors"]);
    assert_eq!(std::fs::read(dir.path().join("model-00003-of-00004.safetensors")).unwrap(), b"theirs");
}

#[test]
fn without_overwrite_an_index_that_appears_undoes_the_whole_set() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = model(1);
    let opts = WriteOptions::new().fsync(false).overwrite(false);
    let pending = stage_sharded(dir.path(), "model", &sources(&tensors), None, 300, &opts, &|_| {}).unwrap();
    std::fs::write(dir.path().join("model.safetensors.index.json"), b"theirs").unwrap();
    let e = pending.commit(false).unwrap_err();
    assert!(matches!(&e, WriteError::Exists { .. }), "{e}");
    assert_eq!(listing(dir.path()), ["model.safetensors.index.json"]);
}

#[test]
fn a_single_file_written_by_other_means_retires_the_set_it_replaced() {
    let dir = tempfile::tempdir().unwrap();
    sharded(dir.path(), 1, 300);
    let tensors = model(2);
    safeckpt_writer::write_file(dir.path().join("model.safetensors"), &sources(&tensors), None, &WriteOptions::new())
        .unwrap();
    assert!(safeckpt_writer::retire_replaced_set(dir.path(), "model", true).unwrap());
    assert_eq!(listing(dir.path()), ["model.safetensors"]);
    assert_eq!(generation_of(dir.path(), &[2], Rule::IndexFirst), Ok(2));
    assert!(!safeckpt_writer::retire_replaced_set(dir.path(), "model", true).unwrap());
}
