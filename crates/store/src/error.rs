//! Errors of the storage layer. Every one names the URL or path concerned.

use safeckpt_format::FormatError;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A location that cannot be used (unknown scheme, malformed URL, missing bucket, …).
    #[error("{url}: {reason}")]
    Url {
        /// The location as given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The object store failed (after its retries).
    #[error("{url}: {source}")]
    Object {
        /// The object.
        url: String,
        /// The cause.
        #[source]
        source: object_store::Error,
    },
    /// The object does not exist.
    #[error("{url}: no such object")]
    NotFound {
        /// The object.
        url: String,
    },
    /// The object exists and overwriting was not allowed.
    #[error("{url}: already exists (`WriteOptions::overwrite(true)` replaces it)")]
    Exists {
        /// The object.
        url: String,
    },
    /// The bytes are not a valid file of ours.
    #[error("{url}: {source}")]
    Format {
        /// The object.
        url: String,
        /// What is wrong.
        #[source]
        source: FormatError,
    },
    /// A shard set or a save that does not fit together.
    #[error("{url}: {reason}")]
    Invalid {
        /// The object or prefix.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// Another writer holds the prefix's lease.
    #[error(
        "{url}: the prefix is held by {holder}, which is still renewing its lease; stop it first, or use another prefix"
    )]
    Locked {
        /// The lease object.
        url: String,
        /// Who holds it, as it describes itself.
        holder: String,
    },
    /// This writer's lease can no longer be trusted, so it must not commit.
    #[error("{url}: this writer's lease is lost ({reason}); nothing more is committed")]
    LeaseLost {
        /// The lease object.
        url: String,
        /// Why.
        reason: String,
    },
    /// A local read.
    #[error(transparent)]
    Read(#[from] safeckpt_reader::ReadError),
    /// A local write or a plan that cannot be written.
    #[error(transparent)]
    Write(#[from] safeckpt_writer::WriteError),
    /// A local file operation.
    #[error("{}: {source}", path.display())]
    Io {
        /// The local file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    pub(crate) fn object(url: impl Into<String>, source: object_store::Error) -> Self {
        let url = url.into();
        match source {
            object_store::Error::NotFound { .. } => StoreError::NotFound { url },
            source => StoreError::Object { url, source },
        }
    }

    pub(crate) fn invalid(url: impl Into<String>, reason: impl Into<String>) -> Self {
        StoreError::Invalid { url: url.into(), reason: reason.into() }
    }

    /// Whether the object was missing.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }

    /// Whether the input was at fault (malformed, inconsistent, missing) rather than the
    /// machine or the network.
    pub fn is_bad_input(&self) -> bool {
        match self {
            StoreError::Url { .. }
            | StoreError::NotFound { .. }
            | StoreError::Format { .. }
            | StoreError::Invalid { .. }
            | StoreError::Exists { .. } => true,
            StoreError::Read(e) => !matches!(e, safeckpt_reader::ReadError::Io { .. }),
            _ => false,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
