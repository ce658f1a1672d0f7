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

/// What the malicious-pickle corpus did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaliciousReport {
    /// Files whose pickle would run code under `torch.load` (they name the canary file the code
    /// creates).
    pub files: usize,
    /// Files refused by both opening and converting, each with an error naming the file.
    pub refused: usize,
    /// Files whose canary appeared: code ran.
    pub executed: usize,
    /// Files opened or converted without an error (they must all be refused).
    pub accepted: Vec<String>,
}

/// Opens and converts every file with a `canary` in the manifests under `fixtures` (the PyTorch
/// corpus and its `extra/` set), in the working directory `work`, and looks for the canaries
/// there, in the process's working directory and in the system temporary directory.
pub fn malicious_corpus(fixtures: &Path, work: &Path) -> Result<MaliciousReport> {
    let mut report = MaliciousReport::default();
    for dir in [fixtures.to_path_buf(), fixtures.join("extra")] {
        // Python's `json` writes NaN and Infinity, which are not JSON; they only occur in values.
        let text = std::fs::read_to_string(dir.join("manifest.json"))?;
        let text = text.replace("-Infinity", "null").replace("Infinity", "null").replace("NaN", "null");
        let manifest: serde_json::Value = serde_json::from_str(&text)?;
        let files = manifest["files"].as_object().context("manifest without files")?;
        for (name, want) in files {
            let Some(canary) = want.get("canary").and_then(|c| c.as_str()) else { continue };
            report.files += 1;
            let path = dir.join(name);
            let opened = safeckpt_torch::TorchArchive::open(&path);
            let out = work.join(format!("{name}.safetensors"));
            let converted = safeckpt_torch::convert(&path, &out, &safeckpt_torch::ConvertOptions::default(), &|_| {});
            let named = |e: &dyn std::fmt::Display| e.to_string().contains(name.as_str());
            match (opened, converted) {
                (Err(a), Err(b)) if named(&a) && named(&b) && !out.exists() => report.refused += 1,
                _ => report.accepted.push(name.clone()),
            }
            let cwd = std::env::current_dir()?;
            if [work, cwd.as_path(), std::env::temp_dir().as_path()].iter().any(|d| d.join(canary).exists()) {
                report.executed += 1;
            }
        }
    }
    Ok(report)
}

/// One resource attack on the PyTorch importer, measured in a fresh process.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportAttack {
    /// The file.
    pub name: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// What it attacks (from the manifest).
    pub attack: String,
    /// Seconds to open, describe and convert (or be refused).
    pub seconds: f64,
    /// Growth of peak resident memory while doing so, in MiB.
    pub peak_rss_growth_mib: f64,
    /// `converted`, or the error's text.
    pub outcome: String,
    /// Whether the outcome is the one the manifest expects (`reject` with its error, or `ok`).
    pub as_expected: bool,
}

/// What `exe import-attack FILE OUT` does in its own process: open the file, describe its tensors
/// (nothing read), convert it with the default limits, and print `seconds peak-growth-MiB outcome`.
pub fn import_attack_child(path: &Path, out: &Path) -> Result<()> {
    let before = peak_rss_kib();
    let t = std::time::Instant::now();
    let outcome = safeckpt_torch::TorchArchive::open(path)
        .and_then(|a| {
            a.describe(None)?;
            a.convert(out, &safeckpt_torch::ConvertOptions::default(), &|_| {})
        })
        .map(|_| "converted".to_string())
        .unwrap_or_else(|e| e.to_string());
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(out);
    println!("{secs} {} {}", peak_rss_kib().saturating_sub(before) as f64 / 1024.0, outcome.replace('\n', " "));
    Ok(())
}

/// Runs every file of the attack corpus (`fixtures/pytorch/attacks`, plus the large case its
/// script makes on demand, written under `work`) through [`import_attack_child`] in a fresh
/// process each.
pub fn import_attacks(exe: &Path, attacks: &Path, work: &Path) -> Result<Vec<ImportAttack>> {
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(attacks.join("manifest.json"))?)?;
    let mut files: Vec<(std::path::PathBuf, String, Option<String>)> = manifest["files"]
        .as_object()
        .context("manifest without files")?
        .iter()
        .map(|(name, want)| {
            let error = (want["expect"] == "reject").then(|| want["error"].as_str().unwrap_or("").to_string());
            (attacks.join(name), want["attack"].as_str().unwrap_or("").to_string(), error)
        })
        .collect();
    let status = Command::new("python3")
        .arg(attacks.join("make_attacks.py"))
        .arg("--large")
        .arg(work)
        .status()
        .context("running make_attacks.py --large (needs python3)")?;
    anyhow::ensure!(status.success(), "make_attacks.py --large failed");
    files.push((
        work.join("many_storages.pth"),
        "160,000 storage records (looked up by a linear scan: quadratic)".into(),
        None,
    ));
    let mut rows = Vec::new();
    for (path, attack, error) in files {
        let out = Command::new(exe)
            .arg("import-attack")
            .arg(&path)
            .arg(work.join("attack-out.safetensors"))
            .output()
            .context("running import-attack")?;
        anyhow::ensure!(
            out.status.success(),
            "import-attack {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut parts = text.trim().splitn(3, ' ');
        let seconds: f64 = parts.next().and_then(|s| s.parse().ok()).context("import-attack output")?;
        let growth: f64 = parts.next().and_then(|s| s.parse().ok()).context("import-attack output")?;
        let outcome = parts.next().unwrap_or("").to_string();
        let as_expected = match &error {
            None => outcome == "converted",
            Some(e) => outcome != "converted" && outcome.contains(e.as_str()),
        };
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let bytes = std::fs::metadata(&path)?.len();
        let _ = if name == "many_storages.pth" { std::fs::remove_file(&path) } else { Ok(()) };
        rows.push(ImportAttack { name, bytes, attack, seconds, peak_rss_growth_mib: growth, outcome, as_expected });
    }
    Ok(rows)
}
