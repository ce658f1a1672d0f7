//! Fast loads into owned, framework-ready buffers.

use std::os::unix::fs::FileExt;

use half::{bf16, f16};
use memmap2::Advice;
use rayon::prelude::*;
use safeckpt_format::Dtype;

use crate::element::{Element, swap_bytes_in_place};
use crate::error::{ReadError, Result};
use crate::file::Reader;
use crate::view::TensorView;

/// Bytes per parallel copy task.
const COPY_CHUNK: usize = 4 << 20;
/// Allocations at least this large ask for transparent huge pages.
const HUGE_PAGE_MIN: usize = 4 << 20;

/// A tensor's elements in an owned vector of the matching Rust type.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum OwnedData {
    /// `U8`, and the raw bytes of `BOOL` and of the float8/6/4 types.
    U8(Vec<u8>),
    /// `I8`.
    I8(Vec<i8>),
    /// `U16`.
    U16(Vec<u16>),
    /// `I16`.
    I16(Vec<i16>),
    /// `F16`.
    F16(Vec<f16>),
    /// `BF16`.
    BF16(Vec<bf16>),
    /// `U32`.
    U32(Vec<u32>),
    /// `I32`.
    I32(Vec<i32>),
    /// `F32`.
    F32(Vec<f32>),
    /// `U64`.
    U64(Vec<u64>),
    /// `I64`.
    I64(Vec<i64>),
    /// `F64`.
    F64(Vec<f64>),
    /// `C64` as (real, imaginary) pairs.
    C64(Vec<[f32; 2]>),
}

impl OwnedData {
    /// The bytes, in host order.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            OwnedData::U8(v) => v,
            OwnedData::I8(v) => bytemuck::cast_slice(v),
            OwnedData::U16(v) => bytemuck::cast_slice(v),
            OwnedData::I16(v) => bytemuck::cast_slice(v),
            OwnedData::F16(v) => bytemuck::cast_slice(v),
            OwnedData::BF16(v) => bytemuck::cast_slice(v),
            OwnedData::U32(v) => bytemuck::cast_slice(v),
            OwnedData::I32(v) => bytemuck::cast_slice(v),
            OwnedData::F32(v) => bytemuck::cast_slice(v),
            OwnedData::U64(v) => bytemuck::cast_slice(v),
            OwnedData::I64(v) => bytemuck::cast_slice(v),
            OwnedData::F64(v) => bytemuck::cast_slice(v),
            OwnedData::C64(v) => bytemuck::cast_slice(v),
        }
    }
}

/// An owned copy of a tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedTensor {
    /// Name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Elements.
    pub data: OwnedData,
}

/// A zeroed vector of `n` elements. With `huge_pages`, its pages are backed by transparent huge
/// pages where the kernel allows it, so that filling it costs one page fault per 2 MiB instead of
/// per 4 KiB.
pub fn alloc_zeroed<T: Element>(n: usize, huge_pages: bool) -> Vec<T> {
    let v: Vec<T> = bytemuck::zeroed_vec(n);
    let bytes = std::mem::size_of_val(v.as_slice());
    if huge_pages && bytes >= HUGE_PAGE_MIN && cfg!(target_os = "linux") {
        let page = crate::backing::page_size();
        let start = v.as_ptr() as usize;
        let aligned = start.next_multiple_of(page);
        let end = (start + bytes) & !(page - 1);
        if end > aligned {
            // SAFETY: [aligned, end) lies inside the vector's own allocation, which this function
            // owns and nobody else references yet. MADV_HUGEPAGE only changes how the kernel backs
            // the range, never its contents, so the zeroed invariant holds.
            let _ = unsafe { libc::madvise(aligned as *mut libc::c_void, end - aligned, libc::MADV_HUGEPAGE) };
        }
    }
    v
}

/// Options for owned loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// How bytes are moved.
    pub method: LoadMethod,
    /// Ask for transparent huge pages for large destination buffers (see [`alloc_zeroed`]).
    pub huge_pages: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { method: LoadMethod::Auto, huge_pages: false }
    }
}

/// How [`Reader::load_all_with`] moves bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadMethod {
    /// `pread` from the file when the reader has one (no page faults on the source), else copy
    /// from memory.
    #[default]
    Auto,
    /// Copy from the memory map.
    Mmap,
    /// `pread` from the file.
    Pread,
}

