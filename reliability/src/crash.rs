//! Crash consistency: a child process runs a real save loop and is killed with SIGKILL at random
//! instants; after each kill the parent checks the run directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use safeckpt_candle::{CheckpointManager, ManagerOptions, TrainState, read_train_state};
use safeckpt_reader::ShardedReader;
use safeckpt_writer::atomic::{remove_leftovers, sync_dir};
use safeckpt_writer::{WriteOptions, write_file, write_sharded};

use crate::{Rng, content, is_leftover, listing};

/// Which save path the loop exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// `write_file` replacing one file.
    File,
    /// `write_sharded` into a new directory per step, committed by renaming the directory.
    Sharded,
    /// `write_sharded` over the previous set in the same directory, step after step (shards of the
    /// same names each time): every state must be the complete old set or the complete new one.
    ShardedReplace,
    /// A `CheckpointManager` with a ledger, retention, and alternating synchronous and
    /// asynchronous saves.
    Manager,
    /// The same, each checkpoint a sharded set (a directory staged, then renamed into place).
    ManagerSharded,
}

impl Mode {
    /// The manager's options for the manager modes.
    fn manager_options(self) -> ManagerOptions {
        let mut opts = ManagerOptions { keep_last: 3, ..Default::default() };
        if self == Mode::ManagerSharded {
            // About three shards per 576 KiB checkpoint.
            opts.checkpoint.max_shard_size = Some(200 << 10);
        }
        opts
    }

    /// The mode's name on the command line (`manager-sharded`).
    pub fn name(self) -> String {
        use clap::ValueEnum;
        self.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default()
    }

    fn is_manager(self) -> bool {
        matches!(self, Mode::Manager | Mode::ManagerSharded)
    }
}

/// The index of the set that [`Mode::ShardedReplace`] replaces in place.
const REPLACE_INDEX: &str = "model.safetensors.index.json";

/// Files in a [`Mode::ShardedReplace`] directory that the index does not reference and that are
/// not temporary files: shards of an earlier set that a kill kept from being removed.
fn unreferenced_shards(dir: &Path) -> usize {
    let referenced: Vec<String> = std::fs::read(dir.join(REPLACE_INDEX))
        .ok()
        .and_then(|b| safeckpt_format::ShardIndex::parse(&b).ok())
        .map(|i| i.shards().into_iter().map(str::to_string).collect())
        .unwrap_or_default();
    listing(dir).iter().filter(|n| n.ends_with(".safetensors") && !referenced.contains(n)).count()
}

/// Tensor size scale used by the loops (8 tensors of 4..32 Ki floats: 576 KiB per checkpoint).
pub const SCALE: usize = 4;

fn file_step(path: &Path) -> Result<u64> {
    let set = ShardedReader::open(path)?;
    let meta = set.shards()[0].metadata().cloned().unwrap_or_default();
    meta.get("step").and_then(|s| s.parse().ok()).context("checkpoint without a step")
}

fn sharded_sets(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<(u64, PathBuf)> = listing(dir)
        .into_iter()
        .filter_map(|n| n.strip_prefix("set-").and_then(|s| s.parse().ok()).map(|s| (s, dir.join(&n))))
        .collect();
    v.sort();
    v
}

