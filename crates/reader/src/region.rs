//! The global tensors of a set, whole or split into pieces across shards (multi-rank saves), and
//! reads of any rectangular region of them: what a rank asks for when it loads a checkpoint saved
//! by a different number of ranks. Only the bytes of the region are touched.

use std::borrow::Cow;
use std::ops::Range;

use safeckpt_format::split::{SplitTensor, box_runs};
use safeckpt_format::{Dtype, ShardIndex, TensorSource};

use crate::error::{ReadError, Result};
use crate::sharded::ShardedReader;
use crate::view::TensorView;

/// A tensor as the saving program saw it: stored whole, or as pieces.
#[derive(Debug, Clone, Copy)]
pub enum GlobalTensor<'a> {
    /// Stored whole in one shard.
    Whole(TensorView<'a>),
    /// Stored as pieces, described by the index.
    Split(&'a str, &'a SplitTensor),
}

impl GlobalTensor<'_> {
    /// Element type.
    pub fn dtype(&self) -> Dtype {
        match self {
            GlobalTensor::Whole(v) => v.dtype(),
            // Checked when the set was opened.
            GlobalTensor::Split(_, s) => s.dtype().unwrap_or(Dtype::U8),
        }
    }

    /// Global shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            GlobalTensor::Whole(v) => v.shape(),
            GlobalTensor::Split(_, s) => &s.shape,
        }
    }

    /// The tensor's name.
    pub fn name(&self) -> &str {
        match self {
            GlobalTensor::Whole(v) => v.name(),
            GlobalTensor::Split(n, _) => n,
        }
    }

    /// Bytes of the whole tensor.
    pub fn byte_len(&self) -> usize {
        let numel: usize = self.shape().iter().product();
        self.dtype().byte_len(numel).unwrap_or(0)
    }
}

/// A global tensor as a [`TensorSource`] for writers: a whole tensor lends its bytes, a split one
/// is assembled from its pieces when its data is asked for.
#[derive(Debug, Clone, Copy)]
pub struct GlobalSource<'a> {
    set: &'a ShardedReader,
    tensor: GlobalTensor<'a>,
}

impl TensorSource for GlobalSource<'_> {
    fn dtype(&self) -> Dtype {
        self.tensor.dtype()
    }

    fn shape(&self) -> &[usize] {
        self.tensor.shape()
    }

    fn data(&self) -> Cow<'_, [u8]> {
        match self.tensor {
            GlobalTensor::Whole(v) => Cow::Borrowed(v.data()),
            // The set was validated when opened, so assembling cannot fail; an empty buffer would
            // be refused by the writer's length check.
            GlobalTensor::Split(name, _) => Cow::Owned(self.set.read_global(name).unwrap_or_default()),
        }
    }
}

/// Checks the pieces of an index's split tensors against the stored tensors (`lookup` gives a
/// stored tensor's dtype and shape): each piece stored, with the split's dtype and the piece's
/// shape, and no dtype smaller than a byte. The index itself was validated when parsed.
pub fn check_split_pieces(
    index: &ShardIndex,
    lookup: impl Fn(&str) -> Option<(Dtype, Vec<usize>)>,
) -> std::result::Result<(), String> {
    for (name, split) in &index.split_tensors {
        let dtype = split.dtype().ok_or_else(|| format!("split tensor `{name}`: unknown dtype"))?;
        if !dtype.bits().is_multiple_of(8) {
            return Err(format!("split tensor `{name}`: {dtype} elements are smaller than a byte"));
        }
        for piece in &split.pieces {
            let Some((d, shape)) = lookup(&piece.tensor) else {
                return Err(format!("split tensor `{name}`: piece `{}` is in no shard", piece.tensor));
            };
            if d != dtype || shape != piece.shape {
                return Err(format!(
                    "split tensor `{name}`: piece `{}` is stored as {d} {shape:?}, the index says {dtype} {:?}",
                    piece.tensor, piece.shape
                ));
            }
        }
    }
    Ok(())
}

