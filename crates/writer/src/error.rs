//! The writer's error type.

use std::path::PathBuf;

use safeckpt_format::FormatError;

/// Everything that can go wrong while writing. When a write fails, its temporary file is removed
/// and the file it would have replaced is untouched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// An I/O error.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file concerned (the target, or the directory).
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The tensors cannot form a valid file (duplicate or reserved name, overflowing shape, a
    /// byte length that disagrees with dtype and shape, a header over the limit, …).
    #[error("{}: {source}", path.display())]
    Format {
        /// The target file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: FormatError,
    },
    /// A streaming write named a tensor that was not planned.
    #[error("{}: tensor `{name}` is not part of this file's plan", path.display())]
    UnknownTensor {
        /// The target file.
        path: PathBuf,
        /// The name.
        name: String,
    },
    /// A streaming write gave a tensor twice.
    #[error("{}: tensor `{name}` was written twice", path.display())]
    WrittenTwice {
        /// The target file.
        path: PathBuf,
        /// The name.
        name: String,
    },
    /// A streaming write finished without every tensor.
    #[error("{}: {missing} tensor(s) were never written, e.g. `{example}`", path.display())]
    Incomplete {
        /// The target file.
        path: PathBuf,
        /// How many are missing.
        missing: usize,
        /// One of them.
        example: String,
    },
    /// A tensor's data has a different length than its dtype and shape need.
    #[error("{}: tensor `{name}` needs {expected} bytes but {actual} were given", path.display())]
    WrongLength {
        /// The target file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Bytes the plan reserves.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
    /// The target exists and overwriting was not allowed.
    #[error("{}: already exists (`WriteOptions::overwrite(true)` replaces it)", path.display())]
    Exists {
        /// The target file.
        path: PathBuf,
    },
    /// Invalid arguments, such as a zero maximum shard size.
    #[error("{0}")]
    Invalid(String),
}

impl WriteError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        WriteError::Io { path: path.into(), source }
    }
}

/// Result alias for this crate.
pub type Result<T, E = WriteError> = std::result::Result<T, E>;
