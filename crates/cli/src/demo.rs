//! `safeckpt demo`: the engine end to end on a bundled model.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use safeckpt_reader::{Reader, ShardedReader};
use safeckpt_store::StoreOptions;
use safeckpt_torch::{ConvertOptions, TorchArchive};
use safeckpt_writer::{WriteOptions, write_file, write_sharded};

use crate::inspect::inspect_safetensors;
use crate::train::TrainArgs;
use crate::util::{human_bytes, human_duration, thousands};

/// A GPT-2-shaped model (4 layers, width 64) written by Python's `safetensors`; see
/// `fixtures/models/make_tiny_gpt.py`.
const TINY_GPT: &[u8] = include_bytes!("../../../fixtures/models/tiny-gpt.safetensors");
/// A PyTorch training checkpoint made by torch 2.15: `{epoch, model_state_dict,
/// optimizer_state_dict (Adam after 3 steps), loss}`.
const TORCH_CHECKPOINT: &[u8] = include_bytes!("../../../fixtures/pytorch/checkpoint_adam.pth");
/// A pickle that runs `os.system` when `torch.load(weights_only=False)` opens it.
const EVIL_PICKLE: &[u8] = include_bytes!("../../../fixtures/pytorch/evil_os_system.pth");

/// Runs the demo. With a directory (or an object-store prefix): a resumable training run there.
/// Without: a training run and then a tour of the storage engine, in a temporary directory
/// removed afterwards.
pub fn run(dir: Option<&Path>, train: &TrainArgs, store: &StoreOptions) -> Result<()> {
    if let Some(d) = dir {
        return crate::train::run(d, train, store);
    }
    let tmp = tempfile::Builder::new().prefix("safeckpt-demo-").tempdir()?;
    println!("safeckpt demo, part 1: train, checkpoint and resume a candle model\n");
    crate::train::run(&tmp.path().join("run"), train, store)?;
    println!("\nsafeckpt demo, part 2: the storage engine\n");
    tour(tmp.path())
}

