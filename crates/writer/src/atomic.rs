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

/// The process id in the name of one of our temporary files (`.<name>.safeckpt-tmp.<pid>.<n>`),
/// or `None` when `name` does not follow that pattern exactly.
pub fn temp_owner(name: &str) -> Option<u32> {
    if !name.starts_with('.') {
        return None;
    }
    let at = name.rfind(TEMP_MARKER)?;
    let (pid, n) = name[at + TEMP_MARKER.len()..].split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(n) {
        return None;
    }
    pid.parse().ok()
}

/// Whether a process with this id exists (as far as this process can tell). Ids that cannot be
/// a process (0, or beyond `i32`) count as alive, so that nothing is removed on their account.
pub fn process_alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) else { return true };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        // EPERM: it exists but belongs to someone else.
        Err(e) => e != rustix::io::Errno::SRCH,
    }
}

/// Removes the temporary files in `dir` left by writers that no longer run: regular files (never
/// symbolic links) whose name follows the temporary pattern exactly and whose process id belongs
/// to no live process. Temporary files of live processes, this one included, are kept. Returns
/// how many were removed.
///
/// Writers call this (ignoring errors) whenever they create a file in a directory, so the debris
/// of killed writers does not pile up. Process ids are only meaningful within one pid namespace:
/// a directory shared by writers in different containers needs one writer per directory (which
/// safeckpt asks for anyway).
pub fn remove_stale_temps(dir: &Path) -> io::Result<usize> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let me = std::process::id();
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(temp_owner) else { continue };
        if pid == me || process_alive(pid) {
            continue;
        }
        // The entry's own type (lstat): a symbolic link is never followed nor removed.
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => n += 1,
            // Removed meanwhile by another writer's clean-up.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A temporary file that becomes `target` on [`AtomicFile::commit`] and disappears otherwise.
#[derive(Debug)]
pub struct AtomicFile {
    target: PathBuf,
    temp: PathBuf,
    file: Option<File>,
    overwrite: bool,
}

impl AtomicFile {
    /// Creates the temporary file next to `target`. Refuses when `target` exists and
    /// `overwrite` is false (checked again, atomically, by the rename of the commit).
    ///
    /// Temporary files that killed writers left in the directory are removed first (see
    /// [`remove_stale_temps`]).
    pub fn create(target: &Path, overwrite: bool) -> Result<AtomicFile> {
        if !overwrite && target.exists() {
            return Err(WriteError::Exists { path: target.to_path_buf() });
        }
        let name = target
            .file_name()
            .ok_or_else(|| WriteError::Invalid(format!("{}: not a file path", target.display())))?
            .to_string_lossy();
        if let Some(dir) = target.parent() {
            // Best effort: a directory that cannot be listed fails below with a better error.
            let _ = remove_stale_temps(dir);
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp = target.with_file_name(format!(".{name}{TEMP_MARKER}{}.{n}", std::process::id()));
        // create_new: never follow or clobber something already there; the mode honours umask.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|e| WriteError::io(target, e))?;
        Ok(AtomicFile { target: target.to_path_buf(), temp, file: Some(file), overwrite })
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

    /// Whether the commit may replace an existing target.
    pub fn overwrite(&self) -> bool {
        self.overwrite
    }

    /// Changes the final name (in the same directory: the temporary file does not move).
    pub(crate) fn set_target_name(&mut self, name: &str) {
        self.target.set_file_name(name);
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
        self.file().sync_all().map_err(|e| WriteError::io(&self.target, e))
    }

    /// Renames the temporary file over the target without any flush. Callers that need
    /// durability call [`AtomicFile::sync`] before and [`sync_dir`] after.
    ///
    /// Without `overwrite`, the rename itself refuses an existing target (`renameat2` with
    /// `RENAME_NOREPLACE`, or `link` then `unlink` where the file system lacks the flag), so a
    /// file that appeared after [`AtomicFile::create`] checked is never replaced.
    pub fn rename(mut self) -> Result<()> {
        self.file.take();
        if self.overwrite {
            std::fs::rename(&self.temp, &self.target).map_err(|e| WriteError::io(&self.target, e))?;
        } else {
            match rename_noreplace(&self.temp, &self.target) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(WriteError::Exists { path: self.target.clone() });
                }
                Err(e) => return Err(WriteError::io(&self.target, e)),
            }
        }
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

/// Renames `from` to `to` unless `to` exists (then fails with `AlreadyExists`), atomically:
/// `renameat2(RENAME_NOREPLACE)`, falling back to [`link_noreplace`] where the kernel or the file
/// system does not support the flag.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        use rustix::io::Errno;
        match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(()),
            // The flag is unknown to this kernel or file system.
            Err(e) if e == Errno::INVAL || e == Errno::NOSYS || e == Errno::OPNOTSUPP => {}
            Err(e) => return Err(e.into()),
        }
    }
    link_noreplace(from, to)
}

