//! `CheckpointManager`: a run directory of checkpoints with retention, a crash-safe ledger, a
//! lock against concurrent writers, resume, and asynchronous saves.
//!
//! Layout of a run directory:
//!
//! ```text
//! run/
//!   .lock                          held (flock) by the one process writing here; says who
//!   ledger.json                    every complete checkpoint: step, epoch, file, metrics, checksums
//!   ckpt-000000000120.safetensors  one checkpoint (or ckpt-000000000120/ for a sharded one)
//! ```
//!
//! Every file is written under a temporary name, flushed and renamed, and the ledger is replaced
//! the same way after the checkpoint it lists, so a crash at any instant leaves the newest
//! complete checkpoint loadable. A checkpoint committed just before a crash, before its ledger
//! entry, is found and adopted (after verifying it) the next time the directory is opened.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use candle_core::Var;
use safeckpt_reader::ShardedReader;
use safeckpt_writer::atomic::{remove_leftovers, rename_exchange as exchange, write_atomic};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{CheckpointOptions, SnapshotSource, load_checkpoint, read_train_state, save_checkpoint};
use crate::error::{CandleError, Result};
use crate::optim::StatefulOptimizer;
#[cfg(feature = "object-store")]
use crate::remote_run::Prefix;
use crate::remote_run::{self, Remote, Staging};
use crate::state_dict::LoadReport;
use crate::train_state::TrainState;

/// The ledger's file name.
pub const LEDGER: &str = "ledger.json";
/// The lock file's name.
pub const LOCK: &str = ".lock";

/// Whether a smaller or a larger metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Smaller is better (losses).
    Min,
    /// Larger is better (accuracies).
    Max,
}

/// Keep the best checkpoints by a named metric, like Keras's `ModelCheckpoint(monitor, mode)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeepBest {
    /// The metric, as named in [`TrainState::metrics`].
    pub metric: String,
    /// Which direction is better.
    pub mode: Mode,
    /// How many of the best to keep.
    pub keep: usize,
}

/// Policy of a [`CheckpointManager`].
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// Keep the most recent `keep_last` checkpoints (at least 1).
    pub keep_last: usize,
    /// Also keep the best by a metric.
    pub keep_best: Option<KeepBest>,
    /// [`CheckpointManager::should_save`] says yes every this many steps.
    pub save_every_steps: Option<u64>,
    /// [`CheckpointManager::should_save`] says yes at the end of each epoch.
    pub save_every_epoch: bool,
    /// How checkpoints are written.
    pub checkpoint: CheckpointOptions,
    /// Verify checksums before resuming from a checkpoint (default on).
    pub verify_on_resume: bool,
    /// Runs in an object store: the time-to-live of the writer's lease on the prefix (default
    /// 60 s). The lease is renewed every third of it; a lease left by a process that died is
    /// taken over once it has gone unrenewed this long, so a restarted job waits at most this.
    /// Between 300 ms and one hour (`safeckpt_store::MAX_TTL`).
    pub lease_ttl: std::time::Duration,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        ManagerOptions {
            keep_last: 3,
            keep_best: None,
            save_every_steps: None,
            save_every_epoch: true,
            checkpoint: CheckpointOptions::default(),
            verify_on_resume: true,
            lease_ttl: std::time::Duration::from_secs(60),
        }
    }
}

/// One checkpoint in the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Optimizer steps completed.
    pub step: u64,
    /// Epochs completed.
    pub epoch: u64,
    /// File or directory name inside the run directory.
    pub path: String,
    /// Metrics at that point (non-finite values are dropped).
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// Whether the checkpoint was written with checksums: one that then carries none had its
    /// integrity record damaged, and is not resumed from.
    #[serde(default)]
    pub checksums: bool,
}

impl LedgerEntry {
    /// Whether the entry names the checkpoint of its own step inside the run directory by the
    /// manager's naming rule: `ckpt-<step in 12 digits>.safetensors` (one file) or
    /// `ckpt-<step in 12 digits>` (a sharded checkpoint's directory). The manager opens and
    /// deletes nothing else, so a ledger naming an absolute path, a `..` path, another file or
    /// another step's checkpoint cannot make it read or remove anything outside its checkpoints.
    pub fn follows_naming_rule(&self) -> bool {
        let name = file_name(self.step);
        self.path == name || self.path.strip_suffix(".safetensors") == Some(name.as_str())
    }

    /// Whether the entry names a sharded checkpoint (a directory).
    fn is_sharded(&self) -> bool {
        !self.path.ends_with(".safetensors")
    }
}

/// A run's `ledger.json`: every complete checkpoint, oldest first, and the retention policy
/// that wrote it (so that tools can tell which checkpoint is the best).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// Format version (1).
    pub version: u64,
    /// The checkpoints, by step.
    pub checkpoints: Vec<LedgerEntry>,
    /// The keep-best policy of the writer, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_best: Option<KeepBest>,
}

impl Ledger {
    /// The most bytes of a ledger that are read.
    pub const MAX_LEN: u64 = 64 << 20;

