//! `safeckpt verify`: structure and checksums.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use safeckpt_reader::ShardedReader;
use safeckpt_store::{Location, RemoteSet, StoreOptions};
use serde_json::json;

use crate::util::{EXIT_FAILURE, EXIT_OK, Exit, count, human_bytes, human_duration, progress_bar};

/// Verifies a file or set; returns the exit status (0 sound, 1 checksum failure, or a file
/// without checksums when they are required). Structural problems surface as errors (exit 2)
/// from opening.
pub fn verify(path: &Path, opts: &StoreOptions, as_json: bool, quiet: bool, require_checksums: bool) -> Result<i32> {
    let loc = crate::remote::input_location(path, opts)?;
    if let Some(run) = crate::run_info::open(&loc)? {
        return verify_run(&run, opts, as_json, quiet, require_checksums);
    }
    let start = Instant::now();
    let hidden = quiet || as_json;
    let (shown, reports, tensors) = match loc {
        Location::Local(p) => {
            crate::util::require_file_or_dir(&p)?;
            let set = ShardedReader::open(&p)?;
            let pb = if hidden { indicatif::ProgressBar::hidden() } else { progress_bar(set.data_len(), "verify") };
            let reports = set.verify_with_progress(&|n| pb.inc(n))?;
            pb.finish_and_clear();
            (p.display().to_string(), reports, set.len())
        }
        Location::Object(o) => {
            let set = RemoteSet::open(&o)?;
            let pb = if hidden { indicatif::ProgressBar::hidden() } else { progress_bar(set.data_len(), "verify") };
            let reports = set.verify_with_progress(&|n| pb.inc(n))?;
            pb.finish_and_clear();
            (o.url(), reports, set.names().len())
        }
    };
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
            "path": shown,
            "ok": failures.is_empty(),
            "files": reports.len(),
            "files_with_checksums": with_sums,
            "tensors": tensors,
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
                    "{} verified; {} of {} carry no checksums",
                    human_bytes(bytes),
                    reports.len() - with_sums,
                    count(reports.len(), "file")
                )
            };
            println!(
                "OK  {}: {} in {}, {what} in {}",
                shown,
                count(tensors, "tensor"),
                count(reports.len(), "file"),
                human_duration(elapsed)
            );
        }
    } else {
        for f in &failures {
            eprintln!("FAILED  {}", crate::util::printable(f, false));
        }
        return Err(Exit(EXIT_FAILURE, format!("{shown}: {}", count(failures.len(), "integrity failure"))).into());
    }
    Ok(EXIT_OK)
}

/// Verifies every checkpoint of a run; one line each, newest first. A checkpoint the ledger
/// records as written with checksums must still carry them. Exit 1 when any fails.
fn verify_run(
    run: &crate::run_info::Run,
    opts: &StoreOptions,
    as_json: bool,
    quiet: bool,
    require_checksums: bool,
) -> Result<i32> {
    let mut results = Vec::new();
    let mut failed = 0;
    for e in run.ledger.checkpoints.iter().rev() {
        let path = run.checkpoint(e);
        let outcome = verify(&path, opts, false, true, require_checksums || e.checksums);
        let problem = match &outcome {
            Ok(code) if *code == EXIT_OK => None,
            Ok(code) => Some(format!("exit {code}")),
            Err(err) => Some(crate::util::error_text(err)),
        };
        if problem.is_some() {
            failed += 1;
        }
        if as_json {
            results.push(
                json!({"step": e.step, "path": path.display().to_string(), "ok": problem.is_none(), "error": problem}),
            );
        } else if let Some(p) = &problem {
            eprintln!("FAILED  step {}: {}", e.step, crate::util::printable(p, false));
        } else if !quiet {
            println!("OK      step {}: {}", e.step, path.display());
        }
    }
    let n = run.ledger.checkpoints.len();
    if as_json {
        let doc = json!({"run": run.shown(), "ok": failed == 0, "checkpoints": results});
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(if failed == 0 { EXIT_OK } else { EXIT_FAILURE });
    }
    if failed > 0 {
        return Err(
            Exit(EXIT_FAILURE, format!("{}: {failed} of {} failed", run.shown(), count(n, "checkpoint"))).into()
        );
    }
    if !quiet {
        println!(
            "OK  {}: {} verified",
            run.shown(),
            if n == 1 { "the checkpoint".to_string() } else { format!("all {}", count(n, "checkpoint")) }
        );
    }
    Ok(EXIT_OK)
}
