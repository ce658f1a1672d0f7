//! candle tensors to and from safeckpt: writing without a copy on CPU, loading views into
//! tensors on any device with an optional dtype cast.

use std::borrow::Cow;

use candle_core::{DType, Device, Tensor, Var};
use half::{bf16, f16};
use rayon::prelude::*;
use safeckpt_format::{Dtype, TensorSource};
use safeckpt_reader::TensorView;

use crate::error::{CandleError, Result};

/// The safetensors dtype of a candle dtype (`None` for dtypes newer than this bridge).
pub fn to_safetensors(d: DType) -> Option<Dtype> {
    Some(match d {
        DType::U8 => Dtype::U8,
        DType::U32 => Dtype::U32,
        DType::I16 => Dtype::I16,
        DType::I32 => Dtype::I32,
        DType::I64 => Dtype::I64,
        DType::BF16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
        DType::F8E4M3 => Dtype::F8_E4M3,
        DType::F6E2M3 => Dtype::F6_E2M3,
        DType::F6E3M2 => Dtype::F6_E3M2,
        DType::F4 => Dtype::F4,
        DType::F8E8M0 => Dtype::F8_E8M0,
        _ => return None,
    })
}

/// The candle dtype that holds a safetensors dtype exactly, if there is one.
pub fn to_candle(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::U8 | Dtype::BOOL => DType::U8,
        Dtype::U32 => DType::U32,
        Dtype::I16 => DType::I16,
        Dtype::I32 => DType::I32,
        Dtype::I64 => DType::I64,
        Dtype::BF16 => DType::BF16,
        Dtype::F16 => DType::F16,
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        Dtype::F8_E4M3 => DType::F8E4M3,
        Dtype::F6_E2M3 => DType::F6E2M3,
        Dtype::F6_E3M2 => DType::F6E3M2,
        Dtype::F4 => DType::F4,
        Dtype::F8_E8M0 => DType::F8E8M0,
        _ => return None,
    })
}

/// A candle tensor as a writer input. On CPU, contiguous tensors are written straight from their
/// storage (the storage stays read-locked while this lives, so hold it only for the write);
/// other layouts and devices are copied to host memory once.
pub struct CandleSource<'a> {
    dtype: Dtype,
    shape: Vec<usize>,
    data: SourceData<'a>,
}

enum SourceData<'a> {
    Locked(candle_core::StorageRef<'a>, usize, usize),
    Owned(Vec<u8>),
}

impl std::fmt::Debug for CandleSource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CandleSource").field("dtype", &self.dtype).field("shape", &self.shape).finish()
    }
}

fn cpu_bytes(s: &candle_core::CpuStorage) -> &[u8] {
    use candle_core::CpuStorage as C;
    match s {
        C::U8(v) | C::F6E2M3(v) | C::F6E3M2(v) | C::F4(v) | C::F8E8M0(v) => v,
        C::U32(v) => bytemuck::cast_slice(v),
        C::I16(v) => bytemuck::cast_slice(v),
        C::I32(v) => bytemuck::cast_slice(v),
        C::I64(v) => bytemuck::cast_slice(v),
        C::BF16(v) => bytemuck::cast_slice(v),
        C::F16(v) => bytemuck::cast_slice(v),
        C::F32(v) => bytemuck::cast_slice(v),
        C::F64(v) => bytemuck::cast_slice(v),
        // float8 values are not `Pod`; they are copied below instead of borrowed.
        C::F8E4M3(_) => &[],
    }
}

