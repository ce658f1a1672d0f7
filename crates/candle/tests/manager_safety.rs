//! The checkpoint manager's data-safety rules: ledger entries confined to the run directory,
//! retention that does not count damaged checkpoints, and sharded replacements that a crash
//! cannot lose.

use std::path::Path;

use safeckpt_candle::{CheckpointManager, CheckpointOptions, ManagerOptions, TrainState};
use safeckpt_writer::WriteOptions;

use crate::common::{bits, seeded_model};

fn options(keep_last: usize, max_shard_size: Option<u64>) -> ManagerOptions {
    ManagerOptions {
        keep_last,
        checkpoint: CheckpointOptions { write: WriteOptions::new().fsync(false), max_shard_size },
        ..Default::default()
    }
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn steps(m: &CheckpointManager) -> Vec<u64> {
    m.entries().iter().map(|e| e.step).collect()
}

/// Adds entries to a run's ledger as a tamperer would.
fn tamper_ledger(run: &Path, extra: &[(u64, &str)]) {
    let path = run.join("ledger.json");
    let mut ledger: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let list = ledger["checkpoints"].as_array_mut().unwrap();
    for (step, p) in extra {
        list.push(serde_json::json!({ "step": step, "epoch": 0, "path": p, "metrics": {}, "checksums": true }));
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&ledger).unwrap()).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn a_tampered_ledger_never_reaches_outside_the_run_dir() {
    let base = tempfile::tempdir().unwrap();
    let run = base.path().join("run");
    let outside = base.path().join("outside");
    let absolute = base.path().join("absolute");
    for d in [&outside, &absolute] {
        std::fs::create_dir_all(d.join("inner")).unwrap();
        std::fs::write(d.join("inner/sentinel"), b"keep me").unwrap();
    }
    std::fs::write(base.path().join("outside.safetensors"), b"keep me too").unwrap();
    let (_, _, vars) = seeded_model(1);
    let at_step_1 = bits(&vars);
    {
        let mut m = CheckpointManager::open(&run, options(1, None)).unwrap();
        m.save(&vars, None, &TrainState::new(0, 1)).unwrap();
    }
    // `sub` makes `sub/../../outside` resolve; `notes.safetensors` is a file in the run
    // directory that is not a checkpoint.
    std::fs::create_dir(run.join("sub")).unwrap();
    std::fs::write(run.join("notes.safetensors"), b"not a checkpoint").unwrap();
    let abs = absolute.to_string_lossy().into_owned();
    let tampered: Vec<(u64, &str)> = vec![
        (100, abs.as_str()),
        (101, "../outside"),
        (102, "sub/../../outside"),
        (103, "../outside.safetensors"),
        (104, "notes.safetensors"),
        // A real checkpoint's name under another step.
        (105, "ckpt-000000000001.safetensors"),
        (106, "./ckpt-000000000106"),
        (107, "ckpt-000000000107/../../outside"),
    ];
    tamper_ledger(&run, &tampered);

    let mut m = CheckpointManager::open(&run, options(1, None)).unwrap();
    assert_eq!(steps(&m), [1]);
    let mut ignored: Vec<(u64, String)> = m.ignored().iter().map(|(e, _)| (e.step, e.path.clone())).collect();
    ignored.sort();
    let expected: Vec<(u64, String)> = tampered.iter().map(|(s, p)| (*s, p.to_string())).collect();
    assert_eq!(ignored, expected);
    assert!(m.ignored().iter().all(|(_, why)| !why.is_empty()));

    // Resume reads only the real checkpoint.
    let (_, _, fresh) = seeded_model(9);
    let r = m.resume(&fresh, None).unwrap().unwrap();
    assert_eq!(r.entry.step, 1);
    assert!(r.skipped.is_empty(), "{:?}", r.skipped);
    assert_eq!(bits(&fresh), at_step_1);

    // Retention with keep_last = 1 deletes only checkpoints of the run.
    for step in 2..=4 {
        m.save(&vars, None, &TrainState::new(0, step)).unwrap();
    }
    assert_eq!(steps(&m), [4]);
    for d in [&outside, &absolute] {
        assert_eq!(std::fs::read(d.join("inner/sentinel")).unwrap(), b"keep me");
    }
    assert_eq!(std::fs::read(base.path().join("outside.safetensors")).unwrap(), b"keep me too");
    assert_eq!(files(&run), [".lock", "ckpt-000000000004.safetensors", "ledger.json", "notes.safetensors", "sub"]);
    // The rewritten ledger no longer carries them.
    drop(m);
    let m = CheckpointManager::open(&run, options(1, None)).unwrap();
    assert!(m.ignored().is_empty(), "{:?}", m.ignored());
}

#[test]
fn a_symlinked_checkpoint_is_not_followed() {
    let base = tempfile::tempdir().unwrap();
    let run = base.path().join("run");
    let outside = base.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("sentinel"), b"keep me").unwrap();
    let (_, _, vars) = seeded_model(1);
    {
        let mut m = CheckpointManager::open(&run, options(1, None)).unwrap();
        m.save(&vars, None, &TrainState::new(0, 1)).unwrap();
    }
    std::os::unix::fs::symlink(&outside, run.join("ckpt-000000000200")).unwrap();
    tamper_ledger(&run, &[(200, "ckpt-000000000200")]);
    let mut m = CheckpointManager::open(&run, options(1, None)).unwrap();
    assert_eq!(steps(&m), [1]);
    assert_eq!(m.ignored().len(), 1);
    m.save(&vars, None, &TrainState::new(0, 2)).unwrap();
    assert_eq!(std::fs::read(outside.join("sentinel")).unwrap(), b"keep me");
}

