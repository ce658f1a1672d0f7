//! Runs of the checkpoint manager (a run directory, or a prefix in an object store, holding a
//! `ledger.json`): `safeckpt inspect RUN` lists its checkpoints, `safeckpt verify RUN` checks
//! every one of them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use safeckpt_candle::manager::{LEDGER, LOCK};
use safeckpt_candle::{Ledger, LedgerEntry, Mode};
use safeckpt_store::{LEASE_NAME, Location, ObjectLocation, list, read_object};
use serde_json::{Value, json};

use crate::util::human_bytes;

/// Where a run lives.
pub enum Place {
    /// A run directory.
    Local(PathBuf),
    /// A prefix in an object store.
    Remote(ObjectLocation),
}

/// A run: its ledger, the size of each checkpoint, and who writes it.
pub struct Run {
    /// Where.
    pub place: Place,
    /// Its ledger.
    pub ledger: Ledger,
    sizes: BTreeMap<String, u64>,
    writer: Writer,
    /// Ledger entries left out because they do not name one of the run's checkpoints (an
    /// absolute path, `..`, another file): never opened, sized or verified.
    ignored: Vec<String>,
}

enum Writer {
    /// Nobody holds the run.
    None { last: Option<String> },
    /// A process holds the run directory's lock.
    Local { holder: String },
    /// A lease object is present.
    Lease { holder: String, age_s: Option<f64> },
    /// Cannot be told.
    Unknown { holder: String },
}

/// The run at `loc`, if `loc` is one (a directory or prefix holding a ledger).
pub fn open(loc: &Location) -> Result<Option<Run>> {
    match loc {
        Location::Local(dir) => {
            let ledger_path = dir.join(LEDGER);
            if !dir.is_dir() || !ledger_path.is_file() {
                return Ok(None);
            }
            let bytes = Ledger::read_bytes(&ledger_path).with_context(|| ledger_path.display().to_string())?;
            let mut ledger = Ledger::parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", ledger_path.display()))?;
            let ignored = confine(&mut ledger);
            let mut sizes = BTreeMap::new();
            for e in &ledger.checkpoints {
                sizes.insert(e.path.clone(), local_size(&dir.join(&e.path)));
            }
            let writer = local_writer(&dir.join(LOCK));
            Ok(Some(Run { place: Place::Local(dir.clone()), ledger, sizes, writer, ignored }))
        }
        Location::Object(prefix) => {
            if prefix.path.extension().is_some() {
                return Ok(None);
            }
            let listing = list(prefix)?;
            if !listing.iter().any(|(n, _)| n == LEDGER) {
                return Ok(None);
            }
            let ledger_loc = prefix.join(LEDGER);
            let bytes = read_object(&ledger_loc, Ledger::MAX_LEN)?;
            let mut ledger = Ledger::parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", ledger_loc.url()))?;
            let ignored = confine(&mut ledger);
            let files: BTreeMap<&str, u64> = listing.iter().map(|(n, s)| (n.as_str(), *s)).collect();
            let mut sizes = BTreeMap::new();
            for e in &ledger.checkpoints {
                let size = match files.get(e.path.as_str()) {
                    Some(s) => *s,
                    None if files.contains_key(format!("{}/", e.path).as_str()) => {
                        list(&prefix.join(&e.path))?.iter().map(|(_, s)| s).sum()
                    }
                    None => 0,
                };
                sizes.insert(e.path.clone(), size);
            }
            let writer = if files.contains_key(LEASE_NAME) {
                remote_writer(&prefix.join(LEASE_NAME))
            } else {
                Writer::None { last: None }
            };
            Ok(Some(Run { place: Place::Remote(prefix.clone()), ledger, sizes, writer, ignored }))
        }
    }
}

/// Drops the entries that do not name a checkpoint of the run by its naming rule (the rule the
/// manager itself applies), returning their paths.
fn confine(ledger: &mut Ledger) -> Vec<String> {
    let mut ignored = Vec::new();
    ledger.checkpoints.retain(|e| {
        let ok = e.follows_naming_rule();
        if !ok {
            ignored.push(e.path.clone());
        }
        ok
    });
    ignored
}

fn local_size(p: &Path) -> u64 {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => std::fs::read_dir(p)
            .map(|d| d.flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

/// Whether a process holds the lock file, told from the kernel's table of file locks
/// (`/proc/locks`) without touching the lock, so that a writer starting now is not disturbed.
fn local_writer(lock: &Path) -> Writer {
    use std::os::unix::fs::MetadataExt;
    let holder = std::fs::read_to_string(lock).map(|s| s.trim().to_string()).unwrap_or_default();
    let Ok(meta) = std::fs::metadata(lock) else { return Writer::None { last: None } };
    let Ok(table) = std::fs::read_to_string("/proc/locks") else { return Writer::Unknown { holder } };
    let (major, minor) =
        ((meta.dev() >> 8) & 0xfff | (meta.dev() >> 32) & !0xfff, meta.dev() & 0xff | (meta.dev() >> 12) & !0xff);
    let wanted = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let held = table.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&"FLOCK") && f.get(5).is_some_and(|id| same_file_id(id, &wanted))
    });
    if held { Writer::Local { holder } } else { Writer::None { last: (!holder.is_empty()).then_some(holder) } }
}

/// `/proc/locks` writes `major:minor:inode` with hex device numbers of varying width.
fn same_file_id(a: &str, b: &str) -> bool {
    let parse = |s: &str| -> Option<(u64, u64, u64)> {
        let mut it = s.split(':');
        let major = u64::from_str_radix(it.next()?, 16).ok()?;
        let minor = u64::from_str_radix(it.next()?, 16).ok()?;
        let ino = it.next()?.parse().ok()?;
        Some((major, minor, ino))
    };
    parse(a).is_some_and(|x| Some(x) == parse(b))
}

