//! `VarBuilder` backends over memory-mapped safetensors files and sharded sets, so that
//! `candle-transformers` models load from safeckpt readers: [`var_builder`] for whole tensors,
//! and [`sharded_var_builder`] for tensor-parallel models, where each rank asks for its block of
//! a tensor (candle's `Shard` hints) and reads only those bytes. Both also serve tensors a
//! multi-rank save stored as pieces, assembled from (or cut across) the pieces.

use std::path::Path;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::{Backend, Shard, SimpleBackend, VarBuilderArgs};
use candle_nn::{Init, VarBuilder};
use safeckpt_reader::{GlobalTensor, ShardedReader};

use crate::error::Result;
use crate::tensor::{bytes_to_tensor, fill_tensor, view_to_tensor};

/// Serves tensors from a [`ShardedReader`] (a file or a sharded set).
#[derive(Debug)]
pub struct SafeckptBackend {
    set: ShardedReader,
}

impl SafeckptBackend {
    /// A backend over an opened set.
    pub fn new(set: ShardedReader) -> Self {
        SafeckptBackend { set }
    }

    /// The set.
    pub fn set(&self) -> &ShardedReader {
        &self.set
    }
}

fn err(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// The global tensor `name` of `set`, or an error naming the set and the tensor.
fn global<'a>(set: &'a ShardedReader, name: &str) -> candle_core::Result<GlobalTensor<'a>> {
    set.global(name).ok_or_else(|| err(format!("{}: no tensor `{name}`", set.path().display())))
}

/// A whole global tensor: a view loaded directly, or a split tensor assembled from its pieces.
fn load_whole(set: &ShardedReader, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
    match global(set, name)? {
        GlobalTensor::Whole(view) => view_to_tensor(&view, dev, Some(dtype)).map_err(err),
        g @ GlobalTensor::Split(..) => {
            let region: Vec<std::ops::Range<usize>> = g.shape().iter().map(|&n| 0..n).collect();
            region_tensor(set, name, g.dtype(), &region, dtype, dev)
        }
    }
}

fn check_shape(source: &str, name: &str, found: &[usize], expected: &[usize]) -> candle_core::Result<()> {
    if found != expected {
        return Err(err(format!("{source}: tensor `{name}` has shape {found:?}, the model expects {expected:?}")));
    }
    Ok(())
}

/// `region` of the global tensor `name` (stored as `src`) as a tensor of `dtype` on `dev`: read
/// straight into the tensor's vector when no conversion is needed, else through a buffer.
fn region_tensor(
    source: &dyn RegionSource,
    name: &str,
    src: safeckpt_format::Dtype,
    region: &[std::ops::Range<usize>],
    dtype: DType,
    dev: &Device,
) -> candle_core::Result<Tensor> {
    let local: Vec<usize> = region.iter().map(|r| r.end - r.start).collect();
    let read = |out: &mut [u8]| source.read_region_into(name, region, out);
    if let Some(t) = fill_tensor(src, &local, dev, dtype, read) {
        return t.map_err(err);
    }
    let numel: usize = local.iter().product();
    let mut bytes = vec![0u8; src.byte_len(numel).unwrap_or(0)];
    source.read_region_into(name, region, &mut bytes).map_err(err)?;
    bytes_to_tensor(name, &bytes, src, &local, dev, Some(dtype)).map_err(err)
}