#[test]
fn retention_does_not_count_damaged_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, vars) = seeded_model(1);
    let mut m = CheckpointManager::open(dir.path(), options(2, None)).unwrap();
    let p1 = m.save(&vars, None, &TrainState::new(0, 1)).unwrap();
    let p2 = m.save(&vars, None, &TrainState::new(0, 2)).unwrap();

    // Truncated: step 2 does not count, so step 1 stays as the second good one.
    let f = std::fs::OpenOptions::new().write(true).open(&p2).unwrap();
    f.set_len(f.metadata().unwrap().len() / 2).unwrap();
    drop(f);
    let p3 = m.save(&vars, None, &TrainState::new(0, 3)).unwrap();
    assert_eq!(steps(&m), [1, 2, 3]);
    assert!(p1.exists());

    // Header overwritten.
    let mut bytes = std::fs::read(&p3).unwrap();
    bytes[8..24].copy_from_slice(b"garbage garbage ");
    std::fs::write(&p3, bytes).unwrap();
    let p4 = m.save(&vars, None, &TrainState::new(0, 4)).unwrap();
    assert_eq!(steps(&m), [1, 2, 3, 4]);

    // Integrity record damaged (the file still parses, without checksums), written with them.
    let mut bytes = std::fs::read(&p4).unwrap();
    let at = bytes.windows(18).position(|w| w == b"safeckpt.integrity").unwrap();
    bytes[at + 9] ^= 0x20;
    std::fs::write(&p4, bytes).unwrap();
    m.save(&vars, None, &TrainState::new(0, 5)).unwrap();
    assert_eq!(steps(&m), [1, 2, 3, 4, 5]);
    assert!(p1.exists());

    // A resume finds a good one, the newest.
    let (_, _, fresh) = seeded_model(9);
    assert_eq!(m.resume(&fresh, None).unwrap().unwrap().entry.step, 5);

    // Two newer good checkpoints: the damaged ones and step 1 age out.
    m.save(&vars, None, &TrainState::new(0, 6)).unwrap();
    assert_eq!(steps(&m), [5, 6]);
    assert_eq!(
        files(dir.path()),
        [".lock", "ckpt-000000000005.safetensors", "ckpt-000000000006.safetensors", "ledger.json"]
    );

    // A missing checkpoint does not count either.
    std::fs::remove_file(dir.path().join("ckpt-000000000006.safetensors")).unwrap();
    m.save(&vars, None, &TrainState::new(0, 7)).unwrap();
    assert!(dir.path().join("ckpt-000000000005.safetensors").exists());
    assert!(steps(&m).contains(&5));
}

#[test]
fn retention_does_not_count_a_damaged_sharded_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, vars) = seeded_model(1);
    let mut m = CheckpointManager::open(dir.path(), options(2, Some(4096))).unwrap();
    let index1 = m.save(&vars, None, &TrainState::new(0, 1)).unwrap();
    let index2 = m.save(&vars, None, &TrainState::new(0, 2)).unwrap();
    assert!(index2.ends_with("ckpt-000000000002"), "{index2:?}");
    // One shard of step 2 missing: step 1 stays as the second good one.
    let shard = std::fs::read_dir(&index2)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .unwrap();
    std::fs::remove_file(shard).unwrap();
    m.save(&vars, None, &TrainState::new(0, 3)).unwrap();
    assert_eq!(steps(&m), [1, 2, 3]);
    assert!(index1.is_dir());
    let (_, _, fresh) = seeded_model(9);
    assert_eq!(m.resume(&fresh, None).unwrap().unwrap().entry.step, 3);
}