/// The part of a dimension of length `len` that rank `rank` of `world` holds when it is cut into
/// `world` chunks the way `torch.chunk` and a sharded `DTensor` cut it: chunks of
/// `ceil(len / world)`, the last ones shorter or empty.
pub fn chunk_range(len: usize, rank: usize, world: usize) -> Range<usize> {
    let world = world.max(1);
    let chunk = len.div_ceil(world);
    let start = rank.saturating_mul(chunk).min(len);
    start..start.saturating_add(chunk).min(len)
}

impl ShardedReader {
    /// The tensors stored as pieces, by global name (empty for sets saved whole).
    pub fn split_tensors(&self) -> impl Iterator<Item = (&str, &SplitTensor)> + '_ {
        self.index().into_iter().flat_map(|i| i.split_tensors.iter().map(|(k, v)| (k.as_str(), v)))
    }

    /// Whether the stored tensor `name` is a piece of a split tensor.
    pub fn is_piece(&self, name: &str) -> bool {
        self.pieces().contains(name)
    }

    /// The global tensor `name`: a whole tensor (not a piece) or a split one.
    pub fn global(&self, name: &str) -> Option<GlobalTensor<'_>> {
        if let Some((k, s)) = self.index().and_then(|i| i.split_tensors.get_key_value(name)) {
            return Some(GlobalTensor::Split(k.as_str(), s));
        }
        if self.is_piece(name) {
            return None;
        }
        self.get(name).map(GlobalTensor::Whole)
    }

    /// The names of the global tensors (whole ones and split ones, not pieces), sorted bytewise.
    pub fn global_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.names().into_iter().filter(|n| !self.is_piece(n)).collect();
        v.extend(self.split_tensors().map(|(n, _)| n));
        v.sort_unstable();
        v
    }

    /// Every global tensor as a writer source: whole tensors in file order, then split tensors by
    /// name. What `merge` and `shard` write.
    pub fn global_sources(&self) -> Vec<(&str, GlobalSource<'_>)> {
        let mut out: Vec<(&str, GlobalSource<'_>)> = self
            .tensors()
            .filter(|t| !self.is_piece(t.name()))
            .map(|t| (t.name(), GlobalSource { set: self, tensor: GlobalTensor::Whole(t) }))
            .collect();
        out.extend(
            self.split_tensors().map(|(n, s)| (n, GlobalSource { set: self, tensor: GlobalTensor::Split(n, s) })),
        );
        out
    }

    /// The bytes of `region` (one range per dimension) of the global tensor `name`, row-major.
    pub fn read_region(&self, name: &str, region: &[Range<usize>]) -> Result<Vec<u8>> {
        let g = self.global_or_err(name)?;
        let bytes = region_bytes(&g, region)?;
        let mut out = vec![0u8; bytes];
        self.read_region_into(name, region, &mut out)?;
        Ok(out)
    }

    /// The whole global tensor `name`, assembled from its pieces if it is split.
    pub fn read_global(&self, name: &str) -> Result<Vec<u8>> {
        let g = self.global_or_err(name)?;
        let region: Vec<Range<usize>> = g.shape().iter().map(|&d| 0..d).collect();
        self.read_region(name, &region)
    }

    /// [`ShardedReader::read_region`] into `out`, which must be exactly the region's size.
    pub fn read_region_into(&self, name: &str, region: &[Range<usize>], out: &mut [u8]) -> Result<()> {
        let g = self.global_or_err(name)?;
        let bytes = region_bytes(&g, region)?;
        if out.len() != bytes {
            return Err(slice_err(name, format!("output buffer is {} bytes, the region {bytes}", out.len())));
        }
        let extent: Vec<usize> = region.iter().map(|r| r.end - r.start).collect();
        match g {
            GlobalTensor::Whole(view) => {
                if !view.dtype().bits().is_multiple_of(8) {
                    return view.slice(region)?.copy_into(out);
                }
                let starts: Vec<usize> = region.iter().map(|r| r.start).collect();
                let at = vec![0; region.len()];
                copy_box(elem_size(view.dtype()), view.data(), view.shape(), &starts, out, &extent, &at, &extent);
            }
            GlobalTensor::Split(_, split) => {
                let elem = elem_size(g.dtype());
                for b in split.boxes(region) {
                    let view = self.tensor(&b.piece.tensor)?;
                    copy_box(elem, view.data(), &b.piece.shape, &b.src_at, out, &extent, &b.dst_at, &b.extent);
                }
            }
        }
        Ok(())
    }

    fn global_or_err(&self, name: &str) -> Result<GlobalTensor<'_>> {
        self.global(name)
            .ok_or_else(|| ReadError::TensorNotFound { path: self.path().to_path_buf(), name: name.to_string() })
    }
}

