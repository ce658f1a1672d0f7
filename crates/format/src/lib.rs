//! # safeckpt-format
//!
//! The safetensors format as types, with no I/O and no `unsafe`:
//!
//! - [`Dtype`]: every element type of safetensors 0.8, in the reference enum order;
//! - [`Header`]: a strict, fast parser and validator for headers from untrusted files;
//! - [`Layout`]: planning and encoding of headers, byte-identical to the `safetensors` crate's
//!   writer for the same tensors and at most one metadata key, deterministic beyond that;
//! - [`integrity`]: the per-tensor and header checksums safeckpt records in `__metadata__`;
//! - [`ShardIndex`]: HuggingFace `*.safetensors.index.json` files;
//! - [`detect()`]: what a file is (safetensors, a zip, a pickle), by its structure;
//! - [`TensorSource`]: the trait writers take their input through.
//!
//! ```
//! use safeckpt_format::{Dtype, Header, Layout, LayoutOptions, TensorSpec};
//!
//! let specs = vec![TensorSpec::new("weight", Dtype::F32, [2, 2])];
//! let layout = Layout::plan(specs, None, &LayoutOptions { checksums: false, ..Default::default() })?;
//! let mut file = layout.header_bytes().to_vec();
//! for x in [1.0f32, 2.0, 3.0, 4.0] {
//!     file.extend_from_slice(&x.to_le_bytes());
//! }
//! let header = Header::parse(&file)?;
//! assert_eq!(header.get("weight").unwrap().shape, [2, 2]);
//! # Ok::<(), safeckpt_format::FormatError>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

pub mod detect;
mod dtype;
mod error;
mod header;
pub mod index;
pub mod integrity;
mod json;
#[allow(
    clippy::indexing_slicing,
    reason = "plans from the caller's own specs; every index is a position the planner created"
)]
mod layout;
#[allow(clippy::indexing_slicing, reason = "every index is below a length checked against the tensor's rank first")]
pub mod split;

use std::borrow::Cow;

pub use detect::{FileKind, detect};
pub use dtype::{Dtype, UnknownDtype, numel};
pub use error::{FormatError, Result};
pub use header::{Header, LEN_PREFIX, MAX_HEADER_LEN, METADATA_KEY, Metadata, TensorInfo, read_header_len};
pub use index::ShardIndex;
pub use integrity::{INTEGRITY_KEY, Integrity};
pub use json::{MAX_DEPTH, escape_into, write_json_string};
pub use layout::{Layout, LayoutOptions, PlannedTensor, TensorSpec};

/// A tensor a writer can store: dtype, shape and little-endian, row-major bytes.
///
/// `data` may borrow (a slice of a memory map, a CPU tensor's storage) or produce an owned buffer
/// (a cast, a device copy). Writers call it once per tensor, possibly from several threads.
pub trait TensorSource: Sync {
    /// Element type.
    fn dtype(&self) -> Dtype;
    /// Shape.
    fn shape(&self) -> &[usize];
    /// The tensor's bytes; their length must equal what dtype and shape imply.
    fn data(&self) -> Cow<'_, [u8]>;
    /// Length of [`TensorSource::data`] in bytes, without producing the data.
    fn data_len(&self) -> usize {
        numel(self.shape()).and_then(|n| self.dtype().byte_len(n)).unwrap_or(usize::MAX)
    }
}

impl<T: TensorSource + ?Sized> TensorSource for &T {
    fn dtype(&self) -> Dtype {
        (**self).dtype()
    }
    fn shape(&self) -> &[usize] {
        (**self).shape()
    }
    fn data(&self) -> Cow<'_, [u8]> {
        (**self).data()
    }
    fn data_len(&self) -> usize {
        (**self).data_len()
    }
}

/// A tensor given as bytes, borrowed or owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawTensor<'a> {
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Little-endian row-major bytes.
    pub data: Cow<'a, [u8]>,
}

impl<'a> RawTensor<'a> {
    /// A tensor over borrowed bytes.
    pub fn borrowed(dtype: Dtype, shape: impl Into<Vec<usize>>, data: &'a [u8]) -> Self {
        RawTensor { dtype, shape: shape.into(), data: Cow::Borrowed(data) }
    }

    /// A tensor owning its bytes.
    pub fn owned(dtype: Dtype, shape: impl Into<Vec<usize>>, data: Vec<u8>) -> RawTensor<'static> {
        RawTensor { dtype, shape: shape.into(), data: Cow::Owned(data) }
    }
}

impl TensorSource for RawTensor<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}