/// Swaps two directory entries atomically (`renameat2(RENAME_EXCHANGE)`). `Ok(false)` where the
/// kernel or the file system cannot; the caller then needs another way (e.g. renaming aside).
pub fn rename_exchange(a: &Path, b: &Path) -> io::Result<bool> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        use rustix::io::Errno;
        match renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE) {
            Ok(()) => Ok(true),
            Err(e) if e == Errno::INVAL || e == Errno::NOSYS || e == Errno::OPNOTSUPP => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (a, b);
        Ok(false)
    }
}

/// The portable no-replace rename: `link(from, to)` (which fails when `to` exists) then
/// `unlink(from)`. On file systems without hard links it degrades to a check followed by a rename,
/// which is not atomic against a concurrent creator.
pub fn link_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::hard_link(from, to) {
        Ok(()) => {
            // The target is in place; a temporary name that cannot be removed is only debris.
            let _ = std::fs::remove_file(from);
            Ok(())
        }
        Err(e) if matches!(e.kind(), io::ErrorKind::Unsupported | io::ErrorKind::PermissionDenied) => {
            if std::fs::symlink_metadata(to).is_ok() {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "target exists"));
            }
            std::fs::rename(from, to)
        }
        Err(e) => Err(e),
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
    write_atomic_with(target, bytes, fsync, true)
}

/// [`write_atomic`], refusing to replace an existing `target` unless `overwrite`.
pub fn write_atomic_with(target: &Path, bytes: &[u8], fsync: bool, overwrite: bool) -> Result<()> {
    use std::io::Write;
    let tmp = AtomicFile::create(target, overwrite)?;
    let mut f = tmp.file();
    f.write_all(bytes).map_err(|e| WriteError::io(tmp.target(), e))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_carry_their_owner() {
        assert_eq!(temp_owner(".ckpt.safetensors.safeckpt-tmp.123.0"), Some(123));
        assert_eq!(temp_owner(".a.safeckpt-tmp.b.safeckpt-tmp.77.12"), Some(77));
        for other in [
            "ckpt.safetensors.safeckpt-tmp.123.0",
            ".ckpt.safeckpt-tmp.123",
            ".ckpt.safeckpt-tmp.12x.0",
            ".ckpt.safeckpt-tmp.123.0.bak",
            ".ckpt.safeckpt-tmp..0",
            ".ckpt.tmp",
        ] {
            assert_eq!(temp_owner(other), None, "{other}");
        }
    }

    #[test]
    fn the_link_fallback_refuses_an_existing_target() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"new").unwrap();
        std::fs::write(&b, b"old").unwrap();
        let e = link_noreplace(&a, &b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&b).unwrap(), b"old");
        std::fs::remove_file(&b).unwrap();
        link_noreplace(&a, &b).unwrap();
        assert_eq!(std::fs::read(&b).unwrap(), b"new");
        assert!(!a.exists());
    }

    #[test]
    fn no_replace_rename_refuses_an_existing_target() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"new").unwrap();
        std::fs::write(&b, b"old").unwrap();
        assert_eq!(rename_noreplace(&a, &b).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&b).unwrap(), b"old");
        assert!(a.exists());
    }
}
