//! Opening PyTorch files: the zip container of `torch.save` (torch ≥ 1.6) and the legacy format.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use safeckpt_reader::MappedFile;

use crate::error::{Result, TorchError};
use crate::globals::{Global, TorchDtype};
use crate::pickle::{Limits, StorageResolver, unpickle};
use crate::value::{Arena, Obj, Value};
use crate::zip::{ZipArchive, ZipError, looks_like_zip};

/// The magic number opening a legacy (pre-zip) torch file, as its first pickle.
pub const TORCH_LEGACY_MAGIC: u128 = 0x1950a86a20f9469cfc6c;
/// The protocol version pickled after the magic number in legacy files.
pub const TORCH_LEGACY_PROTOCOL: i64 = 1001;
/// Largest `data.pkl` (or legacy pickle section) accepted once inflated.
pub const MAX_PICKLE_LEN: u64 = 1 << 30;
/// By default a conversion may produce (tensor bytes written or materialised, plus storages
/// inflated) this many times the input file's size…
pub const OUTPUT_FACTOR: u64 = 4;
/// …plus this many bytes. Real checkpoints never come near it: their tensors are views that
/// together cover their storages about once; only hostile files (a 4-byte storage viewed as 2^34
/// elements through a zero stride, a deflate bomb) or unusual ones ask for more, and those need
/// an explicit, larger limit (`ConvertOptions::max_output_size`, `--max-output-size`).
pub const OUTPUT_SLACK: u64 = 16 << 20;

/// The default limit on the bytes a conversion of a `file_len`-byte file may produce.
pub fn default_output_limit(file_len: u64) -> u64 {
    file_len.saturating_mul(OUTPUT_FACTOR).saturating_add(OUTPUT_SLACK)
}

/// A storage's bytes: a slice of the mapped file, or a deflated record inflated once and shared.
#[derive(Debug, Clone)]
pub enum StorageData<'a> {
    /// Stored uncompressed: straight from the map.
    Mapped(&'a [u8]),
    /// Inflated (once per archive; later views share it).
    Inflated(Arc<Vec<u8>>),
}

impl std::ops::Deref for StorageData<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            StorageData::Mapped(b) => b,
            StorageData::Inflated(b) => b,
        }
    }
}

/// Which container the file uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// `torch.save` zip (torch ≥ 1.6), with its top-level folder name.
    Zip {
        /// The archive's folder name (`archive`, or the file name without extension).
        prefix: String,
    },
    /// `_use_new_zipfile_serialization=False`.
    Legacy,
}

/// Where a storage's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    /// A zip entry (index into the archive's entries).
    Entry(usize),
    /// A byte range of the file (legacy format).
    Range(usize, usize),
    /// Not located yet (legacy storages are found after the main pickle).
    Pending,
}

/// A storage the pickle refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageInfo {
    /// Its key (`"0"`, `"1"`, … in zip files).
    pub key: String,
    /// Its element type (`UInt8` for untyped storages).
    pub dtype: TorchDtype,
    /// Its length in bytes.
    pub bytes: u64,
    /// The device it was saved from (`cpu`, `cuda:0`, …); informational.
    pub device: String,
    location: Location,
}

/// A PyTorch file, parsed: the object tree of its pickle and the table of its storages, whose
/// bytes stay in the memory-mapped file until asked for.
pub struct TorchArchive {
    file: MappedFile,
    format: ArchiveFormat,
    arena: Arena,
    root: Value,
    storages: Vec<StorageInfo>,
    big_endian: bool,
    entries: Vec<crate::zip::Entry>,
    /// Deflated storages, inflated at most once each.
    inflated: Vec<OnceLock<std::result::Result<Arc<Vec<u8>>, ZipError>>>,
    inflated_bytes: AtomicU64,
}

impl std::fmt::Debug for TorchArchive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchArchive")
            .field("path", &self.file.path())
            .field("format", &self.format)
            .field("storages", &self.storages.len())
            .field("big_endian", &self.big_endian)
            .finish()
    }
}

