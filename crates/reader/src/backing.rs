//! Where a reader's bytes live: a memory map or an owned, 8-aligned buffer.

use std::fs::File;
use std::path::Path;

use memmap2::{Advice, Mmap, MmapOptions};

use crate::error::{ReadError, Result};

/// The bytes of one file.
pub(crate) enum Backing {
    Mmap(Mmap),
    /// Owned bytes in a `u64` buffer so that the start is 8-aligned like a map; `len` is the
    /// byte length.
    Owned {
        words: Vec<u64>,
        len: usize,
    },
}

impl Backing {
    /// Maps `file` read-only.
    ///
    /// # Safety
    /// The caller vouches that the file is not truncated or modified while the map lives
    /// (see [`crate::Reader::open`] for the policy safeckpt follows).
    pub(crate) unsafe fn map(file: &File, path: &Path, populate: bool) -> Result<Backing> {
        let mut opts = MmapOptions::new();
        if populate {
            opts.populate();
        }
        // SAFETY: forwarded from this function's contract.
        let map = unsafe { opts.map(file) }.map_err(|e| ReadError::io(path, e))?;
        Ok(Backing::Mmap(map))
    }

    pub(crate) fn owned(bytes: &[u8]) -> Backing {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        Backing::Owned { words, len: bytes.len() }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned { words, len } => &bytemuck::cast_slice::<u64, u8>(words)[..*len],
        }
    }

    pub(crate) fn is_mapped(&self) -> bool {
        matches!(self, Backing::Mmap(_))
    }

    /// Passes an access-pattern hint for a byte range to the kernel (mapped files only).
    pub(crate) fn advise(&self, advice: Advice, start: usize, len: usize) {
        if let Backing::Mmap(m) = self {
            if len == 0 || start >= m.len() {
                return;
            }
            let page = page_size();
            let aligned = start - start % page;
            let len = (len + (start - aligned)).min(m.len() - aligned);
            // Advice is only a hint; a failure changes nothing we rely on.
            let _ = m.advise_range(advice, aligned, len);
        }
    }
}

pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions and only reads system configuration.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 { v as usize } else { 4096 }
}