impl SimpleBackend for SafeckptBackend {
    fn get(&self, s: Shape, name: &str, _h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let source = self.set.path().display().to_string();
        check_shape(&source, name, global(&self.set, name)?.shape(), s.dims())?;
        load_whole(&self.set, name, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        load_whole(&self.set, name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.set.global(name).is_some()
    }
}

/// What the tensor-parallel backend reads from: a local set ([`ShardedReader`], memory-mapped)
/// or, with the `object-store` feature, a remote one (`safeckpt_store::RemoteSet`, by ranged
/// reads of only the requested bytes).
pub trait RegionSource: Send + Sync {
    /// The file, index or URL, for messages.
    fn describe(&self) -> String;
    /// Dtype and shape of the global tensor `name` (whole or split), if there is one.
    fn global_info(&self, name: &str) -> Option<(safeckpt_format::Dtype, Vec<usize>)>;
    /// Reads `region` of the global tensor `name` into `out` (exactly the region's size).
    fn read_region_into(&self, name: &str, region: &[std::ops::Range<usize>], out: &mut [u8]) -> Result<()>;
}

impl RegionSource for ShardedReader {
    fn describe(&self) -> String {
        self.path().display().to_string()
    }

    fn global_info(&self, name: &str) -> Option<(safeckpt_format::Dtype, Vec<usize>)> {
        self.global(name).map(|g| (g.dtype(), g.shape().to_vec()))
    }

    fn read_region_into(&self, name: &str, region: &[std::ops::Range<usize>], out: &mut [u8]) -> Result<()> {
        Ok(ShardedReader::read_region_into(self, name, region, out)?)
    }
}

#[cfg(feature = "object-store")]
impl RegionSource for safeckpt_store::RemoteSet {
    fn describe(&self) -> String {
        self.location().url()
    }

    fn global_info(&self, name: &str) -> Option<(safeckpt_format::Dtype, Vec<usize>)> {
        safeckpt_store::RemoteSet::global_info(self, name)
    }

    fn read_region_into(&self, name: &str, region: &[std::ops::Range<usize>], out: &mut [u8]) -> Result<()> {
        Ok(safeckpt_store::RemoteSet::read_region_into(self, name, region, out)?)
    }
}

/// Serves tensor-parallel models: `get_with_hints(shape, name, Shard { dim, rank, world_size })`
/// returns block `rank` of `world_size` equal blocks of the tensor along `dim` (any dimension),
/// reading only that block's bytes; with `world_size` 1, the whole tensor (its shape checked).
/// The same contract as candle's `ShardedSafeTensors`, over local or remote safeckpt sets. It is
/// also a plain backend (`VarBuilder::from_backend`) serving whole tensors.
pub struct SafeckptShardedBackend {
    src: Box<dyn RegionSource>,
}

impl std::fmt::Debug for SafeckptShardedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafeckptShardedBackend").field("source", &self.src.describe()).finish()
    }
}

impl SafeckptShardedBackend {
    /// A backend over a local set.
    pub fn new(set: ShardedReader) -> Self {
        SafeckptShardedBackend { src: Box::new(set) }
    }

    /// A backend over any source, e.g. a `safeckpt_store::RemoteSet`.
    pub fn from_source(src: impl RegionSource + 'static) -> Self {
        SafeckptShardedBackend { src: Box::new(src) }
    }

    /// The source.
    pub fn source(&self) -> &dyn RegionSource {
        self.src.as_ref()
    }

    fn info(&self, name: &str) -> candle_core::Result<(safeckpt_format::Dtype, Vec<usize>)> {
        self.src.global_info(name).ok_or_else(|| err(format!("{}: no tensor `{name}`", self.src.describe())))
    }

    fn whole(&self, name: &str, expected: Option<&[usize]>, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let (src, shape) = self.info(name)?;
        if let Some(e) = expected {
            check_shape(&self.src.describe(), name, &shape, e)?;
        }
        let region: Vec<std::ops::Range<usize>> = shape.iter().map(|&n| 0..n).collect();
        region_tensor(self.src.as_ref(), name, src, &region, dtype, dev)
    }
}

impl Backend for SafeckptShardedBackend {
    type Hints = Shard;