    /// A ledger file's bytes, refusing one over [`Ledger::MAX_LEN`].
    pub fn read_bytes(path: &Path) -> std::io::Result<Vec<u8>> {
        use std::io::Read;
        let mut bytes = Vec::new();
        File::open(path)?.take(Ledger::MAX_LEN + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > Ledger::MAX_LEN {
            return Err(std::io::Error::other(format!("the ledger is over {} bytes", Ledger::MAX_LEN)));
        }
        Ok(bytes)
    }

    /// Parses a ledger's bytes.
    pub fn parse(bytes: &[u8]) -> std::result::Result<Ledger, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("the ledger is not valid JSON ({e})"))
    }

    /// The newest checkpoint.
    pub fn latest(&self) -> Option<&LedgerEntry> {
        self.checkpoints.iter().max_by_key(|e| e.step)
    }

    /// The best checkpoint by the recorded keep-best policy.
    pub fn best(&self) -> Option<&LedgerEntry> {
        self.keep_best.as_ref().and_then(|b| best_entries(&self.checkpoints, b).first().copied())
    }
}

/// Blocks an optimizer step while an asynchronous save is still copying the variables.
///
/// [`CheckpointManager::fence`] gives the manager's fence to optimizers (`set_fence`); a fence of
/// your own ([`Fence::default`]) can guard a snapshot you take yourself: [`Fence::hold`] closes it
/// until the returned guard is dropped.
#[derive(Debug, Clone, Default)]
pub struct Fence {
    inner: Arc<(Mutex<usize>, Condvar)>,
}

