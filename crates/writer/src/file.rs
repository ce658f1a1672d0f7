//! Writing one file: the parallel writer and the streaming writer.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rayon::prelude::*;
use safeckpt_format::integrity::Checksummer;
use safeckpt_format::{Layout, Metadata, TensorSource, TensorSpec};

use crate::atomic::AtomicFile;
use crate::error::{Result, WriteError};
use crate::options::WriteOptions;

/// Bytes hashed and written per step: small enough that a chunk hashed is still in cache when
/// it is written, large enough that system calls are cheap.
pub(crate) const CHUNK: usize = 1 << 20;

/// Bytes per `pwrite` of a piece handed to [`TensorWriter::write`]. Larger writes make the
/// kernel fill the page cache with larger folios, whose first touch can cost far more on VMs
/// that return free memory to the host (measured on a Firecracker guest, 1 GiB to a new file:
/// 0.31-0.44 s of system time in writes of 256 KiB or less, 1.15-1.83 s in writes of 1-8 MiB,
/// depending on the state of the guest's memory); the extra system calls cost nothing visible.
const WRITE_STEP: usize = 256 << 10;

/// Pieces at least this long handed to [`TensorWriter::write`] are hashed on a second thread
/// while they are written, so checksums add no time to a streamed tensor.
const OVERLAP_MIN: usize = 2 << 20;

/// What a finished write produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteSummary {
    /// The file written.
    pub path: PathBuf,
    /// Tensors written.
    pub tensors: usize,
    /// Total file length.
    pub bytes: u64,
    /// Checksums in file order, when recorded.
    pub checksums: Option<Vec<u64>>,
}

fn fmt_err(path: &Path) -> impl Fn(safeckpt_format::FormatError) -> WriteError + '_ {
    move |source| WriteError::Format { path: path.to_path_buf(), source }
}

/// Plans a file, checking that every source's byte length agrees with its dtype and shape. `path`
/// names the file in errors. Writers to other media (object stores) use the plan to stream the
/// file in order.
pub fn plan_layout<S: TensorSource>(
    path: &Path,
    tensors: &[(impl AsRef<str>, S)],
    metadata: Option<Metadata>,
    opts: &WriteOptions,
) -> Result<Layout> {
    let specs: Vec<TensorSpec> =
        tensors.iter().map(|(n, s)| TensorSpec::new(n.as_ref(), s.dtype(), s.shape().to_vec())).collect();
    for (spec, (_, src)) in specs.iter().zip(tensors) {
        let expected = spec.byte_len().map_err(fmt_err(path))?;
        let actual = src.data_len();
        if expected != actual {
            return Err(WriteError::Format {
                path: path.to_path_buf(),
                source: safeckpt_format::FormatError::ByteLengthMismatch {
                    tensor: spec.name.clone(),
                    dtype: spec.dtype,
                    shape: spec.shape.clone(),
                    expected,
                    actual,
                },
            });
        }
    }
    Layout::plan(specs, metadata, &opts.layout()).map_err(fmt_err(path))
}

