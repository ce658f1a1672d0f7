//! The reader's error type.

use std::path::PathBuf;

use safeckpt_format::{Dtype, FormatError};

/// Everything that can go wrong while opening or reading safetensors files. Each variant names
/// the file and, where there is one, the tensor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// An I/O error on a file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid safetensors file.
    #[error("{}: {source}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: FormatError,
    },
    /// No tensor of that name.
    #[error("{}: no tensor named `{name}`", path.display())]
    TensorNotFound {
        /// The file or index.
        path: PathBuf,
        /// The name asked for.
        name: String,
    },
    /// A typed read asked for an element type that does not match the tensor's dtype.
    #[error("tensor `{tensor}` is {actual}, not {requested}")]
    DtypeMismatch {
        /// The tensor.
        tensor: String,
        /// Its dtype.
        actual: Dtype,
        /// The dtype(s) the element type can view.
        requested: String,
    },
    /// A zero-copy typed view is impossible because the bytes are not aligned for the type.
    #[error("tensor `{tensor}` is not aligned to {align} bytes in memory; use a copying read")]
    Misaligned {
        /// The tensor.
        tensor: String,
        /// Required alignment.
        align: usize,
    },
    /// Zero-copy typed views of multi-byte types are impossible on big-endian hosts.
    #[error("tensor `{tensor}`: zero-copy typed views need a little-endian host; use a copying read, which byte-swaps")]
    BigEndianHost {
        /// The tensor.
        tensor: String,
    },
    /// A slice request that does not fit the tensor.
    #[error("tensor `{tensor}`: invalid slice: {reason}")]
    InvalidSlice {
        /// The tensor.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// A shard index is malformed or inconsistent with its shards.
    #[error("{}: {reason}", index.display())]
    Index {
        /// The index file.
        index: PathBuf,
        /// What is wrong, naming the tensors and shards involved.
        reason: String,
    },
}

impl ReadError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ReadError::Io { path: path.into(), source }
    }

    /// The structural error underneath, if this is one.
    pub fn format_error(&self) -> Option<&FormatError> {
        match self {
            ReadError::Format { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = ReadError> = std::result::Result<T, E>;
