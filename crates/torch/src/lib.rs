//! # safeckpt-torch
//!
//! Reads PyTorch checkpoints (`.pth`, `.pt`, `pytorch_model.bin`) without running any code from
//! them, and converts them to safetensors.
//!
//! - Containers: the zip archive of `torch.save` (records looked up by name, `byteorder`
//!   honoured, stored entries read straight from the memory map, deflated entries inflated with a
//!   bound) and the legacy format (`_use_new_zipfile_serialization=False`).
//! - [`pickle`]: a pickle VM of our own for protocols 0 to 5 that can only build data. Globals are
//!   resolved against an allow-list ([`globals`]); `os.system`, `builtins.eval`, user classes and
//!   every other name are refused by name; nothing is imported or called. Resources are bounded.
//! - Tensors from `_rebuild_tensor_v2`/`v3`, `_rebuild_parameter(_with_state)` and
//!   `_rebuild_from_type_v2`, any storage dtype safetensors can hold, views with offsets and
//!   strides (written contiguous), big-endian storages (byte-swapped); quantized, sparse, meta,
//!   nested and wrapper tensors are refused with a message naming the kind.
//! - [`flatten`]: nested dicts and lists become dotted names; other values become JSON metadata.
//! - [`TorchArchive::convert`]: streaming conversion, tensor by tensor, in bounded memory, with
//!   tied weights written once, optional casting and sharding.
//!
//! ```no_run
//! use safeckpt_torch::{ConvertOptions, TorchArchive};
//!
//! let archive = TorchArchive::open("checkpoint.pth")?;
//! for (name, tensor) in archive.tensors(None)? {
//!     println!("{name}: {} {:?}", tensor.dtype, tensor.shape);
//! }
//! archive.convert("checkpoint.safetensors".as_ref(), &ConvertOptions::default(), &|_| {})?;
//! # Ok::<(), safeckpt_torch::TorchError>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod archive;
mod cast;
mod convert;
mod error;
pub mod flatten;
#[doc(hidden)]
pub mod fuzzing;
pub mod globals;
pub mod pickle;
mod tensor;
pub mod value;
pub mod zip;

pub use archive::{
    ArchiveFormat, MAX_PICKLE_LEN, OUTPUT_FACTOR, OUTPUT_SLACK, StorageData, StorageInfo, TORCH_LEGACY_MAGIC,
    TorchArchive, default_output_limit,
};
pub use cast::{CastPolicy, is_optimizer_state};
pub use convert::{CONVERT_CHUNK, CastTo, Conversion, ConvertOptions, ConvertSummary, cast, convert};
pub use error::{Result, TorchError};
pub use tensor::{Chunk, TensorPlan, is_contiguous};

use std::borrow::Cow;

/// A tensor of a PyTorch file, in safetensors terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchTensor<'a> {
    /// safetensors dtype.
    pub dtype: safeckpt_format::Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Contiguous little-endian bytes, borrowed from the mapped file when the view allows it.
    pub data: Cow<'a, [u8]>,
}

/// A tensor of a PyTorch file described without reading its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchTensorInfo {
    /// Flattened name.
    pub name: String,
    /// safetensors dtype.
    pub dtype: safeckpt_format::Dtype,
    /// Shape (safetensors form).
    pub shape: Vec<usize>,
    /// Bytes of its contiguous data.
    pub bytes: u64,
    /// Whether the view is laid out row-major in its storage (else it is gathered when read).
    pub contiguous: bool,
    /// The tensor this one is tied to: the same view (storage, offset, shape, strides, dtype)
    /// under another name, the first of them by name (what `convert` keeps and records this
    /// name as an alias of). Its bytes are the other's, not more.
    pub tied_to: Option<String>,
}

impl TorchArchive {
    /// Every tensor (of the sub-tree at `key`, if given) described from the pickle alone: no
    /// tensor byte is read, gathered or inflated, whatever shapes the file claims.
    pub fn describe(&self, key: Option<&str>) -> Result<Vec<TorchTensorInfo>> {
        let flat = flatten::flatten(self.arena(), self.root(), key)
            .map_err(|reason| TorchError::Structure { path: self.path().to_path_buf(), reason })?;
        // Tied weights: the first name (bytewise) of each view shared by several names.
        type ViewKey<'k> = (u32, usize, &'k [usize], &'k [usize], &'k str);
        let mut first: std::collections::HashMap<ViewKey<'_>, &str> = std::collections::HashMap::new();
        for (name, d) in &flat.tensors {
            let e = first.entry((d.storage, d.offset, &d.shape, &d.stride, d.dtype.name())).or_insert(name);
            if name.as_str() < *e {
                *e = name;
            }
        }
        flat.tensors
            .iter()
            .map(|(name, def)| {
                let plan = TensorPlan::new(self, name, def)?;
                let kept = first[&(def.storage, def.offset, &def.shape[..], &def.stride[..], def.dtype.name())];
                Ok(TorchTensorInfo {
                    name: name.clone(),
                    dtype: plan.dtype,
                    bytes: plan.byte_len(),
                    contiguous: is_contiguous(&def.shape, &def.stride),
                    shape: plan.shape,
                    tied_to: (kept != name.as_str()).then(|| kept.to_string()),
                })
            })
            .collect()
    }

    /// Every tensor (of the sub-tree at `key`, if given) under its flattened name, with its bytes:
    /// zero-copy for contiguous little-endian views. What this produces (copies of strided views,
    /// inflated storages) is bounded by [`TorchArchive::default_output_limit`]; use
    /// [`TorchArchive::tensors_within`] to set another limit.
    pub fn tensors(&self, key: Option<&str>) -> Result<Vec<(String, TorchTensor<'_>)>> {
        self.tensors_within(key, None)
    }

    /// [`TorchArchive::tensors`] with an explicit limit on the bytes produced (`None`: the
    /// default).
    pub fn tensors_within(&self, key: Option<&str>, limit: Option<u64>) -> Result<Vec<(String, TorchTensor<'_>)>> {
        let flat = flatten::flatten(self.arena(), self.root(), key)
            .map_err(|reason| TorchError::Structure { path: self.path().to_path_buf(), reason })?;
        let plans: Vec<TensorPlan> =
            flat.tensors.iter().map(|(name, def)| TensorPlan::new(self, name, def)).collect::<Result<_>>()?;
        let copied = plans
            .iter()
            .filter(|p| !p.is_zero_copy(self) || self.storage_is_deflated(p.def.storage))
            .fold(0u64, |a, p| a.saturating_add(p.byte_len()));
        self.check_output(copied, self.inflation_for(plans.iter()), limit, "`TorchArchive::tensors_within`")?;
        plans
            .into_iter()
            .map(|plan| {
                let data = self.tensor_bytes(&plan.name, &plan.def)?;
                Ok((plan.name, TorchTensor { dtype: plan.dtype, shape: plan.shape, data }))
            })
            .collect()
    }

    /// The non-tensor values (of the sub-tree at `key`) as flattened names and JSON text.
    pub fn values(&self, key: Option<&str>) -> Result<Vec<(String, String)>> {
        let flat = flatten::flatten(self.arena(), self.root(), key)
            .map_err(|reason| TorchError::Structure { path: self.path().to_path_buf(), reason })?;
        Ok(flat.metadata)
    }
}
