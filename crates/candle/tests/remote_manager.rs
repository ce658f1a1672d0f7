//! The checkpoint manager on a prefix of a real S3-compatible server (loopback `s3s-fs`).

use safeckpt_candle::optim::{AdamW, ParamsAdamW, StatefulOptimizer};
use safeckpt_candle::store::StoreOptions;
use safeckpt_candle::{CandleError, CheckpointManager, CheckpointOptions, KeepBest, ManagerOptions, Mode, TrainState};
use safeckpt_writer::WriteOptions;

use crate::common::{bits, seeded_model, train_step};

use crate::s3;

fn options(max_shard_size: Option<u64>) -> ManagerOptions {
    ManagerOptions {
        keep_last: 2,
        keep_best: Some(KeepBest { metric: "val_loss".into(), mode: Mode::Min, keep: 1 }),
        checkpoint: CheckpointOptions { write: WriteOptions::new().fsync(false), max_shard_size },
        ..Default::default()
    }
}

/// What the store lists below a prefix (directories holding no object do not count).
fn objects(server: &s3::Server, prefix: &str) -> Vec<String> {
    let loc = server.location(prefix, StoreOptions::default());
    safeckpt_candle::store::list(&loc)
        .unwrap()
        .into_iter()
        .filter(|(n, _)| {
            n.strip_suffix('/').is_none_or(|d| !safeckpt_candle::store::list(&loc.join(d)).unwrap().is_empty())
        })
        .map(|(n, _)| n.trim_end_matches('/').to_string())
        .collect()
}

#[test]
fn a_run_on_a_bucket_prefix_keeps_resumes_and_adopts() {
    let Some(server) = s3::Server::start() else { return };
    let prefix = server.location("runs/exp1", StoreOptions::default());
    let (_, mlp, vars) = seeded_model(3);
    let mut opt = AdamW::new_named(vars.clone(), ParamsAdamW::adam(1e-3)).unwrap();
    let mut m = CheckpointManager::open_remote(prefix.clone(), options(None)).unwrap();
    opt.set_fence(Some(m.fence()));
    let mut at_step = Vec::new();
    for (step, loss) in [(1u64, 0.5), (2, 0.2), (3, 0.4), (4, 0.3), (5, 0.6)] {
        train_step(&mlp, &mut opt, step);
        let state = TrainState::new(0, step).with_metric("val_loss", loss);
        if step % 2 == 0 {
            m.save_async(&vars, Some(&opt), &state).unwrap();
        } else {
            let url = m.save(&vars, Some(&opt), &state).unwrap();
            assert!(url.to_string_lossy().starts_with("s3://ckpt/runs/exp1/ckpt-"), "{url:?}");
        }
        m.wait().unwrap();
        at_step.push((step, bits(&vars)));
    }
    let steps: Vec<u64> = m.entries().iter().map(|e| e.step).collect();
    assert_eq!(steps, [2, 4, 5], "keep the last two and the best");
    assert_eq!(m.best().unwrap().step, 2);
    assert_eq!(
        objects(&server, "runs/exp1"),
        [
            ".lock",
            "ckpt-000000000002.safetensors",
            "ckpt-000000000004.safetensors",
            "ckpt-000000000005.safetensors",
            "ledger.json"
        ]
    );
    drop(m);

    // A fresh process resumes from the bucket, bit for bit.
    let (_, _, fresh) = seeded_model(99);
    let mut opt2 = AdamW::new_named(fresh.clone(), ParamsAdamW::adam(1e-3)).unwrap();
    let mut m =
        CheckpointManager::open_remote(server.location("runs/exp1", StoreOptions::default()), options(None)).unwrap();
    let r = m.resume(&fresh, Some(&mut opt2 as &mut dyn StatefulOptimizer)).unwrap().unwrap();
    assert_eq!(r.entry.step, 5);
    assert_eq!(bits(&fresh), at_step[4].1);
    assert_eq!(opt2.state_snapshot().len(), opt.state_snapshot().len());
    drop(m);

    // A checkpoint uploaded just before a crash, before its ledger entry, is adopted; shards
    // without their index (a crash during a sharded upload) are removed.
    let (_, _, other) = seeded_model(5);
    let local = tempfile::tempdir().unwrap();
    let staged = local.path().join("ckpt-000000000007.safetensors");
    safeckpt_candle::save_checkpoint(&staged, &other, None, &TrainState::new(1, 7), &CheckpointOptions::default())
        .unwrap();
    safeckpt_candle::store::upload_file(&staged, &prefix.join("ckpt-000000000007.safetensors"), &|_| {}).unwrap();
    safeckpt_candle::store::put_bytes(&prefix.join("ckpt-000000000009/model-00001-of-00002.safetensors"), vec![0; 16])
        .unwrap();
    let m =
        CheckpointManager::open_remote(server.location("runs/exp1", StoreOptions::default()), options(None)).unwrap();
    assert_eq!(m.adopted(), ["ckpt-000000000007.safetensors"]);
    assert_eq!(m.latest().unwrap().step, 7);
    assert!(!objects(&server, "runs/exp1").iter().any(|n| n.contains("000000009")), "orphan shards removed");
}

