//! Writing to an object store. A file is streamed in order (header, then every tensor) through a
//! multipart upload with a bounded number of parts in flight, so memory stays at about
//! `part_size * (concurrency + 1)` whatever the file's size. The object appears only when the
//! upload completes: a failed upload is aborted and a killed one never becomes visible, and the
//! previous object under the same key stays as it was until then.

use std::borrow::Cow;
use std::path::Path;

use bytes::Bytes;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use rayon::prelude::*;
use safeckpt_format::integrity::checksum;
use safeckpt_format::{Metadata, TensorSource};
use safeckpt_writer::{WriteOptions, plan_layout};

use crate::block_on;
use crate::error::{Result, StoreError};
use crate::location::ObjectLocation;

/// What an upload wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadSummary {
    /// The object.
    pub url: String,
    /// Tensors in it.
    pub tensors: usize,
    /// Its size.
    pub bytes: u64,
    /// Each tensor's checksum, in file order, when checksums were on.
    pub checksums: Option<Vec<u64>>,
}

/// Writes tensors as one safetensors object (the same bytes [`safeckpt_writer::write_file`]
/// writes). With `opts` not allowing overwrite, an existing object is an error.
pub fn upload_tensors<S: TensorSource>(
    loc: &ObjectLocation,
    tensors: &[(impl AsRef<str> + Sync, S)],
    metadata: Option<Metadata>,
    opts: &WriteOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<UploadSummary> {
    let url = loc.url();
    let layout = plan_layout(Path::new(&url), tensors, metadata, opts)?;
    check_overwrite(loc, opts)?;
    // The header, which holds the checksums, comes first in the file: hash first (in parallel),
    // then stream everything in order.
    let sums: Vec<u64> = if layout.has_checksums() {
        layout.tensors().par_iter().map(|p| checksum(&tensors[p.input_index].1.data())).collect()
    } else {
        vec![0; layout.tensors().len()]
    };
    let header = layout.finished_header(&sums);
    let mut pieces: Vec<Cow<'_, [u8]>> = Vec::with_capacity(2 * layout.tensors().len() + 1);
    pieces.push(Cow::Owned(header));
    let mut at = layout.data_start() as u64;
    for (pos, planned) in layout.tensors().iter().enumerate() {
        let range = layout.file_range(pos);
        if range.start > at {
            pieces.push(Cow::Owned(vec![0; (range.start - at) as usize]));
        }
        let data = tensors[planned.input_index].1.data();
        if data.len() as u64 != range.end - range.start {
            return Err(StoreError::invalid(
                &url,
                format!(
                    "tensor `{}` gave {} bytes, its dtype and shape need {}",
                    planned.info.name,
                    data.len(),
                    range.end - range.start
                ),
            ));
        }
        pieces.push(data);
        at = range.end;
    }
    let bytes = layout.total_len();
    block_on(stream_upload(loc, bytes, pieces.iter().map(|c| c.as_ref()), progress))?;
    Ok(UploadSummary { url, tensors: layout.tensors().len(), bytes, checksums: layout.has_checksums().then_some(sums) })
}

/// Uploads a local file as one object (multipart, parts read as they are sent).
pub fn upload_file(local: &Path, loc: &ObjectLocation, progress: &(dyn Fn(u64) + Sync)) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(local).map_err(|e| StoreError::Io { path: local.to_path_buf(), source: e })?;
    let size = file.metadata().map_err(|e| StoreError::Io { path: local.to_path_buf(), source: e })?.len();
    let part = loc.store.opts.part_size.max(5 << 20) as u64;
    let reads = (0..size.div_ceil(part)).map(|k| {
        let r = k * part..((k + 1) * part).min(size);
        let mut buf = vec![0u8; (r.end - r.start) as usize];
        file.read_exact_at(&mut buf, r.start).map(|_| buf)
    });
    block_on(stream_upload_owned(loc, size, reads, progress)).map_err(|e| match e {
        UploadError::Read(source) => StoreError::Io { path: local.to_path_buf(), source },
        UploadError::Store(e) => e,
    })?;
    Ok(size)
}

/// Writes a small object (an index, a ledger, a marker) with one request.
pub fn put_bytes(loc: &ObjectLocation, bytes: Vec<u8>) -> Result<()> {
    block_on(put_bytes_async(loc, bytes))
}

pub(crate) async fn put_bytes_async(loc: &ObjectLocation, bytes: Vec<u8>) -> Result<()> {
    let n = bytes.len() as u64;
    loc.store.inner.put(&loc.path, PutPayload::from(bytes)).await.map_err(|e| StoreError::object(loc.url(), e))?;
    loc.store.stats.put(n);
    Ok(())
}

/// Deletes an object (missing is fine).
pub fn delete(loc: &ObjectLocation) -> Result<()> {
    block_on(async {
        match loc.store.inner.delete(&loc.path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StoreError::object(loc.url(), e)),
        }
    })
}

