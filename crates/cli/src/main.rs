//! `safeckpt`: inspect, verify, shard, merge and convert tensor checkpoints.
#![forbid(unsafe_code)]
#![allow(unreachable_pub, reason = "a binary: nothing is exported, modules share items with `pub`")]

mod demo;
mod diff;
mod inspect;
mod remote;
mod reshard;
mod run_info;
mod torch_cmd;
mod train;
mod util;
mod verify;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use safeckpt_writer::WriteOptions;

use crate::util::{EXIT_OK, exit_code};

/// The exit statuses, shown under every command's `--help`.
const EXIT_STATUS: &str = "\
EXIT STATUS:
  0  success (for verify: every checksum matches; for diff: equal)
  1  failure: a checksum mismatch, checkpoints that differ, an I/O error while writing
  2  bad or refused input: a missing, malformed or unsafe file, a bad argument, an output that
     exists without --force
With --json, a failure prints {\"ok\": false, \"error\": {\"kind\": ..., \"message\": ...}} on
stdout, with the same status.";

/// Safe, fast tensor checkpoints in the standard safetensors format.
#[derive(Parser, Debug)]
#[command(name = "safeckpt", version, about, long_about = None, arg_required_else_help = true, after_help = EXIT_STATUS)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// S3-compatible endpoint for `s3://` URLs (default: `AWS_ENDPOINT_URL`, else AWS).
    /// Credentials come from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` and are never printed.
    #[arg(long, global = true, value_name = "URL")]
    endpoint: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show the tensors, dtypes, shapes, sizes and metadata of a file or sharded set (reads only
    /// the headers), or of a PyTorch file (without running any code from it).
    #[command(after_help = EXIT_STATUS)]
    Inspect {
        /// A `.safetensors` file, a `*.safetensors.index.json`, or a PyTorch `.pth`/`.pt`/`.bin`.
        path: PathBuf,
        /// Machine-readable JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Print nothing: the exit status alone says whether the file opens.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Validate the structure and every checksum. Exit 0 when sound, 1 when a checksum fails,
    /// 2 when the file is malformed.
    #[command(after_help = EXIT_STATUS)]
    Verify {
        /// A `.safetensors` file or a `*.safetensors.index.json`.
        path: PathBuf,
        /// Machine-readable JSON.
        #[arg(long)]
        json: bool,
        /// Print nothing on success.
        #[arg(short, long)]
        quiet: bool,
        /// Fail (exit 1) when a file carries no checksums, as one written by safeckpt whose
        /// integrity record was damaged would.
        #[arg(long)]
        require_checksums: bool,
    },
    /// Split a file (or re-split a set) into shards with a HuggingFace index.
    #[command(after_help = EXIT_STATUS)]
    Shard {
        /// A `.safetensors` file or a `*.safetensors.index.json`.
        input: PathBuf,
        /// Output directory (or `-o DIR`).
        #[arg(value_name = "OUTPUT", required_unless_present = "output", conflicts_with = "output")]
        out: Option<PathBuf>,
        /// Largest shard, e.g. `2GB` (10^9 bytes, as HuggingFace counts) or `500MiB`.
        #[arg(long, default_value = "5GB")]
        max_shard_size: String,
        /// Output directory (the same as the positional OUTPUT).
        #[arg(short, long, value_name = "DIR")]
        output: Option<PathBuf>,
        /// Shard file prefix: `<prefix>-00001-of-0000N.safetensors`.
        #[arg(long, default_value = "model")]
        prefix: String,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Join a sharded set into one file.
    #[command(after_help = EXIT_STATUS)]
    Merge {
        /// The `*.safetensors.index.json`.
        index: PathBuf,
        /// Output file (or `-o FILE`).
        #[arg(value_name = "OUTPUT", required_unless_present = "output", conflicts_with = "output")]
        out: Option<PathBuf>,
        /// Output file (the same as the positional OUTPUT).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Convert a PyTorch `.pth`/`.pt`/`.bin` (zip or legacy format) to safetensors, safely: a
    /// restricted pickle reader that never runs code from the file. Exit 2 when the file is
    /// refused or broken (no output is written).
    #[command(after_help = EXIT_STATUS)]
    Convert {
        /// The PyTorch file; or, with --dtype, a safetensors file, sharded set or folder to cast.
        input: PathBuf,
        /// The safetensors file to write (a directory with --max-shard-size).
        output: PathBuf,
        /// Convert only this sub-tree, e.g. `model_state_dict` (its prefix is removed).
        #[arg(long)]
        key: Option<String>,
        /// Cast floating tensors to this type: bf16, f16 or f32. Optimizer state (tensors under a
        /// top-level key containing `optim`) and integer tensors keep their type unless
        /// --cast-only says otherwise.
        #[arg(long)]
        dtype: Option<String>,
        /// With --dtype: cast only tensors whose name matches this glob (`*` matches dots too);
        /// may be repeated. Replaces the default, which leaves optimizer state alone.
        #[arg(long, value_name = "GLOB", requires = "dtype")]
        cast_only: Vec<String>,
        /// With --dtype: keep the type of tensors whose name matches this glob; may be repeated.
        #[arg(long, value_name = "GLOB", requires = "dtype")]
        keep_dtype: Vec<String>,
        /// Write tied weights as real copies instead of recording aliases in the metadata.
        #[arg(long)]
        keep_aliases: bool,
        /// Write shards of at most this size (e.g. `2GB`) and an index into OUTPUT (a directory);
        /// when everything fits one shard, OUTPUT/model.safetensors alone, as `save_pretrained`.
        #[arg(long)]
        max_shard_size: Option<String>,
        /// The most bytes the conversion may produce (tensor data written plus compressed records
        /// inflated), e.g. `20GB`. The default, 4x the input's size plus 16 MiB, refuses files
        /// whose views repeat a small storage into a huge tensor; raise it for a trusted file.
        #[arg(long)]
        max_output_size: Option<String>,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Compare two checkpoints (files, sharded sets, or a PyTorch file against its conversion)
    /// tensor by tensor, and their metadata. Exit 0 when equal (within --atol), 1 when they differ.
    #[command(after_help = EXIT_STATUS)]
    Diff {
        /// First file or index.
        a: PathBuf,
        /// Second file or index.
        b: PathBuf,
        /// Absolute tolerance: values a, b are equal when |a-b| <= atol + rtol * |b| (numpy's
        /// `allclose` rule). Floating-point values are compared as f64 across dtypes (a `--dtype
        /// bf16` conversion against its source), integers as integers. Default: exact.
        #[arg(long, default_value_t = 0.0)]
        atol: f64,
        /// Relative tolerance (see --atol). Default: exact.
        #[arg(long, default_value_t = 0.0)]
        rtol: f64,
        /// Compare `safeckpt.integrity` and creation times too (normally ignored: they differ
        /// between otherwise equal checkpoints).
        #[arg(long)]
        all_metadata: bool,
        /// Print the result as one JSON document.
        #[arg(long)]
        json: bool,
        /// Print nothing: the exit status alone says whether they are equal.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Train the classic MLP (20 -> 64 -> 32 -> 1) with Adam on a synthetic task, checkpointing
    /// every epoch (keeping the best by validation loss), then serve the best checkpoint from a
    /// memory map; without --dir, also tour the storage engine and the PyTorch importer.
    #[command(after_help = EXIT_STATUS)]
    Demo {
        /// Run directory, or a prefix in an object store (`s3://bucket/runs/demo`): the run resumes
        /// by itself from its latest checkpoint. Without it, a temporary directory is used and
        /// removed afterwards.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Epochs to train in total.
        #[arg(long, default_value_t = 10)]
        epochs: u64,
        /// Stop after this epoch (as an interruption would); run again to resume.
        #[arg(long)]
        stop_after_epoch: Option<u64>,
        /// Seed for the data, the initial weights and the batch order.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Print nothing but errors.
        #[arg(short, long)]
        quiet: bool,
    },
}

impl Command {
    /// Whether the command was asked for JSON output.
    fn json(&self) -> bool {
        match self {
            Command::Inspect { json, .. } | Command::Verify { json, .. } | Command::Diff { json, .. } => *json,
            _ => false,
        }
    }
}

#[derive(clap::Args, Debug)]
struct WriteArgs {
    /// Replace existing output files.
    #[arg(long)]
    force: bool,
    /// Do not record checksums (output then matches the reference writer byte for byte).
    #[arg(long)]
    no_checksums: bool,
    /// Skip fsync (the rename stays atomic, but a power loss may lose the file).
    #[arg(long)]
    no_fsync: bool,
    /// Print nothing on success.
    #[arg(short, long)]
    quiet: bool,
}

impl WriteArgs {
    fn options(&self) -> WriteOptions {
        WriteOptions::new().overwrite(self.force).checksums(!self.no_checksums).fsync(!self.no_fsync)
    }
}

fn run(cli: Cli) -> Result<i32> {
    let store = remote::store_options(cli.endpoint.as_deref());
    match cli.command {
        Command::Inspect { path, json, quiet } => {
            let loc = remote::input_location(&path, &store)?;
            if let Some(run) = run_info::open(&loc)? {
                let text = run.render(json)?;
                // JSON escapes control characters itself, and must stay valid JSON.
                if !quiet {
                    print!("{}", if json { text.as_str().into() } else { util::printable(&text, true) });
                }
                return Ok(EXIT_OK);
            }
            let text = match loc {
                // Safetensors files and indexes are read remotely, headers only; anything else
                // (a PyTorch file) is downloaded and recognised by its first bytes.
                safeckpt_store::Location::Object(o) if remote::is_safetensors_name(&o.file_name()) => {
                    let set = safeckpt_store::RemoteSet::open(&o)?;
                    let mut text = inspect::render(&inspect::SetHeaders::remote(&set), json)?;
                    if !json {
                        let s = o.store.stats();
                        text.push_str(&format!(
                            "\n(read {} of headers in {} requests; no tensor data)\n",
                            util::human_bytes(s.bytes_in),
                            s.gets
                        ));
                    }
                    text
                }
                _ => {
                    let input = remote::local_input(&path, &store, true)?;
                    if torch_cmd::is_torch_file(&input.path) {
                        torch_cmd::inspect(&input.path, json)?
                    } else {
                        inspect::inspect_safetensors(&input.path, json)?
                    }
                }
            };
            if !quiet {
                print!("{}", if json { text.as_str().into() } else { util::printable(&text, true) });
            }
            Ok(EXIT_OK)
        }
        Command::Convert {
            input,
            output,
            key,
            dtype,
            cast_only,
            keep_dtype,
            keep_aliases,
            max_shard_size,
            max_output_size,
            write,
        } => {
            let input = remote::local_input(&input, &store, write.quiet)?;
            let out = remote::output(&output, &store, write.force)?;
            let args = torch_cmd::ConvertArgs {
                key: key.as_deref(),
                dtype: dtype.as_deref(),
                cast_only: &cast_only,
                keep_dtype: &keep_dtype,
                keep_aliases,
                max_shard_size: max_shard_size.as_deref(),
                max_output_size: max_output_size.as_deref(),
                write: write.options(),
                quiet: write.quiet,
            };
            torch_cmd::convert(&input.path, &out.path, &args)?;
            out.publish(write.quiet)?;
            Ok(EXIT_OK)
        }
        Command::Verify { path, json, quiet, require_checksums } => {
            verify::verify(&path, &store, json, quiet, require_checksums)
        }
        Command::Shard { input, out, max_shard_size, output, prefix, write } => {
            let output = out.or(output).expect("clap requires an output");
            let input = remote::local_input(&input, &store, write.quiet)?;
            let out = remote::output(&output, &store, write.force)?;
            reshard::shard(&input.path, &max_shard_size, &out.path, &prefix, &write.options(), write.quiet)?;
            out.publish(write.quiet)?;
            Ok(EXIT_OK)
        }
        Command::Merge { index, out, output, write } => {
            let output = out.or(output).expect("clap requires an output");
            let input = remote::local_input(&index, &store, write.quiet)?;
            let out = remote::output(&output, &store, write.force)?;
            reshard::merge(&input.path, &out.path, &write.options(), write.quiet)?;
            out.publish(write.quiet)?;
            Ok(EXIT_OK)
        }
        Command::Demo { dir, epochs, stop_after_epoch, seed, quiet } => {
            demo::run(dir.as_deref(), &train::TrainArgs { epochs, stop_after_epoch, seed, quiet }, &store)?;
            Ok(EXIT_OK)
        }
        Command::Diff { a, b, atol, rtol, all_metadata, json, quiet } => {
            for (flag, v) in [("--atol", atol), ("--rtol", rtol)] {
                if !(v >= 0.0 && v.is_finite()) {
                    return Err(util::Exit(
                        util::EXIT_BAD_INPUT,
                        format!("{flag} must be a finite number >= 0, not {v}"),
                    )
                    .into());
                }
            }
            let (la, lb) = (remote::local_input(&a, &store, true)?, remote::local_input(&b, &store, true)?);
            diff::diff(&la.path, &lb.path, diff::Tolerance { atol, rtol }, all_metadata, json, quiet)
        }
    }
}

fn main() {
    // A reader that stops early (`safeckpt inspect big.safetensors | head`) closes stdout; stop
    // quietly with the status a SIGPIPE would give, as other command-line tools do, instead of
    // reporting a panic.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg =
            payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied());
        if msg.is_some_and(|m| m.starts_with("failed printing to stdout") && m.contains("Broken pipe")) {
            std::process::exit(141);
        }
        default_hook(info)
    }));
    let cli = Cli::parse();
    let json = cli.command.json();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if json {
                // Machine readers get a JSON object on failure too, with the same exit status.
                println!("{}", util::error_json(&e));
            } else {
                eprintln!("error: {}", util::printable(&util::error_text(&e), false));
            }
            exit_code(&e)
        }
    };
    std::process::exit(code);
}