impl Fence {
    /// Waits until no snapshot is being taken.
    pub fn wait(&self) {
        let (lock, cv) = &*self.inner;
        let mut holders = lock.lock().unwrap_or_else(|p| p.into_inner());
        while *holders > 0 {
            holders = cv.wait(holders).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Whether the fence is closed (someone holds it).
    pub fn is_closed(&self) -> bool {
        *self.inner.0.lock().unwrap_or_else(|p| p.into_inner()) > 0
    }

    /// Closes the fence until the returned guard is dropped (also when a thread holding it fails
    /// or panics). Holds nest: the fence opens when the last one is dropped.
    pub fn hold(&self) -> FenceHold {
        *self.inner.0.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        FenceHold(self.clone())
    }
}

/// Keeps a [`Fence`] closed while it lives.
#[derive(Debug)]
#[must_use = "the fence opens again when the hold is dropped"]
pub struct FenceHold(Fence);

impl Drop for FenceHold {
    fn drop(&mut self) {
        let (lock, cv) = &*self.0.inner;
        let mut holders = lock.lock().unwrap_or_else(|p| p.into_inner());
        *holders = holders.saturating_sub(1);
        cv.notify_all();
    }
}

struct Shared {
    /// The run directory, or the local staging directory of a run in an object store.
    dir: PathBuf,
    opts: ManagerOptions,
    ledger: Ledger,
    /// The run's prefix in an object store, if it lives in one.
    remote: Option<Remote>,
}

/// What [`CheckpointManager::resume`] restored.
#[derive(Debug, Clone, PartialEq)]
pub struct Resumed {
    /// The checkpoint used.
    pub entry: LedgerEntry,
    /// Its train state.
    pub state: TrainState,
    /// The model load report.
    pub report: LoadReport,
    /// Newer checkpoints skipped because they failed to open or verify, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// A run directory of checkpoints. See the module documentation.
pub struct CheckpointManager {
    shared: Arc<Mutex<Shared>>,
    dir: PathBuf,
    _lock: Option<File>,
    _staging: Option<Staging>,
    fence: Fence,
    in_flight: Option<(u64, JoinHandle<Result<()>>)>,
    adopted: Vec<String>,
    ignored: Vec<(LedgerEntry, String)>,
}

impl std::fmt::Debug for CheckpointManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointManager").field("dir", &self.dir).field("entries", &self.entries().len()).finish()
    }
}

fn file_name(step: u64) -> String {
    format!("ckpt-{step:012}")
}

fn parse_step(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("ckpt-")?;
    let digits = rest.strip_suffix(".safetensors").unwrap_or(rest);
    (digits.len() == 12 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
}

/// Why a ledger entry of a local run cannot be used, if it cannot: it breaks the naming rule,
/// or nothing of its kind is there (a regular file, or a directory for a sharded checkpoint;
/// symbolic links are not followed).
fn entry_problem(dir: &Path, e: &LedgerEntry) -> Option<String> {
    if !e.follows_naming_rule() {
        let name = file_name(e.step);
        return Some(format!(
            "`{}` is not the checkpoint of step {} in the run directory (`{name}.safetensors` or `{name}`)",
            e.path, e.step
        ));
    }
    let kind = match std::fs::symlink_metadata(dir.join(&e.path)) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Some("missing".into()),
        Err(err) => return Some(format!("cannot be examined: {err}")),
        Ok(m) => m.file_type(),
    };
    match (e.is_sharded(), kind.is_dir(), kind.is_file()) {
        (true, true, _) | (false, _, true) => None,
        (true, ..) => Some("not a directory (symbolic links are not followed)".into()),
        (false, ..) => Some("not a regular file (symbolic links are not followed)".into()),
    }
}

/// The file (or a sharded checkpoint's index) of a local checkpoint.
fn local_path(dir: &Path, e: &LedgerEntry) -> PathBuf {
    let p = dir.join(&e.path);
    if e.is_sharded() { p.join(safeckpt_format::index::DEFAULT_INDEX_NAME) } else { p }
}

/// Whether a local checkpoint can serve a resume, judged without reading its data: it is there,
/// every file's header parses and fits the file's length (a truncated file fails), the shards an
/// index names are there and hold its tensors, and when it was written with checksums every
/// file's integrity record is present and matches its header (covering every tensor). Damage
/// inside tensor data is left to the checksums that resume verifies.
fn looks_loadable(dir: &Path, e: &LedgerEntry) -> bool {
    if entry_problem(dir, e).is_some() {
        return false;
    }
    let Ok(set) = ShardedReader::open(local_path(dir, e)) else { return false };
    set.shards().iter().all(|r| match r.integrity() {
        Ok(Some(i)) => {
            i.header_matches(r.header())
                && i.tensors.len() == r.len()
                && r.tensors().all(|t| i.tensors.contains_key(t.name()))
        }
        Ok(None) => !e.checksums,
        Err(_) => false,
    })
}

/// Removes a file or a directory (a symbolic link itself, never what it points to); missing is
/// fine.
fn remove_entry(p: &Path) -> std::io::Result<()> {
    let r = match std::fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) => Err(e),
    };
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Where a sharded checkpoint is set aside while its replacement is renamed in (systems without
/// an atomic exchange).
fn aside_name(name: &str) -> String {
    format!(".{name}.old.{}", std::process::id())
}

/// Where a sharded checkpoint is written before it is renamed in.
fn temp_dir_name(name: &str) -> String {
    format!(".{name}.tmp{}", std::process::id())
}

/// The checkpoint a leftover of a sharded save or replacement belongs to: `ckpt-N` for
/// `.ckpt-N.tmp<pid>` (written, not yet renamed in; or, after an exchange, the replaced copy)
/// and `.ckpt-N.old.<pid>` (the replaced copy set aside). The flag says which kind.
fn leftover_of(name: &str) -> Option<(String, bool)> {
    let rest = name.strip_prefix('.')?;
    let (target, aside) = match rest.split_once(".old.") {
        Some((t, _)) => (t, true),
        None => (rest.split_once(".tmp")?.0, false),
    };
    (parse_step(target).is_some() && !target.ends_with(".safetensors")).then(|| (target.to_string(), aside))
}

/// Moves a complete sharded checkpoint from `tmp` to `final_dir` inside the run directory `dir`,
/// replacing any checkpoint there such that a crash at any instant leaves one complete copy under
/// a name [`CheckpointManager::open`] recovers: the two are exchanged atomically and the old one,
/// now at the temporary name, is removed; where exchange is not supported the old one is first
/// renamed aside. The directory is flushed (when `fsync`) before the old copy is removed.
fn install_dir(dir: &Path, tmp: &Path, final_dir: &Path, fsync: bool) -> Result<()> {
    install_dir_with(dir, tmp, final_dir, fsync, exchange)
}

/// [`install_dir`] with the exchange given (tests force the fallback).
fn install_dir_with(
    dir: &Path,
    tmp: &Path,
    final_dir: &Path,
    fsync: bool,
    exchange: fn(&Path, &Path) -> std::io::Result<bool>,
) -> Result<()> {
    let sync = || -> Result<()> {
        if fsync {
            safeckpt_writer::atomic::sync_dir(Some(dir)).map_err(|e| CandleError::io(dir, e))?;
        }
        Ok(())
    };
    let rename = |from: &Path, to: &Path| std::fs::rename(from, to).map_err(|e| CandleError::io(to, e));
    let replaced = match std::fs::symlink_metadata(final_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(CandleError::io(final_dir, e)),
        Ok(_) => match exchange(tmp, final_dir) {
            Ok(true) => Some(tmp.to_path_buf()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(CandleError::io(final_dir, e)),
            Ok(false) => {
                let name = final_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let aside = dir.join(aside_name(&name));
                remove_entry(&aside).map_err(|e| CandleError::io(&aside, e))?;
                rename(final_dir, &aside)?;
                Some(aside)
            }
        },
    };
    if replaced.as_deref() != Some(tmp) {
        rename(tmp, final_dir)?;
    }
    sync()?;
    if let Some(old) = replaced {
        // A failure leaves a leftover that the next `open` removes; the new checkpoint is in place.
        let _ = remove_entry(&old);
    }
    Ok(())
}

/// Recovers the leftovers of sharded saves and replacements a crash interrupted (see
/// [`install_dir`]): where a checkpoint's name is missing, a copy set aside is put back (it is the
/// one the ledger lists; it is never deleted while it is the only copy), or else a complete set at
/// its temporary name (it opens and every checksum verifies) is renamed in to be adopted. Every
/// other leftover is removed.
fn recover_sharded_leftovers(dir: &Path) -> Result<()> {
    // (a temporary directory rather than a copy set aside, name, the checkpoint's name)
    let mut leftovers: Vec<(bool, String, Option<String>)> = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| CandleError::io(dir, e))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with(".ckpt-") && (name.contains(".tmp") || name.contains(".old."));
        if ours && e.file_type().is_ok_and(|t| t.is_dir()) {
            let of = leftover_of(&name);
            // Copies set aside first: they are the ledger's.
            leftovers.push((!of.as_ref().is_some_and(|(_, aside)| *aside), name, of.map(|(target, _)| target)));
        }
    }
    leftovers.sort();
    for (is_tmp, name, target) in leftovers {
        let path = dir.join(&name);
        let missing = |target: &String| {
            std::fs::symlink_metadata(dir.join(target)).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
        };
        let complete = || {
            ShardedReader::open(path.join(safeckpt_format::index::DEFAULT_INDEX_NAME))
                .and_then(|set| set.verify())
                .is_ok_and(|r| r.iter().all(|r| r.is_ok()))
        };
        let restore = target.filter(|t| missing(t) && (!is_tmp || complete()));
        if let Some(target) = restore {
            let final_dir = dir.join(target);
            std::fs::rename(&path, &final_dir).map_err(|e| CandleError::io(&final_dir, e))?;
        } else {
            std::fs::remove_dir_all(&path).map_err(|e| CandleError::io(&path, e))?;
        }
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown host".into())
}

impl Shared {
    fn write_ledger(&self) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.ledger).unwrap_or_default() + "\n";
        match &self.remote {
            Some(remote) => remote_run::put_ledger(remote, text.as_bytes())?,
            None => write_atomic(&self.dir.join(LEDGER), text.as_bytes(), self.opts.checkpoint.write.has_fsync())?,
        }
        Ok(())
    }

    /// Uploads a checkpoint staged locally (runs in an object store) and removes the local copy;
    /// returns where it now is. Local runs: the path itself.
    fn publish(remote: Option<&Remote>, local: PathBuf) -> Result<PathBuf> {
        let Some(remote) = remote else { return Ok(local) };
        remote_run::upload_checkpoint(remote, &local)?;
        let name = local.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let _ = if local.is_dir() { std::fs::remove_dir_all(&local) } else { std::fs::remove_file(&local) };
        Ok(PathBuf::from(remote_run::url(&remote.prefix, &name)))
    }

    /// Records a committed checkpoint, then applies retention (ledger first, files after).
    fn commit(&mut self, entry: LedgerEntry) -> Result<()> {
        self.ledger.checkpoints.retain(|e| e.step != entry.step);
        self.ledger.checkpoints.push(entry);
        self.ledger.checkpoints.sort_by_key(|e| e.step);
        let keep = self.retained();
        let dropped: Vec<LedgerEntry> =
            self.ledger.checkpoints.iter().filter(|e| !keep.contains(&e.step)).cloned().collect();
        self.ledger.checkpoints.retain(|e| keep.contains(&e.step));
        self.write_ledger()?;
        for e in dropped {
            // Never anything but a checkpoint of the run (entries are checked when the run is
            // opened; this keeps deletion itself to the rule).
            if !e.follows_naming_rule() {
                continue;
            }
            if let Some(remote) = &self.remote {
                remote_run::delete_checkpoint(remote, &e.path)?;
                continue;
            }
            let p = self.dir.join(&e.path);
            remove_entry(&p).map_err(|err| CandleError::io(p, err))?;
        }
        Ok(())
    }

    /// The steps retention keeps: the newest `keep_last` loadable checkpoints and every
    /// checkpoint newer than the oldest of them, plus the best `keep` loadable ones by the
    /// keep-best metric. A checkpoint that is missing or damaged (see [`looks_loadable`]) counts
    /// toward neither, so damage never costs a good checkpoint; it is kept while it is among the
    /// newest (a resume skips it) and deleted once it ages out.
    fn retained(&self) -> BTreeSet<u64> {
        let all = &self.ledger.checkpoints;
        let mut known: BTreeMap<u64, bool> = BTreeMap::new();
        let mut loadable = |e: &LedgerEntry| {
            // Runs in an object store: their entries were listed when the run was opened, and
            // probing each would cost requests on every save.
            *known.entry(e.step).or_insert_with(|| self.remote.is_some() || looks_loadable(&self.dir, e))
        };
        let mut keep = BTreeSet::new();
        let mut good = 0;
        for e in all.iter().rev() {
            if good == self.opts.keep_last.max(1) {
                break;
            }
            keep.insert(e.step);
            good += usize::from(loadable(e));
        }
        if let Some(b) = &self.opts.keep_best {
            keep.extend(best_entries(all, b).into_iter().filter(|e| loadable(e)).take(b.keep).map(|e| e.step));
        }
        keep
    }
}

