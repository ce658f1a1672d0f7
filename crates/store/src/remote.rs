//! Reading safetensors files and sharded sets from an object store: headers by ranged reads
//! (length prefix, then header: nothing else), then only the bytes asked for.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::{GetOptions, GetRange, ObjectStoreExt};
use safeckpt_format::index::MAX_INDEX_LEN;
use safeckpt_format::integrity::checksum;
use safeckpt_format::split::{SplitTensor, box_runs};
use safeckpt_format::{Dtype, Header, Integrity, LEN_PREFIX, ShardIndex, TensorInfo, read_header_len};
use safeckpt_reader::{IntegrityFailure, VerifyReport};
use safeckpt_writer::atomic::AtomicFile;

use crate::block_on;
use crate::error::{Result, StoreError};
use crate::fetch::fetch_ranges;
use crate::location::ObjectLocation;

/// Part of a region held by one stored tensor: its name and shape, where the box starts in it,
/// where in the region, and the box's extent.
type RegionBox<'a> = (&'a str, Vec<usize>, Vec<usize>, Vec<usize>, Vec<usize>);

/// A safetensors object whose header has been read.
#[derive(Debug, Clone)]
pub struct RemoteFile {
    loc: ObjectLocation,
    size: u64,
    header: Header,
}

impl RemoteFile {
    /// Reads and validates the header with two ranged reads: the 8-byte length (whose response
    /// also gives the object's size), then the header. No tensor data is read.
    pub fn open(loc: &ObjectLocation) -> Result<RemoteFile> {
        block_on(Self::open_async(loc))
    }

    pub(crate) async fn open_async(loc: &ObjectLocation) -> Result<RemoteFile> {
        let url = loc.url();
        let fmt = |source| StoreError::Format { url: url.clone(), source };
        let (prefix, size) = match get_with_size(loc, 0..LEN_PREFIX as u64).await {
            Ok(found) => found,
            // Shorter than a length prefix (the range cannot be served): read what there is.
            Err(StoreError::Object { .. }) => {
                let size = head_size(loc).await?;
                (get(loc, 0..size.min(LEN_PREFIX as u64)).await?, size)
            }
            Err(e) => return Err(e),
        };
        let n = read_header_len(&prefix, size).map_err(fmt)?;
        let json = get(loc, LEN_PREFIX as u64..(LEN_PREFIX + n) as u64).await?;
        let header = Header::parse_json(&json).map_err(fmt)?;
        header.check_file_len(size).map_err(fmt)?;
        Ok(RemoteFile { loc: loc.clone(), size, header })
    }