/// The storage engine on a bundled model, in `dir`.
fn tour(dir: &Path) -> Result<()> {
    let dir: PathBuf = dir.to_path_buf();
    let bundled = Reader::from_bytes(TINY_GPT, "tiny-gpt.safetensors (bundled)")?;
    let params: u64 = bundled.tensors().map(|t| t.numel() as u64).sum();
    println!("safeckpt demo: the storage engine on a bundled model");
    println!(
        "  model    tiny-gpt (GPT-2 shaped, 4 layers, width 64): {} tensors, {} parameters, {}, written by Python safetensors",
        bundled.len(),
        thousands(params),
        human_bytes(bundled.header().data_len() as u64)
    );
    println!("  workdir  {}\n", dir.display());

    // 1. Write with checksums, atomically.
    let model = dir.join("model.safetensors");
    let tensors: Vec<_> = bundled.tensors().map(|t| (t.name(), t)).collect();
    let t = Instant::now();
    let s = write_file(&model, &tensors, bundled.metadata().cloned(), &WriteOptions::default())?;
    println!(
        "1. write    {} ({}) with xxh3-64 checksums, temp file + fsync + rename + dir fsync, in {}",
        model.display(),
        human_bytes(s.bytes),
        human_duration(t.elapsed())
    );

    // 2. Shard.
    let shard_dir = dir.join("sharded");
    let max = (s.bytes / 3).max(1);
    let t = Instant::now();
    let sharded = write_sharded(
        &shard_dir,
        "model",
        &tensors,
        bundled.metadata().cloned(),
        max,
        &WriteOptions::default(),
        &|_| {},
    )?;
    let index = sharded.index.clone().context("the demo model splits into several shards")?;
    println!(
        "2. shard    into {} shards of at most {} + {} in {}",
        sharded.shards.len(),
        human_bytes(max),
        index.file_name().unwrap_or_default().to_string_lossy(),
        human_duration(t.elapsed())
    );

    // 3. Verify.
    let t = Instant::now();
    let set = ShardedReader::open(&index)?;
    let reports = set.verify()?;
    ensure!(reports.iter().all(|r| r.is_ok() && r.has_checksums), "freshly written shards must verify");
    let checked: u64 = reports.iter().map(|r| r.bytes_checked).sum();
    println!(
        "3. verify   sharded set: {} tensors, {} hashed, every checksum matches ({})",
        set.len(),
        human_bytes(checked),
        human_duration(t.elapsed())
    );

    // 4. Inspect.
    let report = inspect_safetensors(&index, false)?;
    println!("4. inspect  (headers only)");
    let lines: Vec<&str> = report.lines().collect();
    let table = lines.iter().position(|l| l.starts_with("NAME")).unwrap_or(0);
    for l in lines.iter().take(table + 9) {
        println!("   {l}");
    }
    println!("   ... {} more tensors\n", set.len().saturating_sub(8));

    // 5. Damage a copy and watch verify name the tensor.
    let damaged_dir = dir.join("damaged");
    copy_dir(&shard_dir, &damaged_dir)?;
    let victim_shard = damaged_dir.join(sharded.shards[1].path.file_name().context("shard file name")?);
    let (victim, flipped_at) = flip_one_bit(&victim_shard)?;
    let damaged = ShardedReader::open(damaged_dir.join(index.file_name().context("index name")?))?;
    let failures: Vec<String> = damaged.verify()?.into_iter().flat_map(|r| r.failures).map(|f| f.to_string()).collect();
    ensure!(failures.len() == 1 && failures[0].contains(&victim), "verify must name the damaged tensor");
    println!("5. damage   flipped one bit at byte {flipped_at} of a copy of shard 2 (inside `{victim}`)");
    println!("            verify reports: {}  (`safeckpt verify` exits 1)", failures[0]);

    // 6. Merge back: deterministic output means the very same bytes.
    let merged = dir.join("merged.safetensors");
    let merged_set: Vec<_> = set.tensors().map(|t| (t.name(), t)).collect();
    write_file(&merged, &merged_set, set.shards()[0].metadata().cloned(), &WriteOptions::default())?;
    let same = std::fs::read(&merged)? == std::fs::read(&model)?;
    ensure!(same, "merging the shards must reproduce the original bytes");
    println!("6. merge    shards -> {}: byte-identical to step 1's file", merged.display());

    // 7. Zero-copy reads.
    let reader = Reader::open(&model)?;
    let w = reader.tensor("h.0.attn.c_attn.weight")?;
    let values: &[f32] = w.as_slice()?;
    let rows = w.narrow(0, 2..4)?;
    println!(
        "7. read     h.0.attn.c_attn.weight {:?} as a zero-copy &[f32] from the memory map: [{:.4}, {:.4}, {:.4}, ...];",
        w.shape(),
        values[0],
        values[1],
        values[2]
    );
    println!(
        "            rows 2..4 as one contiguous {}-byte slice of the map, no copy: {}",
        rows.byte_len(),
        rows.as_contiguous().is_some()
    );

    // 8. Leave pickle behind: convert a PyTorch training checkpoint, refuse a malicious one.
    let ckpt = dir.join("checkpoint_adam.pth");
    std::fs::write(&ckpt, TORCH_CHECKPOINT)?;
    let converted = dir.join("checkpoint_adam.safetensors");
    let t = Instant::now();
    let archive = TorchArchive::open(&ckpt)?;
    let summary = archive.convert(&converted, &ConvertOptions::default(), &|_| {})?;
    let values = archive.values(None)?;
    println!(
        "8. convert  {} (torch.save zip, Adam after 3 steps): {} tensors and {} values in {}, no code run",
        ckpt.file_name().unwrap_or_default().to_string_lossy(),
        summary.tensors,
        summary.values,
        human_duration(t.elapsed())
    );
    let reader = Reader::open(&converted)?;
    let names = reader.names();
    let model = names.iter().filter(|n| n.starts_with("model_state_dict.")).count();
    let moments = names.iter().filter(|n| n.ends_with(".exp_avg") || n.ends_with(".exp_avg_sq")).count();
    println!(
        "            model_state_dict.*: {model} tensors; optimizer_state_dict.state.*: {moments} Adam moments and the step counts"
    );
    for (k, v) in &values {
        let shown: String =
            if v.chars().count() > 70 { v.chars().take(67).collect::<String>() + "..." } else { v.clone() };
        println!("            {k} = {shown}");
    }
    let evil = dir.join("evil_os_system.pth");
    std::fs::write(&evil, EVIL_PICKLE)?;
    let refused = TorchArchive::open(&evil).map(|_| ()).expect_err("a malicious pickle must be refused");
    println!("            a malicious pickle is refused: {refused}");

    println!("\nThe files are standard safetensors: Python, candle and transformers open them as they are.");
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        std::fs::copy(e.path(), to.join(e.file_name()))?;
    }
    Ok(())
}

/// Flips one bit in the middle of the largest tensor of a file; returns that tensor's name and
/// the file offset.
fn flip_one_bit(path: &Path) -> Result<(String, u64)> {
    let (name, at) = {
        let r = Reader::open(path)?;
        let t = r.tensors().max_by_key(|t| t.data().len()).context("shard has tensors")?;
        let (b, e) = t.info().data_offsets;
        (t.name().to_string(), (r.header().data_start() + (b + e) / 2) as u64)
    };
    let mut bytes = std::fs::read(path)?;
    bytes[at as usize] ^= 0x10;
    std::fs::write(path, bytes)?;
    Ok((name, at))
}