/// Entries with the metric, best first (ties: the earlier step first).
fn best_entries<'a>(all: &'a [LedgerEntry], b: &KeepBest) -> Vec<&'a LedgerEntry> {
    let mut v: Vec<&LedgerEntry> =
        all.iter().filter(|e| e.metrics.get(&b.metric).is_some_and(|x| x.is_finite())).collect();
    v.sort_by(|x, y| {
        let (a, c) = (x.metrics[&b.metric], y.metrics[&b.metric]);
        let ord = match b.mode {
            Mode::Min => a.total_cmp(&c),
            Mode::Max => c.total_cmp(&a),
        };
        ord.then(x.step.cmp(&y.step))
    });
    v
}

fn entry_for(state: &TrainState, path: String, checksums: bool) -> LedgerEntry {
    let metrics = state.metrics.iter().filter(|(_, v)| v.is_finite()).map(|(k, v)| (k.clone(), *v)).collect();
    LedgerEntry { step: state.step, epoch: state.epoch, path, metrics, checksums }
}

impl CheckpointManager {
    /// Opens (creating if needed) a run directory and takes its lock. Leftover temporary files
    /// from crashed writers are removed, and complete checkpoints missing from the ledger (a
    /// crash between a checkpoint's commit and its ledger entry) are verified and adopted.
    pub fn open(dir: impl AsRef<Path>, opts: ManagerOptions) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| CandleError::io(&dir, e))?;
        let lock_path = dir.join(LOCK);
        let mut lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| CandleError::io(&lock_path, e))?;
        if let Err(e) = lock.try_lock() {
            let holder = std::fs::read_to_string(&lock_path).unwrap_or_default().trim().to_string();
            let holder = if holder.is_empty() { format!("unknown holder: {e}") } else { holder };
            return Err(CandleError::Locked { dir, holder });
        }
        let since =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        lock.set_len(0).map_err(|e| CandleError::io(&lock_path, e))?;
        let _ = write!(lock, "pid {} on {} since unix time {since}", std::process::id(), hostname());
        let _ = lock.flush();

        remove_leftovers(&dir).map_err(|e| CandleError::io(&dir, e))?;
        // Sharded checkpoints caught half-written or mid-replacement.
        recover_sharded_leftovers(&dir)?;
        let ledger_path = dir.join(LEDGER);
        let mut ledger: Ledger = match Ledger::read_bytes(&ledger_path) {
            Ok(bytes) => Ledger::parse(&bytes).map_err(|e| CandleError::Checkpoint {
                path: ledger_path.clone(),
                reason: format!("{e}; move it away to rebuild it from the checkpoints"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ledger::default(),
            Err(e) => return Err(CandleError::io(ledger_path, e)),
        };
        let before = ledger.clone();
        let mut ignored = Vec::new();
        let mut steps = BTreeSet::new();
        ledger.checkpoints.retain(|e| {
            let problem = entry_problem(&dir, e)
                .or_else(|| (!steps.insert(e.step)).then(|| format!("a second entry for step {}", e.step)));
            match problem {
                Some(why) => {
                    ignored.push((e.clone(), why));
                    false
                }
                None => true,
            }
        });
        let mut adopted = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(|e| CandleError::io(&dir, e))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(step) = parse_step(&name) else { continue };
            if steps.contains(&step) {
                continue;
            }
            let Ok(kind) = e.file_type() else { continue };
            let target = match (kind.is_dir(), kind.is_file(), name.ends_with(".safetensors")) {
                (true, _, false) => e.path().join(safeckpt_format::index::DEFAULT_INDEX_NAME),
                (_, true, true) => e.path(),
                _ => continue,
            };
            let ok = ShardedReader::open(&target).ok().and_then(|set| {
                let reports = set.verify().ok().filter(|r| r.iter().all(|r| r.is_ok()))?;
                let state = read_train_state(&set).ok()?;
                Some((state, reports.iter().all(|r| r.has_checksums)))
            });
            // Adopted under the step its train state records, which must be the name's.
            if let Some((state, checksums)) = ok.filter(|(state, _)| state.step == step) {
                ledger.checkpoints.push(entry_for(&state, name.clone(), checksums));
                steps.insert(step);
                adopted.push(name);
            }
        }
        ledger.checkpoints.sort_by_key(|e| e.step);
        ledger.version = 1;
        ledger.keep_best = opts.keep_best.clone();
        let shared = Shared { dir: dir.clone(), opts, ledger, remote: None };
        if shared.ledger != before {
            shared.write_ledger()?;
        }
        Ok(CheckpointManager {
            shared: Arc::new(Mutex::new(shared)),
            dir,
            _lock: Some(lock),
            _staging: None,
            fence: Fence::default(),
            in_flight: None,
            adopted,
            ignored,
        })
    }

    /// Opens a run kept under a prefix of an object store (`s3://bucket/runs/exp1`), with the
    /// same layout, ledger, retention, resume and asynchronous saves as a run directory.
    /// Checkpoints are staged in a local temporary directory and uploaded once complete (shards
    /// before their index, the ledger after the checkpoint). Half-uploaded sharded checkpoints
    /// left by a crash (shards without an index) are deleted, and complete checkpoints missing
    /// from the ledger are verified and adopted.
    ///
    /// One writer at a time: the manager takes the prefix's lease (a `.lock` object written with
    /// conditional puts and renewed in the background; see `safeckpt_store::Lease`) before it
    /// touches anything, and fails with [`CandleError::Locked`] naming the holder while another
    /// live process holds it. A lease whose holder died is taken over after it has gone
    /// unrenewed for [`ManagerOptions::lease_ttl`]. Every upload, ledger write and deletion
    /// checks the lease first, so a writer that lost it stops committing.
    #[cfg(feature = "object-store")]
    pub fn open_remote(prefix: Prefix, opts: ManagerOptions) -> Result<Self> {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let holder = format!("pid {} on {} since unix time {since}", std::process::id(), hostname());
        let remote = remote_run::acquire(prefix, &holder, opts.lease_ttl)?;
        if let Some(previous) = remote_run::taken_over_from(&remote) {
            eprintln!(
                "safeckpt: {}: took over the lease of {previous}, which had not renewed it for {:?}",
                remote_run::url(&remote.prefix, ""),
                opts.lease_ttl
            );
        }
        let prefix = &remote.prefix;
        let staging = Staging::new()?;
        let listing = remote_run::scan(prefix)?;
        let mut ledger: Ledger = match &listing.ledger {
            Some(bytes) => Ledger::parse(bytes).map_err(|e| CandleError::Checkpoint {
                path: PathBuf::from(remote_run::url(prefix, LEDGER)),
                reason: format!("{e}; move it away to rebuild it from the checkpoints"),
            })?,
            None => Ledger::default(),
        };
        let before = ledger.clone();
        let complete: BTreeMap<&str, bool> = listing
            .entries
            .iter()
            .filter(|(n, is_dir, has_index)| parse_step(n).is_some() && (!is_dir || *has_index))
            .map(|(n, is_dir, _)| (n.as_str(), *is_dir))
            .collect();
        let mut ignored = Vec::new();
        let mut steps = BTreeSet::new();
        ledger.checkpoints.retain(|e| {
            let problem = if !e.follows_naming_rule() {
                Some(format!("`{}` is not the checkpoint of step {} in the run", e.path, e.step))
            } else if complete.get(e.path.as_str()) != Some(&e.is_sharded()) {
                Some("missing".to_string())
            } else if !steps.insert(e.step) {
                Some(format!("a second entry for step {}", e.step))
            } else {
                None
            };
            match problem {
                Some(why) => {
                    ignored.push((e.clone(), why));
                    false
                }
                None => true,
            }
        });
        let mut adopted = Vec::new();
        for (name, is_dir) in &complete {
            let Some(step) = parse_step(name) else { continue };
            if steps.contains(&step) || *is_dir == name.ends_with(".safetensors") {
                continue;
            }
            let into = staging.path().join("adopt");
            let found = remote_run::download_checkpoint(prefix, name, *is_dir, &into).ok().and_then(|local| {
                let set = ShardedReader::open(&local).ok()?;
                let reports = set.verify().ok().filter(|r| r.iter().all(|r| r.is_ok()))?;
                Some((read_train_state(&set).ok()?, reports.iter().all(|r| r.has_checksums)))
            });
            let _ = std::fs::remove_dir_all(&into);
            if let Some((state, checksums)) = found.filter(|(state, _)| state.step == step) {
                ledger.checkpoints.push(entry_for(&state, name.to_string(), checksums));
                steps.insert(step);
                adopted.push(name.to_string());
            }
        }
        for (name, is_dir, has_index) in &listing.entries {
            if *is_dir && !has_index && parse_step(name).is_some() {
                remote_run::delete_checkpoint(&remote, name)?;
            }
        }
        ledger.checkpoints.sort_by_key(|e| e.step);
        ledger.version = 1;
        ledger.keep_best = opts.keep_best.clone();
        let dir = staging.path().to_path_buf();
        let shared = Shared { dir: dir.clone(), opts, ledger, remote: Some(remote) };
        if shared.ledger != before {
            shared.write_ledger()?;
        }
        Ok(CheckpointManager {
            shared: Arc::new(Mutex::new(shared)),
            dir,
            _lock: None,
            _staging: Some(staging),
            fence: Fence::default(),
            in_flight: None,
            adopted,
            ignored,
        })
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The run directory (for a run in an object store, the local staging directory).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a run in an object store lives (`None` for a local run).
    pub fn remote_url(&self) -> Option<String> {
        self.shared().remote.as_ref().map(|r| remote_run::url(&r.prefix, ""))
    }

    /// Checkpoints adopted from the directory when it was opened (see [`CheckpointManager::open`]).
    pub fn adopted(&self) -> &[String] {
        &self.adopted
    }

    /// Ledger entries left out when the run was opened, with the reason: entries that do not
    /// name a checkpoint of their step inside the run (see [`LedgerEntry::follows_naming_rule`]),
    /// whose checkpoint is missing or not of its kind (a symbolic link, a directory where a file
    /// belongs), or that repeat a step. They are never opened, resumed from or deleted, and the
    /// ledger is rewritten without them.
    pub fn ignored(&self) -> &[(LedgerEntry, String)] {
        &self.ignored
    }

    /// Whether the policy asks for a checkpoint after `step` (and at the end of an epoch).
    pub fn should_save(&self, step: u64, end_of_epoch: bool) -> bool {
        let s = self.shared();
        (end_of_epoch && s.opts.save_every_epoch)
            || s.opts.save_every_steps.is_some_and(|n| n > 0 && step.is_multiple_of(n))
    }

    /// Every checkpoint in the ledger, oldest first.
    pub fn entries(&self) -> Vec<LedgerEntry> {
        self.shared().ledger.checkpoints.clone()
    }

    /// The most recent checkpoint.
    pub fn latest(&self) -> Option<LedgerEntry> {
        self.shared().ledger.checkpoints.last().cloned()
    }

    /// The best checkpoint by the `keep_best` metric.
    pub fn best(&self) -> Option<LedgerEntry> {
        let s = self.shared();
        let b = s.opts.keep_best.clone()?;
        best_entries(&s.ledger.checkpoints, &b).first().map(|e| (*e).clone())
    }

    /// The path of a ledger entry (the file, or the index of a sharded checkpoint); for a run in
    /// an object store, its URL.
    pub fn path_of(&self, e: &LedgerEntry) -> PathBuf {
        if let Some(remote) = &self.shared().remote {
            let name = if e.path.ends_with(".safetensors") {
                e.path.clone()
            } else {
                format!("{}/{}", e.path, safeckpt_format::index::DEFAULT_INDEX_NAME)
            };
            return PathBuf::from(remote_run::url(&remote.prefix, &name));
        }
        local_path(&self.dir, e)
    }

    /// A fence to give to optimizers (`set_fence`): their next step waits until an asynchronous
    /// save has finished copying the variables.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    fn target(&self, step: u64, sharded: bool) -> PathBuf {
        let name = file_name(step);
        if sharded { self.dir.join(name) } else { self.dir.join(format!("{name}.safetensors")) }
    }

    /// Saves a checkpoint now (waiting first for any save in flight, whose error it returns).
    pub fn save(
        &mut self,
        vars: &[(String, Var)],
        opt: Option<&dyn StatefulOptimizer>,
        state: &TrainState,
    ) -> Result<PathBuf> {
        self.wait()?;
        let opts = self.shared().opts.checkpoint.clone();
        let total: u64 = vars.iter().map(|(_, v)| (v.elem_count() * v.dtype().size_in_bytes()) as u64).sum();
        let sharded = opts.max_shard_size.is_some_and(|m| total > m);
        let path = if sharded {
            let tmp = self.dir.join(temp_dir_name(&file_name(state.step)));
            let _ = std::fs::remove_dir_all(&tmp);
            save_checkpoint(&tmp, vars, opt, state, &opts)?;
            let final_dir = self.target(state.step, true);
            install_dir(&self.dir, &tmp, &final_dir, opts.write.has_fsync())?;
            final_dir
        } else {
            save_checkpoint(self.target(state.step, false), vars, opt, state, &opts)?
        };
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let remote = self.shared().remote.clone();
        let path = Shared::publish(remote.as_ref(), path)?;
        self.shared().commit(entry_for(state, name, opts.write.has_checksums()))?;
        Ok(path)
    }

    /// Starts a save in the background and returns at once. A background thread writes the
    /// variables and optimizer state straight from their memory into the (not yet visible)
    /// checkpoint file, then opens the fence, then flushes and commits. The optimizer (given
    /// [`CheckpointManager::fence`]) waits on the fence before its next step, so the forward and
    /// backward passes overlap the write, and only an optimizer step that comes before the data
    /// is written waits. (CPU variables also stay read-locked while they are written, so nothing
    /// can modify them under the writer.)
    /// At most one save is in flight: this first waits for the previous one, and returns its
    /// error if it failed. Errors of this save surface on the next save or on `wait`.
    pub fn save_async(
        &mut self,
        vars: &[(String, Var)],
        opt: Option<&dyn StatefulOptimizer>,
        state: &TrainState,
    ) -> Result<()> {
        self.wait()?;
        let total: u64 = vars.iter().map(|(_, v)| (v.elem_count() * v.dtype().size_in_bytes()) as u64).sum();
        let source = SnapshotSource::new(vars, opt, state)?;
        let shared = Arc::clone(&self.shared);
        // Closed before the thread starts (so the caller's next step waits), opened by the thread
        // once the bytes are written, or when the thread fails to start.
        let hold = self.fence.hold();
        let step = state.step;
        let entry_state = state.clone();
        let target_file = self.target(step, false);
        let target_dir = self.target(step, true);
        let dir = self.dir.clone();
        let remote = self.shared().remote.clone();
        let handle = std::thread::Builder::new()
            .name(format!("safeckpt-save-{step}"))
            .spawn(move || -> Result<()> {
                let opts = shared.lock().unwrap_or_else(|p| p.into_inner()).opts.checkpoint.clone();
                let sharded = opts.max_shard_size.is_some_and(|m| total > m);
                let tmp_dir = dir.join(temp_dir_name(&file_name(step)));
                // Phase 1, fenced: every byte written from the live variables and optimizer
                // buffers; then the fence opens and training may modify them again.
                let guard = hold;
                let pending = if sharded {
                    let _ = std::fs::remove_dir_all(&tmp_dir);
                    source.write_pending(&tmp_dir, &opts)?
                } else {
                    source.write_pending(&target_file, &opts)?
                };
                drop(guard);
                // Phase 2, unfenced: flush, rename, ledger.
                let path = pending.commit(opts.write.has_fsync())?;
                let path = if sharded {
                    install_dir(&dir, &tmp_dir, &target_dir, opts.write.has_fsync())?;
                    target_dir
                } else {
                    path
                };
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                Shared::publish(remote.as_ref(), path)?;
                let entry = entry_for(&entry_state, name, opts.write.has_checksums());
                shared.lock().unwrap_or_else(|p| p.into_inner()).commit(entry)
            })
            .map_err(|e| CandleError::io(&self.dir, e))?;
        self.in_flight = Some((step, handle));
        Ok(())
    }

    /// Waits for the save in flight, if any, and returns its result.
    pub fn wait(&mut self) -> Result<()> {
        if let Some((step, h)) = self.in_flight.take() {
            return match h.join() {
                Ok(r) => r.map_err(|e| CandleError::AsyncSave { step, reason: e.to_string() }),
                Err(_) => Err(CandleError::AsyncSave { step, reason: "the save thread panicked".into() }),
            };
        }
        Ok(())
    }

    /// Whether a background save is running.
    pub fn in_flight(&self) -> bool {
        self.in_flight.as_ref().is_some_and(|(_, h)| !h.is_finished())
    }

    /// Restores the newest checkpoint that opens, verifies and loads (strictly), skipping and
    /// reporting damaged newer ones. `None` when the directory has no checkpoint yet.
    pub fn resume(
        &mut self,
        vars: &[(String, Var)],
        mut opt: Option<&mut dyn StatefulOptimizer>,
    ) -> Result<Option<Resumed>> {
        self.wait()?;
        let (entries, verify) = {
            let s = self.shared();
            (s.ledger.checkpoints.clone(), s.opts.verify_on_resume)
        };
        let remote = self.shared().remote.clone();
        let mut skipped = Vec::new();
        for entry in entries.iter().rev() {
            // A run in an object store: fetch the checkpoint into the staging directory first.
            let into = self.dir.join(".resume");
            let path = match &remote {
                None => Ok(self.path_of(entry)),
                Some(remote) => {
                    let is_dir = !entry.path.ends_with(".safetensors");
                    remote_run::download_checkpoint(&remote.prefix, &entry.path, is_dir, &into)
                }
            };
            let restored =
                path.and_then(|path| try_restore(&path, verify.then_some(entry.checksums), vars, opt.as_deref_mut()));
            if remote.is_some() {
                let _ = std::fs::remove_dir_all(&into);
            }
            match restored {
                Ok(l) => return Ok(Some(Resumed { entry: entry.clone(), state: l.state, report: l.report, skipped })),
                // A strict-load mismatch is the caller's model, not a damaged file: report it.
                Err(e @ CandleError::Load(_)) => return Err(e),
                Err(e) => skipped.push((entry.path.clone(), e.to_string())),
            }
        }
        if entries.is_empty() {
            Ok(None)
        } else {
            Err(CandleError::Checkpoint {
                path: self.dir.clone(),
                reason: format!("no checkpoint could be restored: {skipped:?}"),
            })
        }
    }
}