struct ZipResolver<'a> {
    path: &'a Path,
    prefix: &'a str,
    zip: &'a ZipArchive<'a>,
    storages: Vec<StorageInfo>,
    by_key: HashMap<String, u32>,
}

/// The parts of a storage persistent id shared by both formats.
fn storage_pid(
    pid: &Value,
    arena: &Arena,
    legacy: bool,
) -> std::result::Result<(TorchDtype, String, String, u64), String> {
    let Some(Obj::Tuple(items)) = arena.get(pid) else {
        return Err("persistent id is not a tuple".into());
    };
    match items.first() {
        Some(Value::Str(s)) if &**s == "storage" => {}
        Some(Value::Str(s)) if &**s == "module" => {
            return Err("the file embeds Python module source (a legacy whole-model pickle); refused".into());
        }
        _ => return Err("persistent id is not a storage reference".into()),
    }
    let want = if legacy { 6 } else { 5 };
    if items.len() != want {
        return Err(format!("storage reference has {} fields, expected {want}", items.len()));
    }
    let dtype = match &items[1] {
        Value::Global(Global::StorageType(d)) => *d,
        Value::Global(Global::UntypedStorage) => TorchDtype::UInt8,
        _ => return Err("storage reference does not name a storage type".into()),
    };
    let Value::Str(key) = &items[2] else { return Err("storage key is not a string".into()) };
    let device = match &items[3] {
        Value::Str(s) => s.to_string(),
        _ => return Err("storage location is not a string".into()),
    };
    let numel = match &items[4] {
        Value::Int(n) if *n >= 0 => *n as u64,
        _ => return Err("storage size is not a non-negative integer".into()),
    };
    if legacy && items[5] != Value::None {
        return Err("legacy storage views are not supported".into());
    }
    let bytes =
        numel.checked_mul(dtype.element_size() as u64).ok_or_else(|| format!("storage `{key}` size overflows"))?;
    Ok((dtype, key.to_string(), device, bytes))
}

impl StorageResolver for ZipResolver<'_> {
    fn persistent_load(&mut self, pid: &Value, arena: &Arena) -> std::result::Result<u32, String> {
        let (dtype, key, device, bytes) = storage_pid(pid, arena, false)?;
        if let Some(&i) = self.by_key.get(&key) {
            let s = &self.storages[i as usize];
            if s.bytes != bytes {
                return Err(format!("storage `{key}` is referenced with sizes {} and {bytes} bytes", s.bytes));
            }
            return Ok(i);
        }
        if key.contains('/') || key.contains("..") {
            return Err(format!("storage key `{key}` is not a plain name"));
        }
        let record = format!("{}/data/{key}", self.prefix);
        let Some(idx) = self.zip.index_of(&record) else {
            return Err(format!("storage `{key}`: record `{record}` is missing from {}", self.path.display()));
        };
        let size = self.zip.entries()[idx].size;
        if size != bytes {
            return Err(format!(
                "storage `{key}`: record `{record}` has {size} bytes, but the pickle says {bytes} ({} elements of {})",
                bytes / dtype.element_size() as u64,
                dtype.name()
            ));
        }
        let i = self.storages.len() as u32;
        self.storages.push(StorageInfo { key: key.clone(), dtype, bytes, device, location: Location::Entry(idx) });
        self.by_key.insert(key, i);
        Ok(i)
    }

    fn storage_bytes(&self, storage: u32) -> u64 {
        self.storages.get(storage as usize).map_or(0, |s| s.bytes)
    }

    fn storage_dtype(&self, storage: u32) -> TorchDtype {
        self.storages.get(storage as usize).map_or(TorchDtype::UInt8, |s| s.dtype)
    }
}

struct LegacyResolver {
    storages: Vec<StorageInfo>,
    by_key: HashMap<String, u32>,
}

