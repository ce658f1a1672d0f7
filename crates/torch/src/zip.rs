//! A minimal, strict ZIP reader over bytes in memory (normally a memory map).
//!
//! It reads exactly what `torch.save` and common zip tools produce: the end-of-central-directory
//! record (and its ZIP64 form), the central directory, and the local headers that locate each
//! entry's data. Sizes come from the central directory (torch writes zeros and data descriptors
//! in local headers). Stored entries are returned as slices of the input; deflated entries are
//! inflated on request with a bound on the output. Every offset and length is checked against the
//! input before use. As Python's `zipfile` does, an entry whose local header names another file
//! than the central directory is refused, and so are entries whose data overlap (another entry's
//! or the central directory), which is how "zip bombs" share one compressed stream many times.
//! Entries are found by name through a hash index, so a file with many entries opens in linear
//! time.

use std::borrow::Cow;
use std::collections::HashMap;

/// Most entries accepted in one archive.
pub const MAX_ENTRIES: u64 = 1 << 22;
/// Deflate cannot expand data by more than about 1032x; a larger claim is a lie.
const MAX_DEFLATE_RATIO: u64 = 1100;

/// A problem with the container.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ZipError {
    /// No end-of-central-directory record: not a zip archive, or truncated.
    #[error("no end-of-central-directory record: the archive is truncated or not a zip file")]
    NoEndRecord,
    /// A structure points outside the file or is inconsistent.
    #[error("corrupt zip archive: {0}")]
    Corrupt(String),
    /// A feature torch never writes and we do not read.
    #[error("unsupported zip feature: {0}")]
    Unsupported(String),
    /// Inflating an entry failed.
    #[error("entry `{name}`: {reason}")]
    Inflate {
        /// The entry.
        name: String,
        /// What went wrong.
        reason: String,
    },
}

type Result<T> = std::result::Result<T, ZipError>;

/// One entry of the central directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Entry name (path inside the archive).
    pub name: String,
    /// 0 = stored, 8 = deflate.
    pub method: u16,
    /// Bytes stored in the archive.
    pub compressed_size: u64,
    /// Bytes after decompression.
    pub size: u64,
    /// Offset of the data in the file.
    pub data_offset: u64,
    /// CRC-32 recorded in the central directory.
    pub crc32: u32,
}

/// A parsed archive over borrowed bytes.
#[derive(Debug)]
pub struct ZipArchive<'a> {
    bytes: &'a [u8],
    entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
}

fn corrupt<T>(msg: impl Into<String>) -> Result<T> {
    Err(ZipError::Corrupt(msg.into()))
}

fn le16(b: &[u8], at: usize) -> Result<u16> {
    match b.get(at..at + 2) {
        Some(s) => Ok(u16::from_le_bytes([s[0], s[1]])),
        None => corrupt("record cut short"),
    }
}

fn le32(b: &[u8], at: usize) -> Result<u32> {
    match b.get(at..at + 4) {
        Some(s) => Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]])),
        None => corrupt("record cut short"),
    }
}

fn le64(b: &[u8], at: usize) -> Result<u64> {
    match b.get(at..at + 8) {
        Some(s) => {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            Ok(u64::from_le_bytes(a))
        }
        None => corrupt("record cut short"),
    }
}

fn to_usize(v: u64, what: &str) -> Result<usize> {
    usize::try_from(v).or_else(|_| corrupt(format!("{what} {v} does not fit in memory")))
}

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const CD_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;

/// Whether the bytes start like a zip archive (a local file header).
pub fn looks_like_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
}