/// The child: saves step after step until killed (or `steps` saves), continuing from the last
/// step found in `dir`.
pub fn save_loop(mode: Mode, dir: &Path, steps: u64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let fsync = WriteOptions::new();
    match mode {
        Mode::File => {
            let path = dir.join("ckpt.safetensors");
            let start = if path.exists() { file_step(&path)? + 1 } else { 1 };
            for step in start..start + steps {
                let raw = content::raw(step, SCALE);
                let meta = safeckpt_format::Metadata::from([("step".to_string(), step.to_string())]);
                write_file(&path, &content::sources(&raw), Some(meta), &fsync)?;
            }
        }
        Mode::Sharded => {
            // Leftovers of a killed writer are removed by the next one (it owns the directory).
            for n in listing(dir) {
                if is_leftover(&n) {
                    let p = dir.join(&n);
                    if p.is_dir() { std::fs::remove_dir_all(&p)? } else { std::fs::remove_file(&p)? }
                }
            }
            let start = sharded_sets(dir).last().map_or(1, |(s, _)| s + 1);
            for step in start..start + steps {
                let raw = content::raw(step, SCALE);
                let tmp = dir.join(format!(".set-{step:08}.tmp"));
                let _ = std::fs::remove_dir_all(&tmp);
                let total: usize = raw.iter().map(|(_, b)| b.len()).sum();
                write_sharded(&tmp, "model", &content::sources(&raw), None, (total / 3) as u64, &fsync, &|_| {})?;
                std::fs::rename(&tmp, dir.join(format!("set-{step:08}")))?;
                sync_dir(Some(dir))?;
                // Retention: keep the newest three complete sets. A set leaves by a rename to a
                // temporary name first, so a kill during the removal never leaves a half-deleted
                // set under a checkpoint name.
                let sets = sharded_sets(dir);
                for (s, old) in sets.iter().take(sets.len().saturating_sub(3)) {
                    let doomed = dir.join(format!(".set-{s:08}.tmp-removing"));
                    std::fs::rename(old, &doomed)?;
                    // Flushed before the deletions, so that no power cut can leave some of them
                    // on disk without the rename (file systems need not keep the order).
                    sync_dir(Some(dir))?;
                    std::fs::remove_dir_all(&doomed)?;
                }
            }
        }
        Mode::ShardedReplace => {
            // No clean-up here: the writer itself removes the temporary files of killed writers.
            let index = dir.join(REPLACE_INDEX);
            let start = if index.exists() { file_step(&index)? + 1 } else { 1 };
            for step in start..start + steps {
                let raw = content::raw(step, SCALE);
                let meta = safeckpt_format::Metadata::from([("step".to_string(), step.to_string())]);
                let total: usize = raw.iter().map(|(_, b)| b.len()).sum();
                write_sharded(dir, "model", &content::sources(&raw), Some(meta), (total / 3) as u64, &fsync, &|_| {})?;
            }
        }
        Mode::Manager | Mode::ManagerSharded => {
            let mut m = CheckpointManager::open(dir, mode.manager_options())?;
            let start = m.latest().map_or(1, |e| e.step + 1);
            for step in start..start + steps {
                let vars = content::vars(step, SCALE)?;
                let state = TrainState::new(0, step);
                if step % 2 == 0 {
                    m.save_async(&vars, None, &state)?;
                    m.fence().wait();
                } else {
                    m.save(&vars, None, &state)?;
                }
            }
            m.wait()?;
        }
    }
    Ok(())
}

/// What a crash campaign found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Child processes killed with SIGKILL.
    pub kills: usize,
    /// Checks after a kill where the latest checkpoint opened, verified and held exactly what its
    /// step saved.
    pub latest_ok: usize,
    /// Kills before any checkpoint existed.
    pub before_first: usize,
    /// Checks that found the latest checkpoint missing, damaged, older than one already seen, or
    /// holding the wrong content: checkpoints lost.
    pub lost: usize,
    /// Older retained checkpoints found damaged.
    pub older_damaged: usize,
    /// Temporary files or directories a killed writer left behind (removed by the next writer).
    pub leftovers_seen: usize,
    /// Leftovers still present after the next writer opened the directory.
    pub leftovers_after_cleanup: usize,
    /// Kills that left a replaced set's shards behind, unreferenced (sharded-replace mode; the
    /// next replacement removes them).
    pub unreferenced_seen: usize,
    /// Problems, one line each (empty when all is well).
    pub problems: Vec<String>,
}

impl CrashReport {
    /// Whether nothing was lost or damaged.
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.older_damaged == 0 && self.leftovers_after_cleanup == 0 && self.problems.is_empty()
    }
}