fn slice_err(name: &str, reason: String) -> ReadError {
    ReadError::InvalidSlice { tensor: name.to_string(), reason }
}

fn elem_size(dtype: Dtype) -> usize {
    (dtype.bits() / 8).max(1)
}

/// Checks `region` against the tensor and returns its size in bytes.
fn region_bytes(g: &GlobalTensor<'_>, region: &[Range<usize>]) -> Result<usize> {
    let shape = g.shape();
    if region.len() != shape.len() {
        return Err(slice_err(g.name(), format!("{} ranges for a tensor of rank {}", region.len(), shape.len())));
    }
    for (i, (r, &d)) in region.iter().zip(shape).enumerate() {
        if r.start > r.end || r.end > d {
            return Err(slice_err(
                g.name(),
                format!("range {}..{} does not fit dimension {i} of size {d}", r.start, r.end),
            ));
        }
    }
    let numel = region.iter().try_fold(1usize, |a, r| a.checked_mul(r.end - r.start));
    numel.and_then(|n| g.dtype().byte_len(n)).ok_or_else(|| slice_err(g.name(), "the region's size overflows".into()))
}

/// Copies the box of `extent` elements at `src_at` in a row-major `src` of `src_shape` to `dst_at`
/// in a row-major `dst` of `dst_shape`.
#[allow(clippy::too_many_arguments)]
fn copy_box(
    elem: usize,
    src: &[u8],
    src_shape: &[usize],
    src_at: &[usize],
    dst: &mut [u8],
    dst_shape: &[usize],
    dst_at: &[usize],
    extent: &[usize],
) {
    for r in box_runs(elem, src_shape, src_at, dst_shape, dst_at, extent) {
        dst[r.dst..r.dst + r.len].copy_from_slice(&src[r.src..r.src + r.len]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_like_torch() {
        let parts: Vec<_> = (0..4).map(|r| chunk_range(10, r, 4)).collect();
        assert_eq!(parts, [0..3, 3..6, 6..9, 9..10]);
        let parts: Vec<_> = (0..4).map(|r| chunk_range(5, r, 4)).collect();
        assert_eq!(parts, [0..2, 2..4, 4..5, 5..5]);
        assert_eq!(chunk_range(7, 0, 1), 0..7);
    }

    #[test]
    fn boxes_copy_like_indexing() {
        // src 4x5 of u8 values r*10+c; copy the 2x3 box at (1,2) to (0,1) of a 3x4 dst.
        let src: Vec<u8> = (0..4).flat_map(|r| (0..5).map(move |c| r * 10 + c)).collect();
        let mut dst = vec![0u8; 12];
        copy_box(1, &src, &[4, 5], &[1, 2], &mut dst, &[3, 4], &[0, 1], &[2, 3]);
        assert_eq!(dst, [0, 12, 13, 14, 0, 22, 23, 24, 0, 0, 0, 0]);
        // Whole trailing rows merge into one run.
        let mut dst = vec![0u8; 10];
        copy_box(1, &src, &[4, 5], &[2, 0], &mut dst, &[2, 5], &[0, 0], &[2, 5]);
        assert_eq!(dst, [20, 21, 22, 23, 24, 30, 31, 32, 33, 34]);
    }
}
