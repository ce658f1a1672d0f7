//! `safeckpt convert` and `safeckpt inspect` of PyTorch files.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use safeckpt_format::FileKind;
use safeckpt_torch::{ArchiveFormat, CastPolicy, CastTo, ConvertOptions, TorchArchive, TorchError};
use safeckpt_writer::WriteOptions;
use serde_json::json;

use crate::util::{
    EXIT_BAD_INPUT, EXIT_FAILURE, Exit, count, human_bytes, human_duration, natural_cmp, printable, progress_bar,
    thousands,
};

/// Whether a file is a PyTorch file (a zip archive or a legacy pickle) rather than safetensors,
/// judged by its structure ([`safeckpt_format::detect()`]): a safetensors file whose header length
/// happens to begin with `0x80` or `PK` is still safetensors.
pub fn is_torch_file(path: &Path) -> bool {
    use safeckpt_format::detect::{HEAD_LEN, TAIL_LEN};
    use std::io::{Read, Seek, SeekFrom};
    // Only a regular file is sniffed: opening a FIFO would block, and a device is no file.
    let Ok(meta) = std::fs::metadata(path) else { return false };
    if !meta.is_file() {
        return false;
    }
    let Ok(mut f) = std::fs::File::open(path) else { return false };
    let mut head = Vec::with_capacity(HEAD_LEN);
    let mut tail = Vec::with_capacity(TAIL_LEN);
    let len = meta.len();
    let read = (&mut f).take(HEAD_LEN as u64).read_to_end(&mut head).is_ok()
        && f.seek(SeekFrom::Start(len.saturating_sub(TAIL_LEN as u64))).is_ok()
        && f.take(TAIL_LEN as u64).read_to_end(&mut tail).is_ok();
    read && matches!(safeckpt_format::detect(&head, &tail, len), FileKind::Zip | FileKind::Pickle)
}

/// Maps importer errors to the CLI's exit codes.
fn exit_for(e: TorchError) -> anyhow::Error {
    let code = if e.is_bad_input() { EXIT_BAD_INPUT } else { EXIT_FAILURE };
    anyhow::Error::new(Exit(code, e.to_string()))
}

/// Options of `safeckpt convert`.
pub struct ConvertArgs<'a> {
    pub key: Option<&'a str>,
    pub dtype: Option<&'a str>,
    pub cast_only: &'a [String],
    pub keep_dtype: &'a [String],
    pub keep_aliases: bool,
    pub max_shard_size: Option<&'a str>,
    pub max_output_size: Option<&'a str>,
    pub write: WriteOptions,
    pub quiet: bool,
}

/// Converts a PyTorch file to safetensors.
pub fn convert(input: &Path, output: &Path, args: &ConvertArgs<'_>) -> Result<()> {
    let start = Instant::now();
    let dtype = args.dtype.map(|d| d.parse::<CastTo>()).transpose().map_err(|e| Exit(EXIT_BAD_INPUT, e))?;
    let policy = dtype
        .map(|to| CastPolicy::new(to, args.cast_only, args.keep_dtype))
        .transpose()
        .map_err(|e| Exit(EXIT_BAD_INPUT, e))?;
    let max_shard_size = args.max_shard_size.map(safeckpt_writer::parse_size).transpose()?;
    if !is_torch_file(input) && safeckpt_reader::ShardedReader::open(input).is_ok() {
        // A safetensors file, set or folder: cast it (the one conversion it can need).
        let Some(policy) = &policy else {
            return Err(Exit(
                EXIT_BAD_INPUT,
                format!(
                    "{}: a safetensors file already; --dtype casts it, `safeckpt shard` and `merge` reshape it",
                    input.display()
                ),
            )
            .into());
        };
        if args.key.is_some() {
            return Err(
                Exit(EXIT_BAD_INPUT, "--key selects part of a PyTorch file, not of a safetensors one".into()).into()
            );
        }
        return crate::reshard::cast_set(input, output, policy, max_shard_size, &args.write, args.quiet);
    }
    let max_output_size = args
        .max_output_size
        .map(safeckpt_writer::parse_size)
        .transpose()
        .map_err(|e| Exit(EXIT_BAD_INPUT, format!("--max-output-size: {e}")))?;
    let opts = ConvertOptions {
        key: args.key.map(str::to_string),
        cast: policy,
        keep_aliases: args.keep_aliases,
        max_shard_size,
        max_output_size,
        write: args.write.clone(),
    };
    let archive = TorchArchive::open(input).map_err(exit_for)?;
    let plan = archive.plan_conversion(&opts).map_err(exit_for)?;
    let total: u64 = plan.tensors.iter().map(|(p, _)| p.byte_len()).sum();
    let pb = if args.quiet { indicatif::ProgressBar::hidden() } else { progress_bar(total, "convert") };
    let s = archive.convert(output, &opts, &|n| pb.inc(n)).map_err(exit_for)?;
    pb.finish_and_clear();
    if !args.quiet {
        let format = match &s.format {
            ArchiveFormat::Zip { .. } => "torch zip archive",
            ArchiveFormat::Legacy => "legacy torch file",
        };
        println!(
            "converted {} ({format}{}) -> {}",
            input.display(),
            if s.big_endian { ", big-endian storages byte-swapped" } else { "" },
            s.index.as_ref().unwrap_or(&s.outputs[0]).display()
        );
        println!(
            "  {} ({}), {} in metadata, {}{}{} in {}",
            count(s.tensors, "tensor"),
            human_bytes(s.data_bytes),
            count(s.values, "value"),
            count(s.aliases.len(), "alias|aliases"),
            if s.cast > 0 { format!(", {} cast", thousands(s.cast as u64)) } else { String::new() },
            if s.gathered > 0 {
                format!(", {} written contiguous", count(s.gathered, "strided view"))
            } else {
                String::new()
            },
            human_duration(start.elapsed())
        );
        for (alias, kept) in &s.aliases {
            println!("  alias: {} -> {}", printable(alias, false), printable(kept, false));
        }
        if s.outputs.len() > 1 {
            println!("  {}", count(s.outputs.len(), "shard"));
        }
    }
    Ok(())
}