/// Hashes (when asked) and writes `data` at `offset`, chunk by chunk.
pub(crate) fn write_hashed(
    file: &std::fs::File,
    path: &Path,
    offset: u64,
    data: &[u8],
    hash: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<u64> {
    let mut h = Checksummer::new();
    let mut off = offset;
    for chunk in data.chunks(CHUNK) {
        if hash {
            h.update(chunk);
        }
        file.write_all_at(chunk, off).map_err(|e| WriteError::io(path, e))?;
        off += chunk.len() as u64;
        progress(chunk.len() as u64);
    }
    Ok(if hash { h.finish() } else { 0 })
}

/// Writes named tensors to `path` in one pass: data in parallel with positioned writes, each
/// tensor hashed while it is written, then the header with its checksums, then an atomic commit.
///
/// Tensors may be anything implementing [`TensorSource`]. Nothing is written when a tensor's
/// byte length disagrees with its dtype and shape or the set cannot form a valid file.
pub fn write_file<S: TensorSource>(
    path: impl AsRef<Path>,
    tensors: &[(impl AsRef<str> + Sync, S)],
    metadata: Option<Metadata>,
    opts: &WriteOptions,
) -> Result<WriteSummary> {
    write_file_with_progress(path, tensors, metadata, opts, &|_| {})
}

/// [`write_file`], calling `progress` with the number of bytes written since the last call.
pub fn write_file_with_progress<S: TensorSource>(
    path: impl AsRef<Path>,
    tensors: &[(impl AsRef<str> + Sync, S)],
    metadata: Option<Metadata>,
    opts: &WriteOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<WriteSummary> {
    let staged = stage(path.as_ref(), tensors, metadata, opts, progress)?;
    staged.tmp.commit(opts.fsync)?;
    Ok(staged.summary)
}

/// [`write_file`] up to, but not including, the commit: all data and the header are written to
/// the temporary file (so the sources may be released or modified), nothing is visible yet.
pub fn write_file_pending<S: TensorSource>(
    path: impl AsRef<Path>,
    tensors: &[(impl AsRef<str> + Sync, S)],
    metadata: Option<Metadata>,
    opts: &WriteOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<PendingFile> {
    stage(path.as_ref(), tensors, metadata, opts, progress)
}

/// A complete file still under its temporary name: nothing is visible at the target until
/// [`PendingFile::commit`] (or [`PendingFile::sync`] then [`PendingFile::rename`], to commit a
/// group of files together). Dropping it removes the temporary file.
#[derive(Debug)]
pub struct PendingFile {
    pub(crate) tmp: AtomicFile,
    pub(crate) summary: WriteSummary,
}

impl PendingFile {
    /// What was written.
    pub fn summary(&self) -> &WriteSummary {
        &self.summary
    }

    /// Flushes, renames into place and flushes the directory (when `fsync`).
    pub fn commit(self, fsync: bool) -> Result<WriteSummary> {
        self.tmp.commit(fsync)?;
        Ok(self.summary)
    }

    /// Flushes the file's data to stable storage.
    pub fn sync(&self) -> Result<()> {
        self.tmp.sync()
    }

    /// Renames into place with no flush (see [`crate::atomic::AtomicFile::rename`]).
    pub fn rename(self) -> Result<WriteSummary> {
        self.tmp.rename()?;
        Ok(self.summary)
    }

    /// Gives the file another final name in the same directory (a sharded set renamed to avoid
    /// the names of the set it replaces).
    pub(crate) fn set_target_name(&mut self, name: &str) {
        self.tmp.set_target_name(name);
        self.summary.path.set_file_name(name);
    }

    /// Whether the commit may replace an existing file.
    pub(crate) fn overwrite(&self) -> bool {
        self.tmp.overwrite()
    }
}

pub(crate) type Staged = PendingFile;

/// Writes everything into a temporary file next to `path`, without committing it.
pub(crate) fn stage<S: TensorSource>(
    path: &Path,
    tensors: &[(impl AsRef<str> + Sync, S)],
    metadata: Option<Metadata>,
    opts: &WriteOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Staged> {
    let layout = plan_layout(path, tensors, metadata, opts)?;
    let tmp = AtomicFile::create(path, opts.overwrite)?;
    let file = tmp.file();
    file.set_len(layout.total_len()).map_err(|e| WriteError::io(tmp.target(), e))?;
    let hash = layout.has_checksums();
    let sums: Vec<u64> = layout
        .tensors()
        .par_iter()
        .enumerate()
        .map(|(pos, planned)| {
            let (name, src) = &tensors[planned.input_index];
            let data = src.data();
            let expected = planned.info.byte_len();
            if data.len() != expected {
                return Err(WriteError::WrongLength {
                    path: path.to_path_buf(),
                    name: name.as_ref().to_string(),
                    expected,
                    actual: data.len(),
                });
            }
            write_hashed(file, tmp.target(), layout.file_range(pos).start, &data, hash, progress)
        })
        .collect::<Result<_>>()?;
    let header = layout.finished_header(&sums);
    file.write_all_at(&header, 0).map_err(|e| WriteError::io(tmp.target(), e))?;
    let summary = WriteSummary {
        path: path.to_path_buf(),
        tensors: layout.tensors().len(),
        bytes: layout.total_len(),
        checksums: hash.then_some(sums),
    };
    Ok(Staged { tmp, summary })
}

/// A file written tensor by tensor, in any order, from any thread: plan first from names,
/// dtypes and shapes, then hand over each tensor's bytes as they become available (whole, or in
/// pieces through [`StreamWriter::begin`]). Only one tensor needs to be in memory at a time.
///
/// Nothing is visible at the target path until [`StreamWriter::finish`] commits; dropping the
/// writer unfinished removes the temporary file.
#[derive(Debug)]
pub struct StreamWriter {
    path: PathBuf,
    layout: Layout,
    tmp: AtomicFile,
    sums: Vec<AtomicU64>,
    started: Vec<AtomicBool>,
    done: Vec<AtomicBool>,
    opts: WriteOptions,
    failed: Mutex<Option<String>>,
}

impl StreamWriter {
    /// Plans the file and creates its temporary file.
    pub fn create(
        path: impl AsRef<Path>,
        specs: Vec<TensorSpec>,
        metadata: Option<Metadata>,
        opts: &WriteOptions,
    ) -> Result<StreamWriter> {
        let path = path.as_ref();
        let layout = Layout::plan(specs, metadata, &opts.layout()).map_err(fmt_err(path))?;
        let tmp = AtomicFile::create(path, opts.overwrite)?;
        tmp.file().set_len(layout.total_len()).map_err(|e| WriteError::io(tmp.target(), e))?;
        let n = layout.tensors().len();
        Ok(StreamWriter {
            path: path.to_path_buf(),
            layout,
            tmp,
            sums: (0..n).map(|_| AtomicU64::new(0)).collect(),
            started: (0..n).map(|_| AtomicBool::new(false)).collect(),
            done: (0..n).map(|_| AtomicBool::new(false)).collect(),
            opts: opts.clone(),
            failed: Mutex::new(None),
        })
    }

    /// The plan.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The target path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn claim(&self, name: &str) -> Result<usize> {
        let pos = self
            .layout
            .position(name)
            .ok_or_else(|| WriteError::UnknownTensor { path: self.path.clone(), name: name.to_string() })?;
        if self.started[pos].swap(true, Ordering::AcqRel) {
            return Err(WriteError::WrittenTwice { path: self.path.clone(), name: name.to_string() });
        }
        Ok(pos)
    }

    /// Writes one whole tensor.
    pub fn write(&self, name: &str, data: &[u8]) -> Result<()> {
        let pos = self.claim(name)?;
        let expected = self.layout.tensors()[pos].info.byte_len();
        if data.len() != expected {
            return Err(self.fail(WriteError::WrongLength {
                path: self.path.clone(),
                name: name.to_string(),
                expected,
                actual: data.len(),
            }));
        }
        let start = self.layout.file_range(pos).start;
        let sum = write_hashed(self.tmp.file(), self.tmp.target(), start, data, self.layout.has_checksums(), &|_| {})
            .map_err(|e| self.fail(e))?;
        self.sums[pos].store(sum, Ordering::Release);
        self.done[pos].store(true, Ordering::Release);
        Ok(())
    }

    /// Starts writing one tensor in pieces.
    pub fn begin(&self, name: &str) -> Result<TensorWriter<'_>> {
        let pos = self.claim(name)?;
        let range = self.layout.file_range(pos);
        Ok(TensorWriter { parent: self, pos, next: range.start, end: range.end, hash: Checksummer::new() })
    }

    fn fail(&self, e: WriteError) -> WriteError {
        let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert_with(|| e.to_string());
        e
    }

    /// Writes the header and commits the file. Fails (and removes the temporary file) if any
    /// tensor was not written completely.
    pub fn finish(self) -> Result<WriteSummary> {
        let fsync = self.opts.fsync;
        self.finish_pending()?.commit(fsync)
    }

    /// Writes the header but leaves the file under its temporary name, to be committed together
    /// with others (a sharded set).
    pub fn finish_pending(self) -> Result<PendingFile> {
        if let Some(msg) = self.failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(WriteError::Invalid(format!("{}: an earlier write failed: {msg}", self.path.display())));
        }
        let missing: Vec<usize> = (0..self.done.len()).filter(|&i| !self.done[i].load(Ordering::Acquire)).collect();
        if let Some(&first) = missing.first() {
            return Err(WriteError::Incomplete {
                path: self.path.clone(),
                missing: missing.len(),
                example: self.layout.tensors()[first].info.name.clone(),
            });
        }
        let sums: Vec<u64> = self.sums.iter().map(|s| s.load(Ordering::Acquire)).collect();
        let header = self.layout.finished_header(&sums);
        self.tmp.file().write_all_at(&header, 0).map_err(|e| WriteError::io(self.tmp.target(), e))?;
        let summary = WriteSummary {
            path: self.path,
            tensors: self.layout.tensors().len(),
            bytes: self.layout.total_len(),
            checksums: self.layout.has_checksums().then_some(sums),
        };
        Ok(PendingFile { tmp: self.tmp, summary })
    }
}

/// One tensor being written in pieces; see [`StreamWriter::begin`].
#[derive(Debug)]
pub struct TensorWriter<'w> {
    parent: &'w StreamWriter,
    pos: usize,
    next: u64,
    end: u64,
    hash: Checksummer,
}

