//! Reading a tensor's bytes out of its storage: zero-copy for contiguous little-endian views,
//! gathered (in bounded chunks when streaming) for strided views, byte-swapped for big-endian
//! files.

use std::borrow::Cow;

use safeckpt_format::Dtype;

use crate::archive::TorchArchive;
use crate::error::{Result, TorchError};
use crate::value::TensorDef;

/// Whether `stride` is the row-major layout of `shape` (dimensions of size 1 may have any stride).
pub fn is_contiguous(shape: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1usize;
    for (&d, &s) in shape.iter().zip(stride).rev() {
        if d != 1 && s != expected {
            return false;
        }
        expected = expected.saturating_mul(d);
    }
    true
}

/// A tensor ready to write: safetensors dtype and shape, and where its bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorPlan {
    /// Flattened name.
    pub name: String,
    /// The pickled view.
    pub def: TensorDef,
    /// safetensors dtype of the stored bytes.
    pub dtype: Dtype,
    /// safetensors shape (for `float4_e2m1fn_x2`, the last dimension doubled: two values a byte).
    pub shape: Vec<usize>,
}

impl TensorPlan {
    /// Maps a pickled tensor to its safetensors form; errors for dtypes safetensors lacks.
    pub fn new(archive: &TorchArchive, name: &str, def: &TensorDef) -> Result<TensorPlan> {
        let err = |reason: String| TorchError::Tensor {
            path: archive.path().to_path_buf(),
            tensor: name.to_string(),
            reason,
        };
        let dtype = def.dtype.safetensors().ok_or_else(|| {
            err(format!(
                "dtype {} has no safetensors equivalent (convert it, e.g. complex128 to complex64, before saving)",
                def.dtype.name()
            ))
        })?;
        let mut shape = def.shape.clone();
        if dtype == Dtype::F4 {
            match shape.last_mut() {
                Some(d) => *d = d.checked_mul(2).ok_or_else(|| err("shape overflows".into()))?,
                None => shape.push(2),
            }
        }
        Ok(TensorPlan { name: name.to_string(), def: def.clone(), dtype, shape })
    }

    /// Bytes of the tensor's data (the pickle's view was checked to fit in memory when it was
    /// rebuilt; saturating all the same).
    pub fn byte_len(&self) -> u64 {
        self.numel().saturating_mul(self.def.dtype.element_size() as u64)
    }

    /// Elements of the view.
    pub fn numel(&self) -> u64 {
        self.def.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64)).unwrap_or(u64::MAX)
    }

    /// Bytes of the tensor once written as `out` (saturating).
    pub fn out_len(&self, out: Dtype) -> u64 {
        if out == self.dtype {
            return self.byte_len();
        }
        self.numel().saturating_mul(out.bits() as u64) / 8
    }

    /// Whether the bytes can be written straight from the storage.
    pub fn is_zero_copy(&self, archive: &TorchArchive) -> bool {
        !archive.is_big_endian() && is_contiguous(&self.def.shape, &self.def.stride)
    }
}

