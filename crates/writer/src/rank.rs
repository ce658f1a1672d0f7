//! Multi-rank saves: every rank (a thread or a process, on one machine or many) writes its own
//! tensors, and its own pieces of tensors split across ranks, into its own shard file at the same
//! time; one coordinator then commits the index, only once every rank has finished.
//!
//! The barrier goes through the storage itself: after its shard is committed, a rank writes a
//! small *done marker* (`<prefix>-rank-00003-of-00008.done`, JSON) listing what the shard holds
//! and the save's id. The coordinator waits for all markers carrying that id, checks that they fit
//! together (no tensor saved by two ranks, the pieces of each split tensor tiling it exactly with
//! one dtype and shape), writes `<prefix>.safetensors.index.json` (the commit: until it exists,
//! nothing is visible), and removes the markers. The index lists every stored tensor in
//! `weight_map`, so the set opens as an ordinary sharded set; split tensors are described in its
//! `safeckpt.split_tensors` section (docs/format.md §9), and readers assemble any region of them.
//!
//! ```no_run
//! use std::time::Duration;
//! use safeckpt_format::{Dtype, RawTensor};
//! use safeckpt_writer::rank::{RankTensor, commit_ranks, save_rank};
//! use safeckpt_writer::WriteOptions;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (rank, world) = (1, 2);
//! let dir = std::path::Path::new("ckpt-step-100");
//! // This rank holds rows 512..1024 of a 1024x256 weight.
//! let rows = vec![0u8; 512 * 256 * 4];
//! let tensors = vec![RankTensor::piece(
//!     "layer.w",
//!     RawTensor::borrowed(Dtype::F32, vec![512, 256], &rows),
//!     vec![1024, 256],
//!     vec![512, 0],
//! )];
//! save_rank(dir, "model", rank, world, "step-100", &tensors, None, &WriteOptions::new())?;
//! if rank == 0 {
//!     commit_ranks(dir, "model", world, "step-100", Duration::from_secs(600), &WriteOptions::new())?;
//! }
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use safeckpt_format::split::{SplitPiece, SplitTensor, piece_name};
use safeckpt_format::{Metadata, ShardIndex, TensorSource};
use serde::{Deserialize, Serialize};

use crate::atomic::{sync_dir, write_atomic};
use crate::error::{Result, WriteError};
use crate::file::write_file;
use crate::options::WriteOptions;
use crate::shard::index_file_name;

/// Largest done marker read, in bytes.
pub const MAX_MARKER_LEN: u64 = 64 << 20;

/// One tensor a rank saves: whole, or its piece of a tensor split across ranks.
#[derive(Debug, Clone)]
pub struct RankTensor<S> {
    /// The tensor's (global) name.
    pub name: String,
    /// The rank's data: the whole tensor, or its piece.
    pub source: S,
    /// For a piece: the global shape and where the piece starts in it.
    pub placement: Option<Placement>,
}

/// Where a piece sits in its global tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The global tensor's shape.
    pub global_shape: Vec<usize>,
    /// The piece's offset in it, per dimension.
    pub offset: Vec<usize>,
}

impl<S: TensorSource> RankTensor<S> {
    /// A tensor this rank holds whole (and no other rank saves).
    pub fn whole(name: impl Into<String>, source: S) -> Self {
        RankTensor { name: name.into(), source, placement: None }
    }

    /// This rank's piece of `name`, whose global shape is `global_shape`, starting at `offset`.
    pub fn piece(name: impl Into<String>, source: S, global_shape: Vec<usize>, offset: Vec<usize>) -> Self {
        RankTensor { name: name.into(), source, placement: Some(Placement { global_shape, offset }) }
    }
}

/// What a rank's done marker records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankMarker {
    /// Format version, 1.
    pub version: u32,
    /// The save's id; markers of other saves are ignored.
    pub id: String,
    /// This rank.
    pub rank: usize,
    /// Number of ranks.
    pub world: usize,
    /// The shard file, relative to the checkpoint's directory.
    pub file: String,
    /// Bytes of tensor data in the shard.
    pub data_bytes: u64,
    /// Tensors stored whole.
    pub whole: Vec<String>,
    /// Pieces: global name, dtype, global shape, and the piece.
    pub pieces: Vec<MarkerPiece>,
}

/// One piece in a done marker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkerPiece {
    /// The global tensor.
    pub name: String,
    /// Its dtype.
    pub dtype: String,
    /// Its global shape.
    pub global_shape: Vec<usize>,
    /// The piece.
    pub piece: SplitPiece,
}

/// The shard file of `rank`: `<prefix>-rank-00001-of-00004.safetensors` (0-based ranks).
pub fn rank_file_name(prefix: &str, rank: usize, world: usize) -> String {
    format!("{prefix}-rank-{rank:05}-of-{world:05}.safetensors")
}

/// The done marker of `rank`: `<prefix>-rank-00001-of-00004.done`.
pub fn marker_file_name(prefix: &str, rank: usize, world: usize) -> String {
    format!("{prefix}-rank-{rank:05}-of-{world:05}.done")
}

