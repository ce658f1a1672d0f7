//! `safeckpt-bench`: safeckpt against its peers, measured in the same run.
//!
//! Every scenario runs its cases in interleaved rounds (the order rotates each round) and reports
//! medians and ratios, because these machines are shared and noisy: absolute times drift, ratios
//! measured together hold. Files go to `$TMPDIR` (warm page cache after the first round).
//!
//! ```sh
//! cargo run --release -p safeckpt-benches -- all          # every scenario, ~1 GiB state dict
//! cargo run --release -p safeckpt-benches -- save --size-mib 1024 --rounds 7
//! ```

mod candle_bench;
mod convert;
mod harness;
mod model;
mod s3;
mod scenarios;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(about = "Same-run comparisons of safeckpt against its peers")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Approximate size of the transformer-shaped f32 state dict, in MiB.
    #[arg(long, global = true, default_value_t = 1000)]
    size_mib: usize,
    /// Rounds per scenario (medians are reported).
    #[arg(long, global = true, default_value_t = 7)]
    rounds: usize,
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
enum Scenario {
    /// Save a state dict: raw write_all, the safetensors crate, safeckpt (with checksums).
    Save,
    /// Save with fsync: raw write_all + fsync against safeckpt.
    SaveFsync,
    /// Open a 10,000-tensor file: header parse and validation.
    Open,
    /// Read every byte through typed views against a plain memory-map sum.
    Read,
    /// Load every tensor into owned buffers against candle's MmapedSafetensors.
    Load,
    /// Save and load of a candle VarMap against candle's own paths.
    Candle,
    /// Tensor-parallel loading (candle `Shard` hints) against candle's ShardedSafeTensors path.
    Tp {
        /// Ranks.
        #[arg(long, default_value_t = 4)]
        world: usize,
    },
    /// How long an asynchronous checkpoint stalls a training loop.
    AsyncSave {
        /// Milliseconds of compute between the save and the next optimizer step.
        #[arg(long, default_value_t = 1000)]
        compute_ms: u64,
    },
    /// Every scenario above.
    All,
    /// End to end: wall time of a training loop that checkpoints every few steps with async
    /// saves, with synchronous saves and with none (minutes per run; not part of `all`).
    TrainLoop {
        /// Training steps per run.
        #[arg(long, default_value_t = 8)]
        steps: usize,
        /// Steps between checkpoints.
        #[arg(long, default_value_t = 4)]
        every: usize,
        /// Tokens per step (the compute per step).
        #[arg(long, default_value_t = 16)]
        tokens: usize,
    },
    /// Convert a PyTorch file with one of the converters, in this process; prints the seconds the
    /// conversion took (used by `benches/convert_bench.py`, which also times the whole process).
    Convert {
        /// `safeckpt`, `candle`, `pytorch-reader` (eager) or `pytorch-reader-lazy`.
        converter: String,
        /// The PyTorch file.
        input: std::path::PathBuf,
        /// The safetensors file to write.
        output: std::path::PathBuf,
    },
    /// Copy the first `bytes` bytes of a file into a new file, the machine's streaming limit for
    /// the conversion benchmark; prints the seconds the copy took.
    Copy {
        /// `read-write` (one reused buffer) or `copy-file-range`.
        method: String,
        /// Bytes to copy.
        bytes: u64,
        /// The file to copy from.
        input: std::path::PathBuf,
        /// The file to create.
        output: std::path::PathBuf,
        /// Buffer size for `read-write`, KiB.
        #[arg(long, default_value_t = 8192)]
        piece_kib: usize,
    },
    /// One object-store operation (`save`, `load`, `tensor`, `write-local`) on `url`, timed in
    /// this process; prints JSON (used by `benches/s3_bench.py`).
    S3 {
        /// The operation.
        op: String,
        /// The object (`s3://bucket/key`).
        url: String,
        /// The tensor to read (`tensor`), or the local path (`write-local`).
        #[arg(long)]
        tensor: Option<String>,
        /// Part size for uploads and ranged reads, MiB.
        #[arg(long, default_value_t = 16)]
        part_mib: usize,
        /// Requests in flight.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// Internal: one candle load in this fresh process; prints the seconds it took.
    #[command(hide = true)]
    CandleLoadChild {
        /// The case.
        case: String,
        /// The file.
        path: std::path::PathBuf,
    },
    /// Internal: one load in this fresh process; prints the seconds it took.
    #[command(hide = true)]
    LoadChild {
        /// `candle` or `safeckpt`.
        case: String,
        /// The file.
        path: std::path::PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match &cli.scenario {
        Scenario::LoadChild { case, path } => return scenarios::load_child(case, path),
        Scenario::CandleLoadChild { case, path } => return candle_bench::load_child(case, path),
        Scenario::Convert { converter, input, output } => return convert::run(converter, input, output),
        Scenario::Copy { method, bytes, input, output, piece_kib } => {
            return convert::copy(method, *bytes, input, output, *piece_kib);
        }
        Scenario::S3 { op, url, tensor, part_mib, concurrency } => {
            let store = safeckpt_store::StoreOptions {
                part_size: part_mib << 20,
                concurrency: *concurrency,
                ..Default::default()
            };
            return s3::run(op, url, cli.size_mib, tensor.as_deref(), store);
        }
        _ => {}
    }
    println!(
        "# safeckpt-bench: {} MiB state dict, {} rounds, {} threads",
        cli.size_mib,
        cli.rounds,
        rayon::current_num_threads()
    );
    println!("# {}", harness::machine());
    let run = |s: Scenario| -> Result<()> {
        match s {
            Scenario::Save => scenarios::save(cli.size_mib, cli.rounds, false),
            Scenario::SaveFsync => scenarios::save(cli.size_mib, cli.rounds, true),
            Scenario::Open => scenarios::open(cli.rounds.max(50)),
            Scenario::Read => scenarios::read(cli.size_mib, cli.rounds),
            Scenario::Load => scenarios::load(cli.size_mib, cli.rounds),
            Scenario::Candle => candle_bench::save_load(cli.size_mib, cli.rounds),
            Scenario::AsyncSave { compute_ms } => candle_bench::async_stall(cli.size_mib, cli.rounds, compute_ms),
            Scenario::Tp { world } => candle_bench::tensor_parallel(cli.size_mib, cli.rounds, world),
            Scenario::TrainLoop { steps, every, tokens } => {
                candle_bench::train_loop(cli.size_mib, cli.rounds, steps, every, tokens)
            }
            Scenario::All
            | Scenario::LoadChild { .. }
            | Scenario::CandleLoadChild { .. }
            | Scenario::Convert { .. }
            | Scenario::Copy { .. }
            | Scenario::S3 { .. } => {
                unreachable!()
            }
        }
    };
    if cli.scenario == Scenario::All {
        for s in [
            Scenario::Open,
            Scenario::Save,
            Scenario::SaveFsync,
            Scenario::Read,
            Scenario::Load,
            Scenario::Candle,
            Scenario::Tp { world: 4 },
            Scenario::AsyncSave { compute_ms: 1000 },
        ] {
            run(s)?;
        }
    } else {
        run(cli.scenario.clone())?;
    }
    Ok(())
}
