//! A single safetensors file.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Advice;
use safeckpt_format::{Header, LEN_PREFIX, Metadata, read_header_len};

use crate::backing::Backing;
use crate::error::{ReadError, Result};
use crate::view::TensorView;

/// Options for opening a file.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    populate: bool,
    advice: Option<Advice>,
}

impl ReadOptions {
    /// Default options: map lazily, no access hint.
    pub fn new() -> Self {
        Self::default()
    }

    /// Pre-fault the whole map at open (`MAP_POPULATE`): opening then costs time proportional to
    /// the file, and reading later costs no page faults.
    pub fn populate(mut self, yes: bool) -> Self {
        self.populate = yes;
        self
    }

    /// An access-pattern hint for the whole data section (e.g. `Advice::Sequential` before
    /// reading everything once, `Advice::Random` for sparse lookups).
    pub fn advice(mut self, advice: Advice) -> Self {
        self.advice = Some(advice);
        self
    }
}

/// An open safetensors file: the validated header and the file's bytes (usually a memory map).
///
/// Opening reads and validates only the header; tensor bytes are paged in when touched.
pub struct Reader {
    path: PathBuf,
    file: Option<File>,
    backing: Backing,
    header: Header,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("path", &self.path)
            .field("tensors", &self.header.len())
            .field("mapped", &self.backing.is_mapped())
            .finish()
    }
}

/// Refuses metadata that is not a regular file's (see [`Reader::require_regular_file`]).
pub(crate) fn check_regular(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    if meta.is_file() {
        return Ok(());
    }
    let (kind, what) = if meta.is_dir() {
        (std::io::ErrorKind::IsADirectory, "is a directory, not a safetensors file")
    } else {
        (std::io::ErrorKind::InvalidInput, "not a regular file (a device, FIFO or directory)")
    };
    Err(ReadError::io(path, std::io::Error::new(kind, what)))
}

impl Reader {
    /// Opens and memory-maps a file, validating its header.
    ///
    /// A memory map is only sound while nobody truncates or rewrites the file. safeckpt's
    /// writers never modify a file in place (they write a temporary file and rename it over the
    /// target), so a map of a file they wrote stays valid even while a newer version is being
    /// saved. A *foreign* process that truncates the file under the map can still make reads of
    /// the lost pages fault (`SIGBUS`), as with every memory-mapped loader; [`Reader::verify`]
    /// checks the file's length first and reports such a truncation instead of reading. If that
    /// is a concern, use [`Reader::open_read`], which copies the file into memory.
    pub fn open(path: impl AsRef<Path>) -> Result<Reader> {
        Self::open_with(path, &ReadOptions::default())
    }

    /// [`Reader::open`] with options.
    pub fn open_with(path: impl AsRef<Path>, opts: &ReadOptions) -> Result<Reader> {
        // SAFETY: the policy documented on `Reader::open`: files are replaced, not rewritten,
        // by our writers; the residual risk (a foreign in-place truncation) is documented there.
        unsafe { Self::open_mmap(path, opts) }
    }

    /// Opens a file by memory map.
    ///
    /// # Safety
    /// The caller vouches that no process truncates or modifies the file while the returned
    /// reader (or any view borrowed from it) lives.
    pub unsafe fn open_mmap(path: impl AsRef<Path>, opts: &ReadOptions) -> Result<Reader> {
        let path = path.as_ref();
        // Before opening: opening a FIFO blocks, and a device has no length to trust.
        Self::require_regular_file(path)?;
        let file = File::open(path).map_err(|e| ReadError::io(path, e))?;
        let meta = file.metadata().map_err(|e| ReadError::io(path, e))?;
        // Again on what was opened, in case the name was replaced in between.
        check_regular(path, &meta)?;
        let len = meta.len();
        if len < LEN_PREFIX as u64 {
            // Too short to map meaningfully; read it so the format error is the one reported.
            let bytes = std::fs::read(path).map_err(|e| ReadError::io(path, e))?;
            return Self::from_backing(path.to_path_buf(), None, Backing::owned(&bytes));
        }
        // SAFETY: forwarded from this function's contract.
        let backing = unsafe { Backing::map(&file, path, opts.populate) }?;
        let reader = Self::from_backing(path.to_path_buf(), Some(file), backing)?;
        if let Some(advice) = opts.advice {
            let h = &reader.header;
            reader.backing.advise(advice, h.data_start(), h.data_len());
        }
        Ok(reader)
    }

    /// Reads a whole file into memory (no map), validating its header.
    pub fn open_read(path: impl AsRef<Path>) -> Result<Reader> {
        let path = path.as_ref();
        Self::require_regular_file(path)?;
        let bytes = std::fs::read(path).map_err(|e| ReadError::io(path, e))?;
        Self::from_backing(path.to_path_buf(), None, Backing::owned(&bytes))
    }

