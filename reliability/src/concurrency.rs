//! Concurrency: a second writer on a run directory, and readers opening the latest checkpoint
//! while a writer commits.

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use safeckpt_candle::{CandleError, CheckpointManager, CheckpointOptions, ManagerOptions, TrainState};
use safeckpt_reader::Reader;
use safeckpt_writer::WriteOptions;

use crate::content;

/// What a second writer saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockOutcome {
    /// Whether it was refused.
    pub refused: bool,
    /// Whether the refusal named the holder's process id.
    pub names_holder: bool,
    /// The message.
    pub message: String,
}

/// Starts `exe hold-lock` (a process holding the run directory) and tries to open the same
/// directory from this process.
pub fn second_writer(exe: &Path, dir: &Path) -> Result<LockOutcome> {
    let mut child = Command::new(exe)
        .args(["hold-lock", "--ms", "5000", "--dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the lock holder")?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let result = CheckpointManager::open(dir, ManagerOptions::default());
    let _ = child.kill();
    let _ = child.wait();
    Ok(match result {
        Err(e @ CandleError::Locked { .. }) => {
            let message = e.to_string();
            LockOutcome { refused: true, names_holder: message.contains(&format!("pid {}", child.id())), message }
        }
        Err(e) => LockOutcome { refused: false, names_holder: false, message: format!("unexpected error: {e}") },
        Ok(_) => LockOutcome { refused: false, names_holder: false, message: "a second writer was let in".into() },
    })
}

/// What readers saw while a writer committed checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReaderReport {
    /// Checkpoints committed by the writer.
    pub commits: usize,
    /// Times a reader read the ledger and opened its latest checkpoint.
    pub reads: usize,
    /// Of those, opened and verified.
    pub verified: usize,
    /// Of those, the file had already been removed by retention (a stale ledger read, not damage).
    pub vanished: usize,
    /// Torn reads: a ledger that did not parse, or a checkpoint that did not open or verify.
    pub torn: usize,
}

/// One writer commits `commits` checkpoints (keeping the last 2) while two reader threads loop:
/// read the ledger, open its latest checkpoint, verify it.
pub fn readers_during_commits(dir: &Path, commits: usize) -> Result<ReaderReport> {
    let opts = ManagerOptions {
        keep_last: 2,
        checkpoint: CheckpointOptions { write: WriteOptions::new().fsync(false), max_shard_size: None },
        ..Default::default()
    };
    let mut manager = CheckpointManager::open(dir, opts)?;
    let done = AtomicBool::new(false);
    let mut report = ReaderReport { commits, ..Default::default() };
    let counts: Vec<ReaderReport> = std::thread::scope(|s| -> Result<Vec<ReaderReport>> {
        let readers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut r = ReaderReport::default();
                    while !done.load(Ordering::Acquire) {
                        let Ok(text) = std::fs::read(dir.join(safeckpt_candle::manager::LEDGER)) else { continue };
                        let Ok(ledger) = serde_json::from_slice::<serde_json::Value>(&text) else {
                            r.torn += 1;
                            continue;
                        };
                        let Some(path) =
                            ledger["checkpoints"].as_array().and_then(|a| a.last()).and_then(|e| e["path"].as_str())
                        else {
                            continue;
                        };
                        r.reads += 1;
                        match Reader::open(dir.join(path)) {
                            Err(safeckpt_reader::ReadError::Io { source, .. })
                                if source.kind() == std::io::ErrorKind::NotFound =>
                            {
                                r.vanished += 1
                            }
                            Err(_) => r.torn += 1,
                            Ok(rd) => {
                                if rd.verify().is_ok_and(|v| v.is_ok() && v.has_checksums) {
                                    r.verified += 1
                                } else {
                                    r.torn += 1
                                }
                            }
                        }
                    }
                    r
                })
            })
            .collect();
        for step in 1..=commits as u64 {
            let vars = content::vars(step, 2)?;
            manager.save(&vars, None, &TrainState::new(0, step))?;
        }
        done.store(true, Ordering::Release);
        Ok(readers.into_iter().map(|h| h.join().unwrap_or_default()).collect())
    })?;
    for c in counts {
        report.reads += c.reads;
        report.verified += c.verified;
        report.vanished += c.vanished;
        report.torn += c.torn;
    }
    Ok(report)
}
