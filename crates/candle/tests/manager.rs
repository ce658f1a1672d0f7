//! The checkpoint manager: retention, ledger, lock, adoption, fallback on damage, async saves.

use candle_core::{Device, Tensor};
use safeckpt_candle::optim::{AdamW, ParamsAdamW, StatefulOptimizer};
use safeckpt_candle::{CandleError, CheckpointManager, CheckpointOptions, KeepBest, ManagerOptions, Mode, TrainState};
use safeckpt_writer::WriteOptions;

use crate::common::{bits, seeded_model, train_step};

fn options(keep_last: usize, keep_best: Option<KeepBest>) -> ManagerOptions {
    ManagerOptions {
        keep_last,
        keep_best,
        checkpoint: CheckpointOptions { write: WriteOptions::new().fsync(false), max_shard_size: None },
        ..Default::default()
    }
}

fn files(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn keeps_the_last_k_and_the_best() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, vars) = seeded_model(1);
    let best = KeepBest { metric: "val_loss".into(), mode: Mode::Min, keep: 1 };
    let mut m = CheckpointManager::open(dir.path(), options(2, Some(best))).unwrap();
    for (step, loss) in [(10, 0.5), (20, 0.2), (30, 0.4), (40, 0.3), (50, 0.6)] {
        m.save(&vars, None, &TrainState::new(step / 10, step).with_metric("val_loss", loss)).unwrap();
    }
    let steps: Vec<u64> = m.entries().iter().map(|e| e.step).collect();
    assert_eq!(steps, [20, 40, 50]);
    assert_eq!(m.latest().unwrap().step, 50);
    assert_eq!(m.best().unwrap().step, 20);
    assert_eq!(
        files(dir.path()),
        [
            ".lock",
            "ckpt-000000000020.safetensors",
            "ckpt-000000000040.safetensors",
            "ckpt-000000000050.safetensors",
            "ledger.json"
        ]
    );
    assert!(m.should_save(7, true));
    assert!(!m.should_save(7, false));
}

#[test]
fn a_second_writer_is_refused_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let _a = CheckpointManager::open(dir.path(), options(1, None)).unwrap();
    let err = CheckpointManager::open(dir.path(), options(1, None)).unwrap_err();
    let CandleError::Locked { holder, .. } = &err else { panic!("{err}") };
    assert!(holder.contains(&format!("pid {}", std::process::id())), "{holder}");
}

#[test]
fn reopening_cleans_leftovers_and_adopts_committed_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, vars) = seeded_model(1);
    {
        let mut m = CheckpointManager::open(dir.path(), options(3, None)).unwrap();
        m.save(&vars, None, &TrainState::new(1, 10)).unwrap();
    }
    // A crash left a temporary file, and committed step 20 without its ledger entry.
    std::fs::write(dir.path().join(".ckpt-000000000030.safetensors.safeckpt-tmp.1.0"), b"partial").unwrap();
    let opts = CheckpointOptions { write: WriteOptions::new().fsync(false), max_shard_size: None };
    safeckpt_candle::save_checkpoint(
        dir.path().join("ckpt-000000000020.safetensors"),
        &vars,
        None,
        &TrainState::new(2, 20),
        &opts,
    )
    .unwrap();
    let m = CheckpointManager::open(dir.path(), options(3, None)).unwrap();
    assert_eq!(m.adopted(), ["ckpt-000000000020.safetensors"]);
    assert_eq!(m.latest().unwrap().step, 20);
    assert!(!files(dir.path()).iter().any(|f| f.contains("tmp")));
}

