//! `safeckpt shard` and `safeckpt merge`.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use safeckpt_format::{Dtype, Metadata, TensorSource};
use safeckpt_reader::{GlobalSource, ShardedReader};
use safeckpt_writer::{WriteOptions, parse_size, write_file_with_progress, write_sharded};

use crate::util::{count, human_bytes, human_duration, progress_bar, thousands};

/// Metadata of a set: the union of every shard's, first value wins.
fn merged_metadata(set: &ShardedReader) -> Option<Metadata> {
    let mut out: Option<Metadata> = None;
    for s in set.shards() {
        if let Some(m) = s.metadata() {
            let o = out.get_or_insert_with(Metadata::new);
            for (k, v) in m {
                o.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
    out
}

/// The set's tensors as the saving program saw them: split tensors (multi-rank saves) assembled.
fn views(set: &ShardedReader) -> Vec<(&str, GlobalSource<'_>)> {
    set.global_sources()
}

/// Splits a file or set into shards of at most `max` bytes.
pub fn shard(input: &Path, max: &str, out_dir: &Path, prefix: &str, opts: &WriteOptions, quiet: bool) -> Result<()> {
    let max_bytes = parse_size(max)?;
    let start = Instant::now();
    let set = ShardedReader::open(input)?;
    let tensors = views(&set);
    let pb = if quiet { indicatif::ProgressBar::hidden() } else { progress_bar(set.data_len(), "shard") };
    let summary = write_sharded(out_dir, prefix, &tensors, merged_metadata(&set), max_bytes, opts, &|n| pb.inc(n))
        .with_context(|| format!("sharding {} into {}", input.display(), out_dir.display()))?;
    pb.finish_and_clear();
    if !quiet {
        for s in &summary.shards {
            println!("wrote {}  ({}, {})", s.path.display(), count(s.tensors, "tensor"), human_bytes(s.bytes));
        }
        if let Some(i) = &summary.index {
            println!("wrote {}", i.display());
        }
        println!("{} in {}", count(summary.shards.len(), "shard"), human_duration(start.elapsed()));
    }
    Ok(())
}

/// Joins a sharded set into one file; tensors split across ranks are assembled whole.
pub fn merge(index: &Path, out: &Path, opts: &WriteOptions, quiet: bool) -> Result<PathBuf> {
    let start = Instant::now();
    let set = ShardedReader::open(index)?;
    let tensors = views(&set);
    let pb = if quiet { indicatif::ProgressBar::hidden() } else { progress_bar(set.data_len(), "merge") };
    let s = write_file_with_progress(out, &tensors, merged_metadata(&set), opts, &|n| pb.inc(n))
        .with_context(|| format!("merging {} into {}", index.display(), out.display()))?;
    pb.finish_and_clear();
    if !quiet {
        println!(
            "wrote {}  ({} from {}, {}) in {}",
            s.path.display(),
            count(s.tensors, "tensor"),
            count(set.shards().len(), "shard"),
            human_bytes(s.bytes),
            human_duration(start.elapsed())
        );
    }
    Ok(s.path)
}

/// A tensor of a set, cast to another floating type as it is written, or passed through.
struct MaybeCast<'a> {
    inner: GlobalSource<'a>,
    to: Option<Dtype>,
}

impl TensorSource for MaybeCast<'_> {
    fn dtype(&self) -> Dtype {
        self.to.unwrap_or_else(|| self.inner.dtype())
    }
    fn shape(&self) -> &[usize] {
        self.inner.shape()
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match self.to {
            None => self.inner.data(),
            Some(to) => {
                let mut out = Vec::new();
                safeckpt_torch::cast(&self.inner.data(), self.inner.dtype(), to, &mut out);
                Cow::Owned(out)
            }
        }
    }
}

/// `convert --dtype` of a safetensors file, sharded set or folder: the tensors the policy selects
/// are cast as they are written (one tensor at a time per writer thread; the others are copied
/// from the map), into one file or, with `max_shard_size`, a sharded set. The metadata is kept.
pub fn cast_set(
    input: &Path,
    output: &Path,
    policy: &safeckpt_torch::CastPolicy,
    max_shard_size: Option<u64>,
    opts: &WriteOptions,
    quiet: bool,
) -> Result<()> {
    let start = Instant::now();
    let set = ShardedReader::open(input)?;
    let to = policy.to().dtype();
    let mut cast = 0;
    let tensors: Vec<(&str, MaybeCast<'_>)> = views(&set)
        .into_iter()
        .map(|(name, inner)| {
            let applies = policy.applies(name, inner.dtype());
            cast += usize::from(applies);
            (name, MaybeCast { inner, to: applies.then_some(to) })
        })
        .collect();
    let pb = if quiet { indicatif::ProgressBar::hidden() } else { progress_bar(set.data_len(), "convert") };
    let mut meta = merged_metadata(&set);
    if let Some(m) = &mut meta {
        // The writer records new checksums for the new bytes.
        m.remove(safeckpt_format::INTEGRITY_KEY);
    }
    let context = || format!("converting {} into {}", input.display(), output.display());
    let (written, bytes) = match max_shard_size {
        Some(max) => {
            let s = write_sharded(output, "model", &tensors, meta, max, opts, &|n| pb.inc(n)).with_context(context)?;
            let bytes = s.shards.iter().map(|f| f.bytes).sum();
            (s.index.unwrap_or_else(|| output.join("model.safetensors")), bytes)
        }
        None => {
            let s = write_file_with_progress(output, &tensors, meta, opts, &|n| pb.inc(n)).with_context(context)?;
            (s.path, s.bytes)
        }
    };
    pb.finish_and_clear();
    if !quiet {
        println!("converted {} (safetensors) -> {}", input.display(), written.display());
        println!(
            "  {} ({}), {} cast to {}, the rest as they were, in {}",
            count(tensors.len(), "tensor"),
            human_bytes(bytes),
            thousands(cast as u64),
            to.as_str(),
            human_duration(start.elapsed())
        );
    }
    Ok(())
}