impl<'a> ZipArchive<'a> {
    /// Parses the directory of an archive.
    pub fn new(bytes: &'a [u8]) -> Result<ZipArchive<'a>> {
        let len = bytes.len();
        if len < 22 {
            return Err(ZipError::NoEndRecord);
        }
        // The EOCD is the last 22 bytes plus a comment of up to 65535 bytes.
        let lowest = len.saturating_sub(22 + 0xFFFF);
        let eocd = (lowest..=len - 22)
            .rev()
            .find(|&i| {
                le32(bytes, i).ok() == Some(EOCD_SIG) && le16(bytes, i + 20).ok().map(usize::from) == Some(len - i - 22)
            })
            .or_else(|| (lowest..=len - 22).rev().find(|&i| le32(bytes, i).ok() == Some(EOCD_SIG)))
            .ok_or(ZipError::NoEndRecord)?;
        let disk = le16(bytes, eocd + 4)?;
        let cd_disk = le16(bytes, eocd + 6)?;
        let mut count = u64::from(le16(bytes, eocd + 10)?);
        let mut cd_size = u64::from(le32(bytes, eocd + 12)?);
        let mut cd_offset = u64::from(le32(bytes, eocd + 16)?);
        if disk != 0 && disk != 0xFFFF || cd_disk != 0 && cd_disk != 0xFFFF {
            return Err(ZipError::Unsupported("multi-disk archive".into()));
        }
        if count == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF {
            let loc = eocd.checked_sub(20).ok_or_else(|| ZipError::Corrupt("ZIP64 locator missing".into()))?;
            if le32(bytes, loc)? != ZIP64_LOCATOR_SIG {
                return corrupt("ZIP64 locator missing");
            }
            let rec = to_usize(le64(bytes, loc + 8)?, "ZIP64 record offset")?;
            if le32(bytes, rec)? != ZIP64_EOCD_SIG {
                return corrupt("ZIP64 end record missing");
            }
            count = le64(bytes, rec + 32)?;
            cd_size = le64(bytes, rec + 40)?;
            cd_offset = le64(bytes, rec + 48)?;
        }
        let cd_start = to_usize(cd_offset, "central directory offset")?;
        let cd_end = cd_start
            .checked_add(to_usize(cd_size, "central directory size")?)
            .filter(|&e| e <= len)
            .ok_or_else(|| ZipError::Corrupt("central directory lies outside the file".into()))?;
        if count > MAX_ENTRIES || count > cd_size / 46 + 1 {
            return corrupt(format!("{count} entries claimed in a {cd_size}-byte central directory"));
        }
        let cd = &bytes[cd_start..cd_end];
        let mut entries = Vec::with_capacity(count as usize);
        let mut spans: Vec<(u64, u64, usize)> = Vec::with_capacity(count as usize);
        let mut at = 0usize;
        for _ in 0..count {
            if le32(cd, at)? != CD_SIG {
                return corrupt("bad central directory entry signature");
            }
            let flags = le16(cd, at + 8)?;
            let method = le16(cd, at + 10)?;
            let crc32 = le32(cd, at + 16)?;
            let mut csize = u64::from(le32(cd, at + 20)?);
            let mut size = u64::from(le32(cd, at + 24)?);
            let name_len = usize::from(le16(cd, at + 28)?);
            let extra_len = usize::from(le16(cd, at + 30)?);
            let comment_len = usize::from(le16(cd, at + 32)?);
            let mut local = u64::from(le32(cd, at + 42)?);
            let name_bytes =
                cd.get(at + 46..at + 46 + name_len).ok_or_else(|| ZipError::Corrupt("entry name cut short".into()))?;
            let name = std::str::from_utf8(name_bytes)
                .map_err(|_| ZipError::Corrupt("entry name is not UTF-8".into()))?
                .to_string();
            let extra = cd
                .get(at + 46 + name_len..at + 46 + name_len + extra_len)
                .ok_or_else(|| ZipError::Corrupt(format!("entry `{name}`: extra field cut short")))?;
            // ZIP64 extended information: the 64-bit values of fields saturated at 0xFFFFFFFF.
            let mut e = 0usize;
            while e + 4 <= extra.len() {
                let id = le16(extra, e)?;
                let n = usize::from(le16(extra, e + 2)?);
                let body = extra
                    .get(e + 4..e + 4 + n)
                    .ok_or_else(|| ZipError::Corrupt(format!("entry `{name}`: extra field cut short")))?;
                if id == 1 {
                    let mut k = 0;
                    for field in [&mut size, &mut csize, &mut local] {
                        if *field == 0xFFFF_FFFF {
                            *field = le64(body, k)?;
                            k += 8;
                        }
                    }
                }
                e += 4 + n;
            }
            if flags & 1 != 0 {
                return Err(ZipError::Unsupported(format!("entry `{name}` is encrypted")));
            }
            if method != 0 && method != 8 {
                return Err(ZipError::Unsupported(format!("entry `{name}` uses compression method {method}")));
            }
            if method == 0 && csize != size {
                return corrupt(format!("stored entry `{name}` has compressed size {csize} but size {size}"));
            }
            // The local header gives the data's start.
            let lo = to_usize(local, "local header offset")?;
            if le32(bytes, lo)? != LOCAL_SIG {
                return corrupt(format!("entry `{name}`: no local header at offset {lo}"));
            }
            let lname = usize::from(le16(bytes, lo + 26)?);
            let lextra = usize::from(le16(bytes, lo + 28)?);
            if bytes.get(lo + 30..lo + 30 + lname) != Some(name_bytes) {
                let local = bytes.get(lo + 30..lo + 30 + lname).map(String::from_utf8_lossy).unwrap_or_default();
                return corrupt(format!(
                    "entry `{name}`: its local header names `{local}` (the directory and the header must agree)"
                ));
            }
            let data_offset = (lo + 30 + lname + lextra) as u64;
            if data_offset.checked_add(csize).is_none_or(|end| end > len as u64) {
                return corrupt(format!("entry `{name}`: data lies outside the file (the archive is truncated)"));
            }
            spans.push((lo as u64, data_offset + csize, entries.len()));
            entries.push(Entry { name, method, compressed_size: csize, size, data_offset, crc32 });
            at += 46 + name_len + extra_len + comment_len;
        }
        // Every entry (local header and data) must lie before the next one and before the
        // central directory: overlapping entries are refused, as Python's `zipfile` refuses them.
        spans.sort_unstable();
        for w in spans.windows(2) {
            if w[0].1 > w[1].0 {
                return corrupt(format!("entries `{}` and `{}` overlap", entries[w[0].2].name, entries[w[1].2].name));
            }
        }
        if let Some(last) = spans.last()
            && last.1 > cd_start as u64
        {
            return corrupt(format!("entry `{}` overlaps the central directory", entries[last.2].name));
        }
        let mut by_name = HashMap::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            if by_name.insert(e.name.clone(), i).is_some() {
                return corrupt(format!("entry `{}` appears twice", e.name));
            }
        }
        Ok(ZipArchive { bytes, entries, by_name })
    }

