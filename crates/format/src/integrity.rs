//! Per-tensor and header checksums stored in `__metadata__` (see `docs/format.md`).
//!
//! The value of [`INTEGRITY_KEY`] is a JSON document:
//! `{"version":1,"algorithm":"xxh3-64","header":"<16 hex>","tensors":{"<name>":"<16 hex>",…}}`.
//! `tensors` holds the xxh3-64 of each tensor's bytes; `header` is the xxh3-64 of a canonical
//! encoding of every tensor entry and every other metadata pair (see [`header_digest`]), so a
//! damaged shape, dtype or metadata value is caught as surely as damaged data.

use std::collections::BTreeMap;

use xxhash_rust::xxh3::Xxh3;

use crate::error::{FormatError, Result};
use crate::header::{Header, Metadata, TensorInfo};

/// The metadata key that holds integrity information.
pub const INTEGRITY_KEY: &str = "safeckpt.integrity";
/// The integrity schema version this crate writes and reads.
pub const INTEGRITY_VERSION: u64 = 1;
/// The checksum algorithm's name as written in the integrity document.
pub const CHECKSUM_ALGORITHM: &str = "xxh3-64";
/// Width of a checksum in hex digits.
pub const CHECKSUM_HEX_LEN: usize = 16;

/// xxh3-64 of `bytes`.
pub fn checksum(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// Incremental xxh3-64, for data that arrives in pieces. Gives the same value as [`checksum`]
/// over the concatenation.
#[derive(Clone, Default)]
pub struct Checksummer(Xxh3);

impl Checksummer {
    /// A fresh hasher.
    pub fn new() -> Self {
        Checksummer(Xxh3::new())
    }
    /// Feeds more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    /// The checksum of everything fed so far.
    pub fn finish(&self) -> u64 {
        self.0.digest()
    }
}

impl std::fmt::Debug for Checksummer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checksummer").finish_non_exhaustive()
    }
}

/// Formats a checksum as 16 lowercase hex digits.
pub fn checksum_hex(v: u64) -> String {
    format!("{v:016x}")
}

fn parse_hex(s: &str, what: &str) -> Result<u64> {
    // Only the canonical form (lowercase) is accepted, so that no change to the record's text
    // goes unnoticed.
    if s.len() != CHECKSUM_HEX_LEN || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(FormatError::BadIntegrity { reason: format!("{what}: `{s}` is not 16 lowercase hex digits") });
    }
    u64::from_str_radix(s, 16)
        .map_err(|_| FormatError::BadIntegrity { reason: format!("{what}: `{s}` is not 16 hex digits") })
}

/// Digest of everything in a header except the integrity document itself.
///
/// Canonical encoding, all integers little-endian `u64`, strings as length then UTF-8 bytes:
/// the tensor count, then for each tensor in data-offset order its name, dtype name, rank, each
/// dimension, begin and end offsets; then the count of metadata pairs other than
/// [`INTEGRITY_KEY`], then each key and value in bytewise key order.
pub fn header_digest<'a>(tensors: impl ExactSizeIterator<Item = &'a TensorInfo>, metadata: Option<&Metadata>) -> u64 {
    let mut h = Xxh3::new();
    let num = |h: &mut Xxh3, v: usize| h.update(&(v as u64).to_le_bytes());
    let text = |h: &mut Xxh3, s: &str| {
        h.update(&(s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    num(&mut h, tensors.len());
    for t in tensors {
        text(&mut h, &t.name);
        text(&mut h, t.dtype.as_str());
        num(&mut h, t.shape.len());
        for &d in &t.shape {
            num(&mut h, d);
        }
        num(&mut h, t.data_offsets.0);
        num(&mut h, t.data_offsets.1);
    }
    let pairs: Vec<(&String, &String)> =
        metadata.into_iter().flatten().filter(|(k, _)| k.as_str() != INTEGRITY_KEY).collect();
    num(&mut h, pairs.len());
    for (k, v) in pairs {
        text(&mut h, k);
        text(&mut h, v);
    }
    h.digest()
}

/// The integrity document of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Integrity {
    /// Recorded [`header_digest`].
    pub header: u64,
    /// Recorded checksum of each tensor's bytes, by name.
    pub tensors: BTreeMap<String, u64>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntegrity {
    version: u64,
    algorithm: String,
    header: String,
    tensors: BTreeMap<String, String>,
}

impl Integrity {
    /// Reads the integrity document of a header, if it has one.
    pub fn from_header(header: &Header) -> Result<Option<Integrity>> {
        header.metadata_value(INTEGRITY_KEY).map(Integrity::parse).transpose()
    }

    /// Parses an integrity document.
    pub fn parse(value: &str) -> Result<Integrity> {
        let raw: RawIntegrity = serde_json::from_str(value)
            .map_err(|e| FormatError::BadIntegrity { reason: format!("not a valid document: {e}") })?;
        if raw.version != INTEGRITY_VERSION {
            return Err(FormatError::BadIntegrity {
                reason: format!("unsupported version {} (this build reads {INTEGRITY_VERSION})", raw.version),
            });
        }
        if raw.algorithm != CHECKSUM_ALGORITHM {
            return Err(FormatError::BadIntegrity {
                reason: format!("unsupported algorithm `{}` (this build knows {CHECKSUM_ALGORITHM})", raw.algorithm),
            });
        }
        let header = parse_hex(&raw.header, "header checksum")?;
        let tensors = raw
            .tensors
            .into_iter()
            .map(|(k, v)| {
                let sum = parse_hex(&v, &format!("checksum of `{k}`"))?;
                Ok((k, sum))
            })
            .collect::<Result<_>>()?;
        Ok(Integrity { header, tensors })
    }

    /// Whether the header (tensor table and other metadata) matches its recorded digest.
    pub fn header_matches(&self, header: &Header) -> bool {
        header_digest(header.tensors().iter(), header.metadata()) == self.header
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_equals_one_shot() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut c = Checksummer::new();
        for part in data.chunks(977) {
            c.update(part);
        }
        assert_eq!(c.finish(), checksum(&data));
        assert_eq!(checksum_hex(0xab), "00000000000000ab");
    }

    #[test]
    fn parse_rejects_bad_documents() {
        let ok =
            r#"{"version":1,"algorithm":"xxh3-64","header":"00000000000000ff","tensors":{"a":"0123456789abcdef"}}"#;
        let i = Integrity::parse(ok).unwrap();
        assert_eq!(i.header, 255);
        assert_eq!(i.tensors["a"], 0x0123456789abcdef);
        for bad in [
            r#"{"version":2,"algorithm":"xxh3-64","header":"00000000000000ff","tensors":{}}"#,
            r#"{"version":1,"algorithm":"crc32","header":"00000000000000ff","tensors":{}}"#,
            r#"{"version":1,"algorithm":"xxh3-64","header":"ff","tensors":{}}"#,
            r#"{"version":1,"algorithm":"xxh3-64","header":"00000000000000ff","tensors":{"a":"zz"}}"#,
            r#"{"version":1,"algorithm":"xxh3-64","header":"00000000000000FF","tensors":{}}"#,
            r#"{"version":1,"algorithm":"xxh3-64","header":"00000000000000ff","tensors":{"a":"0123456789aBcdef"}}"#,
            r#"{"version":1}"#,
            "nonsense",
        ] {
            assert!(matches!(Integrity::parse(bad), Err(FormatError::BadIntegrity { .. })), "{bad}");
        }
    }
}
