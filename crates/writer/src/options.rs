//! Writer options.

use safeckpt_format::LayoutOptions;

/// Options for every writer, builder-style.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOptions {
    pub(crate) checksums: bool,
    pub(crate) fsync: bool,
    pub(crate) overwrite: bool,
    pub(crate) data_alignment: usize,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions { checksums: true, fsync: true, overwrite: true, data_alignment: 8 }
    }
}

impl WriteOptions {
    /// Defaults: checksums on, fsync on, overwrite allowed, 8-byte data alignment.
    pub fn new() -> Self {
        Self::default()
    }

    /// Record per-tensor and header checksums (default on). With checksums off and at most one
    /// metadata key, files are byte-identical to the `safetensors` crate's.
    pub fn checksums(mut self, yes: bool) -> Self {
        self.checksums = yes;
        self
    }

    /// Flush the file and its directory entry to stable storage before returning (default on).
    /// Turning it off keeps the atomic rename but not durability across power loss.
    pub fn fsync(mut self, yes: bool) -> Self {
        self.fsync = yes;
        self
    }

    /// Replace an existing file (default on; the CLI turns it off unless `--force`).
    pub fn overwrite(mut self, yes: bool) -> Self {
        self.overwrite = yes;
        self
    }

    /// Start the data section at a multiple of `bytes` (power of two ≥ 8; default 8).
    pub fn data_alignment(mut self, bytes: usize) -> Self {
        self.data_alignment = bytes;
        self
    }

    /// Whether checksums are recorded.
    pub fn has_checksums(&self) -> bool {
        self.checksums
    }

    /// Whether an existing target may be replaced.
    pub fn has_overwrite(&self) -> bool {
        self.overwrite
    }

    /// Whether fsync is on.
    pub fn has_fsync(&self) -> bool {
        self.fsync
    }

    /// The layout these options ask for (checksums, data alignment).
    pub fn layout(&self) -> LayoutOptions {
        LayoutOptions { checksums: self.checksums, data_alignment: self.data_alignment }
    }
}
