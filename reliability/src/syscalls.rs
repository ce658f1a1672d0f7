//! The system calls of a durable save, traced with strace: the data must reach the temporary file
//! and be flushed before the rename, and the directory must be flushed after it.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

/// What the trace showed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyscallReport {
    /// Whether strace was available.
    pub available: bool,
    /// The relevant calls, in order.
    pub calls: Vec<String>,
    /// Whether the order was: create temp (O_EXCL), write it, fsync it, rename it over the
    /// target, open and fsync the directory.
    pub ordered: bool,
    /// What was wrong, if anything.
    pub problem: Option<String>,
}

/// Traces `exe save-once --dir DIR` (one checkpoint written with fsync on).
pub fn durable_save_order(exe: &Path, dir: &Path) -> Result<SyscallReport> {
    if Command::new("strace").arg("-V").output().map(|o| !o.status.success()).unwrap_or(true) {
        return Ok(SyscallReport::default());
    }
    let log = dir.join("strace.log");
    let status = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-s",
            "200",
            "-e",
            "trace=openat,pwrite64,write,fsync,fdatasync,rename,renameat,renameat2",
            "-o",
        ])
        .arg(&log)
        .arg(exe)
        .args(["save-once", "--scale", "1", "--dir"])
        .arg(dir)
        .status()
        .context("running strace")?;
    anyhow::ensure!(status.success(), "the traced save failed");
    let text = std::fs::read_to_string(&log)?;
    let _ = std::fs::remove_file(&log);
    let dir_s = dir.display().to_string();
    let mut report = SyscallReport { available: true, ..Default::default() };
    let (mut temp_fd, mut temp_name) = (None::<String>, None::<String>);
    let mut step = 0; // 0: want create, 1: writes, 2: fsync seen, 3: renamed, 4: dir opened, 5: dir fsynced
    let mut dir_fd = None::<String>;
    let mut wrote = false;
    for line in text.lines() {
        let call = line.split_once(' ').map_or(line, |(_, rest)| rest.trim()).to_string();
        let result = call.rsplit_once("= ").map(|(_, r)| r.trim().to_string()).unwrap_or_default();
        if call.starts_with("openat(") && call.contains("safeckpt-tmp") && call.contains("O_EXCL") {
            temp_fd = Some(result.clone());
            temp_name = call.split('"').nth(1).map(str::to_string);
            report.calls.push(call);
            step = 1;
        } else if (1..3).contains(&step)
            && call.starts_with("pwrite64(")
            && temp_fd.as_deref().is_some_and(|fd| call.starts_with(&format!("pwrite64({fd},")))
        {
            if step == 2 {
                report.problem = Some("data written after the file was flushed".into());
            }
            if !wrote {
                report.calls.push(elide_buffer(&call));
            }
            wrote = true;
        } else if step == 1
            && temp_fd
                .as_deref()
                .is_some_and(|fd| call == format!("fsync({fd}) = 0") || call.starts_with(&format!("fsync({fd})")))
        {
            report.calls.push(call);
            step = 2;
        } else if call.starts_with("rename") && temp_name.as_deref().is_some_and(|t| call.contains(t)) {
            if step != 2 {
                report.problem.get_or_insert_with(|| "renamed before the file was flushed".into());
            }
            report.calls.push(call);
            step = 3;
        } else if step == 3 && call.starts_with("openat(") && call.contains(&format!("\"{dir_s}\"")) {
            dir_fd = Some(result.clone());
            report.calls.push(call);
            step = 4;
        } else if step == 4 && dir_fd.as_deref().is_some_and(|fd| call.starts_with(&format!("fsync({fd})"))) {
            report.calls.push(call);
            step = 5;
        }
    }
    report.ordered = step == 5 && wrote && report.problem.is_none();
    if !report.ordered && report.problem.is_none() {
        report.problem = Some(format!("the trace stopped at stage {step} of 5"));
    }
    Ok(report)
}

/// `pwrite64(3, "<bytes>"..., 4096, 1088) = 4096` without the bytes.
fn elide_buffer(call: &str) -> String {
    let Some((head, rest)) = call.split_once(", ") else { return call.to_string() };
    let Some((args, result)) = rest.rsplit_once(") = ") else { return call.to_string() };
    let mut tail = args.rsplitn(3, ", ");
    let (offset, len) = (tail.next().unwrap_or(""), tail.next().unwrap_or(""));
    format!("{head}, …, {len}, {offset}) = {result}")
}
