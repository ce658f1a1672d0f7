//! A `VarBuilder` backend over memory-mapped safetensors files and sharded sets, so that
//! `candle-transformers` models load from safeckpt readers.

use std::path::Path;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use safeckpt_reader::ShardedReader;

use crate::error::Result;
use crate::tensor::view_to_tensor;

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

impl SimpleBackend for SafeckptBackend {
    fn get(&self, s: Shape, name: &str, _h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let view = self.set.tensor(name).map_err(err)?;
        if view.shape() != s.dims() {
            return Err(err(format!(
                "{}: tensor `{name}` has shape {:?}, the model expects {:?}",
                self.set.path().display(),
                view.shape(),
                s.dims()
            )));
        }
        view_to_tensor(&view, dev, Some(dtype)).map_err(err)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let view = self.set.tensor(name).map_err(err)?;
        view_to_tensor(&view, dev, Some(dtype)).map_err(err)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.set.get(name).is_some()
    }
}

/// A `VarBuilder` over a safetensors file or `*.safetensors.index.json`, memory-mapped: tensors
/// are read when the model asks for them, cast to `dtype` and placed on `device`.
pub fn var_builder(path: impl AsRef<Path>, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    let set = ShardedReader::open(path)?;
    Ok(VarBuilder::from_backend(Box::new(SafeckptBackend::new(set)), dtype, device.clone()))
}
