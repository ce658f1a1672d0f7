//! Crash-safe replacement of a file: write a temporary file in the same directory, flush it to
//! stable storage, rename it over the target, then flush the directory entry.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Result, WriteError};

/// Marker in the names of temporary files, so leftovers from a crash can be recognised and
/// cleaned up: `.<target name>.safeckpt-tmp.<pid>.<n>`.
pub const TEMP_MARKER: &str = ".safeckpt-tmp.";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Whether `name` is one of our temporary files.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(TEMP_MARKER)
}

/// A temporary file that becomes `target` on [`AtomicFile::commit`] and disappears otherwise.
#[derive(Debug)]
pub struct AtomicFile {
    target: PathBuf,
    temp: PathBuf,
    file: Option<File>,
}

impl AtomicFile {
    /// Creates the temporary file next to `target`. Refuses when `target` exists and
    /// `overwrite` is false.
    pub fn create(target: &Path, overwrite: bool) -> Result<AtomicFile> {
        if !overwrite && target.exists() {
            return Err(WriteError::Exists { path: target.to_path_buf() });
        }
        let name = target
            .file_name()
            .ok_or_else(|| WriteError::Invalid(format!("{}: not a file path", target.display())))?
            .to_string_lossy();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp = target.with_file_name(format!(".{name}{TEMP_MARKER}{}.{n}", std::process::id()));
        // create_new: never follow or clobber something already there; the mode honours umask.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|e| WriteError::io(&temp, e))?;
        Ok(AtomicFile { target: target.to_path_buf(), temp, file: Some(file) })
    }

    /// The temporary file to write into.
    pub fn file(&self) -> &File {
        self.file.as_ref().expect("file present until commit")
    }

    /// The temporary file's path.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// The final path.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Makes the file durable (when `fsync`) and atomically moves it into place.
    ///
    /// Order: `fsync(file)`, `rename(temp, target)`, `fsync(directory)`. After a crash at any
    /// point the target is either the complete old file or the complete new one.
    pub fn commit(self, fsync: bool) -> Result<()> {
        if fsync {
            self.sync()?;
        }
        let dir = self.target.parent().map(Path::to_path_buf);
        let target = self.target.clone();
        self.rename()?;
        if fsync {
            sync_dir(dir.as_deref()).map_err(|e| WriteError::io(&target, e))?;
        }
        Ok(())
    }

    /// Flushes the temporary file's data and metadata to stable storage.
    pub fn sync(&self) -> Result<()> {
        self.file().sync_all().map_err(|e| WriteError::io(&self.temp, e))
    }

    /// Renames the temporary file over the target without any flush. Callers that need
    /// durability call [`AtomicFile::sync`] before and [`sync_dir`] after.
    pub fn rename(mut self) -> Result<()> {
        self.file.take();
        std::fs::rename(&self.temp, &self.target).map_err(|e| WriteError::io(&self.target, e))?;
        // Renamed: nothing left to clean up.
        self.temp = PathBuf::new();
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.temp.as_os_str().is_empty() {
            self.file.take();
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Flushes a directory's entries to stable storage (so a rename inside it survives power loss).
pub fn sync_dir(dir: Option<&Path>) -> io::Result<()> {
    let dir = match dir {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `target` atomically (temp file, fsync, rename, directory fsync).
pub fn write_atomic(target: &Path, bytes: &[u8], fsync: bool) -> Result<()> {
    use std::io::Write;
    let tmp = AtomicFile::create(target, true)?;
    let mut f = tmp.file();
    f.write_all(bytes).map_err(|e| WriteError::io(tmp.temp_path(), e))?;
    tmp.commit(fsync)
}

/// Removes our temporary files left in `dir` by crashed writers. Returns how many were removed.
/// Only call it when no other process may be writing into `dir`.
pub fn remove_leftovers(dir: &Path) -> io::Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if is_temp_name(&entry.file_name().to_string_lossy()) && entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
            n += 1;
        }
    }
    Ok(n)
}
