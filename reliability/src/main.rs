//! `safeckpt-reliability`: crash, fault, corruption, concurrency and hostile-input campaigns.
//!
//! ```sh
//! cargo run --release -p safeckpt-reliability -- report --kills 500 --flips 100000
//! ```
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::{Parser, Subcommand};
use safeckpt_reliability::crash::Mode;
use safeckpt_reliability::{concurrency, content, corrupt, crash, faults, hostile, powerloss, syscalls};

#[derive(Parser, Debug)]
#[command(about = "Crash, fault, corruption and hostile-input campaigns for safeckpt")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Every campaign, printed as the table of docs/reliability.md.
    Report {
        /// SIGKILLs per save mode.
        #[arg(long, default_value_t = 500)]
        kills: usize,
        /// Bit flips and byte overwrites.
        #[arg(long, default_value_t = 100_000)]
        flips: usize,
        /// Checkpoints committed while readers read.
        #[arg(long, default_value_t = 500)]
        commits: usize,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Kill a save loop at random instants and check the directory after each kill.
    Crash {
        /// Save path.
        #[arg(long, value_enum)]
        mode: Mode,
        /// Kills.
        #[arg(long, default_value_t = 100)]
        kills: usize,
        /// Longest delay before a kill, in milliseconds.
        #[arg(long, default_value_t = 120)]
        max_delay_ms: u64,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Trace one save with strace, then check every state a power cut could leave after any of
    /// its operations.
    Powerloss {
        /// Save path.
        #[arg(long, value_enum)]
        mode: Mode,
        /// Random states per crash point, besides the four fixed ones.
        #[arg(long, default_value_t = 16)]
        random: usize,
        /// Remove these flushes from the trace first (to see the model catch their absence).
        #[arg(long, value_enum, default_value_t = powerloss::Mutation::None)]
        mutation: powerloss::Mutation,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Damage copies of a training checkpoint with random bit flips and byte overwrites.
    Corrupt {
        /// Trials.
        #[arg(long, default_value_t = 100_000)]
        flips: usize,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Internal: the save loop a crash campaign kills.
    #[command(hide = true)]
    SaveLoop {
        #[arg(long, value_enum)]
        mode: Mode,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = u64::MAX / 2)]
        steps: u64,
    },
    /// Internal: one checkpoint written with fsync on.
    #[command(hide = true)]
    SaveOnce {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 1)]
        scale: usize,
    },
    /// Internal: hold a run directory's lock.
    #[command(hide = true)]
    HoldLock {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 5000)]
        ms: u64,
    },
    /// Internal: open and validate one file; print seconds and peak-RSS growth in MiB.
    #[command(hide = true)]
    ParseHeader { path: PathBuf },
    /// Internal: open, describe and convert one PyTorch file; print seconds, peak-RSS growth in
    /// MiB and the outcome.
    #[command(hide = true)]
    ImportAttack { path: PathBuf, out: PathBuf },
    /// Resource attacks on the PyTorch importer (fixtures/pytorch/attacks): time, peak memory and
    /// outcome of each, in a fresh process.
    HostilePytorch,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let exe = std::env::current_exe()?;
    match cli.command {
        Cmd::SaveLoop { mode, dir, steps } => crash::save_loop(mode, &dir, steps),
        Cmd::SaveOnce { dir, scale } => {
            let raw = content::raw(7, scale);
            safeckpt_writer::write_file(
                dir.join("ckpt.safetensors"),
                &content::sources(&raw),
                None,
                &safeckpt_writer::WriteOptions::new(),
            )?;
            Ok(())
        }
        Cmd::HoldLock { dir, ms } => {
            let _m = safeckpt_candle::CheckpointManager::open(&dir, safeckpt_candle::ManagerOptions::default())?;
            println!("locked");
            std::thread::sleep(std::time::Duration::from_millis(ms));
            Ok(())
        }
        Cmd::ParseHeader { path } => {
            let before = hostile::peak_rss_kib();
            let t = Instant::now();
            let r = safeckpt_reader::Reader::open(&path)?;
            let secs = t.elapsed().as_secs_f64();
            std::hint::black_box(r.len());
            println!("{secs} {}", (hostile::peak_rss_kib().saturating_sub(before)) as f64 / 1024.0);
            Ok(())
        }
        Cmd::Crash { mode, kills, max_delay_ms, seed } => {
            let dir = tempfile::tempdir()?;
            let t = Instant::now();
            let r = crash::campaign(&exe, mode, dir.path(), kills, max_delay_ms, seed)?;
            println!("{mode:?}: {r:#?} in {:.1} s", t.elapsed().as_secs_f64());
            Ok(())
        }
        Cmd::Corrupt { flips, seed } => {
            let t = Instant::now();
            let r = corrupt::campaign(flips, seed)?;
            println!("{r:#?} in {:.1} s", t.elapsed().as_secs_f64());
            Ok(())
        }
        Cmd::Powerloss { mode, random, seed, mutation } => {
            let r = powerloss::campaign_with(&exe, mode, random, seed, mutation)?;
            println!("{r:#?}");
            anyhow::ensure!(r.is_clean(), "power loss could lose or damage a checkpoint");
            Ok(())
        }
        Cmd::Report { kills, flips, commits, seed } => report(&exe, kills, flips, commits, seed),
        Cmd::ImportAttack { path, out } => hostile::import_attack_child(&path, &out),
        Cmd::HostilePytorch => {
            let mut rows = Rows::new();
            let bad = import_attack_rows(&exe, &mut rows)?;
            anyhow::ensure!(bad == 0, "{bad} attacks did not end as their manifest expects");
            Ok(())
        }
    }
}

