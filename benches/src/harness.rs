//! Interleaved rounds, medians and reports.

use std::time::{Duration, Instant};

/// A named case: runs once and returns the time it measured (setup and cleanup excluded).
pub(crate) struct Case<'a> {
    pub(crate) name: &'static str,
    pub(crate) run: Box<dyn FnMut() -> Duration + 'a>,
}

pub(crate) fn case<'a>(name: &'static str, run: impl FnMut() -> Duration + 'a) -> Case<'a> {
    Case { name, run: Box::new(run) }
}

/// Times `f` alone.
pub(crate) fn timed<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let t = Instant::now();
    let v = f();
    (t.elapsed(), v)
}

/// Runs every case `rounds` times, rotating the order each round; one warm-up round first.
/// Returns (name, median, min) per case.
pub(crate) fn interleaved(rounds: usize, cases: &mut [Case<'_>]) -> Vec<(&'static str, Duration, Duration)> {
    let n = cases.len();
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); n];
    for c in cases.iter_mut() {
        (c.run)();
    }
    for r in 0..rounds {
        for k in 0..n {
            let i = (k + r) % n;
            times[i].push((cases[i].run)());
        }
    }
    cases
        .iter()
        .zip(times)
        .map(|(c, mut t)| {
            if std::env::var_os("SAFECKPT_BENCH_VERBOSE").is_some() {
                eprintln!("{}: {:?}", c.name, t.iter().map(|d| format!("{:.3}", d.as_secs_f64())).collect::<Vec<_>>());
            }
            t.sort();
            (c.name, t[t.len() / 2], t[0])
        })
        .collect()
}

/// Prints a markdown table with each case's median, min, throughput and ratio to `baseline`.
pub(crate) fn report(title: &str, bytes: u64, results: &[(&'static str, Duration, Duration)], baseline: &str) {
    let base = results.iter().find(|r| r.0 == baseline).map(|r| r.1.as_secs_f64()).unwrap_or(f64::NAN);
    println!("\n## {title}\n");
    println!("| case | median | min | throughput | time vs `{baseline}` |");
    println!("|---|---:|---:|---:|---:|");
    for (name, med, min) in results {
        let s = med.as_secs_f64();
        let tp = if bytes > 0 { format!("{:.2} GiB/s", bytes as f64 / s / (1u64 << 30) as f64) } else { "-".into() };
        println!("| {name} | {} | {} | {tp} | {:.3}x |", fmt(*med), fmt(*min), s / base);
    }
}

fn fmt(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 0.1 { format!("{s:.3} s") } else { format!("{:.3} ms", s * 1e3) }
}

/// One line describing the machine.
pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0)))
        .unwrap_or(0);
    format!(
        "{} cores ({cpu}), {:.0} GiB RAM, {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        mem as f64 / (1 << 20) as f64,
        std::env::temp_dir().display()
    )
}

/// Flushes dirty pages so one case's writeback does not slow the next.
pub(crate) fn sync_all() {
    let _ = std::process::Command::new("sync").status();
}

/// Touches and frees `bytes` of memory. On virtual machines whose free memory is handed back to
/// the host (free page reporting, ballooning), the first use of a page costs a host-side fault;
/// without this, whichever case happens to run on recently returned memory looks several times
/// slower, and the noise swamps the comparison.
pub(crate) fn warm_memory(bytes: usize) {
    let mut v = vec![0u8; bytes];
    for i in (0..bytes).step_by(4096) {
        v[i] = 1;
    }
    std::hint::black_box(&v);
}
