//! Checksum verification.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::Advice;
use rayon::prelude::*;
use safeckpt_format::Integrity;
use safeckpt_format::integrity::{Checksummer, checksum_hex};

use crate::error::{ReadError, Result};
use crate::file::Reader;

/// Bytes hashed between progress reports.
const PROGRESS_CHUNK: usize = 8 << 20;

/// One integrity problem found by [`Reader::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IntegrityFailure {
    /// The tensor table or a metadata value differs from what was written.
    HeaderMismatch,
    /// A tensor's bytes differ from what was written.
    Tensor {
        /// The damaged tensor.
        name: String,
        /// Recorded checksum.
        expected: u64,
        /// Checksum of the bytes now in the file.
        actual: u64,
    },
    /// A tensor has no recorded checksum (the integrity record was damaged or edited).
    NoChecksum {
        /// The tensor.
        name: String,
    },
    /// The integrity record names a tensor the file does not have.
    UnknownEntry {
        /// The name in the record.
        name: String,
    },
    /// The mapped file was truncated after it was opened (by another process: safeckpt replaces
    /// files by rename and never truncates them); its tensors were not read, since touching the
    /// missing pages would fault.
    Truncated {
        /// Bytes mapped when the file was opened.
        mapped: u64,
        /// Bytes the file holds now.
        now: u64,
    },
}

impl std::fmt::Display for IntegrityFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IntegrityFailure::HeaderMismatch => {
                f.write_str("header checksum mismatch: the tensor table or metadata was altered")
            }
            IntegrityFailure::Tensor { name, expected, actual } => write!(
                f,
                "tensor `{name}`: checksum mismatch (recorded {}, found {})",
                checksum_hex(*expected),
                checksum_hex(*actual)
            ),
            IntegrityFailure::NoChecksum { name } => {
                write!(f, "tensor `{name}`: no checksum recorded")
            }
            IntegrityFailure::UnknownEntry { name } => {
                write!(f, "integrity record lists `{name}`, which is not in the file")
            }
            IntegrityFailure::Truncated { mapped, now } => write!(
                f,
                "the file was truncated while open ({mapped} bytes when opened, {now} now); reopen it to read what is left"
            ),
        }
    }
}

/// The outcome of verifying one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The file.
    pub path: PathBuf,
    /// Whether the file carries safeckpt integrity metadata (files from other writers do not;
    /// for them only the structure can be checked).
    pub has_checksums: bool,
    /// Tensors whose bytes were hashed.
    pub tensors_checked: usize,
    /// Bytes hashed.
    pub bytes_checked: u64,
    /// Everything that did not match.
    pub failures: Vec<IntegrityFailure>,
}

impl VerifyReport {
    /// Whether nothing failed.
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }
}

impl Reader {
    /// The file's integrity record, if it has one.
    pub fn integrity(&self) -> Result<Option<Integrity>> {
        Integrity::from_header(self.header())
            .map_err(|source| ReadError::Format { path: self.path().to_path_buf(), source })
    }

    /// Verifies every checksum, hashing tensors in parallel. The structure was already validated
    /// when the file was opened.
    pub fn verify(&self) -> Result<VerifyReport> {
        self.verify_with_progress(&|_| {})
    }

    /// [`Reader::verify`], calling `progress` with the number of bytes hashed since the last call.
    ///
    /// A mapped file that another process truncated since it was opened is reported as
    /// [`IntegrityFailure::Truncated`] without reading its tensors (reading a page past the end of
    /// a file would raise `SIGBUS`). Bytes rewritten in place show as checksum mismatches.
    pub fn verify_with_progress(&self, progress: &(dyn Fn(u64) + Sync)) -> Result<VerifyReport> {
        if let (true, Some(file)) = (self.is_mapped(), self.file()) {
            let now = file.metadata().map_err(|e| ReadError::io(self.path(), e))?.len();
            let mapped = self.bytes().len() as u64;
            if now < mapped {
                return Ok(VerifyReport {
                    path: self.path().to_path_buf(),
                    has_checksums: self.integrity().ok().flatten().is_some(),
                    tensors_checked: 0,
                    bytes_checked: 0,
                    failures: vec![IntegrityFailure::Truncated { mapped, now }],
                });
            }
        }
        let Some(integrity) = self.integrity()? else {
            return Ok(VerifyReport {
                path: self.path().to_path_buf(),
                has_checksums: false,
                tensors_checked: 0,
                bytes_checked: 0,
                failures: Vec::new(),
            });
        };
        let mut failures = Vec::new();
        if !integrity.header_matches(self.header()) {
            failures.push(IntegrityFailure::HeaderMismatch);
        }
        for name in integrity.tensors.keys() {
            if self.get(name).is_none() {
                failures.push(IntegrityFailure::UnknownEntry { name: name.clone() });
            }
        }
        self.advise(Advice::Sequential);
        let bytes = AtomicU64::new(0);
        // Largest first, so one big tensor does not start last and run alone.
        let mut views: Vec<_> = self.tensors().collect();
        views.sort_by_key(|v| std::cmp::Reverse(v.data().len()));
        let mut tensor_failures: Vec<(usize, IntegrityFailure)> = views
            .par_iter()
            .enumerate()
            .filter_map(|(i, v)| {
                let Some(&expected) = integrity.tensors.get(v.name()) else {
                    return Some((i, IntegrityFailure::NoChecksum { name: v.name().to_string() }));
                };
                let mut h = Checksummer::new();
                for chunk in v.data().chunks(PROGRESS_CHUNK) {
                    h.update(chunk);
                    progress(chunk.len() as u64);
                }
                bytes.fetch_add(v.data().len() as u64, Ordering::Relaxed);
                let actual = h.finish();
                (actual != expected)
                    .then(|| (i, IntegrityFailure::Tensor { name: v.name().to_string(), expected, actual }))
            })
            .collect();
        tensor_failures.sort_by_key(|(i, _)| *i);
        failures.extend(tensor_failures.into_iter().map(|(_, f)| f));
        Ok(VerifyReport {
            path: self.path().to_path_buf(),
            has_checksums: true,
            tensors_checked: views.len(),
            bytes_checked: bytes.into_inner(),
            failures,
        })
    }

    /// Verifies one tensor: `Some(true)` when it matches its checksum, `Some(false)` when not,
    /// `None` when the file records no checksum for it.
    pub fn verify_tensor(&self, name: &str) -> Result<Option<bool>> {
        let view = self.tensor(name)?;
        let Some(integrity) = self.integrity()? else {
            return Ok(None);
        };
        Ok(integrity.tensors.get(name).map(|&s| s == view.checksum()))
    }
}
