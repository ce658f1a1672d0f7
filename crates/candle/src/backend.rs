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
            let read = |out: &mut [u8]| Ok(set.read_region_into(name, &region, out)?);
            if let Some(t) = fill_tensor(g.dtype(), g.shape(), dev, dtype, read) {
                return t.map_err(err);
            }
            let bytes = set.read_global(name).map_err(err)?;
            bytes_to_tensor(name, &bytes, g.dtype(), g.shape(), dev, Some(dtype)).map_err(err)
        }
    }
}

fn check_shape(set: &ShardedReader, name: &str, found: &[usize], expected: &[usize]) -> candle_core::Result<()> {
    if found != expected {
        return Err(err(format!(
            "{}: tensor `{name}` has shape {found:?}, the model expects {expected:?}",
            set.path().display()
        )));
    }
    Ok(())
}

impl SimpleBackend for SafeckptBackend {
    fn get(&self, s: Shape, name: &str, _h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        check_shape(&self.set, name, global(&self.set, name)?.shape(), s.dims())?;
        load_whole(&self.set, name, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        load_whole(&self.set, name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.set.global(name).is_some()
    }
}

/// Serves tensor-parallel models: `get_with_hints(shape, name, Shard { dim, rank, world_size })`
/// returns block `rank` of `world_size` equal blocks of the tensor along `dim` (any dimension),
/// reading only that block's bytes from the maps; with `world_size` 1, the whole tensor (its
/// shape checked). The same contract as candle's `ShardedSafeTensors`, over safeckpt sets.
#[derive(Debug)]
pub struct SafeckptShardedBackend {
    set: ShardedReader,
}

impl SafeckptShardedBackend {
    /// A backend over an opened set.
    pub fn new(set: ShardedReader) -> Self {
        SafeckptShardedBackend { set }
    }

    /// The set.
    pub fn set(&self) -> &ShardedReader {
        &self.set
    }
}

impl Backend for SafeckptShardedBackend {
    type Hints = Shard;

    fn get(&self, s: Shape, name: &str, h: Shard, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let g = global(&self.set, name)?;
        if h.world_size <= 1 {
            check_shape(&self.set, name, g.shape(), s.dims())?;
            return load_whole(&self.set, name, dtype, dev);
        }
        let shape = g.shape().to_vec();
        let Shard { dim, rank, world_size } = h;
        if dim >= shape.len() || rank >= world_size {
            return Err(err(format!(
                "{}: tensor `{name}` of shape {shape:?} cannot give block {rank} of {world_size} along dimension {dim}",
                self.set.path().display()
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
        let mut local = shape;
        local[dim] = block;
        let read = |out: &mut [u8]| Ok(self.set.read_region_into(name, &region, out)?);
        if let Some(t) = fill_tensor(g.dtype(), &local, dev, dtype, read) {
            return t.map_err(err);
        }
        let bytes = self.set.read_region(name, &region).map_err(err)?;
        bytes_to_tensor(name, &bytes, g.dtype(), &local, dev, Some(dtype)).map_err(err)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        load_whole(&self.set, name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.set.global(name).is_some()
    }
}

/// A `VarBuilder` over a safetensors file or `*.safetensors.index.json`, memory-mapped: tensors
/// are read when the model asks for them, cast to `dtype` and placed on `device`.
pub fn var_builder(path: impl AsRef<Path>, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    let set = ShardedReader::open(path)?;
    Ok(VarBuilder::from_backend(Box::new(SafeckptBackend::new(set)), dtype, device.clone()))
}

/// A tensor-parallel `VarBuilder` (candle's `ShardedVarBuilder` contract) over a safetensors file,
/// an index, or a directory holding one: each rank's `get_with_hints(.., Shard { .. })` reads only
/// its block.
pub fn sharded_var_builder(
    path: impl AsRef<Path>,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilderArgs<'static, SafeckptShardedBackend>> {
    let set = ShardedReader::open(path)?;
    Ok(VarBuilderArgs::new_with_args(SafeckptShardedBackend::new(set), dtype, device))
}
