//! `safeckpt shard` and `safeckpt merge`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use safeckpt_format::Metadata;
use safeckpt_reader::{GlobalSource, ShardedReader};
use safeckpt_writer::{WriteOptions, parse_size, write_file_with_progress, write_sharded};

use crate::util::{count, human_bytes, human_duration, progress_bar};

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