impl StorageResolver for LegacyResolver {
    fn persistent_load(&mut self, pid: &Value, arena: &Arena) -> std::result::Result<u32, String> {
        let (dtype, key, device, bytes) = storage_pid(pid, arena, true)?;
        if let Some(&i) = self.by_key.get(&key) {
            return Ok(i);
        }
        let i = self.storages.len() as u32;
        self.storages.push(StorageInfo { key: key.clone(), dtype, bytes, device, location: Location::Pending });
        self.by_key.insert(key, i);
        Ok(i)
    }

    fn storage_bytes(&self, storage: u32) -> u64 {
        self.storages.get(storage as usize).map_or(0, |s| s.bytes)
    }

    fn storage_dtype(&self, storage: u32) -> TorchDtype {
        self.storages.get(storage as usize).map_or(TorchDtype::UInt8, |s| s.dtype)
    }
}

/// A resolver for pickles that must not reference storages (legacy header pickles).
struct NoStorages;

impl StorageResolver for NoStorages {
    fn persistent_load(&mut self, _: &Value, _: &Arena) -> std::result::Result<u32, String> {
        Err("unexpected storage reference".into())
    }
    fn storage_bytes(&self, _: u32) -> u64 {
        0
    }
    fn storage_dtype(&self, _: u32) -> TorchDtype {
        TorchDtype::UInt8
    }
}

impl TorchArchive {
    /// Opens a `.pth`, `.pt` or `.bin` file written by `torch.save`.
    pub fn open(path: impl AsRef<Path>) -> Result<TorchArchive> {
        Self::from_mapped(MappedFile::open(path)?)
    }

    /// Parses a PyTorch file held in memory; `name` is used in messages.
    pub fn from_bytes(bytes: &[u8], name: impl Into<PathBuf>) -> Result<TorchArchive> {
        Self::from_mapped(MappedFile::from_bytes(bytes, name))
    }

    fn from_mapped(file: MappedFile) -> Result<TorchArchive> {
        let bytes = file.bytes();
        let path = file.path().to_path_buf();
        let tail = bytes.get(bytes.len().saturating_sub(safeckpt_format::detect::TAIL_LEN)..).unwrap_or_default();
        if safeckpt_format::detect(bytes, tail, bytes.len() as u64) == safeckpt_format::FileKind::Safetensors {
            // Checked first: a header length can begin with the bytes of a zip or a pickle.
            return Err(TorchError::NotTorch {
                path,
                reason: "a safetensors file already (use `safeckpt inspect`)".into(),
            });
        }
        if looks_like_zip(bytes) {
            let (format, arena, root, storages, big_endian, entries) = Self::parse_zip(&path, bytes)?;
            return Ok(Self::assemble(file, format, arena, root, storages, big_endian, entries));
        }
        if bytes.len() > 262 && &bytes[257..262] == b"ustar" {
            return Err(TorchError::NotTorch {
                path,
                reason: "a tar archive (the format of torch before 0.4); load and re-save it with a current torch"
                    .into(),
            });
        }
        if bytes.starts_with(b"PYTORCH1") {
            return Err(TorchError::NotTorch {
                path,
                reason: "a preview-release torch archive, which torch itself no longer reads".into(),
            });
        }
        if bytes.first() == Some(&0x80) {
            let (arena, root, storages, big_endian) = Self::parse_legacy(&path, bytes)?;
            return Ok(Self::assemble(file, ArchiveFormat::Legacy, arena, root, storages, big_endian, Vec::new()));
        }
        let reason = if bytes.starts_with(b"\x93NUMPY") {
            "a numpy .npy file, not a PyTorch file".to_string()
        } else if bytes.len() >= 8 && bytes.get(8) == Some(&b'{') {
            "a safetensors file already (use `safeckpt inspect`)".to_string()
        } else if bytes.is_empty() {
            "the file is empty".to_string()
        } else {
            "neither a torch zip archive nor a legacy torch pickle".to_string()
        };
        Err(TorchError::NotTorch { path, reason })
    }

    fn assemble(
        file: MappedFile,
        format: ArchiveFormat,
        arena: Arena,
        root: Value,
        storages: Vec<StorageInfo>,
        big_endian: bool,
        entries: Vec<crate::zip::Entry>,
    ) -> TorchArchive {
        let inflated = storages.iter().map(|_| OnceLock::new()).collect();
        TorchArchive {
            file,
            format,
            arena,
            root,
            storages,
            big_endian,
            entries,
            inflated,
            inflated_bytes: AtomicU64::new(0),
        }
    }