fn remote_writer(lease: &ObjectLocation) -> Writer {
    let Ok(bytes) = read_object(lease, 64 << 10) else {
        return Writer::Unknown { holder: "an unreadable lease object".into() };
    };
    let doc: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let holder = doc.get("holder").and_then(Value::as_str).unwrap_or("an unreadable lease object").to_string();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let age_s = doc.get("written_unix_ms").and_then(Value::as_i64).map(|t| (now - t) as f64 / 1000.0);
    Writer::Lease { holder, age_s }
}

impl Run {
    /// Where the run is, for messages.
    pub fn shown(&self) -> String {
        match &self.place {
            Place::Local(p) => p.display().to_string(),
            Place::Remote(o) => o.url(),
        }
    }

    /// The file or index (path or URL) of a checkpoint.
    pub fn checkpoint(&self, e: &LedgerEntry) -> PathBuf {
        let name = if e.path.ends_with(".safetensors") {
            e.path.clone()
        } else {
            format!("{}/{}", e.path, safeckpt_format::index::DEFAULT_INDEX_NAME)
        };
        match &self.place {
            Place::Local(p) => p.join(name),
            Place::Remote(o) => PathBuf::from(o.join(&name).url()),
        }
    }

    fn writer_text(&self) -> String {
        let text = self.writer_text_raw();
        crate::util::printable(&text, false).into_owned()
    }

    fn writer_text_raw(&self) -> String {
        match &self.writer {
            Writer::None { last: None } => "none".into(),
            Writer::None { last: Some(h) } => format!("none (the last was {h})"),
            Writer::Local { holder } => format!("{holder} (holds the lock now)"),
            Writer::Lease { holder, age_s: Some(a) } => {
                format!("{holder} (lease written {a:.0} s ago by its clock; a dead writer's lease expires)")
            }
            Writer::Lease { holder, age_s: None } => format!("{holder} (lease present)"),
            Writer::Unknown { holder } => format!("{holder} (lock file present; whether it is held is unknown)"),
        }
    }

    /// The listing, as text or JSON.
    pub fn render(&self, as_json: bool) -> Result<String> {
        let latest = self.ledger.latest().map(|e| e.step);
        let best = self.ledger.best().map(|e| e.step);
        if as_json {
            let checkpoints: Vec<Value> = self
                .ledger
                .checkpoints
                .iter()
                .map(|e| {
                    json!({
                        "step": e.step, "epoch": e.epoch, "path": e.path, "metrics": e.metrics,
                        "checksums": e.checksums, "bytes": self.sizes.get(&e.path),
                        "latest": Some(e.step) == latest, "best": Some(e.step) == best,
                    })
                })
                .collect();
            let doc = json!({
                "run": self.shown(),
                "checkpoints": checkpoints,
                "keep_best": self.ledger.keep_best,
                "writer": self.writer_text(),
                "ignored_entries": self.ignored,
            });
            return Ok(serde_json::to_string_pretty(&doc)? + "\n");
        }
        let mut out = String::new();
        let n = self.ledger.checkpoints.len();
        writeln!(out, "run {}: {n} checkpoint{} in {LEDGER}", self.shown(), if n == 1 { "" } else { "s" })?;
        if let Some(b) = &self.ledger.keep_best {
            let dir = if b.mode == Mode::Min { "lowest" } else { "highest" };
            writeln!(out, "keeps the best {} by {} ({dir}) besides the latest", b.keep, b.metric)?;
        }
        writeln!(out, "writer: {}", self.writer_text())?;
        for p in &self.ignored {
            writeln!(
                out,
                "ignored ledger entry `{}`: not one of the run's checkpoint names",
                crate::util::printable(p, false)
            )?;
        }
        if n == 0 {
            return Ok(out);
        }
        let metrics: BTreeSet<&str> =
            self.ledger.checkpoints.iter().flat_map(|e| e.metrics.keys().map(String::as_str)).collect();
        let width = self.ledger.checkpoints.iter().map(|e| e.path.len()).max().unwrap_or(0).max(10);
        let mut header =
            format!("\n  {:>12}  {:>6}  {:<width$}  {:>10}  {:>9}", "step", "epoch", "checkpoint", "size", "checksums");
        for m in &metrics {
            write!(header, "  {:>10}", crate::util::printable(m, false))?;
        }
        writeln!(out, "{header}")?;
        for e in &self.ledger.checkpoints {
            let size = self.sizes.get(&e.path).copied().unwrap_or(0);
            let mut line = format!(
                "  {:>12}  {:>6}  {:<width$}  {:>10}  {:>9}",
                e.step,
                e.epoch,
                crate::util::printable(&e.path, false),
                human_bytes(size),
                if e.checksums { "yes" } else { "no" }
            );
            for m in &metrics {
                match e.metrics.get(*m) {
                    Some(v) => write!(line, "  {:>10}", format!("{v:.4}"))?,
                    None => write!(line, "  {:>10}", "-")?,
                }
            }
            let mut tags = Vec::new();
            if Some(e.step) == latest {
                tags.push("latest");
            }
            if Some(e.step) == best {
                tags.push("best");
            }
            if !tags.is_empty() {
                write!(line, "  {}", tags.join(", "))?;
            }
            writeln!(out, "{line}")?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::same_file_id;

    #[test]
    fn proc_locks_ids_compare_by_value() {
        assert!(same_file_id("fd:01:1234", "fd:1:1234"));
        assert!(same_file_id("00:2a:77", "0:2a:77"));
        assert!(!same_file_id("fd:01:1234", "fd:01:1235"));
        assert!(!same_file_id("garbage", "fd:01:1"));
    }
}