/// `safeckpt inspect` of a PyTorch file: what is inside, without converting.
pub fn inspect(path: &Path, as_json: bool) -> Result<String> {
    let archive = TorchArchive::open(path).map_err(exit_for)?;
    // Described from the pickle alone: no tensor is read, gathered or inflated to list it.
    let mut tensors = archive.describe(None).map_err(exit_for)?;
    tensors.sort_by(|a, b| natural_cmp(&a.name, &b.name));
    let values = archive.values(None).map_err(exit_for)?;
    let format = match archive.format() {
        ArchiveFormat::Zip { prefix } => format!("torch zip archive (folder `{prefix}`)"),
        ArchiveFormat::Legacy => "legacy torch file".to_string(),
    };
    // As `model.parameters()` counts them: a tied tensor once.
    let params: u64 = tensors
        .iter()
        .filter(|t| t.tied_to.is_none())
        .map(|t| t.shape.iter().fold(1u64, |a, &d| a.saturating_mul(d as u64)))
        .fold(0, u64::saturating_add);
    // Tied tensors share their bytes: counted once.
    let bytes: u64 = tensors.iter().filter(|t| t.tied_to.is_none()).map(|t| t.bytes).fold(0, u64::saturating_add);
    let tied = tensors.iter().filter(|t| t.tied_to.is_some()).count();
    if as_json {
        let doc = json!({
            "path": path.display().to_string(),
            "format": format,
            "big_endian": archive.is_big_endian(),
            "storages": archive.storages().len(),
            "tensor_count": tensors.len(),
            "parameters": params,
            "data_bytes": bytes,
            "tied_tensors": tied,
            "tensors": tensors.iter().map(|t| {
                let mut v = json!({"name": t.name, "dtype": t.dtype.as_str(), "shape": t.shape, "bytes": t.bytes});
                if let Some(k) = &t.tied_to {
                    v["tied_to"] = json!(k);
                }
                v
            }).collect::<Vec<_>>(),
            "values": values.iter().map(|(k, v)| (k.clone(), serde_json::from_str::<serde_json::Value>(v).unwrap_or(serde_json::Value::String(v.clone())))).collect::<serde_json::Map<_, _>>(),
        });
        return Ok(serde_json::to_string_pretty(&doc)? + "\n");
    }
    let mut out = String::new();
    writeln!(out, "{}  ({format}{})", path.display(), if archive.is_big_endian() { ", big-endian" } else { "" })?;
    writeln!(
        out,
        "{}{}, {}, {} of tensor data in {}; no code was run to read it",
        count(tensors.len(), "tensor"),
        if tied > 0 { format!(" ({tied} tied to another, stored once)") } else { String::new() },
        count(params, "parameter"),
        human_bytes(bytes),
        count(archive.storages().len(), "storage")
    )?;
    if !values.is_empty() {
        writeln!(out, "\nvalues:")?;
        for (k, v) in &values {
            let shown: String =
                if v.chars().count() > 100 { v.chars().take(97).collect::<String>() + "..." } else { v.clone() };
            writeln!(out, "  {}: {}", printable(k, false), printable(&shown, false))?;
        }
    }
    if !tensors.is_empty() {
        let w = tensors.iter().map(|t| t.name.chars().count()).max().unwrap_or(4).max(4);
        writeln!(out, "\n{:<w$}  {:<11}  {:<18}  {:>10}", "NAME", "DTYPE", "SHAPE", "SIZE")?;
        for t in &tensors {
            let shape = format!("[{}]", t.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "));
            let n = printable(&t.name, false);
            let line = format!("{n:<w$}  {:<11}  {shape:<18}  {:>10}", t.dtype.as_str(), human_bytes(t.bytes));
            match &t.tied_to {
                Some(k) => writeln!(out, "{line}  tied to {}", printable(k, false))?,
                None => writeln!(out, "{line}")?,
            }
        }
    }
    Ok(out)
}