    fn get(&self, s: Shape, name: &str, h: Shard, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if h.world_size <= 1 {
            return self.whole(name, Some(s.dims()), dtype, dev);
        }
        let (src, shape) = self.info(name)?;
        let Shard { dim, rank, world_size } = h;
        if dim >= shape.len() || rank >= world_size {
            return Err(err(format!(
                "{}: tensor `{name}` of shape {shape:?} cannot give block {rank} of {world_size} along dimension {dim}",
                self.src.describe()
            )));
        }
        if !shape[dim].is_multiple_of(world_size) {
            return Err(candle_core::Error::ShapeMismatchSplit { shape: shape.into(), dim, n_parts: world_size });
        }
        let block = shape[dim] / world_size;
        let region: Vec<std::ops::Range<usize>> = shape
            .iter()
            .enumerate()
            .map(|(d, &n)| if d == dim { rank * block..(rank + 1) * block } else { 0..n })
            .collect();
        region_tensor(self.src.as_ref(), name, src, &region, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.whole(name, None, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.src.global_info(name).is_some()
    }
}

impl SimpleBackend for SafeckptShardedBackend {
    fn get(&self, s: Shape, name: &str, _h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.whole(name, Some(s.dims()), dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.whole(name, None, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.src.global_info(name).is_some()
    }
}

/// With the `object-store` feature, a URL (`s3://…`, `https://…`; credentials and endpoint from
/// the `AWS_*` environment) opened as a remote set; `None` for a local path.
#[cfg(feature = "object-store")]
fn remote_set(path: &Path) -> Result<Option<safeckpt_store::RemoteSet>> {
    let s = path.to_string_lossy();
    if !safeckpt_store::is_url(&s) {
        return Ok(None);
    }
    match safeckpt_store::Location::parse(&s, &safeckpt_store::StoreOptions::default())? {
        safeckpt_store::Location::Object(o) => Ok(Some(safeckpt_store::RemoteSet::open(&o)?)),
        safeckpt_store::Location::Local(_) => Ok(None),
    }
}

/// A `VarBuilder` over a safetensors file, a `*.safetensors.index.json` or a directory holding
/// one, memory-mapped: tensors are read when the model asks for them, cast to `dtype` and placed
/// on `device`. With the `object-store` feature, also a URL: each tensor is then fetched by
/// ranged reads when asked for.
pub fn var_builder(path: impl AsRef<Path>, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    #[cfg(feature = "object-store")]
    if let Some(set) = remote_set(path.as_ref())? {
        return Ok(remote_var_builder(set, dtype, device));
    }
    let set = ShardedReader::open(path)?;
    Ok(VarBuilder::from_backend(Box::new(SafeckptBackend::new(set)), dtype, device.clone()))
}

/// A `VarBuilder` over a model's safetensors files given as a list, as `hf-hub` download
/// helpers return them and as candle's `VarBuilder::from_mmaped_safetensors` takes them: one
/// namespace over all the files (a tensor in two of them is an error), memory-mapped.
pub fn var_builder_from_files<P: AsRef<Path>>(
    paths: &[P],
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    let set = ShardedReader::open_files(paths)?;
    Ok(VarBuilder::from_backend(Box::new(SafeckptBackend::new(set)), dtype, device.clone()))
}

/// A tensor-parallel `VarBuilder` (candle's `ShardedVarBuilder` contract) over a safetensors file,
/// an index, or a directory holding one: each rank's `get_with_hints(.., Shard { .. })` reads only
/// its block. With the `object-store` feature, also a URL (see [`remote_sharded_var_builder`]).
pub fn sharded_var_builder(
    path: impl AsRef<Path>,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilderArgs<'static, SafeckptShardedBackend>> {
    #[cfg(feature = "object-store")]
    if let Some(set) = remote_set(path.as_ref())? {
        return Ok(remote_sharded_var_builder(set, dtype, device));
    }
    let set = ShardedReader::open(path)?;
    Ok(VarBuilderArgs::new_with_args(SafeckptShardedBackend::new(set), dtype, device))
}

/// [`sharded_var_builder`] over a set in an object store (feature `object-store`): opening reads
/// only the headers, and each `get_with_hints` fetches only the byte ranges of its block.
#[cfg(feature = "object-store")]
pub fn remote_sharded_var_builder(
    set: safeckpt_store::RemoteSet,
    dtype: DType,
    device: &Device,
) -> VarBuilderArgs<'static, SafeckptShardedBackend> {
    VarBuilderArgs::new_with_args(SafeckptShardedBackend::from_source(set), dtype, device)
}

/// A plain `VarBuilder` over a set in an object store (feature `object-store`): each tensor is
/// fetched by ranged reads when the model asks for it.
#[cfg(feature = "object-store")]
pub fn remote_var_builder(set: safeckpt_store::RemoteSet, dtype: DType, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(SafeckptShardedBackend::from_source(set)), dtype, device.clone())
}