fn invalid(msg: String) -> WriteError {
    WriteError::Invalid(msg)
}

/// Writes this rank's shard into `dir` (created if needed), committed atomically, then its done
/// marker. Pieces are stored under [`piece_name`]s. Returns the marker.
#[allow(clippy::too_many_arguments)]
pub fn save_rank<S: TensorSource>(
    dir: &Path,
    prefix: &str,
    rank: usize,
    world: usize,
    id: &str,
    tensors: &[RankTensor<S>],
    metadata: Option<Metadata>,
    opts: &WriteOptions,
) -> Result<RankMarker> {
    let marker = plan_rank(prefix, rank, world, id, tensors)?;
    std::fs::create_dir_all(dir).map_err(|e| WriteError::io(dir, e))?;
    let named = stored_names(tensors);
    // A rank may rewrite its own shard of an interrupted attempt.
    let write = opts.clone().overwrite(true);
    write_file(dir.join(&marker.file), &named, metadata, &write)?;
    write_marker(dir, prefix, &marker, opts.has_fsync())?;
    Ok(marker)
}

/// Each tensor with the name it is stored under: its own, or its [`piece_name`].
pub fn stored_names<S>(tensors: &[RankTensor<S>]) -> Vec<(String, &S)> {
    tensors
        .iter()
        .map(|t| match &t.placement {
            None => (t.name.clone(), &t.source),
            Some(p) => (piece_name(&t.name, &p.offset), &t.source),
        })
        .collect()
}

/// The marker `save_rank` would write, with the checks it makes before writing anything.
pub fn plan_rank<S: TensorSource>(
    prefix: &str,
    rank: usize,
    world: usize,
    id: &str,
    tensors: &[RankTensor<S>],
) -> Result<RankMarker> {
    if world == 0 || rank >= world {
        return Err(invalid(format!("rank {rank} of a world of {world}")));
    }
    let mut marker = RankMarker {
        version: 1,
        id: id.to_string(),
        rank,
        world,
        file: rank_file_name(prefix, rank, world),
        data_bytes: 0,
        whole: Vec::new(),
        pieces: Vec::new(),
    };
    for t in tensors {
        marker.data_bytes += t.source.data_len() as u64;
        match &t.placement {
            None => marker.whole.push(t.name.clone()),
            Some(p) => {
                let shape = t.source.shape();
                if p.offset.len() != p.global_shape.len() || shape.len() != p.global_shape.len() {
                    return Err(invalid(format!(
                        "rank {rank}: piece of `{}` has shape {shape:?} and offset {:?} for a global shape {:?}",
                        t.name, p.offset, p.global_shape
                    )));
                }
                marker.pieces.push(MarkerPiece {
                    name: t.name.clone(),
                    dtype: t.source.dtype().to_string(),
                    global_shape: p.global_shape.clone(),
                    piece: SplitPiece {
                        tensor: piece_name(&t.name, &p.offset),
                        offset: p.offset.clone(),
                        shape: shape.to_vec(),
                    },
                });
            }
        }
    }
    Ok(marker)
}

fn write_marker(dir: &Path, prefix: &str, marker: &RankMarker, fsync: bool) -> Result<()> {
    let path = dir.join(marker_file_name(prefix, marker.rank, marker.world));
    let json = serde_json::to_vec(marker).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    write_atomic(&path, &json, fsync)
}

/// Reads and parses a done marker.
pub fn parse_marker(path: &Path, bytes: &[u8]) -> Result<RankMarker> {
    if bytes.len() as u64 > MAX_MARKER_LEN {
        return Err(invalid(format!("{}: done marker of {} bytes is too large", path.display(), bytes.len())));
    }
    serde_json::from_slice(bytes).map_err(|e| invalid(format!("{}: not a done marker: {e}", path.display())))
}

/// Builds the index of a complete multi-rank save from its markers (one per rank, all of one
/// save): every stored tensor in `weight_map`, split tensors from their pieces, `total_size`.
/// Errors name the ranks involved: a tensor saved by two ranks, pieces that disagree on dtype or
/// shape, pieces that do not tile their tensor.
pub fn plan_index(markers: &[RankMarker]) -> Result<ShardIndex> {
    let mut weight_map: BTreeMap<String, String> = BTreeMap::new();
    let mut owner: BTreeMap<String, usize> = BTreeMap::new();
    let mut split: BTreeMap<String, (SplitTensor, usize)> = BTreeMap::new();
    let mut total = 0u64;
    for m in markers {
        total += m.data_bytes;
        let stored = m.whole.iter().cloned().chain(m.pieces.iter().map(|p| p.piece.tensor.clone()));
        for name in stored {
            if let Some(prev) = owner.insert(name.clone(), m.rank) {
                return Err(invalid(format!(
                    "tensor `{name}` is saved by both rank {prev} and rank {}; save a replicated tensor from one rank only",
                    m.rank
                )));
            }
            weight_map.insert(name, m.file.clone());
        }
        for p in &m.pieces {
            let entry = split.entry(p.name.clone()).or_insert_with(|| {
                (SplitTensor { dtype: p.dtype.clone(), shape: p.global_shape.clone(), pieces: Vec::new() }, m.rank)
            });
            if entry.0.dtype != p.dtype || entry.0.shape != p.global_shape {
                return Err(invalid(format!(
                    "split tensor `{}`: rank {} saves it as {} {:?}, rank {} as {} {:?}",
                    p.name, entry.1, entry.0.dtype, entry.0.shape, m.rank, p.dtype, p.global_shape
                )));
            }
            entry.0.pieces.push(p.piece.clone());
        }
    }
    let mut index = ShardIndex::new(weight_map, total);
    index.split_tensors = split.into_iter().map(|(k, (t, _))| (k, t)).collect();
    safeckpt_format::split::validate(&index.split_tensors, &index.weight_map)
        .map_err(|e| invalid(format!("the ranks' pieces do not fit together: {e}")))?;
    Ok(index)
}