impl Reader {
    /// Copies one tensor into an owned vector (huge-page backed, filled in parallel).
    pub fn load_vec<T: Element>(&self, name: &str) -> Result<Vec<T>> {
        let view = self.tensor(name)?;
        self.load_view(view, &LoadOptions::default())
    }

    fn load_view<T: Element>(&self, view: TensorView<'_>, opts: &LoadOptions) -> Result<Vec<T>> {
        if !T::accepts(view.dtype()) {
            return Err(ReadError::DtypeMismatch {
                tensor: view.name().to_string(),
                actual: view.dtype(),
                requested: T::dtype_names(),
            });
        }
        let src = view.data();
        let mut out = alloc_zeroed::<T>(src.len() / std::mem::size_of::<T>(), opts.huge_pages);
        let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut out);
        let file = match opts.method {
            LoadMethod::Mmap => None,
            LoadMethod::Auto | LoadMethod::Pread => self.file(),
        };
        let base = (self.header().data_start() + view.info().data_offsets.0) as u64;
        dst.par_chunks_mut(COPY_CHUNK).enumerate().try_for_each(|(i, chunk)| {
            let off = i * COPY_CHUNK;
            match file {
                Some(f) => f.read_exact_at(chunk, base + off as u64).map_err(|e| ReadError::io(self.path(), e)),
                None => {
                    chunk.copy_from_slice(&src[off..off + chunk.len()]);
                    Ok(())
                }
            }
        })?;
        if cfg!(target_endian = "big") {
            swap_bytes_in_place(dst, T::SWAP_UNIT);
        }
        Ok(out)
    }

    /// Copies one tensor into the owned vector type matching its dtype.
    pub fn load_owned(&self, name: &str) -> Result<OwnedTensor> {
        self.load_owned_view(self.tensor(name)?, &LoadOptions::default())
    }

    fn load_owned_view(&self, v: TensorView<'_>, m: &LoadOptions) -> Result<OwnedTensor> {
        let data = match v.dtype() {
            Dtype::I8 => OwnedData::I8(self.load_view(v, m)?),
            Dtype::U16 => OwnedData::U16(self.load_view(v, m)?),
            Dtype::I16 => OwnedData::I16(self.load_view(v, m)?),
            Dtype::F16 => OwnedData::F16(self.load_view(v, m)?),
            Dtype::BF16 => OwnedData::BF16(self.load_view(v, m)?),
            Dtype::U32 => OwnedData::U32(self.load_view(v, m)?),
            Dtype::I32 => OwnedData::I32(self.load_view(v, m)?),
            Dtype::F32 => OwnedData::F32(self.load_view(v, m)?),
            Dtype::U64 => OwnedData::U64(self.load_view(v, m)?),
            Dtype::I64 => OwnedData::I64(self.load_view(v, m)?),
            Dtype::F64 => OwnedData::F64(self.load_view(v, m)?),
            Dtype::C64 => OwnedData::C64(self.load_view(v, m)?),
            Dtype::U8
            | Dtype::BOOL
            | Dtype::F8_E5M2
            | Dtype::F8_E4M3
            | Dtype::F8_E8M0
            | Dtype::F8_E4M3FNUZ
            | Dtype::F8_E5M2FNUZ => OwnedData::U8(self.load_view(v, m)?),
            // Sub-byte types have no element type: their packed bytes, as stored.
            _ => OwnedData::U8(v.data().to_vec()),
        };
        Ok(OwnedTensor { name: v.name().to_string(), dtype: v.dtype(), shape: v.shape().to_vec(), data })
    }

    /// Copies every tensor into owned vectors, in parallel, in file order.
    pub fn load_all(&self) -> Result<Vec<OwnedTensor>> {
        self.load_all_with(&LoadOptions::default())
    }

    /// [`Reader::load_all`] with explicit options.
    pub fn load_all_with(&self, opts: &LoadOptions) -> Result<Vec<OwnedTensor>> {
        if opts.method != LoadMethod::Pread {
            self.advise(Advice::WillNeed);
        }
        let views: Vec<TensorView<'_>> = self.tensors().collect();
        views.into_par_iter().map(|v| self.load_owned_view(v, opts)).collect()
    }
}
