//! What a file is, decided by its structure rather than by its first byte.
//!
//! A safetensors file begins with its header length, which can begin with any byte: one header
//! length in 32 starts with `0x80` (a pickle's PROTO opcode), and a header of 19,280 bytes starts
//! with `PK`. So a plausible safetensors header wins (a length that fits the file and the limit,
//! and `{` right after it); a zip needs a valid end-of-central-directory record; a pickle needs a
//! PROTO opcode of protocol 2 to 5 (which the legacy PyTorch format begins with too).

use crate::header::{LEN_PREFIX, MAX_HEADER_LEN};

/// Bytes of the file's beginning [`detect()`] looks at: the length prefix, and enough of the
/// header to find its `{` after any JSON whitespace a writer left before it.
pub const HEAD_LEN: usize = LEN_PREFIX + 64;

/// Bytes of the file's end [`detect()`] looks at: an end-of-central-directory record (22 bytes)
/// and the longest zip comment after it.
pub const TAIL_LEN: usize = 22 + 65_535;

/// A file's kind, by structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A plausible safetensors header.
    Safetensors,
    /// A zip archive (PyTorch's `torch.save` format since 1.6).
    Zip,
    /// A pickle (the legacy PyTorch format, `pickle.dump`).
    Pickle,
    /// None of these.
    Other,
}

/// Judges a file of `file_len` bytes from its first bytes (`head`, up to [`HEAD_LEN`]) and its
/// last bytes (`tail`, up to [`TAIL_LEN`]; the whole file when shorter).
pub fn detect(head: &[u8], tail: &[u8], file_len: u64) -> FileKind {
    if plausible_safetensors(head, file_len) {
        FileKind::Safetensors
    } else if has_zip_directory(tail, file_len) {
        FileKind::Zip
    } else if matches!(head, [0x80, 2..=5, ..]) {
        FileKind::Pickle
    } else {
        FileKind::Other
    }
}

/// A header length that fits the file and the limit, followed by `{` (after JSON whitespace,
/// which parsers accept, within the header and the bytes given).
fn plausible_safetensors(head: &[u8], file_len: u64) -> bool {
    let Some(len) = head.get(..LEN_PREFIX) else { return false };
    let mut le = [0u8; LEN_PREFIX];
    le.copy_from_slice(len);
    let n = u64::from_le_bytes(le);
    if !(2..=MAX_HEADER_LEN).contains(&n) || n > file_len.saturating_sub(LEN_PREFIX as u64) {
        return false;
    }
    let header = head.get(LEN_PREFIX..).unwrap_or_default();
    let header = header.get(..usize::try_from(n).unwrap_or(usize::MAX).min(header.len())).unwrap_or_default();
    header.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r')) == Some(&b'{')
}

/// An end-of-central-directory record whose comment ends the file exactly and whose directory
/// lies before it (or a ZIP64 record, whose 32-bit fields are saturated).
fn has_zip_directory(tail: &[u8], file_len: u64) -> bool {
    let Some(tail_start) = file_len.checked_sub(tail.len() as u64) else { return false };
    let u16_at = |at: usize| tail.get(at..at + 2).and_then(|b| b.try_into().ok()).map(u16::from_le_bytes);
    let u32_at = |at: usize| tail.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    (0..tail.len().saturating_sub(21)).rev().any(|p| {
        if tail.get(p..p + 4) != Some(b"PK\x05\x06") {
            return false;
        }
        let (Some(comment), Some(size), Some(offset)) = (u16_at(p + 20), u32_at(p + 12), u32_at(p + 16)) else {
            return false;
        };
        let record_at = tail_start + p as u64;
        p + 22 + usize::from(comment) == tail.len()
            && (offset == u32::MAX || size == u32::MAX || u64::from(offset) + u64::from(size) <= record_at)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_of(n: u64) -> Vec<u8> {
        let mut h = n.to_le_bytes().to_vec();
        h.push(b'{');
        h
    }

    #[test]
    fn a_header_length_starting_like_a_pickle_or_a_zip_is_safetensors() {
        for n in [0x80u64, 0x0280, 19_280, 8, 2_048] {
            assert_eq!(detect(&head_of(n), &[], n + 8), FileKind::Safetensors, "{n}");
        }
        // Too long for the file, or no brace: not safetensors.
        assert_eq!(detect(&head_of(0x0280), &[], 100), FileKind::Pickle);
        assert_eq!(detect(&[0x80, 2, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9], &[], 1000), FileKind::Pickle);
        assert_eq!(detect(&[0x80, 9, 0, 0, 0, 0, 0, 0, 0], &[], 1000), FileKind::Other);
    }

    #[test]
    fn a_zip_needs_its_directory() {
        let mut eocd = b"PK\x05\x06".to_vec();
        eocd.extend_from_slice(&[0; 8]);
        eocd.extend_from_slice(&46u32.to_le_bytes()); // directory size
        eocd.extend_from_slice(&100u32.to_le_bytes()); // directory offset
        eocd.extend_from_slice(&0u16.to_le_bytes()); // comment length
        let head = b"PK\x03\x04\x14\x00\x00\x00\x00";
        assert_eq!(detect(head, &eocd, 168), FileKind::Zip);
        // A directory that would overlap the record, a record not at the end: not a zip.
        assert_eq!(detect(head, &eocd, 150), FileKind::Other);
        let mut longer = eocd.clone();
        longer.push(0);
        assert_eq!(detect(head, &longer, 169), FileKind::Other);
        // With its comment.
        let mut commented = eocd[..20].to_vec();
        commented.extend_from_slice(&3u16.to_le_bytes());
        commented.extend_from_slice(b"abc");
        assert_eq!(detect(head, &commented, 171), FileKind::Zip);
    }

    #[test]
    fn short_or_empty_input_is_other() {
        assert_eq!(detect(&[], &[], 0), FileKind::Other);
        assert_eq!(detect(&[0x80], &[0x80], 1), FileKind::Other);
        assert_eq!(detect(&[1, 0, 0, 0, 0, 0, 0, 0, b'{'], &[], 9), FileKind::Other);
    }

    #[test]
    fn json_whitespace_before_the_brace_is_allowed() {
        let mut head = 0x80u64.to_le_bytes().to_vec();
        head.extend_from_slice(b" \n\t{");
        assert_eq!(detect(&head, &[], 0x88), FileKind::Safetensors);
        let mut not_json = 0x80u64.to_le_bytes().to_vec();
        not_json.extend_from_slice(b"  x{");
        assert_eq!(detect(&not_json, &[], 0x88), FileKind::Other);
    }
}