impl TensorWriter<'_> {
    /// Appends the next piece of the tensor's bytes. A large piece (2 MiB or more) is hashed on
    /// another thread of the rayon pool while this one writes it: hand over large pieces from one
    /// thread rather than small ones from several, as concurrent writes to one file queue on its
    /// inode lock anyway.
    pub fn write(&mut self, piece: &[u8]) -> Result<()> {
        let p = self.parent;
        if self.next + piece.len() as u64 > self.end {
            let t = &p.layout.tensors()[self.pos].info;
            return Err(p.fail(WriteError::WrongLength {
                path: p.path.clone(),
                name: t.name.clone(),
                expected: t.byte_len(),
                actual: (self.next - p.layout.file_range(self.pos).start) as usize + piece.len(),
            }));
        }
        let file = p.tmp.file();
        let start = self.next;
        let write = |data: &[u8], at: u64| -> std::io::Result<()> {
            let mut at = at;
            for step in data.chunks(WRITE_STEP) {
                file.write_all_at(step, at)?;
                at += step.len() as u64;
            }
            Ok(())
        };
        let written = if !p.layout.has_checksums() {
            write(piece, start)
        } else if piece.len() >= OVERLAP_MIN {
            // Written on this thread while another hashes the same bytes.
            let hash = &mut self.hash;
            rayon::join(|| write(piece, start), || hash.update(piece)).0
        } else {
            // Each step hashed just before it is written, while it is in cache.
            let mut at = start;
            piece.chunks(WRITE_STEP).try_for_each(|step| {
                self.hash.update(step);
                write(step, at)?;
                at += step.len() as u64;
                Ok(())
            })
        };
        written.map_err(|e| p.fail(WriteError::io(p.tmp.target(), e)))?;
        self.next += piece.len() as u64;
        Ok(())
    }

    /// Completes the tensor; fails if fewer bytes than planned were written.
    pub fn finish(self) -> Result<()> {
        let p = self.parent;
        if self.next != self.end {
            let t = &p.layout.tensors()[self.pos].info;
            return Err(p.fail(WriteError::WrongLength {
                path: p.path.clone(),
                name: t.name.clone(),
                expected: t.byte_len(),
                actual: (self.next - p.layout.file_range(self.pos).start) as usize,
            }));
        }
        let sum = if p.layout.has_checksums() { self.hash.finish() } else { 0 };
        p.sums[self.pos].store(sum, Ordering::Release);
        p.done[self.pos].store(true, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use safeckpt_format::{Dtype, RawTensor};

    use super::*;

    /// Pieces large enough to be hashed on a second thread, pieces spanning several `pwrite`
    /// steps and small ones, with and without checksums: the file is the parallel writer's.
    #[test]
    fn large_pieces_hashed_alongside_their_write() {
        let big: Vec<u8> = (0..OVERLAP_MIN * 2 + WRITE_STEP + 13).map(|i| (i * 31 % 251) as u8).collect();
        let small: Vec<u8> = (0..WRITE_STEP * 3 + 5).map(|i| (i * 17 % 253) as u8).collect();
        let tensors = [
            ("big", RawTensor::borrowed(Dtype::U8, [big.len()], &big)),
            ("small", RawTensor::borrowed(Dtype::U8, [small.len()], &small)),
        ];
        let specs: Vec<TensorSpec> =
            tensors.iter().map(|(n, t)| TensorSpec::new(*n, t.dtype(), t.shape().to_vec())).collect();
        for checksums in [true, false] {
            let opts = WriteOptions::new().fsync(false).checksums(checksums);
            let dir = tempfile::tempdir().unwrap();
            let (a, b) = (dir.path().join("a.safetensors"), dir.path().join("b.safetensors"));
            write_file(&a, &tensors, None, &opts).unwrap();
            let w = StreamWriter::create(&b, specs.clone(), None, &opts).unwrap();
            let mut tw = w.begin("big").unwrap();
            let (first, rest) = big.split_at(OVERLAP_MIN + 7);
            tw.write(first).unwrap();
            for piece in rest.chunks(OVERLAP_MIN - 1) {
                tw.write(piece).unwrap();
            }
            tw.finish().unwrap();
            let mut tw = w.begin("small").unwrap();
            for piece in small.chunks(WRITE_STEP + 3) {
                tw.write(piece).unwrap();
            }
            tw.finish().unwrap();
            let summary = w.finish().unwrap();
            assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
            assert_eq!(summary.checksums.is_some(), checksums);
        }
    }
}
