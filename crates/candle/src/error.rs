//! The bridge's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the candle bridge.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CandleError {
    /// A candle operation failed.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// Reading a checkpoint failed.
    #[error(transparent)]
    Read(#[from] safeckpt_reader::ReadError),
    /// Writing a checkpoint failed.
    #[error(transparent)]
    Write(#[from] safeckpt_writer::WriteError),
    /// A dtype has no counterpart on the other side.
    #[error("tensor `{tensor}`: {reason}")]
    Dtype {
        /// The tensor.
        tensor: String,
        /// What cannot be represented.
        reason: String,
    },
    /// A strict load found missing, unexpected or mismatched tensors; nothing was modified.
    #[error("{0}")]
    Load(Box<crate::state_dict::LoadReport>),
    /// Optimizer state does not fit the optimizer or its parameters.
    #[error("optimizer state: {0}")]
    OptimizerState(String),
    /// A checkpoint's metadata is missing or malformed.
    #[error("{}: {reason}", path.display())]
    Checkpoint {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Another process holds the run directory.
    #[error("{}: the run directory is locked by another process ({holder}); refusing to write into it", dir.display())]
    Locked {
        /// The run directory.
        dir: PathBuf,
        /// Who holds it (pid, host, start time) as written in the lock file.
        holder: String,
    },
    /// An I/O error outside the reader and writer.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A background save failed; reported on the next save or on `wait`.
    #[error("background save of step {step} failed: {reason}")]
    AsyncSave {
        /// The step being saved.
        step: u64,
        /// What went wrong.
        reason: String,
    },
}

impl CandleError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CandleError::Io { path: path.into(), source }
    }
}

/// Result alias for this crate.
pub type Result<T, E = CandleError> = std::result::Result<T, E>;

/// So that `?` works in code returning `candle_core::Result` (a model's `forward`, a training
/// loop): the error is carried whole (`candle_core::Error::Wrapped`), its message intact. A
/// candle error that safeckpt passed on is handed back as it was.
impl From<CandleError> for candle_core::Error {
    fn from(e: CandleError) -> Self {
        match e {
            CandleError::Candle(inner) => inner,
            other => candle_core::Error::wrap(other),
        }
    }
}

/// Storage errors: the object's URL as the path, the cause as the reason (not repeating the URL);
/// a held lease as [`CandleError::Locked`] on the run's prefix.
#[cfg(feature = "object-store")]
impl From<safeckpt_store::StoreError> for CandleError {
    fn from(e: safeckpt_store::StoreError) -> Self {
        use safeckpt_store::{LEASE_NAME, StoreError};
        if let StoreError::Locked { url, holder } = e {
            let dir = PathBuf::from(url.strip_suffix(LEASE_NAME).unwrap_or(&url).trim_end_matches('/'));
            return CandleError::Locked { dir, holder };
        }
        let path = match &e {
            StoreError::Url { url, .. }
            | StoreError::Object { url, .. }
            | StoreError::NotFound { url }
            | StoreError::Invalid { url, .. }
            | StoreError::Format { url, .. }
            | StoreError::LeaseLost { url, .. } => PathBuf::from(url),
            _ => PathBuf::new(),
        };
        let text = e.to_string();
        let reason = text.strip_prefix(&format!("{}: ", path.display())).map_or_else(|| text.clone(), str::to_string);
        CandleError::Checkpoint { path, reason }
    }
}