    #[allow(clippy::type_complexity)]
    fn parse_zip(
        path: &Path,
        bytes: &[u8],
    ) -> Result<(ArchiveFormat, Arena, Value, Vec<StorageInfo>, bool, Vec<crate::zip::Entry>)> {
        let zip = ZipArchive::new(bytes).map_err(|source| TorchError::Zip { path: path.to_path_buf(), source })?;
        let first = zip
            .entries()
            .first()
            .ok_or_else(|| TorchError::NotTorch { path: path.to_path_buf(), reason: "an empty zip archive".into() })?;
        let Some((prefix, _)) = first.name.split_once('/') else {
            return Err(TorchError::NotTorch {
                path: path.to_path_buf(),
                reason: format!(
                    "a zip archive whose first entry `{}` is not inside a folder, as torch.save writes",
                    first.name
                ),
            });
        };
        let prefix = prefix.to_string();
        let record = |name: &str| format!("{prefix}/{name}");
        if zip.entry(&record("constants.pkl")).is_some() {
            return Err(TorchError::NotTorch {
                path: path.to_path_buf(),
                reason: "a TorchScript archive (torch.jit.save); load it with torch.jit.load and save its state_dict"
                    .into(),
            });
        }
        let pkl_name = record("data.pkl");
        let pkl_entry = zip.entry(&pkl_name).ok_or_else(|| TorchError::Record {
            path: path.to_path_buf(),
            record: pkl_name.clone(),
            reason: "missing: not a torch.save archive".into(),
        })?;
        let pkl = zip
            .read(pkl_entry, MAX_PICKLE_LEN)
            .map_err(|source| TorchError::Zip { path: path.to_path_buf(), source })?;
        let big_endian = match zip.entry(&record("byteorder")) {
            None => false,
            Some(e) => {
                let b = zip.read(e, 64).map_err(|source| TorchError::Zip { path: path.to_path_buf(), source })?;
                match b.as_ref() {
                    b"little" => false,
                    b"big" => true,
                    other => {
                        return Err(TorchError::Record {
                            path: path.to_path_buf(),
                            record: record("byteorder"),
                            reason: format!("unknown byte order `{}`", String::from_utf8_lossy(other)),
                        });
                    }
                }
            }
        };
        let mut arena = Arena::default();
        let mut resolver =
            ZipResolver { path, prefix: &prefix, zip: &zip, storages: Vec::new(), by_key: HashMap::new() };
        let (root, _) = unpickle(&pkl, &mut arena, &mut resolver, Limits::for_pickle(pkl.len()))
            .map_err(|source| TorchError::Pickle { path: path.to_path_buf(), record: pkl_name.clone(), source })?;
        let storages = resolver.storages;
        Ok((ArchiveFormat::Zip { prefix }, arena, root, storages, big_endian, zip.entries().to_vec()))
    }