    /// Where it is.
    pub fn location(&self) -> &ObjectLocation {
        &self.loc
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The object's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Byte range of a tensor in the object.
    fn range_of(&self, info: &TensorInfo) -> Range<u64> {
        let start = self.header.data_start() as u64;
        start + info.data_offsets.0 as u64..start + info.data_offsets.1 as u64
    }
}

async fn head_size(loc: &ObjectLocation) -> Result<u64> {
    let meta = loc.store.inner.head(&loc.path).await.map_err(|e| StoreError::object(loc.url(), e))?;
    Ok(meta.size)
}

/// A ranged read that also returns the object's size.
async fn get_with_size(loc: &ObjectLocation, r: Range<u64>) -> Result<(Bytes, u64)> {
    let opts = GetOptions { range: Some(GetRange::Bounded(r.clone())), ..Default::default() };
    let res = loc.store.inner.get_opts(&loc.path, opts).await.map_err(|e| StoreError::object(loc.url(), e))?;
    let size = res.meta.size;
    let bytes = res.bytes().await.map_err(|e| StoreError::object(loc.url(), e))?;
    loc.store.stats.got(bytes.len() as u64);
    if bytes.len() as u64 != r.end - r.start {
        return Err(StoreError::invalid(loc.url(), format!("short read of bytes {}..{}", r.start, r.end)));
    }
    Ok((bytes, size))
}

async fn get(loc: &ObjectLocation, r: Range<u64>) -> Result<Bytes> {
    if r.start >= r.end {
        return Ok(Bytes::new());
    }
    let opts = GetOptions { range: Some(GetRange::Bounded(r.clone())), ..Default::default() };
    let res = loc.store.inner.get_opts(&loc.path, opts).await.map_err(|e| StoreError::object(loc.url(), e))?;
    let bytes = res.bytes().await.map_err(|e| StoreError::object(loc.url(), e))?;
    loc.store.stats.got(bytes.len() as u64);
    if bytes.len() as u64 != r.end - r.start {
        return Err(StoreError::invalid(loc.url(), format!("short read of bytes {}..{}", r.start, r.end)));
    }
    Ok(bytes)
}

/// A whole small object (a ledger, an index), refused when over `limit` bytes.
pub fn read_object(loc: &ObjectLocation, limit: u64) -> Result<Vec<u8>> {
    Ok(block_on(get_all(loc, limit))?.to_vec())
}

/// A whole object, at most `limit` bytes.
pub(crate) async fn get_all(loc: &ObjectLocation, limit: u64) -> Result<Bytes> {
    let size = head_size(loc).await?;
    if size > limit {
        return Err(StoreError::invalid(loc.url(), format!("{size} bytes, over the limit of {limit}")));
    }
    get(loc, 0..size).await
}

/// One namespace over a remote sharded set (or a single remote file): the same checks as
/// [`safeckpt_reader::ShardedReader`], with every shard's header read and nothing else.
#[derive(Debug, Clone)]
pub struct RemoteSet {
    loc: ObjectLocation,
    index: Option<ShardIndex>,
    shards: Vec<RemoteFile>,
    routing: HashMap<String, usize>,
    pieces: HashSet<String>,
}

impl RemoteSet {
    /// Opens an index (`*.json`) or a single file. Shard headers are read in parallel.
    pub fn open(loc: &ObjectLocation) -> Result<RemoteSet> {
        block_on(Self::open_async(loc))
    }

    pub(crate) async fn open_async(loc: &ObjectLocation) -> Result<RemoteSet> {
        if loc.path.extension() != Some("json") {
            let file = RemoteFile::open_async(loc).await?;
            let routing = file.header.tensors().iter().map(|t| (t.name.clone(), 0)).collect();
            return Ok(RemoteSet {
                loc: loc.clone(),
                index: None,
                shards: vec![file],
                routing,
                pieces: HashSet::new(),
            });
        }
        let bytes = get_all(loc, MAX_INDEX_LEN).await?;
        let err = |reason: String| StoreError::invalid(loc.url(), reason);
        let index = ShardIndex::parse(&bytes).map_err(|e| err(e.to_string()))?;
        let dir = loc.parent();
        let names: Vec<String> = index.shards().into_iter().map(str::to_string).collect();
        let concurrency = loc.store.opts.concurrency.max(1);
        let shards: Vec<RemoteFile> = futures::stream::iter(names.iter().map(|n| {
            let shard = dir.join(n);
            async move { RemoteFile::open_async(&shard).await }
        }))
        .buffered(concurrency)
        .try_collect()
        .await?;
        let mut routing = HashMap::with_capacity(index.weight_map.len());
        for (i, (file, shard)) in shards.iter().zip(&names).enumerate() {
            for t in file.header.tensors() {
                match index.weight_map.get(&t.name) {
                    None => {
                        return Err(err(format!(
                            "tensor `{}` is in shard `{shard}` but the index does not list it",
                            t.name
                        )));
                    }
                    Some(listed) if listed != shard => {
                        return Err(err(format!(
                            "tensor `{}` is in both `{shard}` and `{listed}` (the index lists `{listed}`)",
                            t.name
                        )));
                    }
                    Some(_) => {
                        routing.insert(t.name.clone(), i);
                    }
                }
            }
        }
        for (name, shard) in &index.weight_map {
            if !routing.contains_key(name) {
                return Err(err(format!(
                    "the index maps tensor `{name}` to `{shard}`, but `{shard}` has no such tensor"
                )));
            }
        }
        safeckpt_reader::check_split_pieces(&index, |name| {
            let info = routing.get(name).and_then(|&i| shards[i].header.get(name))?;
            Some((info.dtype, info.shape.clone()))
        })
        .map_err(err)?;
        let pieces = index.split_tensors.values().flat_map(|s| s.pieces.iter().map(|p| p.tensor.clone())).collect();
        Ok(RemoteSet { loc: loc.clone(), index: Some(index), shards, routing, pieces })
    }