/// The states a crash can leave while a sharded checkpoint replaces another of the same step.
#[test]
fn an_interrupted_sharded_replacement_is_recovered_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path();
    let (_, _, vars) = seeded_model(1);
    let at_step_2 = bits(&vars);
    {
        let mut m = CheckpointManager::open(run, options(5, Some(4096))).unwrap();
        m.save(&vars, None, &TrainState::new(0, 1)).unwrap();
        let index = m.save(&vars, None, &TrainState::new(0, 2)).unwrap();
        assert!(index.is_dir(), "{index:?}");
    }
    let final2 = run.join("ckpt-000000000002");

    // Renamed aside, the new copy not yet in: the old copy is the only one the ledger has.
    std::fs::rename(&final2, run.join(".ckpt-000000000002.old.4242")).unwrap();
    {
        let mut m = CheckpointManager::open(run, options(5, Some(4096))).unwrap();
        assert_eq!(steps(&m), [1, 2]);
        assert!(m.adopted().is_empty());
        let (_, _, fresh) = seeded_model(9);
        let r = m.resume(&fresh, None).unwrap().unwrap();
        assert_eq!((r.entry.step, r.skipped.len()), (2, 0));
        assert_eq!(bits(&fresh), at_step_2);
    }
    assert_eq!(files(run), [".lock", "ckpt-000000000001", "ckpt-000000000002", "ledger.json"]);

    // Renamed aside with the complete new copy still at its temporary name: the ledger's copy
    // comes back, the other goes.
    std::fs::rename(&final2, run.join(".ckpt-000000000002.old.4242")).unwrap();
    copy_dir(&run.join(".ckpt-000000000002.old.4242"), &run.join(".ckpt-000000000002.tmp4242"));
    {
        let m = CheckpointManager::open(run, options(5, Some(4096))).unwrap();
        assert_eq!(steps(&m), [1, 2]);
    }
    assert_eq!(files(run), [".lock", "ckpt-000000000001", "ckpt-000000000002", "ledger.json"]);

    // Exchanged, the old copy (at the temporary name) not yet removed; and a leftover of an
    // older crash next to the final one.
    copy_dir(&final2, &run.join(".ckpt-000000000002.tmp4242"));
    copy_dir(&final2, &run.join(".ckpt-000000000002.old.17"));
    {
        let m = CheckpointManager::open(run, options(5, Some(4096))).unwrap();
        assert_eq!(steps(&m), [1, 2]);
    }
    assert_eq!(files(run), [".lock", "ckpt-000000000001", "ckpt-000000000002", "ledger.json"]);

    // A complete set at its temporary name, never renamed in (not in the ledger): adopted.
    let sharded = CheckpointOptions { write: WriteOptions::new().fsync(false), max_shard_size: Some(4096) };
    safeckpt_candle::save_checkpoint(
        run.join(".ckpt-000000000003.tmp4242"),
        &vars,
        None,
        &TrainState::new(0, 3),
        &sharded,
    )
    .unwrap();
    {
        let m = CheckpointManager::open(run, options(5, Some(4096))).unwrap();
        assert_eq!(m.adopted(), ["ckpt-000000000003"]);
        assert_eq!(steps(&m), [1, 2, 3]);
    }
    let all = [".lock", "ckpt-000000000001", "ckpt-000000000002", "ckpt-000000000003", "ledger.json"];
    assert_eq!(files(run), all);

    // An incomplete set at its temporary name (no index yet): removed, nothing adopted.
    copy_dir(&run.join("ckpt-000000000001"), &run.join(".ckpt-000000000009.tmp4242"));
    std::fs::remove_file(run.join(".ckpt-000000000009.tmp4242/model.safetensors.index.json")).unwrap();
    {
        let m = CheckpointManager::open(run, options(5, Some(4096))).unwrap();
        assert!(m.adopted().is_empty());
        assert_eq!(steps(&m), [1, 2, 3]);
    }
    assert_eq!(files(run), all);
}

#[test]
fn a_sharded_checkpoint_replaced_in_place_leaves_no_leftover() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, vars) = seeded_model(1);
    let (_, _, other) = seeded_model(2);
    let mut m = CheckpointManager::open(dir.path(), options(3, Some(4096))).unwrap();
    m.save(&vars, None, &TrainState::new(0, 1)).unwrap();
    // The same step again (a run resumed from it), synchronously then in the background.
    m.save(&other, None, &TrainState::new(0, 1)).unwrap();
    assert_eq!(files(dir.path()), [".lock", "ckpt-000000000001", "ledger.json"]);
    let (_, _, back) = seeded_model(9);
    let set = safeckpt_reader::ShardedReader::open(m.path_of(&m.latest().unwrap())).unwrap();
    safeckpt_candle::load_checkpoint(&set, &back, None, true).unwrap();
    assert_eq!(bits(&back), bits(&other));
    drop(set);
    m.save_async(&vars, None, &TrainState::new(0, 1)).unwrap();
    m.wait().unwrap();
    assert_eq!(files(dir.path()), [".lock", "ckpt-000000000001", "ledger.json"]);
    let set = safeckpt_reader::ShardedReader::open(m.path_of(&m.latest().unwrap())).unwrap();
    safeckpt_candle::load_checkpoint(&set, &back, None, true).unwrap();
    assert_eq!(bits(&back), bits(&vars));
}