    fn parse_legacy(path: &Path, bytes: &[u8]) -> Result<(Arena, Value, Vec<StorageInfo>, bool)> {
        let pickle_err = |record: &str| {
            let record = record.to_string();
            move |source| TorchError::Pickle { path: path.to_path_buf(), record: record.clone(), source }
        };
        let mut arena = Arena::default();
        let mut at = 0usize;
        let (magic, n) = unpickle(bytes, &mut arena, &mut NoStorages, Limits::for_pickle(bytes.len()))
            .map_err(pickle_err("legacy magic number"))?;
        at += n;
        let is_magic = match &magic {
            Value::BigInt(b) => {
                let mut a = [0u8; 16];
                b.len() <= 16 && {
                    a[..b.len()].copy_from_slice(b);
                    u128::from_le_bytes(a) == TORCH_LEGACY_MAGIC
                }
            }
            _ => false,
        };
        if !is_magic {
            return Err(TorchError::NotTorch {
                path: path.to_path_buf(),
                reason: "a pickle, but not one written by torch.save (no torch magic number); refusing to unpickle it"
                    .into(),
            });
        }
        let (proto, n) = unpickle(&bytes[at..], &mut arena, &mut NoStorages, Limits::for_pickle(bytes.len()))
            .map_err(pickle_err("legacy protocol version"))?;
        at += n;
        if proto != Value::Int(TORCH_LEGACY_PROTOCOL) {
            return Err(TorchError::Record {
                path: path.to_path_buf(),
                record: "legacy protocol version".into(),
                reason: format!("expected {TORCH_LEGACY_PROTOCOL}, found {proto:?}"),
            });
        }
        let (sys_info, n) = unpickle(&bytes[at..], &mut arena, &mut NoStorages, Limits::for_pickle(bytes.len()))
            .map_err(pickle_err("legacy sys_info"))?;
        at += n;
        let mut big_endian = false;
        if let Some(Obj::Dict(_, entries)) = arena.get(&sys_info) {
            for (k, v) in entries {
                if matches!(k, Value::Str(s) if &**s == "little_endian") {
                    big_endian = *v == Value::Bool(false);
                }
            }
        }
        let mut resolver = LegacyResolver { storages: Vec::new(), by_key: HashMap::new() };
        let (root, n) = unpickle(&bytes[at..], &mut arena, &mut resolver, Limits::for_pickle(bytes.len()))
            .map_err(pickle_err("legacy main pickle"))?;
        at += n;
        let (keys, n) = unpickle(&bytes[at..], &mut arena, &mut NoStorages, Limits::for_pickle(bytes.len()))
            .map_err(pickle_err("legacy storage keys"))?;
        at += n;
        let keys: Vec<String> = match arena.get(&keys) {
            Some(Obj::List(items)) | Some(Obj::Tuple(items)) => items
                .iter()
                .map(|v| match v {
                    Value::Str(s) => Ok(s.to_string()),
                    _ => Err(TorchError::Record {
                        path: path.to_path_buf(),
                        record: "legacy storage keys".into(),
                        reason: "a key is not a string".into(),
                    }),
                })
                .collect::<Result<_>>()?,
            _ => {
                return Err(TorchError::Record {
                    path: path.to_path_buf(),
                    record: "legacy storage keys".into(),
                    reason: "not a list".into(),
                });
            }
        };
        let mut storages = resolver.storages;
        for key in keys {
            let rec = || format!("legacy storage `{key}`");
            let Some(&i) = resolver.by_key.get(&key) else {
                return Err(TorchError::Record {
                    path: path.to_path_buf(),
                    record: rec(),
                    reason: "listed but never referenced".into(),
                });
            };
            let s = &mut storages[i as usize];
            let numel = bytes.get(at..at + 8).ok_or_else(|| TorchError::Record {
                path: path.to_path_buf(),
                record: rec(),
                reason: "the file ends before the storage (truncated)".into(),
            })?;
            let mut a = [0u8; 8];
            a.copy_from_slice(numel);
            let numel = if big_endian { u64::from_be_bytes(a) } else { u64::from_le_bytes(a) };
            let len = numel.checked_mul(s.dtype.element_size() as u64).filter(|&l| l == s.bytes).ok_or_else(|| {
                TorchError::Record {
                    path: path.to_path_buf(),
                    record: rec(),
                    reason: format!(
                        "holds {numel} elements, the pickle says {}",
                        s.bytes / s.dtype.element_size() as u64
                    ),
                }
            })?;
            let start = at + 8;
            let end =
                start.checked_add(len as usize).filter(|&e| e <= bytes.len()).ok_or_else(|| TorchError::Record {
                    path: path.to_path_buf(),
                    record: rec(),
                    reason: "the file ends inside the storage (truncated)".into(),
                })?;
            s.location = Location::Range(start, end);
            at = end;
        }
        if let Some(s) = storages.iter().find(|s| s.location == Location::Pending) {
            return Err(TorchError::Record {
                path: path.to_path_buf(),
                record: format!("legacy storage `{}`", s.key),
                reason: "referenced by a tensor but not stored in the file".into(),
            });
        }
        Ok((arena, root, storages, big_endian))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Which container the file uses.
    pub fn format(&self) -> &ArchiveFormat {
        &self.format
    }

    /// Whether the storages are big-endian (they are converted to little-endian on the way out).
    pub fn is_big_endian(&self) -> bool {
        self.big_endian
    }

    /// The unpickled object.
    pub fn root(&self) -> &Value {
        &self.root
    }

    /// The containers of the object tree.
    pub fn arena(&self) -> &Arena {
        &self.arena
    }

    /// The storages the pickle refers to.
    pub fn storages(&self) -> &[StorageInfo] {
        &self.storages
    }

    /// A storage's raw bytes (in the file's byte order): borrowed from the map when stored
    /// uncompressed; inflated otherwise, once per archive (every later view shares that copy).
    pub fn storage_bytes(&self, storage: u32) -> Result<StorageData<'_>> {
        let s = self.storages.get(storage as usize).ok_or_else(|| TorchError::Record {
            path: self.path().to_path_buf(),
            record: format!("storage #{storage}"),
            reason: "no such storage".into(),
        })?;
        match &s.location {
            Location::Range(a, b) => Ok(StorageData::Mapped(&self.file.bytes()[*a..*b])),
            Location::Entry(i) => {
                let e = &self.entries[*i];
                if e.method == 0 {
                    return crate::zip::read_entry(self.file.bytes(), e, s.bytes)
                        .map(|c| match c {
                            std::borrow::Cow::Borrowed(b) => StorageData::Mapped(b),
                            std::borrow::Cow::Owned(v) => StorageData::Inflated(Arc::new(v)),
                        })
                        .map_err(|source| TorchError::Zip { path: self.path().to_path_buf(), source });
                }
                let cached = self.inflated[storage as usize].get_or_init(|| {
                    // Inflating yields an owned buffer: shared as it is, not copied again.
                    let out = crate::zip::read_entry(self.file.bytes(), e, s.bytes).map(|c| Arc::new(c.into_owned()));
                    if let Ok(b) = &out {
                        self.inflated_bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                    }
                    out
                });
                match cached {
                    Ok(b) => Ok(StorageData::Inflated(b.clone())),
                    Err(source) => Err(TorchError::Zip { path: self.path().to_path_buf(), source: source.clone() }),
                }
            }
            Location::Pending => Err(TorchError::Record {
                path: self.path().to_path_buf(),
                record: format!("storage `{}`", s.key),
                reason: "not located".into(),
            }),
        }
    }

