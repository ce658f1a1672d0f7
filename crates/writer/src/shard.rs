//! Sharded output: `prefix-0000K-of-0000N.safetensors` files and a HuggingFace index.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use safeckpt_format::index::{DEFAULT_INDEX_NAME, MAX_INDEX_LEN, shard_file_name};
use safeckpt_format::{Metadata, ShardIndex, TensorSource};

use crate::atomic::{AtomicFile, sync_dir};
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
/// through its index. Replacing an existing set is atomic as a whole too (see [`commit_set`]).
/// Every shard carries `metadata`.
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
    /// Where the set's index goes (or, for a single file, where a replaced set's index is).
    index_path: PathBuf,
    index: Option<ShardIndex>,
}

impl PendingSet {
    /// Makes the set visible: shards flushed and renamed, then the index (see [`commit_set`]).
    ///
    /// A single file that replaces a sharded set (its index is in the directory and overwriting
    /// is allowed) is renamed into place first; then the old index is removed (the commit point
    /// for readers that prefer an index), then the old shards.
    pub fn commit(self, fsync: bool) -> Result<ShardedSummary> {
        self.commit_observed(fsync, &mut |_| {})
    }

    /// [`PendingSet::commit`], calling `observe` after every change to the directory (tests use
    /// it to check each intermediate state).
    #[doc(hidden)]
    pub fn commit_observed(self, fsync: bool, observe: &mut dyn FnMut(&str)) -> Result<ShardedSummary> {
        match self.index {
            None => {
                let overwrite = self.shards.iter().all(PendingFile::overwrite);
                let mut summaries = Vec::new();
                for s in self.shards {
                    summaries.push(s.commit(fsync)?);
                    observe("file renamed into place");
                }
                if overwrite && self.index_path.exists() {
                    let keep: Vec<String> = summaries
                        .iter()
                        .filter_map(|s| s.path.file_name().map(|n| n.to_string_lossy().into_owned()))
                        .collect();
                    retire_index(&self.dir, &self.index_path, &keep, fsync, observe)?;
                }
                Ok(ShardedSummary { index: None, shards: summaries })
            }
            Some(index) => {
                let shards = commit_set_observed(&self.dir, self.shards, &self.index_path, &index, fsync, observe)?;
                // The index may name the shards differently (see `commit_set`).
                Ok(ShardedSummary { index: Some(self.index_path), shards })
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
        let index_path = dir.join(index_file_name(prefix));
        return Ok(PendingSet { dir: dir.to_path_buf(), shards: vec![staged], index_path, index: None });
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
    Ok(PendingSet { dir: dir.to_path_buf(), shards: staged, index_path, index: Some(index) })
}

/// Commits a group of pending shard files and then their index: all shards are flushed, then
/// renamed, the directory flushed, and the index written atomically last, so the set becomes
/// visible through its index only once every shard is in place.
///
/// Replacing a set (overwriting allowed, an index already at `index_path`) never shows a mixed
/// set, whatever instant a crash or power cut strikes:
///
/// 1. When a shard's name is one the existing index references, the new set takes fresh names
///    that no existing file uses and the old index does not mention: the HuggingFace name with a
///    generation tag, `model-g1-00001-of-00003.safetensors` (the new index's `weight_map`, which
///    every reader follows, says so; the returned summaries carry the names used). Otherwise the
///    usual names are kept.
/// 2. The shards are flushed and renamed into place, and the directory flushed: the old index
///    still describes the old set, whose files are untouched.
/// 3. The index is renamed over the old one: the commit point.
/// 4. The old set's shards that the new index does not reference are removed, and so is a single
///    `<prefix>.safetensors` of an earlier unsharded save (which some loaders prefer to an
///    index). A crash before this step leaves only unreferenced files behind.
///
/// Without overwriting, every rename refuses an existing target (see
/// [`crate::atomic::AtomicFile::rename`]); on such a refusal the shards already renamed are
/// removed again and nothing of the new set remains.
pub fn commit_set(
    dir: &Path,
    shards: Vec<PendingFile>,
    index_path: &Path,
    index: &ShardIndex,
    fsync: bool,
) -> Result<Vec<WriteSummary>> {
    commit_set_observed(dir, shards, index_path, index, fsync, &mut |_| {})
}

/// What the directory held before a set is committed over it.
enum Previous {
    /// No index at the target.
    None,
    /// The existing index's shard files.
    Set(BTreeSet<String>),
    /// An index that cannot be read: every existing name counts as taken.
    Unreadable,
}

fn previous_set(index_path: &Path) -> Previous {
    match std::fs::symlink_metadata(index_path) {
        Err(_) => Previous::None,
        Ok(m) if m.is_file() && m.len() <= MAX_INDEX_LEN => match std::fs::read(index_path) {
            Ok(bytes) => match ShardIndex::parse(&bytes) {
                Ok(old) => Previous::Set(old.shards().into_iter().map(str::to_string).collect()),
                Err(_) => Previous::Unreadable,
            },
            Err(_) => Previous::Unreadable,
        },
        Ok(_) => Previous::Unreadable,
    }
}

/// `name` with a generation tag: `model-00001-of-00003.safetensors` becomes
/// `model-g1-00001-of-00003.safetensors` (the `-0000K-of-0000N.safetensors` ending that tools
/// recognise is kept); other names get the tag before their extension.
pub(crate) fn tagged_name(name: &str, tag: &str) -> String {
    if tag.is_empty() {
        return name.to_string();
    }
    let stem = name.strip_suffix(".safetensors");
    if let Some(stem) = stem {
        // `<prefix>-<digits>-of-<digits>`
        let mut parts = stem.rsplitn(4, '-');
        let (n, of, k, prefix) = (parts.next(), parts.next(), parts.next(), parts.next());
        let digits = |s: Option<&str>| s.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
        if let (true, Some("of"), true, Some(prefix)) = (digits(n), of, digits(k), prefix) {
            return format!("{prefix}-{tag}-{}-of-{}.safetensors", k.unwrap_or(""), n.unwrap_or(""));
        }
        return format!("{stem}-{tag}.safetensors");
    }
    format!("{name}-{tag}")
}

/// Whether `name` is a shard name this writer gives a set of `prefix`:
/// `<prefix>-0000K-of-0000N.safetensors`, with or without a generation tag (`-g<N>`).
pub(crate) fn is_shard_name(name: &str, prefix: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else { return false };
    let Some(rest) = rest.strip_suffix(".safetensors") else { return false };
    let rest = match rest.split_once('-') {
        Some((tag, after)) if tag.len() > 1 && tag.starts_with('g') && digits(&tag[1..]) => after,
        _ => rest,
    };
    matches!(rest.split_once("-of-"), Some((k, n)) if digits(k) && digits(n))
}

/// The generation tag that gives the new set's `names` no clash with the previous set: none (the
/// names as they are) when no name is referenced by the old index, else the first `g<N>` whose
/// names are neither referenced nor present in `dir`.
fn fresh_tag(dir: &Path, names: &[String], previous: &Previous) -> String {
    let taken = |name: &str| match previous {
        Previous::None => false,
        Previous::Set(refs) => refs.contains(name),
        Previous::Unreadable => std::fs::symlink_metadata(dir.join(name)).is_ok(),
    };
    if !names.iter().any(|n| taken(n)) {
        return String::new();
    }
    (1u64..)
        .map(|g| format!("g{g}"))
        .find(|tag| {
            names.iter().all(|n| {
                let t = tagged_name(n, tag);
                !taken(&t) && std::fs::symlink_metadata(dir.join(&t)).is_err()
            })
        })
        .expect("some generation tag is free")
}

/// Removes files the committed set no longer needs; failures are ignored (what is left is not
/// referenced by any index, so readers never see it).
fn remove_unreferenced(dir: &Path, names: &[String], fsync: bool, observe: &mut dyn FnMut(&str)) {
    let mut removed = false;
    for name in names {
        if std::fs::remove_file(dir.join(name)).is_ok() {
            removed = true;
            observe("old file removed");
        }
    }
    if removed && fsync {
        let _ = sync_dir(Some(dir));
    }
}

/// Removes a sharded set that a single file has just replaced: the index first (a flushed
/// removal: from then on the single file is what the directory holds), then its shards.
fn retire_index(
    dir: &Path,
    index_path: &Path,
    keep: &[String],
    fsync: bool,
    observe: &mut dyn FnMut(&str),
) -> Result<()> {
    let old = match previous_set(index_path) {
        Previous::Set(refs) => refs,
        _ => BTreeSet::new(),
    };
    std::fs::remove_file(index_path).map_err(|e| WriteError::io(index_path, e))?;
    observe("old index removed");
    if fsync {
        sync_dir(Some(dir)).map_err(|e| WriteError::io(dir, e))?;
    }
    let doomed: Vec<String> = old.into_iter().filter(|n| !keep.contains(n)).collect();
    remove_unreferenced(dir, &doomed, fsync, observe);
    Ok(())
}

/// After a single `<prefix>.safetensors` has been committed in `dir` over a sharded set of the
/// same prefix: removes the set's index (the moment from which readers that prefer an index see
/// the single file), then the set's shards, keeping the single file. Returns whether there was an
/// index. [`PendingSet::commit`] does this itself; other writers of a single file into a
/// directory call it after their commit when overwriting is allowed.
pub fn retire_replaced_set(dir: &Path, prefix: &str, fsync: bool) -> Result<bool> {
    let index_path = dir.join(index_file_name(prefix));
    if std::fs::symlink_metadata(&index_path).is_err() {
        return Ok(false);
    }
    retire_index(dir, &index_path, &[format!("{prefix}.safetensors")], fsync, &mut |_| {})?;
    Ok(true)
}

/// [`commit_set`], calling `observe` after every change to the directory (tests use it to check
/// each intermediate state).
#[doc(hidden)]
pub fn commit_set_observed(
    dir: &Path,
    mut shards: Vec<PendingFile>,
    index_path: &Path,
    index: &ShardIndex,
    fsync: bool,
    observe: &mut dyn FnMut(&str),
) -> Result<Vec<WriteSummary>> {
    let overwrite = shards.iter().all(PendingFile::overwrite);
    let previous = if overwrite { previous_set(index_path) } else { Previous::None };
    let mut index = index.clone();
    let names: Vec<String> = shards
        .iter()
        .map(|s| s.summary().path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
        .collect();
    let tag = fresh_tag(dir, &names, &previous);
    if !tag.is_empty() {
        let renamed: BTreeMap<&str, String> = names.iter().map(|n| (n.as_str(), tagged_name(n, &tag))).collect();
        for file in index.weight_map.values_mut() {
            if let Some(new) = renamed.get(file.as_str()) {
                *file = new.clone();
            }
        }
        for (s, n) in shards.iter_mut().zip(&names) {
            s.set_target_name(&renamed[n.as_str()]);
        }
    }
    if fsync {
        shards.par_iter().try_for_each(PendingFile::sync)?;
    }
    // Shards renamed into place so far, removed again if the set cannot be committed.
    let mut placed: Vec<PathBuf> = Vec::new();
    let undo = |placed: &[PathBuf]| {
        for p in placed {
            let _ = std::fs::remove_file(p);
        }
    };
    let mut summaries = Vec::with_capacity(shards.len());
    for s in shards {
        match s.rename() {
            Ok(summary) => {
                placed.push(summary.path.clone());
                summaries.push(summary);
                observe("shard renamed into place");
            }
            Err(e) => {
                undo(&placed);
                return Err(e);
            }
        }
    }
    if fsync && let Err(e) = sync_dir(Some(dir)) {
        undo(&placed);
        return Err(WriteError::io(dir, e));
    }
    // The index, written and flushed under a temporary name, then renamed: the commit point.
    let staged_index = (|| {
        use std::io::Write;
        let tmp = AtomicFile::create(index_path, overwrite)?;
        tmp.file().write_all(index.to_json().as_bytes()).map_err(|e| WriteError::io(tmp.target(), e))?;
        if fsync {
            tmp.sync()?;
        }
        Ok(tmp)
    })();
    if let Err(e) = staged_index.and_then(AtomicFile::rename) {
        undo(&placed);
        return Err(e);
    }
    observe("index renamed into place");
    if fsync {
        sync_dir(Some(dir)).map_err(|e| WriteError::io(dir, e))?;
    }
    if overwrite {
        let keep: BTreeSet<&str> = index.weight_map.values().map(String::as_str).collect();
        let mut doomed: Vec<String> = match &previous {
            Previous::Set(refs) => refs.iter().filter(|n| !keep.contains(n.as_str())).cloned().collect(),
            _ => Vec::new(),
        };
        // Shards of this prefix that no index references: left by a crash between an earlier
        // commit and its clean-up.
        let prefix = index_path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".safetensors.index.json"))
            .map(str::to_string);
        if let (Some(prefix), Ok(entries)) = (prefix, std::fs::read_dir(dir)) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if is_shard_name(&name, &prefix)
                    && !keep.contains(name.as_str())
                    && !doomed.contains(&name)
                    && e.file_type().is_ok_and(|t| t.is_file())
                {
                    doomed.push(name);
                }
            }
        }
        // A single-file save of the same prefix, from before the set.
        if let Some(single) =
            index_path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".index.json"))
            && !keep.contains(single)
            && std::fs::symlink_metadata(dir.join(single)).is_ok_and(|m| m.is_file())
        {
            doomed.push(single.to_string());
        }
        remove_unreferenced(dir, &doomed, fsync, observe);
    }
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
    fn generation_tags_keep_the_shard_pattern() {
        assert_eq!(tagged_name("model-00001-of-00003.safetensors", ""), "model-00001-of-00003.safetensors");
        assert_eq!(tagged_name("model-00001-of-00003.safetensors", "g1"), "model-g1-00001-of-00003.safetensors");
        assert_eq!(tagged_name("my-net-00002-of-00010.safetensors", "g7"), "my-net-g7-00002-of-00010.safetensors");
        assert_eq!(tagged_name("rank-1.safetensors", "g2"), "rank-1-g2.safetensors");
        assert_eq!(tagged_name("weights.bin", "g2"), "weights.bin-g2");
    }

    #[test]
    fn shard_names_are_recognised_with_and_without_a_tag() {
        assert!(is_shard_name("model-00001-of-00003.safetensors", "model"));
        assert!(is_shard_name("model-g12-00001-of-00003.safetensors", "model"));
        assert!(!is_shard_name("model.safetensors", "model"));
        assert!(!is_shard_name("model-00001-of-00003.safetensors.bak", "model"));
        assert!(!is_shard_name("other-00001-of-00003.safetensors", "model"));
        assert!(!is_shard_name("model-extra-00001-of-00003.safetensors", "model"));
        assert!(!is_shard_name("model-g-00001-of-00003.safetensors", "model"));
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