    /// Every entry, in central-directory order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry called `name`.
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.index_of(name).map(|i| &self.entries[i])
    }

    /// The position of the entry called `name` in [`ZipArchive::entries`].
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The raw stored bytes of a stored entry (no copy), or `None` for a compressed one.
    pub fn stored(&self, e: &Entry) -> Option<&'a [u8]> {
        if e.method != 0 {
            return None;
        }
        let start = e.data_offset as usize;
        self.bytes.get(start..start + e.size as usize)
    }

    /// An entry's contents: borrowed when stored, inflated (at most `max_size` bytes) otherwise.
    pub fn read(&self, e: &Entry, max_size: u64) -> Result<Cow<'a, [u8]>> {
        read_entry(self.bytes, e, max_size)
    }
}

/// An entry's contents from the archive's bytes: borrowed when stored, inflated (at most
/// `max_size` bytes) otherwise.
pub fn read_entry<'a>(bytes: &'a [u8], e: &Entry, max_size: u64) -> Result<Cow<'a, [u8]>> {
    let start = usize::try_from(e.data_offset).or_else(|_| corrupt("entry offset too large"))?;
    let clen = usize::try_from(e.compressed_size).or_else(|_| corrupt("entry too large"))?;
    let input = bytes
        .get(start..start.saturating_add(clen))
        .ok_or_else(|| ZipError::Corrupt(format!("entry `{}` lies outside the file", e.name)))?;
    if e.method == 0 {
        return Ok(Cow::Borrowed(input));
    }
    let err = |reason: String| ZipError::Inflate { name: e.name.clone(), reason };
    if e.size > max_size {
        return Err(err(format!("inflates to {} bytes, over the limit of {max_size}", e.size)));
    }
    if e.size > e.compressed_size.saturating_mul(MAX_DEFLATE_RATIO).saturating_add(1024) {
        return Err(err(format!(
            "claims {} bytes from {} compressed: not possible with deflate",
            e.size, e.compressed_size
        )));
    }
    let out = miniz_oxide::inflate::decompress_to_vec_with_limit(input, e.size as usize).map_err(|status| {
        err(format!("deflate data is corrupt or longer than the directory says ({:?})", status.status))
    })?;
    if out.len() as u64 != e.size {
        return Err(err(format!("inflated to {} bytes, the directory says {}", out.len(), e.size)));
    }
    Ok(Cow::Owned(out))
}
