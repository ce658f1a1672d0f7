//! Tensors split into pieces across the shards of a set (multi-rank saves).
//!
//! A shard index may carry, besides `weight_map`, a section `safeckpt.split_tensors` describing
//! tensors that no single shard holds whole: each is a global name, dtype and shape, and the
//! pieces that tile it, each an ordinary tensor of some shard (listed in `weight_map` under its
//! own name) placed at an offset:
//!
//! ```json
//! "safeckpt.split_tensors": {
//!   "layers.0.w": {"dtype": "F32", "shape": [1024, 512], "pieces": [
//!     {"tensor": "layers.0.w@0,0", "offset": [0, 0], "shape": [512, 512]},
//!     {"tensor": "layers.0.w@512,0", "offset": [512, 0], "shape": [512, 512]}]}
//! }
//! ```
//!
//! The pieces must tile the global tensor exactly: inside its bounds, not overlapping, covering
//! every element.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::dtype::Dtype;
use crate::error::{FormatError, Result};

/// Most dimensions of a split tensor.
pub const MAX_SPLIT_RANK: usize = 64;
/// Most pieces of one split tensor when they are cut along one dimension.
pub const MAX_PIECES_1D: usize = 1 << 20;
/// Most pieces of one split tensor cut along several dimensions (checked pairwise).
pub const MAX_PIECES_ND: usize = 4096;

/// One piece of a split tensor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitPiece {
    /// The name under which the piece is stored (a key of `weight_map`).
    pub tensor: String,
    /// Where the piece starts in the global tensor, per dimension.
    pub offset: Vec<usize>,
    /// The piece's shape.
    pub shape: Vec<usize>,
}

impl SplitPiece {
    /// The half-open range the piece covers along each dimension.
    pub fn ranges(&self) -> Vec<std::ops::Range<usize>> {
        self.offset.iter().zip(&self.shape).map(|(&o, &s)| o..o + s).collect()
    }
}

/// A tensor stored as pieces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitTensor {
    /// Element type (safetensors name, e.g. `F32`).
    pub dtype: String,
    /// Global shape.
    pub shape: Vec<usize>,
    /// The pieces, in the order their ranks wrote them.
    pub pieces: Vec<SplitPiece>,
}

impl SplitTensor {
    /// The dtype, parsed.
    pub fn dtype(&self) -> Option<Dtype> {
        Dtype::from_name(&self.dtype)
    }

    /// Where `region` (one range per dimension, inside the shape) meets each piece, skipping the
    /// pieces it misses.
    pub fn boxes(&self, region: &[std::ops::Range<usize>]) -> Vec<PieceBox<'_>> {
        self.pieces
            .iter()
            .filter_map(|piece| {
                let inter: Vec<std::ops::Range<usize>> = region
                    .iter()
                    .zip(piece.offset.iter().zip(&piece.shape))
                    .map(|(r, (&o, &s))| r.start.max(o)..r.end.min(o + s))
                    .collect();
                if inter.iter().any(|r| r.start >= r.end) {
                    return None;
                }
                Some(PieceBox {
                    piece,
                    src_at: inter.iter().zip(&piece.offset).map(|(r, o)| r.start - o).collect(),
                    dst_at: inter.iter().zip(region).map(|(i, r)| i.start - r.start).collect(),
                    extent: inter.iter().map(|r| r.end - r.start).collect(),
                })
            })
            .collect()
    }
}

/// The part of a region that one piece holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceBox<'a> {
    /// The piece.
    pub piece: &'a SplitPiece,
    /// Where the part starts in the piece.
    pub src_at: Vec<usize>,
    /// Where it goes in the region.
    pub dst_at: Vec<usize>,
    /// Its extent.
    pub extent: Vec<usize>,
}

/// The conventional name of the piece of `name` that starts at `offset`: `name@o0,o1,…`.
pub fn piece_name(name: &str, offset: &[usize]) -> String {
    let mut s = String::with_capacity(name.len() + 2 + 6 * offset.len());
    s.push_str(name);
    s.push('@');
    for (i, o) in offset.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&o.to_string());
    }
    s
}

fn bad(name: &str, reason: impl std::fmt::Display) -> FormatError {
    FormatError::BadIndex { reason: format!("split tensor `{name}`: {reason}") }
}