/// Opens, verifies (when `verify` is `Some(written_with_checksums)`) and strictly loads one
/// checkpoint.
fn try_restore<'o>(
    path: &Path,
    verify: Option<bool>,
    vars: &[(String, Var)],
    opt: Option<&mut (dyn StatefulOptimizer + 'o)>,
) -> Result<crate::checkpoint::Loaded> {
    let set = ShardedReader::open(path)?;
    if let Some(written_with_checksums) = verify {
        for r in set.verify()? {
            if let Some(f) = r.failures.first() {
                return Err(CandleError::Checkpoint { path: r.path.clone(), reason: f.to_string() });
            }
            if written_with_checksums && !r.has_checksums {
                return Err(CandleError::Checkpoint {
                    path: r.path.clone(),
                    reason: "written with checksums but carries no integrity record: its header was damaged".into(),
                });
            }
        }
    }
    load_checkpoint(&set, vars, opt, true)
}

impl Drop for CheckpointManager {
    fn drop(&mut self) {
        if let Err(e) = self.wait() {
            eprintln!("safeckpt: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    fn set(dir: &Path, content: &str) {
        std::fs::create_dir(dir).unwrap();
        std::fs::write(dir.join("model.safetensors.index.json"), content).unwrap();
    }

    fn content(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap()
    }

    /// Both ways of replacing a sharded checkpoint, the atomic exchange and the rename aside used
    /// where the filesystem has none, leave the new copy in place and nothing else.
    #[test]
    fn a_sharded_checkpoint_is_replaced_by_exchange_or_by_rename_aside() {
        let unsupported: fn(&Path, &Path) -> std::io::Result<bool> = |_, _| Ok(false);
        for (how, exchange) in [("exchange", exchange as fn(&Path, &Path) -> _), ("rename aside", unsupported)] {
            let run = tempfile::tempdir().unwrap();
            let (tmp, target) = (run.path().join(".ckpt-000000000001.tmp7"), run.path().join("ckpt-000000000001"));
            // Nothing to replace, then something.
            set(&tmp, "first");
            install_dir_with(run.path(), &tmp, &target, true, exchange).unwrap();
            assert_eq!(content(&target), "first", "{how}");
            set(&tmp, "second");
            install_dir_with(run.path(), &tmp, &target, true, exchange).unwrap();
            assert_eq!(content(&target), "second", "{how}");
            assert_eq!(names(run.path()), ["ckpt-000000000001"], "{how}");
        }
    }

    #[test]
    fn leftover_names() {
        assert_eq!(leftover_of(".ckpt-000000000001.tmp42"), Some(("ckpt-000000000001".into(), false)));
        assert_eq!(leftover_of(".ckpt-000000000001.old.42"), Some(("ckpt-000000000001".into(), true)));
        assert_eq!(leftover_of(&aside_name("ckpt-000000000003")), Some(("ckpt-000000000003".into(), true)));
        assert_eq!(leftover_of(&temp_dir_name("ckpt-000000000003")), Some(("ckpt-000000000003".into(), false)));
        assert_eq!(leftover_of(".ckpt-000000000001.safetensors.tmp42"), None);
        assert_eq!(leftover_of(".ckpt-1.tmp42"), None);
        assert_eq!(leftover_of("ckpt-000000000001.tmp42"), None);
    }
}
