//! Sharded output: `prefix-0000K-of-0000N.safetensors` files and a HuggingFace index.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use safeckpt_format::index::{DEFAULT_INDEX_NAME, shard_file_name};
use safeckpt_format::{Metadata, ShardIndex, TensorSource};

use crate::atomic::{sync_dir, write_atomic};
use crate::error::{Result, WriteError};
use crate::file::{PendingFile, Staged, WriteSummary, stage};
use crate::options::WriteOptions;

/// What [`write_sharded`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardedSummary {
    /// The index file, when more than one shard was needed.
    pub index: Option<PathBuf>,
    /// Each file written, in shard order.
    pub shards: Vec<WriteSummary>,
}

/// Groups tensors (given as byte sizes, in order) into shards of at most `max` bytes of data,
/// greedily in order as HuggingFace does; a tensor larger than `max` gets a shard of its own.
pub fn plan_shards(sizes: &[u64], max: u64) -> Vec<Vec<usize>> {
    let mut shards: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut current_size = 0u64;
    for (i, &s) in sizes.iter().enumerate() {
        if !current.is_empty() && current_size.saturating_add(s) > max {
            shards.push(std::mem::take(&mut current));
            current_size = 0;
        }
        current.push(i);
        current_size = current_size.saturating_add(s);
    }
    if !current.is_empty() || shards.is_empty() {
        shards.push(current);
    }
    shards
}

/// Parses a size such as `2GB` (decimal, as HuggingFace reads it), `500MiB`, `1.5GB` or `4096`.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| WriteError::Invalid(format!("invalid size `{s}`")))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "tb" | "t" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0f64.powi(4),
        other => {
            return Err(WriteError::Invalid(format!("invalid size unit `{other}` in `{s}`")));
        }
    };
    let bytes = value * mult;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(WriteError::Invalid(format!("size `{s}` is out of range")));
    }
    Ok(bytes as u64)
}

/// Writes tensors into `dir` as shards of at most `max_shard_size` bytes of tensor data each.
///
/// With a single shard the result is one file, `<prefix>.safetensors`, and no index (as
/// `save_pretrained` does). Otherwise every shard is written in parallel under a temporary
/// name; only when all are complete are they renamed into place, and the index
/// (`<prefix>.safetensors.index.json`) is written last, so a set is never visible half-written
/// through its index. Every shard carries `metadata`.
pub fn write_sharded<S: TensorSource>(
    dir: impl AsRef<Path>,
    prefix: &str,
    tensors: &[(impl AsRef<str> + Sync, S)],
    metadata: Option<Metadata>,
    max_shard_size: u64,
    opts: &WriteOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ShardedSummary> {
    stage_sharded(dir, prefix, tensors, metadata, max_shard_size, opts, progress)?.commit(opts.fsync)
}

/// A sharded set whose data is fully written under temporary names, not yet visible: see
/// [`stage_sharded`].
#[derive(Debug)]
pub struct PendingSet {
    dir: PathBuf,
    shards: Vec<PendingFile>,
    index: Option<(PathBuf, ShardIndex)>,
}

impl PendingSet {
    /// Makes the set visible: shards flushed and renamed, then the index (see [`commit_set`]).
    pub fn commit(self, fsync: bool) -> Result<ShardedSummary> {
        match self.index {
            None => {
                let summaries = self.shards.into_iter().map(|s| s.commit(fsync)).collect::<Result<Vec<_>>>()?;
                Ok(ShardedSummary { index: None, shards: summaries })
            }
            Some((path, index)) => {
                let shards = commit_set(&self.dir, self.shards, &path, &index, fsync)?;
                Ok(ShardedSummary { index: Some(path), shards })
            }
        }
    }
}

/// [`write_sharded`] up to, but not including, the commit: every byte of every shard is written
/// (so the sources may be released or modified), nothing is visible yet.
pub fn stage_sharded<S: TensorSource>(
    dir: impl AsRef<Path>,
    prefix: &str,
    tensors: &[(impl AsRef<str> + Sync, S)],
    metadata: Option<Metadata>,
    max_shard_size: u64,
    opts: &WriteOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<PendingSet> {
    let dir = dir.as_ref();
    if max_shard_size == 0 {
        return Err(WriteError::Invalid("the maximum shard size must be positive".into()));
    }
    std::fs::create_dir_all(dir).map_err(|e| WriteError::io(dir, e))?;
    let sizes: Vec<u64> = tensors.iter().map(|(_, s)| s.data_len() as u64).collect();
    let groups = plan_shards(&sizes, max_shard_size);
    if groups.len() == 1 {
        let path = dir.join(format!("{prefix}.safetensors"));
        let staged = stage(&path, tensors, metadata, opts, progress)?;
        return Ok(PendingSet { dir: dir.to_path_buf(), shards: vec![staged], index: None });
    }
    let index_path = dir.join(index_file_name(prefix));
    if !opts.overwrite && index_path.exists() {
        return Err(WriteError::Exists { path: index_path });
    }
    let n = groups.len();
    let staged: Vec<Staged> = groups
        .par_iter()
        .enumerate()
        .map(|(k, group)| {
            let path = dir.join(shard_file_name(prefix, k + 1, n));
            let part: Vec<(&str, &S)> = group.iter().map(|&i| (tensors[i].0.as_ref(), &tensors[i].1)).collect();
            stage(&path, &part, metadata.clone(), opts, progress)
        })
        .collect::<Result<_>>()?;
    let mut weight_map = BTreeMap::new();
    for (k, group) in groups.iter().enumerate() {
        let file_name = shard_file_name(prefix, k + 1, n);
        for &i in group {
            weight_map.insert(tensors[i].0.as_ref().to_string(), file_name.clone());
        }
    }
    let index = ShardIndex::new(weight_map, sizes.iter().sum());
    Ok(PendingSet { dir: dir.to_path_buf(), shards: staged, index: Some((index_path, index)) })
}

/// Commits a group of pending shard files and then their index: all shards are flushed, then
/// renamed, the directory flushed, and the index written atomically last, so the set becomes
/// visible through its index only once every shard is in place.
pub fn commit_set(
    dir: &Path,
    shards: Vec<PendingFile>,
    index_path: &Path,
    index: &ShardIndex,
    fsync: bool,
) -> Result<Vec<WriteSummary>> {
    if fsync {
        shards.par_iter().try_for_each(PendingFile::sync)?;
    }
    let summaries = shards.into_iter().map(PendingFile::rename).collect::<Result<Vec<_>>>()?;
    if fsync {
        sync_dir(Some(dir)).map_err(|e| WriteError::io(dir, e))?;
    }
    write_atomic(index_path, index.to_json().as_bytes(), fsync)?;
    Ok(summaries)
}

/// The index file name for a shard prefix (`model.safetensors.index.json` for `model`).
pub fn index_file_name(prefix: &str) -> String {
    if prefix == "model" { DEFAULT_INDEX_NAME.to_string() } else { format!("{prefix}.safetensors.index.json") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_plan_is_greedy_in_order() {
        assert_eq!(plan_shards(&[4, 4, 4, 10, 1], 8), vec![vec![0, 1], vec![2], vec![3], vec![4]]);
        assert_eq!(plan_shards(&[], 8), vec![Vec::<usize>::new()]);
        assert_eq!(plan_shards(&[1, 2, 3], 100), vec![vec![0, 1, 2]]);
    }

    #[test]
    fn sizes_parse_like_huggingface() {
        assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_size("500MiB").unwrap(), 500 << 20);
        assert_eq!(parse_size("1.5 kb").unwrap(), 1500);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        for bad in ["", "GB", "-1GB", "1XB", "0"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