/// The size of an object in bytes.
pub fn size(loc: &ObjectLocation) -> Result<u64> {
    block_on(async {
        let meta = loc.store.inner.head(&loc.path).await.map_err(|e| StoreError::object(loc.url(), e))?;
        Ok(meta.size)
    })
}

/// Whether an object exists.
pub fn exists(loc: &ObjectLocation) -> Result<bool> {
    block_on(async {
        match loc.store.inner.head(&loc.path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(StoreError::object(loc.url(), e)),
        }
    })
}

/// The objects directly below a prefix: names (relative to it) and sizes, sorted by name.
pub fn list(prefix: &ObjectLocation) -> Result<Vec<(String, u64)>> {
    block_on(async {
        let res = prefix
            .store
            .inner
            .list_with_delimiter(Some(&prefix.path))
            .await
            .map_err(|e| StoreError::object(prefix.url(), e))?;
        let mut out: Vec<(String, u64)> =
            res.objects.into_iter().filter_map(|m| m.location.filename().map(|n| (n.to_string(), m.size))).collect();
        out.extend(res.common_prefixes.into_iter().filter_map(|p| p.filename().map(|n| (format!("{n}/"), 0))));
        out.sort();
        Ok(out)
    })
}

fn check_overwrite(loc: &ObjectLocation, opts: &WriteOptions) -> Result<()> {
    if !opts.has_overwrite() && exists(loc)? {
        return Err(StoreError::Exists { url: loc.url() });
    }
    Ok(())
}

/// Streams `chunks` (which total `size` bytes) to `loc`: one request when it fits a part,
/// otherwise a multipart upload with at most `concurrency` parts in flight.
async fn stream_upload<'a>(
    loc: &ObjectLocation,
    size: u64,
    chunks: impl Iterator<Item = &'a [u8]>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<()> {
    let part = loc.store.opts.part_size.max(5 << 20);
    if size <= part as u64 {
        let mut all = Vec::with_capacity(size as usize);
        for c in chunks {
            all.extend_from_slice(c);
        }
        put_bytes_async(loc, all).await?;
        progress(size);
        return Ok(());
    }
    let upload = loc.store.inner.put_multipart(&loc.path).await.map_err(|e| StoreError::object(loc.url(), e))?;
    let mut w = WriteMultipart::new_with_chunk_size(upload, part);
    let concurrency = loc.store.opts.concurrency.max(1);
    let mut sent = 0u64;
    let result: Result<()> = async {
        for c in chunks {
            for piece in c.chunks(part) {
                w.wait_for_capacity(concurrency).await.map_err(|e| StoreError::object(loc.url(), e))?;
                w.write(piece);
                let before = sent / part as u64;
                sent += piece.len() as u64;
                for _ in before..sent / part as u64 {
                    loc.store.stats.put(part as u64);
                }
                progress(piece.len() as u64);
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = w.abort().await;
        return Err(e);
    }
    let tail = sent % part as u64;
    w.finish().await.map_err(|e| StoreError::object(loc.url(), e))?;
    if tail > 0 {
        loc.store.stats.put(tail);
    }
    Ok(())
}

enum UploadError {
    Read(std::io::Error),
    Store(StoreError),
}

/// [`stream_upload`] over owned chunks that may fail to be produced (a local read); a failure
/// aborts the upload.
async fn stream_upload_owned(
    loc: &ObjectLocation,
    size: u64,
    chunks: impl Iterator<Item = std::io::Result<Vec<u8>>>,
    progress: &(dyn Fn(u64) + Sync),
) -> std::result::Result<(), UploadError> {
    let part = loc.store.opts.part_size.max(5 << 20);
    let store_err = |e| UploadError::Store(StoreError::object(loc.url(), e));
    if size <= part as u64 {
        let mut all = Vec::with_capacity(size as usize);
        for c in chunks {
            all.extend_from_slice(&c.map_err(UploadError::Read)?);
        }
        let n = all.len() as u64;
        put_bytes_async(loc, all).await.map_err(UploadError::Store)?;
        progress(n);
        return Ok(());
    }
    let upload = loc.store.inner.put_multipart(&loc.path).await.map_err(store_err)?;
    let mut w = WriteMultipart::new_with_chunk_size(upload, part);
    let concurrency = loc.store.opts.concurrency.max(1);
    for c in chunks {
        let c = match c {
            Ok(c) => c,
            Err(e) => {
                let _ = w.abort().await;
                return Err(UploadError::Read(e));
            }
        };
        if let Err(e) = w.wait_for_capacity(concurrency).await {
            let _ = w.abort().await;
            return Err(store_err(e));
        }
        let n = c.len() as u64;
        w.put(Bytes::from(c));
        loc.store.stats.put(n);
        progress(n);
    }
    w.finish().await.map_err(store_err)?;
    Ok(())
}