/// Waits (up to `timeout`) for the done markers of all `world` ranks of save `id` in `dir`, then
/// commits the index and removes the markers. Returns the index path.
pub fn commit_ranks(
    dir: &Path,
    prefix: &str,
    world: usize,
    id: &str,
    timeout: Duration,
    opts: &WriteOptions,
) -> Result<PathBuf> {
    let markers = wait_for_markers(dir, prefix, world, id, timeout)?;
    let index = plan_index(&markers)?;
    let path = dir.join(index_file_name(prefix));
    write_atomic(&path, index.to_json().as_bytes(), opts.has_fsync())?;
    for rank in 0..world {
        let marker = dir.join(marker_file_name(prefix, rank, world));
        std::fs::remove_file(&marker).map_err(|e| WriteError::io(&marker, e))?;
    }
    if opts.has_fsync() {
        sync_dir(Some(dir)).map_err(|e| WriteError::io(dir, e))?;
    }
    Ok(path)
}

/// The markers of every rank of save `id`, once all are present.
pub fn wait_for_markers(
    dir: &Path,
    prefix: &str,
    world: usize,
    id: &str,
    timeout: Duration,
) -> Result<Vec<RankMarker>> {
    if world == 0 {
        return Err(invalid("a world of 0 ranks".into()));
    }
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        let mut found = Vec::with_capacity(world);
        let mut waiting = Vec::new();
        for rank in 0..world {
            let path = dir.join(marker_file_name(prefix, rank, world));
            match std::fs::read(&path) {
                Ok(bytes) => {
                    let m = parse_marker(&path, &bytes)?;
                    if m.id != id {
                        waiting.push(format!("{rank} (its marker is from save `{}`)", m.id));
                    } else if m.rank != rank || m.world != world {
                        return Err(invalid(format!("{}: marker says rank {} of {}", path.display(), m.rank, m.world)));
                    } else {
                        found.push(m);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => waiting.push(rank.to_string()),
                Err(e) => return Err(WriteError::io(path, e)),
            }
        }
        if waiting.is_empty() {
            return Ok(found);
        }
        if start.elapsed() >= timeout {
            return Err(invalid(format!(
                "{}: after {:.0?}, still waiting for rank(s) {} of save `{id}`",
                dir.display(),
                timeout,
                waiting.join(", ")
            )));
        }
        std::thread::sleep(pause.min(timeout.saturating_sub(start.elapsed())));
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use safeckpt_format::{Dtype, RawTensor};

    use super::*;

    fn piece(rank: usize, offset: usize, rows: usize) -> RankMarker {
        let t = RankTensor::piece(
            "w",
            RawTensor::owned(Dtype::F32, vec![rows, 2], vec![0; rows * 8]),
            vec![4, 2],
            vec![offset, 0],
        );
        plan_rank("m", rank, 2, "s", &[t]).unwrap()
    }

    #[test]
    fn markers_make_an_index() {
        let index = plan_index(&[piece(0, 0, 2), piece(1, 2, 2)]).unwrap();
        assert_eq!(index.weight_map["w@0,0"], "m-rank-00000-of-00002.safetensors");
        assert_eq!(index.weight_map["w@2,0"], "m-rank-00001-of-00002.safetensors");
        assert_eq!(index.split_tensors["w"].shape, [4, 2]);
        assert_eq!(index.total_size(), Some(32));
    }

    #[test]
    fn bad_combinations_name_the_ranks() {
        let err = plan_index(&[piece(0, 0, 2), piece(1, 1, 2)]).unwrap_err().to_string();
        assert!(err.contains("overlap") || err.contains("elements"), "{err}");
        let err = plan_index(&[piece(0, 0, 2), piece(0, 0, 2)]).unwrap_err().to_string();
        assert!(err.contains("both rank 0 and rank 0"), "{err}");
        let mut other = piece(1, 2, 2);
        other.pieces[0].dtype = "F16".into();
        let err = plan_index(&[piece(0, 0, 2), other]).unwrap_err().to_string();
        assert!(err.contains("rank 0 saves it as F32") && err.contains("rank 1 as F16"), "{err}");
    }
}