#[test]
fn sharded_checkpoints_upload_their_index_last_and_retention_deletes_them() {
    let Some(server) = s3::Server::start() else { return };
    let prefix = server.location("runs/sharded", StoreOptions::default());
    let (_, mlp, vars) = seeded_model(4);
    let mut opt = AdamW::new_named(vars.clone(), ParamsAdamW::adam(1e-3)).unwrap();
    let opts = ManagerOptions { keep_best: None, ..options(Some(4096)) };
    let mut m = CheckpointManager::open_remote(prefix, opts.clone()).unwrap();
    for step in 1..=3 {
        train_step(&mlp, &mut opt, step);
        m.save_async(&vars, Some(&opt), &TrainState::new(0, step)).unwrap();
    }
    m.wait().unwrap();
    assert_eq!(objects(&server, "runs/sharded"), [".lock", "ckpt-000000000002", "ckpt-000000000003", "ledger.json"]);
    let inner = objects(&server, "runs/sharded/ckpt-000000000003");
    assert!(inner.len() > 2 && inner.contains(&"model.safetensors.index.json".to_string()), "{inner:?}");
    let expected = bits(&vars);
    drop(m);
    let (_, _, fresh) = seeded_model(77);
    let mut m = CheckpointManager::open_remote(server.location("runs/sharded", StoreOptions::default()), opts).unwrap();
    let r = m.resume(&fresh, None).unwrap().unwrap();
    assert_eq!(r.entry.step, 3);
    assert_eq!(bits(&fresh), expected);
}

#[test]
fn one_writer_per_prefix_and_a_dead_writers_lease_is_taken_over() {
    let Some(server) = s3::Server::start() else { return };
    // Long enough that a renewal delayed by a loaded machine (two cores shared with other test
    // processes) does not lose a live writer's lease.
    let ttl = std::time::Duration::from_millis(4000);
    let opts = ManagerOptions { lease_ttl: ttl, ..options(None) };
    let (_, _, vars) = seeded_model(6);
    let mut first =
        CheckpointManager::open_remote(server.location("runs/shared", StoreOptions::default()), opts.clone()).unwrap();
    first.save(&vars, None, &TrainState::new(0, 1)).unwrap();
    // A second job given the same prefix is refused and names the first; it touches nothing.
    match CheckpointManager::open_remote(server.location("runs/shared", StoreOptions::default()), opts.clone()) {
        Err(e @ CandleError::Locked { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&format!("pid {}", std::process::id())) && text.contains("runs/shared"), "{text}");
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    // The first goes on saving across several lease lifetimes.
    std::thread::sleep(ttl * 2);
    first.save(&vars, None, &TrainState::new(0, 2)).unwrap();
    drop(first);
    assert!(!objects(&server, "runs/shared").contains(&".lock".to_string()), "closing releases the lease");
    let second =
        CheckpointManager::open_remote(server.location("runs/shared", StoreOptions::default()), opts.clone()).unwrap();
    assert_eq!(second.latest().unwrap().step, 2);
    drop(second);

    // A writer that died holding the lease (its record stays, never renewed): the next one waits
    // one time-to-live, then takes over.
    let lease = server.location("runs/shared/.lock", StoreOptions::default());
    let record = br#"{"holder":"pid 4242 on node-7","token":"dead","ttl_ms":4000,"renewal":9,"written_unix_ms":0}"#;
    safeckpt_candle::store::put_bytes(&lease, record.to_vec()).unwrap();
    let t = std::time::Instant::now();
    let mut third =
        CheckpointManager::open_remote(server.location("runs/shared", StoreOptions::default()), opts).unwrap();
    assert!(t.elapsed() >= ttl, "{:?}", t.elapsed());
    third.save(&vars, None, &TrainState::new(0, 3)).unwrap();
    assert_eq!(third.entries().iter().map(|e| e.step).collect::<Vec<_>>(), [2, 3]);
}

#[test]
fn a_writer_that_lost_its_lease_commits_nothing() {
    let Some(server) = s3::Server::start() else { return };
    let ttl = std::time::Duration::from_millis(1500);
    let opts = ManagerOptions { lease_ttl: ttl, ..options(None) };
    let (_, _, vars) = seeded_model(8);
    let mut m = CheckpointManager::open_remote(server.location("runs/lost", StoreOptions::default()), opts).unwrap();
    m.save(&vars, None, &TrainState::new(0, 1)).unwrap();
    // Another party replaces the lease object (for example an operator forcing a takeover).
    let lease = server.location("runs/lost/.lock", StoreOptions::default());
    safeckpt_candle::store::put_bytes(&lease, br#"{"holder":"operator"}"#.to_vec()).unwrap();
    std::thread::sleep(ttl);
    let err = m.save(&vars, None, &TrainState::new(0, 2)).unwrap_err();
    assert!(err.to_string().contains("lease is lost"), "{err}");
    let names = objects(&server, "runs/lost");
    assert_eq!(names, [".lock", "ckpt-000000000001.safetensors", "ledger.json"], "step 2 was not uploaded");
    let ledger = std::fs::read_to_string(server.file_of("runs/lost/ledger.json")).unwrap();
    assert!(!ledger.contains("000000000002"), "{ledger}");
    drop(m);
    assert!(
        std::fs::read_to_string(server.file_of("runs/lost/.lock")).unwrap().contains("operator"),
        "the lost writer leaves the new lease alone"
    );
}
