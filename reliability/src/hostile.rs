//! Hostile headers: the cost of a header claiming a huge number of tiny tensors.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

/// The cost of parsing one header.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderBombReport {
    /// Tensors the header declares.
    pub tensors: usize,
    /// Header size in bytes.
    pub header_bytes: usize,
    /// Seconds to open and validate it.
    pub seconds: f64,
    /// Growth of the process's peak resident memory while doing so, in MiB.
    pub peak_rss_growth_mib: f64,
}

/// Writes a file whose header declares `n` empty tensors (names 32+ bytes long) and measures,
/// in a fresh process (`exe parse-header`), opening and validating it.
pub fn header_bomb(exe: &Path, dir: &Path, n: usize) -> Result<HeaderBombReport> {
    let path = dir.join(format!("bomb-{n}.safetensors"));
    let mut json = String::with_capacity(n * 80);
    json.push('{');
    for i in 0..n {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&format!(
            "\"model.layers.{i:09}.attention.weight\":{{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}"
        ));
    }
    json.push('}');
    while !(8 + json.len()).is_multiple_of(8) {
        json.push(' ');
    }
    {
        let mut f = std::fs::File::create(&path)?;
        f.write_all(&(json.len() as u64).to_le_bytes())?;
        f.write_all(json.as_bytes())?;
    }
    let out = Command::new(exe).arg("parse-header").arg(&path).output().context("running parse-header")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace();
    let seconds: f64 = parts.next().and_then(|s| s.parse().ok()).context("parse-header output")?;
    let growth: f64 = parts.next().and_then(|s| s.parse().ok()).context("parse-header output")?;
    let _ = std::fs::remove_file(&path);
    Ok(HeaderBombReport { tensors: n, header_bytes: json.len(), seconds, peak_rss_growth_mib: growth })
}

/// Peak resident set size of this process so far, in KiB (`VmHWM`).
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
