//! Borrowed tensor views and slices.

use std::borrow::Cow;
use std::ops::Range;

use safeckpt_format::{Dtype, TensorInfo, integrity::checksum};

use crate::element::{Element, swap_bytes_in_place};
use crate::error::{ReadError, Result};

/// A tensor inside a file: its header entry and its bytes, borrowed from the file's memory.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'data> {
    info: &'data TensorInfo,
    data: &'data [u8],
}

impl<'data> TensorView<'data> {
    pub(crate) fn new(info: &'data TensorInfo, data: &'data [u8]) -> Self {
        TensorView { info, data }
    }

    /// The tensor's name.
    pub fn name(&self) -> &'data str {
        &self.info.name
    }

    /// Element type.
    pub fn dtype(&self) -> Dtype {
        self.info.dtype
    }

    /// Shape.
    pub fn shape(&self) -> &'data [usize] {
        &self.info.shape
    }

    /// The header entry.
    pub fn info(&self) -> &'data TensorInfo {
        self.info
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.info.numel()
    }

    /// The raw little-endian bytes, straight from the file's memory.
    pub fn data(&self) -> &'data [u8] {
        self.data
    }

    /// xxh3-64 of the bytes (what the integrity metadata records).
    pub fn checksum(&self) -> u64 {
        checksum(self.data)
    }

    fn check_dtype<T: Element>(&self) -> Result<()> {
        if T::accepts(self.info.dtype) {
            Ok(())
        } else {
            Err(ReadError::DtypeMismatch {
                tensor: self.info.name.clone(),
                actual: self.info.dtype,
                requested: T::dtype_names(),
            })
        }
    }

    /// A zero-copy typed view (`&[f32]`, `&[half::bf16]`, …).
    ///
    /// Fails when the dtype does not match, when the bytes are not aligned for `T` (files from
    /// writers that do not sort by dtype can misalign), or on a big-endian host for multi-byte
    /// types; [`TensorView::typed`] falls back to a copy in those cases.
    pub fn as_slice<T: Element>(&self) -> Result<&'data [T]> {
        self.check_dtype::<T>()?;
        if cfg!(target_endian = "big") && T::SWAP_UNIT > 1 {
            return Err(ReadError::BigEndianHost { tensor: self.info.name.clone() });
        }
        bytemuck::try_cast_slice(self.data)
            .map_err(|_| ReadError::Misaligned { tensor: self.info.name.clone(), align: std::mem::align_of::<T>() })
    }

    /// The elements, borrowed when a zero-copy view is possible and copied (and byte-swapped on
    /// big-endian hosts) otherwise.
    pub fn typed<T: Element>(&self) -> Result<Cow<'data, [T]>> {
        match self.as_slice::<T>() {
            Ok(s) => Ok(Cow::Borrowed(s)),
            Err(ReadError::Misaligned { .. } | ReadError::BigEndianHost { .. }) => self.to_vec().map(Cow::Owned),
            Err(e) => Err(e),
        }
    }

    /// The elements as an owned vector, in host byte order.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        self.check_dtype::<T>()?;
        Ok(bytes_to_vec::<T>(self.data))
    }

    /// A sub-tensor given one range per leading dimension (missing trailing ranges mean "all").
    /// Nothing is read until the slice's bytes are asked for.
    pub fn slice(&self, ranges: &[Range<usize>]) -> Result<TensorSlice<'data>> {
        TensorSlice::new(*self, ranges)
    }

    /// Rows `range` of dimension `dim`, everything else whole (e.g. a tensor-parallel shard).
    pub fn narrow(&self, dim: usize, range: Range<usize>) -> Result<TensorSlice<'data>> {
        let shape = self.shape();
        if dim >= shape.len() {
            return Err(ReadError::InvalidSlice {
                tensor: self.info.name.clone(),
                reason: format!("dimension {dim} out of range for rank {}", shape.len()),
            });
        }
        let ranges: Vec<Range<usize>> =
            shape.iter().enumerate().map(|(i, &d)| if i == dim { range.clone() } else { 0..d }).collect();
        self.slice(&ranges)
    }
}

/// Copies little-endian bytes into a vector of `T` in host order.
pub(crate) fn bytes_to_vec<T: Element>(bytes: &[u8]) -> Vec<T> {
    let mut out: Vec<T> = bytemuck::zeroed_vec(bytes.len() / std::mem::size_of::<T>());
    let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut out);
    dst.copy_from_slice(&bytes[..dst.len()]);
    if cfg!(target_endian = "big") {
        swap_bytes_in_place(dst, T::SWAP_UNIT);
    }
    out
}

/// A rectangular part of a tensor: one range per dimension. Its bytes are a set of equally long
/// contiguous runs inside the tensor's data.
#[derive(Debug, Clone)]
pub struct TensorSlice<'data> {
    view: TensorView<'data>,
    ranges: Vec<Range<usize>>,
    shape: Vec<usize>,
    /// Dimensions before this one are iterated; from it on each run is contiguous.
    split: usize,
    /// Bytes per run.
    run_bytes: usize,
    /// Number of runs.
    runs: usize,
}