fn report(exe: &std::path::Path, kills: usize, flips: usize, commits: usize, seed: u64) -> Result<()> {
    let started = Instant::now();
    let mut rows = Rows::new();
    let cmd = |args: &str| format!("`cargo run --release -p safeckpt-reliability -- {args}`");
    for mode in [Mode::File, Mode::ShardedReplace, Mode::Manager, Mode::ManagerSharded] {
        let dir = tempfile::tempdir()?;
        let t = Instant::now();
        let r = crash::campaign(exe, mode, dir.path(), kills, 120, seed)?;
        let what = format!("SIGKILL during {} saves", mode.name());
        let result = format!(
            "{} kills: latest checkpoint loaded, verified and equal to its step {} times ({} before the first save), checkpoints lost {} (of {} saves the children saw return), older damaged {}, older retained checkpoints vanished {}, temporary files left by kills {} / kept by the library {} ({:.0} s){}",
            r.kills,
            r.latest_ok,
            r.before_first,
            r.lost,
            r.logged_commits,
            r.older_damaged,
            r.older_vanished,
            r.leftovers_seen,
            r.leftovers_kept,
            t.elapsed().as_secs_f64(),
            if r.problems.is_empty() { String::new() } else { format!("; problems: {:?}", r.problems) }
        ) + &if mode == Mode::ShardedReplace {
            format!(
                "; kills that left the replaced set's shards unreferenced (removed by the next save) {}",
                r.unreferenced_seen
            )
        } else {
            String::new()
        };
        rows.push((what, result, cmd(&format!("crash --mode {} --kills {kills}", mode.name()))));
    }
    let base = tempfile::tempdir()?;
    std::fs::create_dir_all(base.path().join("fsize"))?;
    let mut faults_list = vec![
        faults::file_size_limit(exe, &base.path().join("fsize"))?,
        faults::disk_full(base.path())?,
        faults::read_only(base.path())?,
    ];
    faults_list.extend(faults::vanished_directory(base.path())?);
    for f in faults_list {
        let result = if f.ran {
            // A removed run directory takes its checkpoints with it; what matters there is that
            // the failed save recreated nothing.
            let previous = match (f.fault.contains("removed"), f.previous_intact) {
                (true, true) => "nothing recreated",
                (true, false) => "DIRECTORY RECREATED",
                (false, true) => "previous checkpoint intact",
                (false, false) => "previous checkpoint DAMAGED",
            };
            format!(
                "error: \"{}\"; {previous}; temporary files left {}",
                f.error.lines().next().unwrap_or("").trim_start_matches("Error: "),
                f.leftovers
            )
        } else {
            "not run: mounting needs privileges this machine lacks".into()
        };
        rows.push((format!("fault: {}", f.fault), result, cmd("report")));
    }
    let t = Instant::now();
    let c = corrupt::campaign(flips, seed)?;
    rows.push((
        "random bit flips and byte overwrites in a checkpoint".into(),
        format!(
            "{} in the data section: damaged tensor named {} times; {} in the header: refused {}, checksum failure {}, integrity record's key damaged (no checksums: refused by the manager and `verify --require-checksums`) {}, harmless {}; silent wrong loads {} ({:.0} s)",
            c.data_trials, c.data_named, c.header_trials, c.header_structural, c.header_checksum, c.header_record_lost, c.header_benign, c.silent_wrong, t.elapsed().as_secs_f64()
        ) + &if c.silent_cases.is_empty() { String::new() } else { format!("; silent: {:?}", c.silent_cases) },
        cmd(&format!("corrupt --flips {flips}")),
    ));
    let lock = concurrency::second_writer(exe, &base.path().join("locked"))?;
    rows.push((
        "second process writing into a locked run directory".into(),
        format!("refused: {}, names the holder: {}: \"{}\"", lock.refused, lock.names_holder, lock.message),
        cmd("report"),
    ));
    let rr = concurrency::readers_during_commits(&base.path().join("readers"), commits)?;
    rows.push((
        "two readers opening the latest checkpoint while a writer commits".into(),
        format!(
            "{} commits, {} reads: {} verified, {} removed by retention before opening, torn {}",
            rr.commits, rr.reads, rr.verified, rr.vanished, rr.torn
        ),
        cmd(&format!("report --commits {commits}")),
    ));
    let sys_dir = base.path().join("strace");
    std::fs::create_dir_all(&sys_dir)?;
    let s = syscalls::durable_save_order(exe, &sys_dir)?;
    rows.push((
        "system-call order of a durable save (strace)".into(),
        if s.available {
            let calls: Vec<String> =
                s.calls.iter().map(|c| c.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
            format!("ordered: {}; {}", s.ordered, calls.join(" → "))
        } else {
            "not run: strace missing".into()
        },
        cmd("report"),
    ));
    for mode in [Mode::File, Mode::ShardedReplace, Mode::Manager, Mode::ManagerSharded] {
        let name = mode.name();
        let what = format!("power loss after any operation of a traced {name} save (modelled)");
        let result = if powerloss::available() {
            let t = Instant::now();
            let r = powerloss::campaign(exe, mode, 64, seed)?;
            format!(
                "{} operations, {} crash points, {} disk states: newest checkpoint the new one {}, the previous one {}, lost {}, older damaged {}; a save that returned survives: {}; replay of the real save exact: {} ({:.0} s){}",
                r.ops,
                r.crash_points,
                r.states,
                r.new_checkpoint,
                r.previous_checkpoint,
                r.lost,
                r.older_damaged,
                r.returned_save_durable,
                r.replay_exact,
                t.elapsed().as_secs_f64(),
                if r.problems.is_empty() { String::new() } else { format!("; problems: {:?}", r.problems) }
            )
        } else {
            "not run: strace missing".into()
        };
        rows.push((what, result, cmd(&format!("powerloss --mode {name} --random 64"))));
    }
    if powerloss::available() {
        let a = powerloss::campaign_with(exe, Mode::File, 64, seed, powerloss::Mutation::NoFileSyncs)?;
        let b = powerloss::campaign_with(exe, Mode::Manager, 64, seed, powerloss::Mutation::NoDirectorySyncs)?;
        rows.push((
            "the same model on traces with flushes removed (does it notice?)".into(),
            format!(
                "file save without its fsync: {} of {} states lose the checkpoint; manager without directory fsyncs: a save that returned survives: {}",
                a.lost, a.states, b.returned_save_durable
            ),
            cmd("report"),
        ));
    }
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/pytorch");
    let work = tempfile::tempdir()?;
    let m = hostile::malicious_corpus(&fixtures, work.path())?;
    rows.push((
        "malicious pickles (GLOBAL, STACK_GLOBAL, INST, OBJ, NEWOBJ, NEWOBJ_EX, REDUCE, BUILD/__setstate__, EXT1/2/4, PERSID)".into(),
        format!(
            "{} files: refused with an error naming the file {}, accepted {:?}, code executed {}",
            m.files, m.refused, m.accepted, m.executed
        ),
        cmd("report"),
    ));
    import_attack_rows(exe, &mut rows)?;
    for n in [10_000, 100_000, 1_087_000] {
        let h = hostile::header_bomb(exe, base.path(), n)?;
        rows.push((
            format!("header declaring {n} tensors ({:.1} MB)", h.header_bytes as f64 / 1e6),
            format!("opened and validated in {:.3} s, peak memory growth {:.1} MiB", h.seconds, h.peak_rss_growth_mib),
            cmd("report"),
        ));
    }
    println!("\n(total {:.0} s)", started.elapsed().as_secs_f64());
    Ok(())
}

/// One row per resource attack on the importer; returns how many ended otherwise than expected.
fn import_attack_rows(exe: &std::path::Path, rows: &mut Rows) -> Result<usize> {
    let attacks = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/pytorch/attacks");
    let work = tempfile::tempdir()?;
    let mut bad = 0;
    for a in hostile::import_attacks(exe, &attacks, work.path())? {
        bad += usize::from(!a.as_expected);
        let outcome: String = if a.outcome == "converted" {
            "converted".into()
        } else {
            // The message less its file and record prefixes (they name the file, shown already).
            let stem = a.name.trim_end_matches(".pth");
            let text = a.outcome.split(": ").skip_while(|part| part.contains(stem)).collect::<Vec<_>>().join(": ");
            let text = if text.chars().count() > 90 { text.chars().take(87).collect::<String>() + "..." } else { text };
            format!("refused: \"{text}\"")
        };
        rows.push((
            format!("PyTorch import attack `{}` ({} bytes): {}", a.name, a.bytes, a.attack),
            format!(
                "{outcome} in {:.3} s, peak memory growth {:.1} MiB{}",
                a.seconds,
                a.peak_rss_growth_mib,
                if a.as_expected { "" } else { " (NOT AS EXPECTED)" }
            ),
            "`cargo run --release -p safeckpt-reliability -- hostile-pytorch`".into(),
        ));
    }
    Ok(bad)
}

/// The results table, printed row by row as campaigns finish (a long run that fails late still
/// shows what it measured).
struct Rows;

impl Rows {
    fn new() -> Rows {
        println!("| campaign | result | reproduce |");
        println!("|---|---|---|");
        Rows
    }

    fn push(&mut self, (what, result, command): (String, String, String)) {
        println!("| {what} | {} | {command} |", result.replace('|', "\\|"));
    }
}
