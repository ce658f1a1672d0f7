//! Crash consistency: a child process runs a real save loop and is killed with SIGKILL at random
//! instants; after each kill the parent checks the run directory.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use safeckpt_candle::{CheckpointManager, ManagerOptions, TrainState, read_train_state};
use safeckpt_reader::ShardedReader;
use safeckpt_writer::{WriteOptions, write_file, write_sharded};

use crate::{Rng, content, is_leftover, listing};

/// Which save path the loop exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// `write_file` replacing one file.
    File,
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

/// Tells the parent that `step` is committed (its save returned): one line on stdout, which the
/// parent reads after the kill. Everything logged must survive.
fn committed(step: u64) {
    println!("committed {step}");
}

/// The steps a killed child logged as committed.
fn committed_steps(stdout: &[u8]) -> Vec<u64> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("committed ").and_then(|s| s.parse().ok()))
        .collect()
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
                committed(step);
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
                committed(step);
            }
        }
        Mode::Manager | Mode::ManagerSharded => {
            let mut m = CheckpointManager::open(dir, mode.manager_options())?;
            let start = m.latest().map_or(1, |e| e.step + 1);
            let mut in_flight = None;
            for step in start..start + steps {
                let vars = content::vars(step, SCALE)?;
                let state = TrainState::new(0, step);
                if step % 2 == 0 {
                    m.save_async(&vars, None, &state)?;
                    in_flight = Some(step);
                    m.fence().wait();
                } else {
                    // A save first waits for the one in flight: both are committed when it returns.
                    m.save(&vars, None, &state)?;
                    in_flight.take().into_iter().for_each(committed);
                    committed(step);
                }
            }
            m.wait()?;
            in_flight.take().into_iter().for_each(committed);
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
    /// Checks that found the latest checkpoint missing, damaged, older than one already seen or
    /// than a save the child saw return, or holding the wrong content: checkpoints lost.
    pub lost: usize,
    /// Older retained checkpoints found damaged.
    pub older_damaged: usize,
    /// Older checkpoints that retention must still keep (the child saw their saves return, and
    /// fewer than `keep_last` newer ones exist) but that were missing (manager modes).
    pub older_vanished: usize,
    /// Saves the children saw return (logged before their kill).
    pub logged_commits: usize,
    /// Temporary files or directories a killed writer left behind, counted right after the kill
    /// (the harness removes nothing: the library's next writer or manager must).
    pub leftovers_seen: usize,
    /// Leftovers the library failed to remove: still present after a later writer committed a
    /// checkpoint in the directory, after a manager opened it, or after the final uninterrupted
    /// run.
    pub leftovers_kept: usize,
    /// Kills that left a replaced set's shards behind, unreferenced (sharded-replace mode; the
    /// next replacement removes them).
    pub unreferenced_seen: usize,
    /// Problems, one line each (empty when all is well).
    pub problems: Vec<String>,
}

impl CrashReport {
    /// Whether nothing was lost or damaged and the library cleaned up after every kill.
    pub fn is_clean(&self) -> bool {
        self.lost == 0
            && self.older_damaged == 0
            && self.older_vanished == 0
            && self.leftovers_kept == 0
            && self.problems.is_empty()
    }
}

