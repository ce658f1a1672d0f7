//! `safeckpt verify`: structure and checksums.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use safeckpt_reader::ShardedReader;
use serde_json::json;

use crate::util::{EXIT_FAILURE, EXIT_OK, Exit, human_bytes, human_duration, progress_bar};

/// Verifies a file or set; returns the exit status (0 sound, 1 checksum failure, or a file
/// without checksums when they are required). Structural problems surface as errors (exit 2)
/// from opening.
pub fn verify(path: &Path, as_json: bool, quiet: bool, require_checksums: bool) -> Result<i32> {
    let start = Instant::now();
    let set = ShardedReader::open(path)?;
    let pb = if quiet || as_json { indicatif::ProgressBar::hidden() } else { progress_bar(set.data_len(), "verify") };
    let reports = set.verify_with_progress(&|n| pb.inc(n))?;
    pb.finish_and_clear();
    let elapsed = start.elapsed();
    let mut failures: Vec<String> =
        reports.iter().flat_map(|r| r.failures.iter().map(move |f| format!("{}: {f}", r.path.display()))).collect();
    if require_checksums {
        failures.extend(
            reports
                .iter()
                .filter(|r| !r.has_checksums)
                .map(|r| format!("{}: no checksums recorded (--require-checksums)", r.path.display())),
        );
    }
    let with_sums = reports.iter().filter(|r| r.has_checksums).count();
    let bytes: u64 = reports.iter().map(|r| r.bytes_checked).sum();
    if as_json {
        let doc = json!({
            "path": path.display().to_string(),
            "ok": failures.is_empty(),
            "files": reports.len(),
            "files_with_checksums": with_sums,
            "tensors": set.len(),
            "bytes_checked": bytes,
            "failures": failures,
            "seconds": elapsed.as_secs_f64(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(if failures.is_empty() { EXIT_OK } else { EXIT_FAILURE });
    } else if failures.is_empty() {
        if !quiet {
            let what = if with_sums == reports.len() {
                format!("{} verified against xxh3-64 checksums", human_bytes(bytes))
            } else if with_sums == 0 {
                "structure valid; no checksums recorded, so the data could not be checked".to_string()
            } else {
                format!(
                    "{} verified; {} of {} files carry no checksums",
                    human_bytes(bytes),
                    reports.len() - with_sums,
                    reports.len()
                )
            };
            println!(
                "OK  {}: {} tensors in {} file(s), {what} in {}",
                path.display(),
                set.len(),
                reports.len(),
                human_duration(elapsed)
            );
        }
    } else {
        for f in &failures {
            eprintln!("FAILED  {f}");
        }
        return Err(Exit(EXIT_FAILURE, format!("{}: {} integrity failure(s)", path.display(), failures.len())).into());
    }
    Ok(EXIT_OK)
}