impl<'a> CandleSource<'a> {
    /// Wraps a tensor for writing.
    pub fn new(name: &str, t: &'a Tensor) -> Result<CandleSource<'a>> {
        let dtype = to_safetensors(t.dtype()).ok_or_else(|| CandleError::Dtype {
            tensor: name.into(),
            reason: format!("candle dtype {:?} has no safetensors counterpart", t.dtype()),
        })?;
        let shape = t.dims().to_vec();
        let expected = t.elem_count() * dtype.bits() / 8;
        if t.device().is_cpu() {
            let (guard, layout) = t.storage_and_layout();
            if let (candle_core::Storage::Cpu(cpu), Some((start, end))) = (&*guard, layout.contiguous_offsets()) {
                let esize = t.dtype().size_in_bytes();
                let bytes = cpu_bytes(cpu);
                if bytes.len() >= end * esize && (end - start) * esize == expected {
                    return Ok(CandleSource {
                        dtype,
                        shape,
                        data: SourceData::Locked(guard, start * esize, end * esize),
                    });
                }
            }
        }
        let host = t.to_device(&Device::Cpu)?.contiguous()?.flatten_all()?;
        if host.dtype() == DType::F8E4M3 {
            // float8 elements are not plain bytes to bytemuck; candle's own writer view has them.
            let bytes = safetensors::View::data(&host).into_owned();
            return Ok(CandleSource { dtype, shape, data: SourceData::Owned(bytes) });
        }
        let (guard, layout) = host.storage_and_layout();
        let bytes = match &*guard {
            candle_core::Storage::Cpu(cpu) => {
                let esize = host.dtype().size_in_bytes();
                let (s, e) = layout.contiguous_offsets().unwrap_or((0, host.elem_count()));
                cpu_bytes(cpu).get(s * esize..e * esize).map(<[u8]>::to_vec)
            }
            _ => None,
        };
        let bytes = bytes.ok_or_else(|| CandleError::Dtype {
            tensor: name.into(),
            reason: "could not read the tensor's bytes on the host".into(),
        })?;
        Ok(CandleSource { dtype, shape, data: SourceData::Owned(bytes) })
    }
}

impl TensorSource for CandleSource<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match &self.data {
            SourceData::Locked(g, s, e) => match &**g {
                candle_core::Storage::Cpu(cpu) => Cow::Borrowed(&cpu_bytes(cpu)[*s..*e]),
                _ => Cow::Borrowed(&[]),
            },
            SourceData::Owned(v) => Cow::Borrowed(v),
        }
    }
    fn data_len(&self) -> usize {
        match &self.data {
            SourceData::Locked(_, s, e) => e - s,
            SourceData::Owned(v) => v.len(),
        }
    }
}

/// Elements per parallel copy or conversion task.
const CHUNK: usize = 1 << 18;

/// Little-endian bytes to a vector of `T`, copied in parallel (a plain copy on little-endian
/// hosts, since `T` matches the stored type).
fn copy_vec<T: bytemuck::Pod + Send + Sync + candle_core::WithDType>(bytes: &[u8]) -> Vec<T> {
    let n = bytes.len() / std::mem::size_of::<T>();
    let mut out: Vec<T> = bytemuck::zeroed_vec(n);
    let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut out);
    let step = CHUNK * std::mem::size_of::<T>();
    dst.par_chunks_mut(step).zip(bytes.par_chunks(step)).for_each(|(d, s)| d.copy_from_slice(s));
    if cfg!(target_endian = "big") {
        safeckpt_reader::swap_bytes_in_place(dst, std::mem::size_of::<T>());
    }
    out
}

/// A tensor of `shape` whose element bytes `fill` writes straight into the vector the tensor
/// adopts (no intermediate buffer), when `src` is stored exactly as candle keeps `dtype`; `None`
/// otherwise (a conversion is needed).
pub(crate) fn fill_tensor(
    src: Dtype,
    shape: &[usize],
    device: &Device,
    dtype: DType,
    fill: impl FnOnce(&mut [u8]) -> Result<()>,
) -> Option<Result<Tensor>> {
    fn typed<T: bytemuck::Pod + candle_core::WithDType>(
        shape: &[usize],
        fill: impl FnOnce(&mut [u8]) -> Result<()>,
    ) -> Result<Tensor> {
        let mut v: Vec<T> = bytemuck::zeroed_vec(shape.iter().product());
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut v);
        fill(bytes)?;
        if cfg!(target_endian = "big") {
            safeckpt_reader::swap_bytes_in_place(bytes, std::mem::size_of::<T>());
        }
        Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
    }
    if to_candle(src) != Some(dtype) {
        return None;
    }
    let t = match src {
        Dtype::U8 => typed::<u8>(shape, fill),
        Dtype::U32 => typed::<u32>(shape, fill),
        Dtype::I16 => typed::<i16>(shape, fill),
        Dtype::I32 => typed::<i32>(shape, fill),
        Dtype::I64 => typed::<i64>(shape, fill),
        Dtype::BF16 => typed::<bf16>(shape, fill),
        Dtype::F16 => typed::<f16>(shape, fill),
        Dtype::F32 => typed::<f32>(shape, fill),
        Dtype::F64 => typed::<f64>(shape, fill),
        _ => return None,
    };
    Some(t.and_then(|t| Ok(if device.is_cpu() { t } else { t.to_device(device)? })))
}

/// Decodes little-endian floats and converts each element, in parallel.
fn convert_vec<T: bytemuck::Pod + Send + Sync>(
    bytes: &[u8],
    from: Dtype,
    f32_to: impl Fn(f32) -> T + Sync,
    f64_to: impl Fn(f64) -> T + Sync,
) -> Vec<T> {
    let esize = from.bits() / 8;
    let n = bytes.len() / esize;
    let mut out: Vec<T> = bytemuck::zeroed_vec(n);
    out.par_chunks_mut(CHUNK).zip(bytes.par_chunks(CHUNK * esize)).for_each(|(d, s)| {
        for (o, e) in d.iter_mut().zip(s.chunks_exact(esize)) {
            *o = match from {
                Dtype::F64 => f64_to(f64::from_le_bytes(e.try_into().expect("8 bytes"))),
                Dtype::F32 => f32_to(f32::from_le_bytes(e.try_into().expect("4 bytes"))),
                Dtype::F16 => f32_to(f16::from_le_bytes([e[0], e[1]]).to_f32()),
                _ => f32_to(bf16::from_le_bytes([e[0], e[1]]).to_f32()),
            };
        }
    });
    out
}