/// Checks a directory after a kill; returns the latest step (or `None` before the first save).
pub(crate) fn check_after_kill(mode: Mode, dir: &Path, report: &mut CrashReport) -> Result<Option<u64>> {
    report.leftovers_seen += listing(dir).iter().filter(|n| is_leftover(n)).count();
    match mode {
        Mode::File => {
            let path = dir.join("ckpt.safetensors");
            if !path.exists() {
                return Ok(None);
            }
            let set = ShardedReader::open(&path)?;
            ensure!(set.verify()?.iter().all(|r| r.is_ok() && r.has_checksums), "latest file does not verify");
            let step = file_step(&path)?;
            content::check(&set, step, "", SCALE)?;
            Ok(Some(step))
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

/// Checks that the manager still lists, and can open, every checkpoint retention must keep: each
/// step the children logged as committed that is within `keep_last` of the latest. (Steps are
/// saved in order and each save waits for the one before, so every step up to the latest was
/// committed once and the newest `keep_last` of them must all remain.)
fn check_retained(mode: Mode, dir: &Path, latest: u64, logged: &BTreeSet<u64>, report: &mut CrashReport) {
    let keep = mode.manager_options().keep_last as u64;
    let m = match CheckpointManager::open(dir, mode.manager_options()) {
        Ok(m) => m,
        Err(e) => {
            report.problems.push(format!("reopening the run: {e}"));
            return;
        }
    };
    let present: BTreeSet<u64> = m.entries().iter().map(|e| e.step).collect();
    for &step in logged.range(latest.saturating_sub(keep - 1)..latest) {
        let entry = m.entries().into_iter().find(|e| e.step == step);
        let opens = entry.is_some_and(|e| m.path_of(&e).exists());
        if !present.contains(&step) || !opens {
            report.older_vanished += 1;
            report.problems.push(format!(
                "step {step} was committed and must be retained (latest {latest}, keep {keep}) but is gone"
            ));
        }
    }
}

/// Runs `kills` rounds: start the save loop (`exe save-loop`), SIGKILL it after a random delay of
/// up to `max_delay_ms`, check. A last uninterrupted run confirms the directory is still usable.
///
/// Nothing is cleaned up by the harness: temporary files a kill leaves are counted, and each must
/// be gone once a later writer has committed in the directory (the writers remove temporary files
/// of dead processes), once a manager has opened it, or at the latest after the final run. The
/// children log every save that returned; such a checkpoint may never be lost, and in manager
/// modes the ones retention keeps may never vanish.
pub fn campaign(exe: &Path, mode: Mode, dir: &Path, kills: usize, max_delay_ms: u64, seed: u64) -> Result<CrashReport> {
    let mut rng = Rng::new(seed);
    let mut report = CrashReport::default();
    let mut newest_seen: Option<u64> = None;
    let mut logged = BTreeSet::new();
    // Leftover names not yet removed, with the latest step when first seen.
    let mut pending: Vec<(String, Option<u64>)> = Vec::new();
    let mode_arg = mode.name();
    for k in 0..=kills {
        let last = k == kills;
        let mut cmd = Command::new(exe);
        cmd.args(["save-loop", "--mode", &mode_arg, "--dir"]).arg(dir).stdout(Stdio::piped()).stderr(Stdio::piped());
        if last {
            cmd.args(["--steps", "2"]);
        }
        let mut child = cmd.spawn().with_context(|| format!("starting {}", exe.display()))?;
        if last {
            let out = child.wait_with_output()?;
            logged.extend(committed_steps(&out.stdout));
            if !out.status.success() {
                report
                    .problems
                    .push(format!("final uninterrupted run failed: {}", String::from_utf8_lossy(&out.stderr)));
            }
        } else {
            std::thread::sleep(Duration::from_millis(rng.below(max_delay_ms + 1)));
            let _ = child.kill();
            let out = child.wait_with_output()?;
            logged.extend(committed_steps(&out.stdout));
            // A child that failed on its own (not killed) is a problem: saves must not fail.
            if out.status.code().is_some_and(|c| c != 0) {
                report.problems.push(format!("save loop failed by itself: {}", String::from_utf8_lossy(&out.stderr)));
            }
            report.kills += 1;
        }
        // What the kill left, before anything (a manager opening the directory) removes it.
        let left: Vec<String> = listing(dir).into_iter().filter(|n| is_leftover(n)).collect();
        report.leftovers_seen += left.iter().filter(|n| !pending.iter().any(|(p, _)| p == *n)).count();
        let latest = match check_after_kill(mode, dir, &mut report) {
            Ok(None) => {
                if newest_seen.is_some() || !logged.is_empty() {
                    report.lost += 1;
                    report.problems.push(format!("kill {k}: every checkpoint vanished"));
                } else {
                    report.before_first += 1;
                }
                None
            }
            Ok(Some(step)) => {
                let logged_max = logged.last().copied();
                if newest_seen.is_some_and(|s| step < s) {
                    report.lost += 1;
                    report.problems.push(format!("kill {k}: latest step went back from {newest_seen:?} to {step}"));
                } else if logged_max.is_some_and(|s| step < s) {
                    report.lost += 1;
                    report
                        .problems
                        .push(format!("kill {k}: the save of step {logged_max:?} returned, the latest is {step}"));
                } else {
                    report.latest_ok += 1;
                    newest_seen = Some(step);
                }
                if mode.is_manager() {
                    check_retained(mode, dir, step, &logged, &mut report);
                }
                Some(step)
            }
            Err(e) => {
                report.lost += 1;
                report.problems.push(format!("kill {k}: {e:#}"));
                None
            }
        };
        // A leftover must be gone once a later save committed (the writer cleans up before it
        // writes) or, in manager modes, once the check opened the manager.
        let now: Vec<String> = listing(dir).into_iter().filter(|n| is_leftover(n)).collect();
        pending.retain(|(name, seen_at)| {
            let still = now.contains(name);
            let progressed = latest.is_some() && latest > *seen_at;
            if still && (progressed || mode.is_manager()) {
                report.leftovers_kept += 1;
                report.problems.push(format!("kill {k}: leftover `{name}` was not removed"));
                return false;
            }
            still
        });
        for name in left {
            if now.contains(&name) && !pending.iter().any(|(p, _)| *p == name) {
                if mode.is_manager() {
                    report.leftovers_kept += 1;
                    report.problems.push(format!("kill {k}: leftover `{name}` kept after the manager opened"));
                } else {
                    pending.push((name, latest));
                }
            }
        }
        report.logged_commits = logged.len();
    }
    // After the last, uninterrupted run nothing a killed writer left may remain.
    let end: Vec<String> = listing(dir).into_iter().filter(|n| is_leftover(n)).collect();
    if !end.is_empty() {
        report.leftovers_kept += end.len();
        report.problems.push(format!("left after the final run: {end:?}"));
    }
    if mode == Mode::ShardedReplace {
        // After the last, uninterrupted replacement nothing of earlier sets may remain.
        let n = unreferenced_shards(dir);
        if n > 0 {
            report.leftovers_kept += n;
            report.problems.push(format!("{n} unreferenced shards left after the final run"));
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Retention's check notices a committed checkpoint that is gone from the ledger and the disk,
    /// and one whose file alone vanished.
    #[test]
    fn a_vanished_retained_checkpoint_is_noticed() {
        for mode in [Mode::Manager, Mode::ManagerSharded] {
            let dir = tempfile::tempdir().unwrap();
            save_loop(mode, dir.path(), 4).unwrap();
            let logged: BTreeSet<u64> = (1..=4).collect();
            let mut clean = CrashReport::default();
            check_retained(mode, dir.path(), 4, &logged, &mut clean);
            assert!(clean.is_clean(), "{clean:#?}");

            let m = CheckpointManager::open(dir.path(), mode.manager_options()).unwrap();
            let victim = m.entries().into_iter().find(|e| e.step == 3).unwrap();
            let path = m.path_of(&victim);
            drop(m);
            if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) }.unwrap();
            let mut report = CrashReport::default();
            check_retained(mode, dir.path(), 4, &logged, &mut report);
            assert_eq!(report.older_vanished, 1, "{mode:?}: {report:#?}");
            assert!(!report.is_clean());
        }
    }
}