impl<'data> TensorSlice<'data> {
    fn new(view: TensorView<'data>, ranges: &[Range<usize>]) -> Result<Self> {
        let shape = view.shape();
        let err = |reason: String| ReadError::InvalidSlice { tensor: view.name().to_string(), reason };
        if ranges.len() > shape.len() {
            return Err(err(format!("{} ranges for a tensor of rank {}", ranges.len(), shape.len())));
        }
        let mut full: Vec<Range<usize>> = Vec::with_capacity(shape.len());
        for (i, &d) in shape.iter().enumerate() {
            let r = ranges.get(i).cloned().unwrap_or(0..d);
            if r.start > r.end || r.end > d {
                return Err(err(format!("range {}..{} does not fit dimension {i} of size {d}", r.start, r.end)));
            }
            full.push(r);
        }
        let out_shape: Vec<usize> = full.iter().map(|r| r.end - r.start).collect();
        // The innermost dimension whose range is partial decides the run length.
        let split = full.iter().zip(shape).rposition(|(r, &d)| r.end - r.start != d).unwrap_or(0);
        let bits = view.dtype().bits();
        let inner: usize = shape.iter().skip(split + 1).product();
        let run_elems = out_shape.get(split).copied().unwrap_or(1) * inner;
        let runs: usize = out_shape.iter().take(split).product();
        let empty = out_shape.contains(&0);
        if !bits.is_multiple_of(8) && !empty {
            // Sub-byte types: every run must start and end on a byte boundary.
            let strides = strides(shape);
            let aligned = |elems: usize| (elems * bits).is_multiple_of(8);
            let starts_ok = full.iter().zip(&strides).take(split + 1).all(|(r, &s)| aligned(r.start * s) && aligned(s));
            if !aligned(run_elems) || !starts_ok {
                return Err(err(format!("{} slice does not fall on byte boundaries", view.dtype())));
            }
        }
        Ok(TensorSlice {
            view,
            ranges: full,
            shape: out_shape,
            split,
            run_bytes: if empty { 0 } else { run_elems * bits / 8 },
            runs: if empty { 0 } else { runs },
        })
    }

    /// Shape of the slice.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The tensor sliced.
    pub fn view(&self) -> TensorView<'data> {
        self.view
    }

    /// Total bytes in the slice.
    pub fn byte_len(&self) -> usize {
        self.run_bytes * self.runs
    }

    /// Byte ranges inside the tensor's data, in row-major order of the slice.
    pub fn byte_ranges(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        let shape = self.view.shape();
        let strides = strides(shape);
        let bits = self.view.dtype().bits();
        let split = self.split;
        let mut idx: Vec<usize> = self.ranges.iter().take(split).map(|r| r.start).collect();
        let base_split = self.ranges.get(split).map_or(0, |r| r.start) * strides.get(split).copied().unwrap_or(0);
        let mut remaining = self.runs;
        std::iter::from_fn(move || {
            if remaining == 0 {
                return None;
            }
            remaining -= 1;
            let elem: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum::<usize>() + base_split;
            let start = elem * bits / 8;
            let r = start..start + self.run_bytes;
            // Advance the odometer over the leading dimensions.
            for d in (0..split).rev() {
                idx[d] += 1;
                if idx[d] < self.ranges[d].end {
                    break;
                }
                idx[d] = self.ranges[d].start;
            }
            Some(r)
        })
    }

    /// The slice's bytes without copying, when they are one contiguous run.
    pub fn as_contiguous(&self) -> Option<&'data [u8]> {
        match self.runs {
            0 => Some(&[]),
            1 => self.byte_ranges().next().map(|r| &self.view.data()[r]),
            _ => None,
        }
    }

    /// Copies the slice's bytes into `out`, which must be [`TensorSlice::byte_len`] long.
    pub fn copy_into(&self, out: &mut [u8]) -> Result<()> {
        if out.len() != self.byte_len() {
            return Err(ReadError::InvalidSlice {
                tensor: self.view.name().to_string(),
                reason: format!("output buffer is {} bytes, slice is {}", out.len(), self.byte_len()),
            });
        }
        let data = self.view.data();
        for (dst, r) in out.chunks_exact_mut(self.run_bytes.max(1)).zip(self.byte_ranges()) {
            dst.copy_from_slice(&data[r]);
        }
        Ok(())
    }

    /// The slice's bytes, copied.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.byte_len()];
        self.copy_into(&mut out).expect("buffer has the slice's length");
        out
    }

    /// The slice's elements, copied into host order.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        self.view.check_dtype::<T>()?;
        Ok(bytes_to_vec::<T>(&self.to_bytes()))
    }
}

/// Row-major strides in elements.
pub(crate) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

impl safeckpt_format::TensorSource for TensorView<'_> {
    fn dtype(&self) -> Dtype {
        self.info.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.info.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}