/// Checks a directory after a kill; returns the latest step (or `None` before the first save).
pub(crate) fn check_after_kill(mode: Mode, dir: &Path, report: &mut CrashReport) -> Result<Option<u64>> {
    report.leftovers_seen += listing(dir).iter().filter(|n| is_leftover(n)).count();
    match mode {
        Mode::File => {
            let path = dir.join("ckpt.safetensors");
            remove_leftovers(dir)?;
            if !path.exists() {
                return Ok(None);
            }
            let set = ShardedReader::open(&path)?;
            ensure!(set.verify()?.iter().all(|r| r.is_ok() && r.has_checksums), "latest file does not verify");
            let step = file_step(&path)?;
            content::check(&set, step, "", SCALE)?;
            Ok(Some(step))
        }
        Mode::Sharded => {
            for n in listing(dir) {
                if is_leftover(&n) {
                    std::fs::remove_dir_all(dir.join(&n))?;
                }
            }
            let sets = sharded_sets(dir);
            let Some((step, latest)) = sets.last() else { return Ok(None) };
            let set = ShardedReader::open(latest.join("model.safetensors.index.json"))?;
            ensure!(set.verify()?.iter().all(|r| r.is_ok()), "latest set does not verify");
            content::check(&set, *step, "", SCALE)?;
            for (s, old) in &sets[..sets.len() - 1] {
                let ok = ShardedReader::open(old.join("model.safetensors.index.json"))
                    .map_err(anyhow::Error::from)
                    .and_then(|set| {
                        ensure!(set.verify()?.iter().all(|r| r.is_ok()), "verify");
                        content::check(&set, *s, "", SCALE)
                    });
                if ok.is_err() {
                    report.older_damaged += 1;
                }
            }
            Ok(Some(*step))
        }
        Mode::ShardedReplace => {
            if unreferenced_shards(dir) > 0 {
                report.unreferenced_seen += 1;
            }
            let index = dir.join(REPLACE_INDEX);
            if !index.exists() {
                return Ok(None);
            }
            // The index, not the directory: a kill may leave unreferenced shards next to it.
            let set = ShardedReader::open(&index)?;
            ensure!(set.verify()?.iter().all(|r| r.is_ok() && r.has_checksums), "the set does not verify");
            let step = file_step(&index)?;
            // Every shard from the same save, and every tensor what that save wrote: a mixed set
            // (new shards under the old index, or the reverse) fails here.
            for shard in set.shards() {
                let s = shard.metadata().and_then(|m| m.get("step")).and_then(|s| s.parse::<u64>().ok());
                ensure!(
                    s == Some(step),
                    "a mixed set: {} holds step {s:?}, the index step {step}",
                    shard.path().display()
                );
            }
            content::check(&set, step, "", SCALE)?;
            Ok(Some(step))
        }
        Mode::Manager | Mode::ManagerSharded => {
            let m = CheckpointManager::open(dir, mode.manager_options())?;
            let Some(latest) = m.latest() else { return Ok(None) };
            for e in m.entries() {
                let set = ShardedReader::open(m.path_of(&e))?;
                let verified = set.verify()?.iter().all(|r| r.is_ok());
                let content_ok = content::check(&set, e.step, "model.", SCALE).is_ok();
                let state_ok = read_train_state(&set).map(|s| s.step == e.step).unwrap_or(false);
                if !(verified && content_ok && state_ok) {
                    if e.step == latest.step {
                        bail!("latest checkpoint (step {}) is damaged or wrong", e.step);
                    }
                    report.older_damaged += 1;
                }
            }
            Ok(Some(latest.step))
        }
    }
}

/// Runs `kills` rounds: start the save loop (`exe save-loop`), SIGKILL it after a random delay of
/// up to `max_delay_ms`, check. A last uninterrupted run confirms the directory is still usable.
pub fn campaign(exe: &Path, mode: Mode, dir: &Path, kills: usize, max_delay_ms: u64, seed: u64) -> Result<CrashReport> {
    let mut rng = Rng::new(seed);
    let mut report = CrashReport::default();
    let mut newest_seen: Option<u64> = None;
    let mode_arg = mode.name();
    for k in 0..=kills {
        let last = k == kills;
        let mut cmd = Command::new(exe);
        cmd.args(["save-loop", "--mode", &mode_arg, "--dir"]).arg(dir).stdout(Stdio::null()).stderr(Stdio::piped());
        if last {
            cmd.args(["--steps", "2"]);
        }
        let mut child = cmd.spawn().with_context(|| format!("starting {}", exe.display()))?;
        if last {
            let out = child.wait_with_output()?;
            if !out.status.success() {
                report
                    .problems
                    .push(format!("final uninterrupted run failed: {}", String::from_utf8_lossy(&out.stderr)));
            }
        } else {
            std::thread::sleep(Duration::from_millis(rng.below(max_delay_ms + 1)));
            let _ = child.kill();
            let out = child.wait_with_output()?;
            // A child that failed on its own (not killed) is a problem: saves must not fail.
            if out.status.code().is_some_and(|c| c != 0) {
                report.problems.push(format!("save loop failed by itself: {}", String::from_utf8_lossy(&out.stderr)));
            }
            report.kills += 1;
        }
        match check_after_kill(mode, dir, &mut report) {
            Ok(None) => {
                if newest_seen.is_some() {
                    report.lost += 1;
                    report.problems.push(format!("kill {k}: every checkpoint vanished"));
                } else {
                    report.before_first += 1;
                }
            }
            Ok(Some(step)) => {
                if newest_seen.is_some_and(|s| step < s) {
                    report.lost += 1;
                    report.problems.push(format!("kill {k}: latest step went back from {newest_seen:?} to {step}"));
                } else {
                    report.latest_ok += 1;
                    newest_seen = Some(step);
                }
            }
            Err(e) => {
                report.lost += 1;
                report.problems.push(format!("kill {k}: {e:#}"));
            }
        }
        let left = listing(dir).iter().filter(|n| is_leftover(n)).count();
        if mode.is_manager() && left > 0 {
            // The manager removes leftovers when it opens the directory (done in the check).
            report.leftovers_after_cleanup += left;
        }
    }
    if !mode.is_manager() {
        report.leftovers_after_cleanup += listing(dir).iter().filter(|n| is_leftover(n)).count();
    }
    if mode == Mode::ShardedReplace {
        // After the last, uninterrupted replacement nothing of earlier sets may remain.
        report.leftovers_after_cleanup += unreferenced_shards(dir);
    }
    Ok(report)
}
