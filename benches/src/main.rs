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

mod harness;
mod model;
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
    /// Every scenario above.
    All,
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
    if let Scenario::LoadChild { case, path } = &cli.scenario {
        return scenarios::load_child(case, path);
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
            Scenario::All | Scenario::LoadChild { .. } => unreachable!(),
        }
    };
    if cli.scenario == Scenario::All {
        for s in [Scenario::Open, Scenario::Save, Scenario::SaveFsync, Scenario::Read, Scenario::Load] {
            run(s)?;
        }
    } else {
        run(cli.scenario.clone())?;
    }
    Ok(())
}