    /// Whether a storage is held deflated in the archive (reading it inflates it).
    pub fn storage_is_deflated(&self, storage: u32) -> bool {
        match self.storages.get(storage as usize).map(|s| &s.location) {
            Some(Location::Entry(i)) => self.entries.get(*i).is_some_and(|e| e.method != 0),
            _ => false,
        }
    }

    /// Bytes inflated so far (each deflated storage counts once, however many views read it).
    pub fn inflated_bytes(&self) -> u64 {
        self.inflated_bytes.load(Ordering::Relaxed)
    }

    /// The default limit on what reading this file may produce: [`default_output_limit`] of its
    /// size.
    pub fn default_output_limit(&self) -> u64 {
        default_output_limit(self.file.bytes().len() as u64)
    }

    /// Where a stored (uncompressed) storage's bytes lie in the file, for zero-copy paths.
    pub fn storage_file_range(&self, storage: u32) -> Option<std::ops::Range<usize>> {
        match &self.storages.get(storage as usize)?.location {
            Location::Range(a, b) => Some(*a..*b),
            Location::Entry(i) => {
                let e = self.entries.get(*i)?;
                (e.method == 0).then(|| e.data_offset as usize..(e.data_offset + e.size) as usize)
            }
            Location::Pending => None,
        }
    }

    /// The mapped file.
    pub fn mapped(&self) -> &MappedFile {
        &self.file
    }
}
