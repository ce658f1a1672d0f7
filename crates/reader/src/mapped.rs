//! A read-only memory map of any file, for the other safeckpt crates (which have no `unsafe`).

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::backing::Backing;
use crate::error::{ReadError, Result};

/// A whole file's bytes, memory-mapped (or read, for files too small to map).
///
/// The mapping follows the same policy as [`crate::Reader::open`]: files written by safeckpt are
/// replaced by rename, never modified in place; a foreign process truncating the file while it is
/// mapped can make reads fault.
pub struct MappedFile {
    path: PathBuf,
    backing: Backing,
}

impl std::fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedFile").field("path", &self.path).field("len", &self.bytes().len()).finish()
    }
}

impl MappedFile {
    /// Maps `path` read-only.
    ///
    /// Anything but a regular file (a directory, a device, a FIFO) is refused before it is
    /// opened (see [`crate::Reader::require_regular_file`]).
    pub fn open(path: impl AsRef<Path>) -> Result<MappedFile> {
        let path = path.as_ref();
        crate::Reader::require_regular_file(path)?;
        let file = File::open(path).map_err(|e| ReadError::io(path, e))?;
        let meta = file.metadata().map_err(|e| ReadError::io(path, e))?;
        crate::file::check_regular(path, &meta)?;
        let len = meta.len();
        let backing = if len == 0 {
            Backing::owned(&[])
        } else {
            // SAFETY: the policy documented on this type and on `Reader::open`.
            unsafe { Backing::map(&file, path, false) }?
        };
        Ok(MappedFile { path: path.to_path_buf(), backing })
    }

    /// Wraps bytes already in memory.
    pub fn from_bytes(bytes: &[u8], name: impl Into<PathBuf>) -> MappedFile {
        MappedFile { path: name.into(), backing: Backing::owned(bytes) }
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.backing.bytes()
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hints that `range` will be read soon, once, in order.
    pub fn will_read(&self, start: usize, len: usize) {
        self.backing.advise(memmap2::Advice::Sequential, start, len);
        self.backing.advise(memmap2::Advice::WillNeed, start, len);
    }
}