impl TorchArchive {
    /// A tensor's bytes, contiguous and little-endian: borrowed from the mapped file when the view
    /// is contiguous, gathered into a new buffer otherwise.
    pub fn tensor_bytes(&self, name: &str, def: &TensorDef) -> Result<Cow<'_, [u8]>> {
        let mut out: Option<Vec<u8>> = None;
        let mut borrowed: Option<&[u8]> = None;
        self.tensor_chunks(name, def, usize::MAX, &mut |chunk| {
            match chunk {
                Chunk::Borrowed(b) if out.is_none() && borrowed.is_none() => borrowed = Some(b),
                other => {
                    let o = out.get_or_insert_with(Vec::new);
                    if let Some(b) = borrowed.take() {
                        o.extend_from_slice(b);
                    }
                    o.extend_from_slice(other.as_slice());
                }
            }
            Ok(())
        })?;
        Ok(match (out, borrowed) {
            (Some(v), _) => Cow::Owned(v),
            (None, Some(b)) => Cow::Borrowed(b),
            (None, None) => Cow::Borrowed(&[]),
        })
    }

    /// Produces a tensor's contiguous little-endian bytes in pieces of at most `chunk` bytes
    /// (borrowed from the map when possible), so that even a strided or byte-swapped tensor needs
    /// only one chunk of memory.
    pub fn tensor_chunks<'s>(
        &'s self,
        name: &str,
        def: &TensorDef,
        chunk: usize,
        sink: &mut dyn FnMut(Chunk<'s, '_>) -> Result<()>,
    ) -> Result<()> {
        let err =
            |reason: String| TorchError::Tensor { path: self.path().to_path_buf(), tensor: name.to_string(), reason };
        let esize = def.dtype.element_size();
        let numel: usize = def.shape.iter().product();
        if numel == 0 {
            return Ok(());
        }
        let storage = self.storage_bytes(def.storage)?;
        let swap_unit = match def.dtype {
            crate::globals::TorchDtype::Complex64 => 4,
            crate::globals::TorchDtype::Complex128 => 8,
            _ => esize,
        };
        let swap = self.is_big_endian() && swap_unit > 1;
        // A whole number of elements per piece (so byte swaps never straddle pieces).
        let chunk = chunk.clamp(esize, 1 << 40);
        let chunk = chunk - chunk % esize;
        if is_contiguous(&def.shape, &def.stride) {
            let start = def.offset.checked_mul(esize).ok_or_else(|| err("offset overflows".into()))?;
            let len = numel.checked_mul(esize).ok_or_else(|| err("size overflows".into()))?;
            let bytes = storage
                .get(start..start.saturating_add(len))
                .ok_or_else(|| err("view lies outside its storage".into()))?;
            for piece in bytes.chunks(chunk) {
                match (&storage, swap) {
                    (crate::archive::StorageData::Mapped(s), false) => {
                        // Re-borrow from the long-lived map so the sink may keep it.
                        let s: &'s [u8] = s;
                        let off = piece.as_ptr() as usize - s.as_ptr() as usize;
                        sink(Chunk::Borrowed(&s[off..off + piece.len()]))?;
                    }
                    _ => {
                        let mut v = piece.to_vec();
                        if swap {
                            safeckpt_reader::swap_bytes_in_place(&mut v, swap_unit);
                        }
                        sink(Chunk::Owned(&v))?;
                    }
                }
            }
            return Ok(());
        }
        // Strided: walk the index space in row-major order, copying runs along the last dim when
        // it is unit-strided, single elements otherwise.
        let rank = def.shape.len();
        let mut idx = vec![0usize; rank];
        let mut buf: Vec<u8> = Vec::with_capacity(chunk.min(numel * esize));
        let last_contig = def.stride.last() == Some(&1);
        let run = if last_contig { def.shape[rank - 1] } else { 1 };
        let mut done = 0usize;
        while done < numel {
            let elem = def.offset + idx.iter().zip(&def.stride).map(|(i, s)| i * s).sum::<usize>();
            let start = elem * esize;
            let src =
                storage.get(start..start + run * esize).ok_or_else(|| err("view lies outside its storage".into()))?;
            let mut src = src;
            while !src.is_empty() {
                let room = chunk - buf.len();
                let take = room.min(src.len());
                buf.extend_from_slice(&src[..take]);
                src = &src[take..];
                if buf.len() == chunk {
                    if swap {
                        safeckpt_reader::swap_bytes_in_place(&mut buf, swap_unit);
                    }
                    sink(Chunk::Owned(&buf))?;
                    buf.clear();
                }
            }
            done += run;
            // Advance the multi-index (the last dimension by `run`).
            let mut d = rank;
            let mut step = run;
            while d > 0 {
                d -= 1;
                idx[d] += step;
                if idx[d] < def.shape[d] {
                    break;
                }
                idx[d] = 0;
                step = 1;
            }
        }
        if !buf.is_empty() {
            if swap {
                safeckpt_reader::swap_bytes_in_place(&mut buf, swap_unit);
            }
            sink(Chunk::Owned(&buf))?;
        }
        Ok(())
    }
}

/// A piece of a tensor's bytes.
#[derive(Debug)]
pub enum Chunk<'map, 'buf> {
    /// Straight from the mapped file.
    Borrowed(&'map [u8]),
    /// From a scratch buffer.
    Owned(&'buf [u8]),
}

impl Chunk<'_, '_> {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Chunk::Borrowed(b) => b,
            Chunk::Owned(b) => b,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguity() {
        assert!(is_contiguous(&[2, 3], &[3, 1]));
        assert!(is_contiguous(&[], &[]));
        assert!(is_contiguous(&[1, 3], &[99, 1]));
        assert!(!is_contiguous(&[2, 3], &[1, 2]));
        assert!(!is_contiguous(&[4, 6], &[0, 1]));
        assert!(is_contiguous(&[0, 4], &[4, 1]));
    }
}