    /// Where it is.
    pub fn location(&self) -> &ObjectLocation {
        &self.loc
    }

    /// The index, when opened from one.
    pub fn index(&self) -> Option<&ShardIndex> {
        self.index.as_ref()
    }

    /// The shards, with their headers.
    pub fn shards(&self) -> &[RemoteFile] {
        &self.shards
    }

    /// Every stored tensor's name, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.routing.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// A stored tensor's header entry.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.routing.get(name).and_then(|&i| self.shards[i].header.get(name))
    }

    /// Total bytes of tensor data.
    pub fn data_len(&self) -> u64 {
        self.shards.iter().map(|s| s.header.data_len() as u64).sum()
    }

    /// The tensors stored as pieces, by global name.
    pub fn split_tensors(&self) -> impl Iterator<Item = (&str, &SplitTensor)> + '_ {
        self.index.iter().flat_map(|i| i.split_tensors.iter().map(|(k, v)| (k.as_str(), v)))
    }

    /// Global tensors (whole ones and split ones, not pieces), sorted.
    pub fn global_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.names().into_iter().filter(|n| !self.pieces.contains(*n)).collect();
        v.extend(self.split_tensors().map(|(n, _)| n));
        v.sort_unstable();
        v
    }

    /// Dtype and shape of a global tensor.
    pub fn global_info(&self, name: &str) -> Option<(Dtype, Vec<usize>)> {
        if let Some(s) = self.index.as_ref().and_then(|i| i.split_tensors.get(name)) {
            return Some((s.dtype()?, s.shape.clone()));
        }
        if self.pieces.contains(name) {
            return None;
        }
        self.info(name).map(|t| (t.dtype, t.shape.clone()))
    }

    /// The bytes of stored tensors, fetched together (coalesced per shard, in parallel).
    pub fn read_tensors(&self, names: &[&str]) -> Result<Vec<Bytes>> {
        block_on(async {
            let mut out: Vec<Option<Bytes>> = vec![None; names.len()];
            let mut by_shard: HashMap<usize, Vec<(usize, Range<u64>)>> = HashMap::new();
            for (k, name) in names.iter().enumerate() {
                let &i = self.routing.get(*name).ok_or_else(|| self.not_found(name))?;
                let file = &self.shards[i];
                let info = file.header.get(name).ok_or_else(|| self.not_found(name))?;
                by_shard.entry(i).or_default().push((k, file.range_of(info)));
            }
            for (i, wanted) in by_shard {
                let ranges: Vec<Range<u64>> = wanted.iter().map(|(_, r)| r.clone()).collect();
                let bytes = fetch_ranges(&self.shards[i].loc, &ranges).await?;
                for ((k, _), b) in wanted.into_iter().zip(bytes) {
                    out[k] = Some(b);
                }
            }
            Ok(out.into_iter().map(Option::unwrap_or_default).collect())
        })
    }

    /// The bytes of a rectangular `region` of the global tensor `name` (whole or split), fetching
    /// only the byte runs the region covers (coalesced when close).
    pub fn read_region(&self, name: &str, region: &[Range<usize>]) -> Result<Vec<u8>> {
        let (_, _, bytes) = self.check_region(name, region)?;
        let mut out = vec![0u8; bytes];
        self.read_region_into(name, region, &mut out)?;
        Ok(out)
    }

    /// The tensor's dtype and shape and the region's size in bytes, once the region is known to
    /// fit the tensor.
    fn check_region(&self, name: &str, region: &[Range<usize>]) -> Result<(Dtype, Vec<usize>, usize)> {
        let (dtype, shape) = self.global_info(name).ok_or_else(|| self.not_found(name))?;
        let bad = |reason: String| StoreError::invalid(self.loc.url(), format!("tensor `{name}`: {reason}"));
        if region.len() != shape.len() {
            return Err(bad(format!("{} ranges for a tensor of rank {}", region.len(), shape.len())));
        }
        for (i, (r, &d)) in region.iter().zip(&shape).enumerate() {
            if r.start > r.end || r.end > d {
                return Err(bad(format!("range {}..{} does not fit dimension {i} of size {d}", r.start, r.end)));
            }
        }
        if !dtype.bits().is_multiple_of(8) {
            return Err(bad(format!("regions of {dtype} tensors are not supported remotely")));
        }
        let numel = region
            .iter()
            .try_fold(1usize, |a, r| a.checked_mul(r.end - r.start))
            .ok_or_else(|| bad("size overflows".into()))?;
        Ok((dtype, shape, numel * (dtype.bits() / 8)))
    }

    /// [`RemoteSet::read_region`] into `out`, which must be exactly the region's size.
    pub fn read_region_into(&self, name: &str, region: &[Range<usize>], out: &mut [u8]) -> Result<()> {
        let (dtype, shape, bytes) = self.check_region(name, region)?;
        let bad = |reason: String| StoreError::invalid(self.loc.url(), format!("tensor `{name}`: {reason}"));
        let elem = dtype.bits() / 8;
        let extent: Vec<usize> = region.iter().map(|r| r.end - r.start).collect();
        if out.len() != bytes {
            return Err(bad(format!("output buffer is {} bytes, the region {bytes}", out.len())));
        }
        let mut boxes: Vec<RegionBox<'_>> = Vec::new();
        match self.index.as_ref().and_then(|i| i.split_tensors.get(name)) {
            None => boxes.push((
                name,
                shape.clone(),
                region.iter().map(|r| r.start).collect(),
                vec![0; shape.len()],
                extent.clone(),
            )),
            Some(split) => {
                for b in split.boxes(region) {
                    boxes.push((b.piece.tensor.as_str(), b.piece.shape.clone(), b.src_at, b.dst_at, b.extent));
                }
            }
        }
        block_on(async {
            let mut by_shard: HashMap<usize, Vec<(Range<u64>, usize)>> = HashMap::new();
            for (stored, src_shape, src_at, dst_at, ext) in &boxes {
                let &i = self.routing.get(*stored).ok_or_else(|| self.not_found(stored))?;
                let file = &self.shards[i];
                let info = file.header.get(stored).ok_or_else(|| self.not_found(stored))?;
                let base = file.range_of(info).start;
                for run in box_runs(elem, src_shape, src_at, &extent, dst_at, ext) {
                    by_shard
                        .entry(i)
                        .or_default()
                        .push((base + run.src as u64..base + (run.src + run.len) as u64, run.dst));
                }
            }
            for (i, runs) in by_shard {
                let ranges: Vec<Range<u64>> = runs.iter().map(|(r, _)| r.clone()).collect();
                let bytes = fetch_ranges(&self.shards[i].loc, &ranges).await?;
                for ((_, dst), b) in runs.iter().zip(bytes) {
                    out[*dst..*dst + b.len()].copy_from_slice(&b);
                }
            }
            Ok(())
        })
    }

    /// A whole global tensor, assembled if it is split.
    pub fn read_global(&self, name: &str) -> Result<Vec<u8>> {
        let (_, shape) = self.global_info(name).ok_or_else(|| self.not_found(name))?;
        let region: Vec<Range<usize>> = shape.iter().map(|&d| 0..d).collect();
        self.read_region(name, &region)
    }

    /// Verifies every shard's checksums, fetching the data tensor by tensor.
    pub fn verify(&self) -> Result<Vec<VerifyReport>> {
        self.verify_with_progress(&|_| {})
    }

    /// [`RemoteSet::verify`], calling `progress` with the bytes checked.
    pub fn verify_with_progress(&self, progress: &(dyn Fn(u64) + Sync)) -> Result<Vec<VerifyReport>> {
        let mut reports = Vec::with_capacity(self.shards.len());
        for file in &self.shards {
            let url = file.loc.url();
            let integrity = Integrity::from_header(&file.header)
                .map_err(|source| StoreError::Format { url: url.clone(), source })?;
            let mut report = VerifyReport {
                path: PathBuf::from(&url),
                has_checksums: integrity.is_some(),
                tensors_checked: 0,
                bytes_checked: 0,
                failures: Vec::new(),
            };
            let Some(integrity) = integrity else {
                reports.push(report);
                continue;
            };
            if !integrity.header_matches(&file.header) {
                report.failures.push(IntegrityFailure::HeaderMismatch);
            }
            for name in integrity.tensors.keys() {
                if file.header.get(name).is_none() {
                    report.failures.push(IntegrityFailure::UnknownEntry { name: name.clone() });
                }
            }
            // Batches of about 256 MiB: memory stays bounded, requests stay parallel.
            let tensors = file.header.tensors();
            let mut start = 0;
            while start < tensors.len() {
                let mut end = start;
                let mut bytes = 0usize;
                while end < tensors.len() && (end == start || bytes + tensors[end].byte_len() <= 256 << 20) {
                    bytes += tensors[end].byte_len();
                    end += 1;
                }
                let ranges: Vec<Range<u64>> = tensors[start..end].iter().map(|t| file.range_of(t)).collect();
                let data = block_on(fetch_ranges(&file.loc, &ranges))?;
                for (t, d) in tensors[start..end].iter().zip(data) {
                    match integrity.tensors.get(&t.name) {
                        None => report.failures.push(IntegrityFailure::NoChecksum { name: t.name.clone() }),
                        Some(&expected) => {
                            let actual = checksum(&d);
                            if actual != expected {
                                report.failures.push(IntegrityFailure::Tensor {
                                    name: t.name.clone(),
                                    expected,
                                    actual,
                                });
                            }
                        }
                    }
                    report.tensors_checked += 1;
                    report.bytes_checked += d.len() as u64;
                    progress(d.len() as u64);
                }
                start = end;
            }
            reports.push(report);
        }
        Ok(reports)
    }

    /// Copies the set (its shards and index, or the single file) into the local directory `dir`,
    /// each file fetched by parallel ranged reads and committed atomically. Returns the local
    /// path of the index or file.
    pub fn download(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io { path: dir.to_path_buf(), source: e })?;
        for file in &self.shards {
            download_object(&file.loc, file.size, &dir.join(file.loc.file_name()))?;
        }
        let local = dir.join(self.loc.file_name());
        if let Some(index) = &self.index {
            safeckpt_writer::atomic::write_atomic(&local, index.to_json().as_bytes(), false)?;
        }
        Ok(local)
    }

    fn not_found(&self, name: &str) -> StoreError {
        StoreError::invalid(self.loc.url(), format!("no tensor `{name}`"))
    }
}

/// Copies one object of `size` bytes to a local file, fetching parts in parallel and writing them
/// as they arrive (memory: about `part_size * concurrency`).
pub fn download_object(loc: &ObjectLocation, size: u64, local: &Path) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let tmp = AtomicFile::create(local, true)?;
    let io = |e| StoreError::Io { path: tmp.target().to_path_buf(), source: e };
    tmp.file().set_len(size).map_err(io)?;
    let part = loc.store.opts.part_size.max(1) as u64;
    let parts: Vec<Range<u64>> = (0..size.div_ceil(part)).map(|k| k * part..((k + 1) * part).min(size)).collect();
    block_on(async {
        let mut stream = futures::stream::iter(parts.into_iter().map(|r| async move {
            let b = get(loc, r.clone()).await?;
            Ok::<_, StoreError>((r.start, b))
        }))
        .buffer_unordered(loc.store.opts.concurrency.max(1));
        while let Some(item) = stream.next().await {
            let (at, b) = item?;
            tmp.file().write_all_at(&b, at).map_err(io)?;
        }
        Ok::<_, StoreError>(())
    })?;
    tmp.commit(false)?;
    Ok(())
}