#[test]
fn resume_skips_a_damaged_newest_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mlp, vars) = seeded_model(1);
    let mut opt = AdamW::new_named(vars.clone(), ParamsAdamW::adam(1e-3)).unwrap();
    let mut m = CheckpointManager::open(dir.path(), options(3, None)).unwrap();
    train_step(&mlp, &mut opt, 0);
    m.save(&vars, Some(&opt), &TrainState::new(0, 1)).unwrap();
    let at_step_1 = bits(&vars);
    train_step(&mlp, &mut opt, 1);
    let p2 = m.save(&vars, Some(&opt), &TrainState::new(0, 2)).unwrap();
    let mut bytes = std::fs::read(&p2).unwrap();
    let n = bytes.len();
    bytes[n - 7] ^= 0x40;
    std::fs::write(&p2, bytes).unwrap();
    let (_, _, fresh) = seeded_model(9);
    let mut opt2 = AdamW::new_named(fresh.clone(), ParamsAdamW::adam(1e-3)).unwrap();
    let r = m.resume(&fresh, Some(&mut opt2)).unwrap().unwrap();
    assert_eq!(r.entry.step, 1);
    assert_eq!(r.skipped.len(), 1);
    assert!(r.skipped[0].1.contains("checksum mismatch"), "{:?}", r.skipped);
    assert_eq!(bits(&fresh), at_step_1);
}

#[test]
fn resume_skips_a_checkpoint_whose_integrity_record_was_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, vars) = seeded_model(1);
    let mut m = CheckpointManager::open(dir.path(), options(3, None)).unwrap();
    m.save(&vars, None, &TrainState::new(0, 1)).unwrap();
    let at_step_1 = bits(&vars);
    let p2 = m.save(&vars, None, &TrainState::new(0, 2)).unwrap();
    assert!(m.entries().iter().all(|e| e.checksums));
    // One flipped bit in the record's key: the file still parses, as one without checksums.
    let mut bytes = std::fs::read(&p2).unwrap();
    let at = bytes.windows(18).position(|w| w == b"safeckpt.integrity").unwrap();
    bytes[at + 9] ^= 0x20;
    std::fs::write(&p2, bytes).unwrap();
    let report = safeckpt_reader::Reader::open(&p2).unwrap().verify().unwrap();
    assert!(report.is_ok() && !report.has_checksums);
    let (_, _, fresh) = seeded_model(9);
    let r = m.resume(&fresh, None).unwrap().unwrap();
    assert_eq!(r.entry.step, 1);
    assert!(r.skipped[0].1.contains("no integrity record"), "{:?}", r.skipped);
    assert_eq!(bits(&fresh), at_step_1);
}

#[test]
fn async_saves_fence_the_next_step_and_report_errors_later() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, vars) = seeded_model(1);
    let mut opt = AdamW::new_named(vars.clone(), ParamsAdamW::adam(1e-3)).unwrap();
    let mut m = CheckpointManager::open(dir.path(), options(5, None)).unwrap();
    opt.set_fence(Some(m.fence()));
    let saved = bits(&vars);
    m.save_async(&vars, Some(&opt), &TrainState::new(0, 1)).unwrap();
    // Once the fence opens, the snapshot is taken: changing a variable no longer affects it.
    m.fence().wait();
    vars[0].1.set(&Tensor::zeros(vars[0].1.dims(), candle_core::DType::F32, &Device::Cpu).unwrap()).unwrap();
    m.wait().unwrap();
    let entry = m.latest().unwrap();
    assert_eq!(entry.step, 1);
    let (_, _, back) = seeded_model(5);
    let set = safeckpt_reader::ShardedReader::open(m.path_of(&entry)).unwrap();
    safeckpt_candle::load_checkpoint(&set, &back, None, true).unwrap();
    assert_eq!(bits(&back), saved);

    // A save that cannot be committed (a directory sits where the file must go) fails in the
    // background; the error surfaces on `wait` and the ledger is untouched.
    std::fs::create_dir(dir.path().join("ckpt-000000000002.safetensors")).unwrap();
    std::fs::write(dir.path().join("ckpt-000000000002.safetensors/blocker"), b"x").unwrap();
    m.save_async(&vars, Some(&opt), &TrainState::new(0, 2)).unwrap();
    let err = m.wait().unwrap_err();
    assert!(matches!(err, CandleError::AsyncSave { step: 2, .. }), "{err}");
    assert_eq!(m.latest().unwrap().step, 1);
    // And on the next save when not waited for.
    m.save_async(&vars, Some(&opt), &TrainState::new(0, 2)).unwrap();
    let err = m.save_async(&vars, Some(&opt), &TrainState::new(0, 3)).unwrap_err();
    assert!(matches!(err, CandleError::AsyncSave { step: 2, .. }), "{err}");
    m.wait().unwrap();
}