/// A tensor's elements in a host vector of the matching candle type.
enum HostData {
    U8(Vec<u8>),
    U32(Vec<u32>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    /// Bytes of a type candle only stores raw (float8/6/4).
    Raw(Vec<u8>, DType),
}

impl HostData {
    fn dtype(&self) -> DType {
        match self {
            HostData::U8(_) => DType::U8,
            HostData::U32(_) => DType::U32,
            HostData::I16(_) => DType::I16,
            HostData::I32(_) => DType::I32,
            HostData::I64(_) => DType::I64,
            HostData::BF16(_) => DType::BF16,
            HostData::F16(_) => DType::F16,
            HostData::F32(_) => DType::F32,
            HostData::F64(_) => DType::F64,
            HostData::Raw(_, d) => *d,
        }
    }

    /// A tensor on the CPU that adopts the vector (no copy).
    fn into_tensor(self, shape: &[usize], var: bool) -> Result<Tensor> {
        macro_rules! adopt {
            ($v:expr) => {
                if var {
                    Var::from_vec($v, shape, &Device::Cpu)?.into_inner()
                } else {
                    Tensor::from_vec($v, shape, &Device::Cpu)?
                }
            };
        }
        Ok(match self {
            HostData::U8(v) => adopt!(v),
            HostData::U32(v) => adopt!(v),
            HostData::I16(v) => adopt!(v),
            HostData::I32(v) => adopt!(v),
            HostData::I64(v) => adopt!(v),
            HostData::BF16(v) => adopt!(v),
            HostData::F16(v) => adopt!(v),
            HostData::F32(v) => adopt!(v),
            HostData::F64(v) => adopt!(v),
            HostData::Raw(b, d) => Tensor::from_raw_buffer(&b, d, shape, &Device::Cpu)?,
        })
    }
}

/// Decodes a view into host data of `dtype` (or its natural candle type).
fn host_data(view: &TensorView<'_>, dtype: Option<DType>) -> Result<HostData> {
    host_data_of(view.name(), view.data(), view.dtype(), dtype)
}

/// Decodes little-endian bytes of `src` elements into host data of `dtype` (or their natural
/// candle type).
fn host_data_of(name: &str, bytes: &[u8], src: Dtype, dtype: Option<DType>) -> Result<HostData> {
    let float_src = matches!(src, Dtype::F64 | Dtype::F32 | Dtype::F16 | Dtype::BF16);
    Ok(match (src, dtype) {
        (s, Some(DType::F32)) if float_src && s != Dtype::F32 => {
            HostData::F32(convert_vec::<f32>(bytes, s, |x| x, |x| x as f32))
        }
        (s, Some(DType::F64)) if float_src && s != Dtype::F64 => {
            HostData::F64(convert_vec::<f64>(bytes, s, f64::from, |x| x))
        }
        (s, Some(DType::F16)) if float_src && s != Dtype::F16 => {
            HostData::F16(convert_vec::<f16>(bytes, s, f16::from_f32, |x| f16::from_f32(x as f32)))
        }
        (s, Some(DType::BF16)) if float_src && s != Dtype::BF16 => {
            HostData::BF16(convert_vec::<bf16>(bytes, s, bf16::from_f32, |x| bf16::from_f32(x as f32)))
        }
        _ => match src {
            Dtype::U8 | Dtype::BOOL => HostData::U8(copy_vec(bytes)),
            Dtype::U32 => HostData::U32(copy_vec(bytes)),
            Dtype::I16 => HostData::I16(copy_vec(bytes)),
            Dtype::I32 => HostData::I32(copy_vec(bytes)),
            Dtype::I64 => HostData::I64(copy_vec(bytes)),
            Dtype::BF16 => HostData::BF16(copy_vec(bytes)),
            Dtype::F16 => HostData::F16(copy_vec(bytes)),
            Dtype::F32 => HostData::F32(copy_vec(bytes)),
            Dtype::F64 => HostData::F64(copy_vec(bytes)),
            Dtype::U16 => {
                HostData::U32(bytes.chunks_exact(2).map(|c| u32::from(u16::from_le_bytes([c[0], c[1]]))).collect())
            }
            Dtype::I8 => HostData::I16(bytes.iter().map(|&b| i16::from(b as i8)).collect()),
            Dtype::F8_E4M3 | Dtype::F6_E2M3 | Dtype::F6_E3M2 | Dtype::F4 | Dtype::F8_E8M0 => {
                HostData::Raw(bytes.to_vec(), to_candle(src).expect("mapped above"))
            }
            other => {
                return Err(CandleError::Dtype {
                    tensor: name.into(),
                    reason: format!(
                        "candle has no dtype that holds {other} exactly; load it with a float `dtype` cast"
                    ),
                });
            }
        },
    })
}

/// A variable adopting an owned load's vector (no copy), when candle has its element type.
pub(crate) fn owned_to_var(t: safeckpt_reader::OwnedTensor) -> Result<Option<Var>> {
    use safeckpt_reader::OwnedData as O;
    let shape = t.shape;
    let cpu = &Device::Cpu;
    Ok(Some(match t.data {
        O::U8(v) if t.dtype == Dtype::U8 || t.dtype == Dtype::BOOL => Var::from_vec(v, shape, cpu)?,
        O::U32(v) => Var::from_vec(v, shape, cpu)?,
        O::I16(v) => Var::from_vec(v, shape, cpu)?,
        O::I32(v) => Var::from_vec(v, shape, cpu)?,
        O::I64(v) => Var::from_vec(v, shape, cpu)?,
        O::BF16(v) => Var::from_vec(v, shape, cpu)?,
        O::F16(v) => Var::from_vec(v, shape, cpu)?,
        O::F32(v) => Var::from_vec(v, shape, cpu)?,
        O::F64(v) => Var::from_vec(v, shape, cpu)?,
        _ => return Ok(None),
    }))
}

/// Checks, without loading anything, that a view can be loaded as `dtype`.
pub(crate) fn check_convertible(view: &TensorView<'_>, dtype: DType) -> Result<()> {
    let src = view.dtype();
    let float_src = matches!(src, Dtype::F64 | Dtype::F32 | Dtype::F16 | Dtype::BF16);
    let float_dst = matches!(dtype, DType::F64 | DType::F32 | DType::F16 | DType::BF16);
    if (float_src && float_dst) || to_candle(src).is_some() || matches!(src, Dtype::U16 | Dtype::I8) {
        Ok(())
    } else {
        Err(CandleError::Dtype {
            tensor: view.name().into(),
            reason: format!("candle has no dtype that holds {src} exactly; load it with a float `dtype` cast"),
        })
    }
}

/// Loads a tensor view into a candle tensor on `device`, optionally cast to `dtype`.
///
/// The bytes are copied once, in parallel, into a vector candle adopts without another copy (for
/// other devices, that vector is then uploaded once). Types candle lacks are widened exactly
/// (`U16` to `U32`, `I8` to `I16`, `BOOL` to `U8`); types with no exact counterpart (`U64`, `C64`,
/// `F8_E5M2` and the fnuz float8s) are refused unless the cast asks for a float type. Float casts
/// between F64, F32, F16 and BF16 round to nearest even, in parallel.
pub fn view_to_tensor(view: &TensorView<'_>, device: &Device, dtype: Option<DType>) -> Result<Tensor> {
    load(view, device, dtype, false)
}

/// [`view_to_tensor`] as a variable (on CPU, the variable adopts the loaded vector: no copy).
pub fn view_to_var(view: &TensorView<'_>, device: &Device, dtype: Option<DType>) -> Result<Var> {
    let t = load(view, device, dtype, true)?;
    Ok(Var::from_tensor(&t)?)
}

fn load(view: &TensorView<'_>, device: &Device, dtype: Option<DType>, var: bool) -> Result<Tensor> {
    finish(host_data(view, dtype)?, view.shape(), device, dtype, var)
}

/// Little-endian bytes of `src` elements (a region, or a tensor assembled from pieces) as a
/// candle tensor of `shape` on `device`, with the conversions of [`view_to_tensor`].
pub fn bytes_to_tensor(
    name: &str,
    bytes: &[u8],
    src: Dtype,
    shape: &[usize],
    device: &Device,
    dtype: Option<DType>,
) -> Result<Tensor> {
    let numel: usize = shape.iter().product();
    if src.byte_len(numel) != Some(bytes.len()) {
        return Err(CandleError::Dtype {
            tensor: name.into(),
            reason: format!("{} bytes do not make a {src} tensor of shape {shape:?}", bytes.len()),
        });
    }
    finish(host_data_of(name, bytes, src, dtype)?, shape, device, dtype, false)
}

fn finish(data: HostData, shape: &[usize], device: &Device, dtype: Option<DType>, var: bool) -> Result<Tensor> {
    let natural = data.dtype();
    let on_cpu = device.is_cpu() && dtype.is_none_or(|d| d == natural);
    let t = data.into_tensor(shape, var && on_cpu)?;
    let t = match dtype {
        Some(d) if d != natural => t.to_dtype(d)?,
        _ => t,
    };
    Ok(if device.is_cpu() { t } else { t.to_device(device)? })
}