/// Checks the split section against `weight_map`: dtypes known, pieces listed in `weight_map`
/// and used once, no split name that is also a whole tensor, and every tensor's pieces tiling it
/// exactly. Piece shapes and dtypes against the shards' own headers are checked by readers.
pub fn validate(split: &BTreeMap<String, SplitTensor>, weight_map: &BTreeMap<String, String>) -> Result<()> {
    let mut used: HashSet<&str> = HashSet::new();
    for (name, t) in split {
        if weight_map.contains_key(name) {
            return Err(bad(name, "the name is also listed whole in weight_map"));
        }
        if t.dtype().is_none() {
            return Err(bad(name, format_args!("unknown dtype `{}`", t.dtype)));
        }
        let rank = t.shape.len();
        if rank == 0 || rank > MAX_SPLIT_RANK {
            return Err(bad(name, format_args!("rank {rank} (a split tensor has 1 to {MAX_SPLIT_RANK} dimensions)")));
        }
        let total = volume(&t.shape).ok_or_else(|| bad(name, "its element count overflows"))?;
        if t.pieces.is_empty() {
            return Err(bad(name, "no pieces"));
        }
        let mut sum: u128 = 0;
        for p in &t.pieces {
            if !weight_map.contains_key(&p.tensor) {
                return Err(bad(name, format_args!("piece `{}` is not in weight_map", p.tensor)));
            }
            if !used.insert(p.tensor.as_str()) {
                return Err(bad(name, format_args!("piece `{}` is used twice", p.tensor)));
            }
            if p.offset.len() != rank || p.shape.len() != rank {
                return Err(bad(name, format_args!("piece `{}` does not have {rank} dimensions", p.tensor)));
            }
            for d in 0..rank {
                if p.offset[d].checked_add(p.shape[d]).is_none_or(|end| end > t.shape[d]) {
                    return Err(bad(
                        name,
                        format_args!(
                            "piece `{}` (offset {:?}, shape {:?}) reaches outside the shape {:?}",
                            p.tensor, p.offset, p.shape, t.shape
                        ),
                    ));
                }
            }
            sum += volume(&p.shape).ok_or_else(|| bad(name, "a piece's element count overflows"))? as u128;
        }
        if sum != total as u128 {
            return Err(bad(name, format_args!("the pieces hold {sum} elements, the tensor {total}")));
        }
        check_no_overlap(name, t)?;
    }
    Ok(())
}

fn volume(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// With the element counts equal and every piece in bounds, no overlap means an exact tiling.
fn check_no_overlap(name: &str, t: &SplitTensor) -> Result<()> {
    let rank = t.shape.len();
    // The common case: every piece spans the whole tensor except along one dimension.
    let cut_dims: HashSet<usize> =
        t.pieces.iter().flat_map(|p| (0..rank).filter(move |&d| p.shape[d] != t.shape[d])).collect();
    if cut_dims.len() <= 1 {
        if t.pieces.len() > MAX_PIECES_1D {
            return Err(bad(name, format_args!("{} pieces (at most {MAX_PIECES_1D})", t.pieces.len())));
        }
        let d = cut_dims.into_iter().next().unwrap_or(0);
        let mut spans: Vec<(usize, usize)> = t.pieces.iter().map(|p| (p.offset[d], p.shape[d])).collect();
        spans.sort_unstable();
        for w in spans.windows(2) {
            if w[0].0 + w[0].1 > w[1].0 {
                return Err(bad(name, format_args!("pieces overlap along dimension {d} at {}", w[1].0)));
            }
        }
        return Ok(());
    }
    if t.pieces.len() > MAX_PIECES_ND {
        return Err(bad(
            name,
            format_args!("{} pieces cut along several dimensions (at most {MAX_PIECES_ND})", t.pieces.len()),
        ));
    }
    for (i, a) in t.pieces.iter().enumerate() {
        for b in &t.pieces[i + 1..] {
            let disjoint =
                (0..rank).any(|d| a.offset[d] + a.shape[d] <= b.offset[d] || b.offset[d] + b.shape[d] <= a.offset[d]);
            // Empty pieces cover nothing and overlap nothing.
            let empty = a.shape.contains(&0) || b.shape.contains(&0);
            if !disjoint && !empty {
                return Err(bad(name, format_args!("pieces `{}` and `{}` overlap", a.tensor, b.tensor)));
            }
        }
    }
    Ok(())
}

/// One contiguous run of a box copy: `len` bytes from `src` to `dst` (byte offsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Offset in the source tensor's bytes.
    pub src: usize,
    /// Offset in the destination tensor's bytes.
    pub dst: usize,
    /// Bytes.
    pub len: usize,
}

