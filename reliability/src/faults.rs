//! Injected faults: a file-size limit (RLIMIT_FSIZE), a full filesystem, a read-only filesystem
//! and a directory that vanishes. Each must give a clear error, leave no temporary file, and
//! leave the previous checkpoint intact and loadable.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use safeckpt_candle::{CheckpointManager, ManagerOptions, TrainState};
use safeckpt_reader::ShardedReader;
use safeckpt_writer::{WriteOptions, write_file};

use crate::{content, is_leftover, listing};

/// One fault and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultOutcome {
    /// The fault.
    pub fault: String,
    /// Whether the fault could be set up here (mounting needs privileges).
    pub ran: bool,
    /// The error the save reported.
    pub error: String,
    /// Whether the previous checkpoint was still intact (bytes and checksums).
    pub previous_intact: bool,
    /// Temporary files left behind.
    pub leftovers: usize,
}

impl FaultOutcome {
    /// Whether the fault was handled as promised.
    pub fn is_clean(&self) -> bool {
        !self.ran || (self.previous_intact && self.leftovers == 0 && !self.error.is_empty())
    }
}

fn previous(dir: &Path) -> Result<(PathBuf, Vec<u8>)> {
    let p = dir.join("ckpt.safetensors");
    let raw = content::raw(1, 1);
    write_file(&p, &content::sources(&raw), None, &WriteOptions::new())?;
    Ok((p.clone(), std::fs::read(&p)?))
}

fn intact(path: &Path, bytes: &[u8]) -> bool {
    std::fs::read(path).is_ok_and(|b| b == bytes)
        && ShardedReader::open(path).is_ok_and(|s| s.verify().is_ok_and(|r| r.iter().all(|r| r.is_ok())))
}

/// A save that hits the process's file-size limit: the child runs `exe save-once` under
/// `ulimit -f` with SIGXFSZ ignored, so the write fails with EFBIG.
pub fn file_size_limit(exe: &Path, dir: &Path) -> Result<FaultOutcome> {
    let (p, before) = previous(dir)?;
    let script = format!(
        "trap '' XFSZ; ulimit -f 256; exec \"{}\" save-once --dir \"{}\" --scale 64",
        exe.display(),
        dir.display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().context("running sh")?;
    let error = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Ok(FaultOutcome {
        fault: "file-size limit (RLIMIT_FSIZE 256 KiB, a 4.5 MiB save)".into(),
        ran: true,
        error: if out.status.success() { String::new() } else { error },
        previous_intact: intact(&p, &before),
        leftovers: listing(dir).iter().filter(|n| is_leftover(n)).count(),
    })
}

fn mount_tmpfs(at: &Path, size: &str) -> bool {
    std::fs::create_dir_all(at).is_ok()
        && Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success())
}

fn umount(at: &Path) {
    let _ = Command::new("umount").arg(at).status();
}

/// A save that fills a small filesystem (tmpfs of 2 MiB): ENOSPC.
pub fn disk_full(base: &Path) -> Result<FaultOutcome> {
    save_on_tmpfs(&base.join("small-fs"), "2m", false, 64, "full filesystem (2 MiB tmpfs, a 4.5 MiB save)")
}

/// A save into a filesystem remounted read-only: EROFS.
pub fn read_only(base: &Path) -> Result<FaultOutcome> {
    save_on_tmpfs(&base.join("ro-fs"), "8m", true, 1, "read-only filesystem (tmpfs remounted ro)")
}

/// Mounts a tmpfs of `size` at `mnt`, saves a previous checkpoint there, optionally remounts it
/// read-only, then attempts a save of `scale`; reports the outcome (not run where mounting is not
/// permitted).
fn save_on_tmpfs(mnt: &Path, size: &str, read_only: bool, scale: usize, fault: &str) -> Result<FaultOutcome> {
    let not_run = || FaultOutcome {
        fault: fault.to_string(),
        ran: false,
        error: String::new(),
        previous_intact: true,
        leftovers: 0,
    };
    if !mount_tmpfs(mnt, size) {
        return Ok(not_run());
    }
    let result = (|| -> Result<FaultOutcome> {
        let (p, before) = previous(mnt)?;
        if read_only && !Command::new("mount").args(["-o", "remount,ro"]).arg(mnt).status().is_ok_and(|s| s.success()) {
            return Ok(not_run());
        }
        let raw = content::raw(2, scale);
        let err = write_file(&p, &content::sources(&raw), None, &WriteOptions::new())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        Ok(FaultOutcome {
            fault: fault.to_string(),
            ran: true,
            error: err,
            previous_intact: intact(&p, &before),
            leftovers: listing(mnt).iter().filter(|n| is_leftover(n)).count(),
        })
    })();
    umount(mnt);
    result
}

/// A manager whose run directory is removed between two saves: the next save fails cleanly, and
/// an asynchronous save's failure is reported by `wait`.
pub fn vanished_directory(base: &Path) -> Result<Vec<FaultOutcome>> {
    let dir = base.join("vanishing-run");
    let mut out = Vec::new();
    for asynchronous in [false, true] {
        let mut m = CheckpointManager::open(&dir, ManagerOptions::default())?;
        m.save(&content::vars(1, 1)?, None, &TrainState::new(0, 1))?;
        std::fs::remove_dir_all(&dir)?;
        let vars = content::vars(2, 1)?;
        let err = if asynchronous {
            m.save_async(&vars, None, &TrainState::new(0, 2)).and_then(|_| m.wait())
        } else {
            m.save(&vars, None, &TrainState::new(0, 2)).map(|_| ())
        };
        out.push(FaultOutcome {
            fault: format!(
                "run directory removed before a {} save",
                if asynchronous { "background" } else { "synchronous" }
            ),
            ran: true,
            error: err.err().map(|e| e.to_string()).unwrap_or_default(),
            // The previous checkpoint went with the directory; nothing may have been recreated.
            previous_intact: !dir.exists(),
            leftovers: 0,
        });
        drop(m);
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(out)
}
