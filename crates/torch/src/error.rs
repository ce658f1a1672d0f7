//! The importer's error type.

use std::path::PathBuf;

use crate::pickle::PickleError;
use crate::zip::ZipError;

/// Everything that can go wrong reading or converting a PyTorch file. Each variant names the file
/// and, where there is one, the record, storage or tensor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TorchError {
    /// Reading the file failed.
    #[error(transparent)]
    Read(#[from] safeckpt_reader::ReadError),
    /// Writing the output failed.
    #[error(transparent)]
    Write(#[from] safeckpt_writer::WriteError),
    /// The file is not a PyTorch file this reader knows.
    #[error("{}: {reason}", path.display())]
    NotTorch {
        /// The file.
        path: PathBuf,
        /// What it looks like instead.
        reason: String,
    },
    /// The zip container is damaged.
    #[error("{}: {source}", path.display())]
    Zip {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: ZipError,
    },
    /// A record is missing or damaged.
    #[error("{}: record `{record}`: {reason}", path.display())]
    Record {
        /// The file.
        path: PathBuf,
        /// The record (zip entry or legacy section).
        record: String,
        /// What is wrong.
        reason: String,
    },
    /// The pickle was refused or is malformed.
    #[error("{}: {record}: {source}", path.display())]
    Pickle {
        /// The file.
        path: PathBuf,
        /// Which pickle (`archive/data.pkl`, `legacy main pickle`, …).
        record: String,
        /// What happened.
        #[source]
        source: PickleError,
    },
    /// The object tree cannot become a flat safetensors file.
    #[error("{}: {reason}", path.display())]
    Structure {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        reason: String,
    },
    /// Reading the file would produce more bytes than the limit allows.
    #[error("{}: {reason}", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// How much, against which limit, and how to raise it.
        reason: String,
    },
    /// A tensor cannot be converted.
    #[error("{}: tensor `{tensor}`: {reason}", path.display())]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The flattened name.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
}

impl TorchError {
    /// Whether the input was refused or malformed (rather than an I/O or write failure).
    pub fn is_bad_input(&self) -> bool {
        match self {
            // A device, FIFO or directory where a file is needed is the caller's input, not a
            // failing disk.
            TorchError::Read(safeckpt_reader::ReadError::Io { source, .. }) => {
                matches!(source.kind(), std::io::ErrorKind::InvalidInput | std::io::ErrorKind::IsADirectory)
            }
            TorchError::Read(_) => true,
            TorchError::Write(e) => !matches!(e, safeckpt_writer::WriteError::Io { .. }),
            _ => true,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = TorchError> = std::result::Result<T, E>;