    /// Checks, without opening it, that `path` (symbolic links followed) is a regular file, and
    /// returns its metadata. A device such as `/dev/zero` would be read until memory runs out and
    /// opening a FIFO blocks, so every open path of this crate checks first; other readers of
    /// checkpoint files (the PyTorch importer, the CLI) use the same check.
    ///
    /// Errors name the path: "is a directory, not a safetensors file" for a directory, "not a
    /// regular file (a device, FIFO or directory)" for anything else that is not a file.
    pub fn require_regular_file(path: &Path) -> Result<std::fs::Metadata> {
        let meta = std::fs::metadata(path).map_err(|e| ReadError::io(path, e))?;
        check_regular(path, &meta)?;
        Ok(meta)
    }

    /// A reader over bytes already in memory (copied into an aligned buffer). `name` is used in
    /// error messages in place of a path.
    pub fn from_bytes(bytes: &[u8], name: impl Into<PathBuf>) -> Result<Reader> {
        Self::from_backing(name.into(), None, Backing::owned(bytes))
    }

    fn from_backing(path: PathBuf, file: Option<File>, backing: Backing) -> Result<Reader> {
        let bytes = backing.bytes();
        let fmt = |source| ReadError::Format { path: path.clone(), source };
        let n = read_header_len(bytes, bytes.len() as u64).map_err(fmt)?;
        let json = &bytes[LEN_PREFIX..LEN_PREFIX + n];
        let header = Header::parse_json(json).map_err(fmt)?;
        header.check_file_len(bytes.len() as u64).map_err(fmt)?;
        Ok(Reader { path, file, backing, header })
    }

    /// The file's path (or the name given to [`Reader::from_bytes`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The `__metadata__` map.
    pub fn metadata(&self) -> Option<&Metadata> {
        self.header.metadata()
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.header.len()
    }

    /// Whether the file holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.header.is_empty()
    }

    /// Whether the bytes are memory-mapped (rather than copied into memory).
    pub fn is_mapped(&self) -> bool {
        self.backing.is_mapped()
    }

    /// The open file, when the reader was opened from a path with a map.
    pub fn file(&self) -> Option<&File> {
        self.file.as_ref()
    }

    /// The whole file's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.backing.bytes()
    }

    /// The data section's bytes.
    pub fn data_section(&self) -> &[u8] {
        &self.bytes()[self.header.data_start()..]
    }

    fn view_at(&self, pos: usize) -> TensorView<'_> {
        let info = &self.header.tensors()[pos];
        let (b, e) = info.data_offsets;
        TensorView::new(info, &self.data_section()[b..e])
    }

    /// The tensor called `name`, if present.
    pub fn get(&self, name: &str) -> Option<TensorView<'_>> {
        self.header.position(name).map(|p| self.view_at(p))
    }

    /// The tensor called `name`, or an error naming the file and the tensor.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        self.get(name).ok_or_else(|| ReadError::TensorNotFound { path: self.path.clone(), name: name.to_string() })
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> impl ExactSizeIterator<Item = TensorView<'_>> + '_ {
        (0..self.header.len()).map(|p| self.view_at(p))
    }

    /// Tensor names in bytewise order.
    pub fn names(&self) -> Vec<&str> {
        self.header.by_name().into_iter().map(|t| t.name.as_str()).collect()
    }

    /// Hints the kernel about how the whole data section will be read.
    pub fn advise(&self, advice: Advice) {
        self.backing.advise(advice, self.header.data_start(), self.header.data_len());
    }

    /// Asks the kernel to start reading these tensors' pages in the background
    /// (`MADV_WILLNEED`), so a later access does not wait on the disk.
    pub fn prefetch<'n>(&self, names: impl IntoIterator<Item = &'n str>) -> Result<()> {
        for name in names {
            let t = self.tensor(name)?;
            let (b, e) = t.info().data_offsets;
            self.backing.advise(Advice::WillNeed, self.header.data_start() + b, e - b);
        }
        Ok(())
    }
}

#[cfg(test)]
mod special_file_tests {
    use super::*;
    use crate::MappedFile;

    fn refused(e: ReadError, path: &str) {
        let msg = e.to_string();
        assert!(msg.starts_with(path), "{msg}");
        assert!(msg.ends_with("not a regular file (a device, FIFO or directory)"), "{msg}");
    }

    #[test]
    fn devices_and_fifos_are_refused_before_they_are_read() {
        refused(Reader::open("/dev/zero").unwrap_err(), "/dev/zero");
        refused(Reader::open_read("/dev/zero").unwrap_err(), "/dev/zero");
        refused(MappedFile::open("/dev/zero").unwrap_err(), "/dev/zero");
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe.safetensors");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let name = fifo.to_str().unwrap();
        // Opening a FIFO for reading would block until a writer appears: these return at once.
        refused(Reader::open(&fifo).unwrap_err(), name);
        refused(Reader::open_read(&fifo).unwrap_err(), name);
        refused(MappedFile::open(&fifo).unwrap_err(), name);
        refused(Reader::require_regular_file(&fifo).unwrap_err(), name);
        // A link to a device is followed, and refused too.
        let link = dir.path().join("link.safetensors");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        refused(Reader::open(&link).unwrap_err(), link.to_str().unwrap());
        // A directory keeps its own message.
        let e = Reader::open(dir.path()).unwrap_err().to_string();
        assert!(e.ends_with("is a directory, not a safetensors file"), "{e}");
        assert!(Reader::require_regular_file(dir.path()).is_err());
    }
}