/// The contiguous runs that copy the box of `extent` elements (of `elem` bytes) at `src_at` in a
/// row-major tensor of `src_shape` to `dst_at` in a row-major tensor of `dst_shape`, in row-major
/// order of the box. Trailing dimensions that both sides hold whole merge into longer runs, so a
/// box of whole rows is one run. The caller guarantees the box fits both tensors.
pub fn box_runs(
    elem: usize,
    src_shape: &[usize],
    src_at: &[usize],
    dst_shape: &[usize],
    dst_at: &[usize],
    extent: &[usize],
) -> Vec<Run> {
    let rank = extent.len();
    if extent.contains(&0) {
        return Vec::new();
    }
    if rank == 0 {
        return vec![Run { src: 0, dst: 0, len: elem }];
    }
    // Runs start at dimension `k`: every later dimension is whole on both sides.
    let mut k = rank - 1;
    while k > 0 && extent[k] == src_shape[k] && extent[k] == dst_shape[k] {
        k -= 1;
    }
    let len = extent[k..].iter().product::<usize>() * elem;
    let strides = |shape: &[usize]| {
        let mut s = vec![elem; shape.len()];
        for d in (0..shape.len() - 1).rev() {
            s[d] = s[d + 1] * shape[d + 1];
        }
        s
    };
    let (ss, ds) = (strides(src_shape), strides(dst_shape));
    let count: usize = extent[..k].iter().product();
    let mut out = Vec::with_capacity(count);
    let mut idx = vec![0usize; k];
    loop {
        let src: usize = (0..=k).map(|d| (src_at[d] + idx.get(d).copied().unwrap_or(0)) * ss[d]).sum();
        let dst: usize = (0..=k).map(|d| (dst_at[d] + idx.get(d).copied().unwrap_or(0)) * ds[d]).sum();
        out.push(Run { src, dst, len });
        // Odometer over the dimensions before `k`.
        let mut d = k;
        loop {
            if d == 0 {
                return out;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < extent[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(name: &str, offset: &[usize], shape: &[usize]) -> SplitPiece {
        SplitPiece { tensor: piece_name(name, offset), offset: offset.to_vec(), shape: shape.to_vec() }
    }

    fn setup(pieces: Vec<SplitPiece>, shape: &[usize]) -> (BTreeMap<String, SplitTensor>, BTreeMap<String, String>) {
        let wm = pieces.iter().map(|p| (p.tensor.clone(), "s.safetensors".to_string())).collect();
        let t = SplitTensor { dtype: "F32".into(), shape: shape.to_vec(), pieces };
        (BTreeMap::from([("w".to_string(), t)]), wm)
    }

    #[test]
    fn exact_tilings_pass() {
        let (s, wm) = setup(vec![piece("w", &[0, 0], &[3, 4]), piece("w", &[3, 0], &[5, 4])], &[8, 4]);
        validate(&s, &wm).unwrap();
        let grid = vec![
            piece("w", &[0, 0], &[2, 2]),
            piece("w", &[0, 2], &[2, 2]),
            piece("w", &[2, 0], &[2, 2]),
            piece("w", &[2, 2], &[2, 2]),
        ];
        let (s, wm) = setup(grid, &[4, 4]);
        validate(&s, &wm).unwrap();
        assert_eq!(piece_name("a.b", &[512, 0]), "a.b@512,0");
    }

    #[test]
    fn bad_tilings_are_refused() {
        let cases: Vec<(Vec<SplitPiece>, &[usize], &str)> = vec![
            (vec![piece("w", &[0, 0], &[3, 4]), piece("w", &[3, 0], &[6, 4])], &[8, 4], "reaches outside"),
            (vec![piece("w", &[0, 0], &[4, 4]), piece("w", &[2, 0], &[4, 4])], &[8, 4], "overlap"),
            (vec![piece("w", &[0, 0], &[3, 4])], &[8, 4], "elements"),
            (
                vec![piece("w", &[0, 0], &[2, 3]), piece("w", &[0, 1], &[2, 3]), piece("w", &[2, 0], &[2, 2])],
                &[4, 4],
                "overlap",
            ),
            (vec![piece("w", &[0], &[8])], &[8, 4], "dimensions"),
            (vec![piece("w", &[usize::MAX, 0], &[2, 4])], &[8, 4], "outside"),
        ];
        for (pieces, shape, want) in cases {
            let (s, wm) = setup(pieces, shape);
            let err = validate(&s, &wm).unwrap_err().to_string();
            assert!(err.contains(want) && err.contains("`w`"), "{want}: {err}");
        }
        // A piece missing from weight_map; a name split and whole at once.
        let (s, mut wm) = setup(vec![piece("w", &[0], &[4])], &[4]);
        wm.clear();
        assert!(validate(&s, &wm).unwrap_err().to_string().contains("not in weight_map"));
        wm.insert("w".into(), "s.safetensors".into());
        wm.insert("w@0".into(), "s.safetensors".into());
        assert!(validate(&s, &wm).unwrap_err().to_string().contains("also listed whole"));
    }
}
