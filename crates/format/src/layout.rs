//! Planning where tensors go and encoding the header.
//!
//! For the same tensors and at most one metadata key, the bytes produced here equal the
//! `safetensors` crate's `serialize` output: tensors sorted by dtype (descending enum order)
//! then name (bytewise), packed back to back, compact JSON with `__metadata__` first and fields in
//! the order `dtype`, `shape`, `data_offsets`, then spaces up to a multiple of 8. With more
//! metadata keys ours are sorted, so output is deterministic where the reference's is not.

use std::ops::Range;

use crate::dtype::{Dtype, numel};
use crate::error::{FormatError, Result};
use crate::header::{LEN_PREFIX, MAX_HEADER_LEN, METADATA_KEY, Metadata, TensorInfo};
use crate::integrity::{
    CHECKSUM_ALGORITHM, CHECKSUM_HEX_LEN, INTEGRITY_KEY, INTEGRITY_VERSION, checksum_hex, header_digest,
};
use crate::json::{escape_into, write_json_string};

/// What the caller wants to store: a name, a dtype and a shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorSpec {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// A new spec.
    pub fn new(name: impl Into<String>, dtype: Dtype, shape: impl Into<Vec<usize>>) -> Self {
        TensorSpec { name: name.into(), dtype, shape: shape.into() }
    }

    /// Bytes this tensor occupies, with the same checks the reader applies.
    pub fn byte_len(&self) -> Result<usize> {
        let overflow = || FormatError::ShapeOverflow { tensor: self.name.clone(), shape: self.shape.clone() };
        let n = numel(&self.shape).ok_or_else(overflow)?;
        let bits = n.checked_mul(self.dtype.bits()).ok_or_else(overflow)?;
        if bits % 8 != 0 {
            return Err(FormatError::SubByteMisaligned { tensor: self.name.clone(), dtype: self.dtype, numel: n });
        }
        Ok(bits / 8)
    }
}

/// Options for [`Layout::plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutOptions {
    /// Record per-tensor and header checksums under [`INTEGRITY_KEY`] (default on).
    pub checksums: bool,
    /// The data section starts at a multiple of this many bytes (a power of two, at least 8;
    /// default 8, the reference writer's). The header is padded with trailing spaces, which every
    /// safetensors reader accepts; 4096 lets the data be read with `O_DIRECT` or mapped by page.
    pub data_alignment: usize,
}

impl Default for LayoutOptions {
    fn default() -> Self {
        LayoutOptions { checksums: true, data_alignment: 8 }
    }
}

/// A tensor placed in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTensor {
    /// Name, dtype, shape and data offsets as they appear in the header.
    pub info: TensorInfo,
    /// Position of this tensor in the caller's input.
    pub input_index: usize,
}

/// A complete plan for one file: where each tensor's bytes go and the encoded header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    tensors: Vec<PlannedTensor>,
    by_input: Vec<usize>,
    /// Positions in `tensors`, sorted by name (for lookups by name in O(log n)).
    by_name: Vec<usize>,
    header: Vec<u8>,
    checksum_slots: Option<Vec<usize>>,
    data_len: usize,
}

impl Layout {
    /// Plans a file for `specs` (in caller order) with optional metadata.
    ///
    /// Refuses a duplicate name, the reserved name `__metadata__`, a shape whose byte count
    /// overflows or is not whole, and a header over the size limit. Any `safeckpt.integrity` entry in
    /// `metadata` is dropped: it is recomputed when checksums are on and would be stale otherwise.
    pub fn plan(specs: Vec<TensorSpec>, metadata: Option<Metadata>, opts: &LayoutOptions) -> Result<Layout> {
        let align = opts.data_alignment.max(8);
        if !align.is_power_of_two() {
            return Err(FormatError::InvalidAlignment { alignment: align });
        }
        let mut lens = Vec::with_capacity(specs.len());
        for s in &specs {
            if s.name == METADATA_KEY {
                return Err(FormatError::ReservedName);
            }
            lens.push(s.byte_len()?);
        }
        let mut order: Vec<usize> = (0..specs.len()).collect();
        order.sort_by(|&a, &b| {
            let (sa, sb) = (&specs[a], &specs[b]);
            sb.dtype.cmp(&sa.dtype).then_with(|| sa.name.cmp(&sb.name))
        });
        if specs.len() > 1 {
            let mut names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            names.sort_unstable();
            if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
                return Err(FormatError::DuplicateTensor { tensor: w[0].to_string() });
            }
        }
        let mut slots: Vec<Option<TensorSpec>> = specs.into_iter().map(Some).collect();
        let mut tensors = Vec::with_capacity(order.len());
        let mut by_input = vec![0usize; order.len()];
        let mut offset = 0usize;
        for (pos, &i) in order.iter().enumerate() {
            let spec = slots[i].take().expect("each input is placed once");
            let end = offset
                .checked_add(lens[i])
                .ok_or_else(|| FormatError::ShapeOverflow { tensor: spec.name.clone(), shape: spec.shape.clone() })?;
            tensors.push(PlannedTensor {
                info: TensorInfo { name: spec.name, dtype: spec.dtype, shape: spec.shape, data_offsets: (offset, end) },
                input_index: i,
            });
            by_input[i] = pos;
            offset = end;
        }
        let mut metadata = metadata;
        if let Some(m) = metadata.as_mut() {
            m.remove(INTEGRITY_KEY);
        }
        if opts.checksums {
            // The digest travels to the encoder as the placeholder value of the integrity key.
            let digest = header_digest(tensors.iter().map(|t| &t.info), metadata.as_ref());
            metadata.get_or_insert_with(Metadata::new).insert(INTEGRITY_KEY.to_string(), checksum_hex(digest));
        }
        let (json, slots) = encode_json(&tensors, metadata.as_ref(), opts.checksums);
        let unpadded = json.len();
        let padded_total = (LEN_PREFIX + unpadded).next_multiple_of(align);
        let n = padded_total - LEN_PREFIX;
        if n as u64 > MAX_HEADER_LEN {
            return Err(FormatError::PlannedHeaderTooLarge { len: n, max: MAX_HEADER_LEN as usize });
        }
        let mut header = Vec::with_capacity(padded_total);
        header.extend_from_slice(&(n as u64).to_le_bytes());
        header.extend_from_slice(json.as_bytes());
        header.resize(padded_total, b' ');
        let checksum_slots = slots.map(|v| v.into_iter().map(|p| p + LEN_PREFIX).collect());
        let mut by_name: Vec<usize> = (0..tensors.len()).collect();
        by_name.sort_unstable_by(|&a, &b| tensors[a].info.name.cmp(&tensors[b].info.name));
        Ok(Layout { tensors, by_input, by_name, header, checksum_slots, data_len: offset })
    }

    /// Tensors in file order.
    pub fn tensors(&self) -> &[PlannedTensor] {
        &self.tensors
    }

    /// Position in [`Layout::tensors`] of the caller's `input_index`-th spec.
    pub fn position_of_input(&self, input_index: usize) -> Option<usize> {
        self.by_input.get(input_index).copied()
    }

    /// Position in [`Layout::tensors`] of the tensor called `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        let tensors = &self.tensors;
        self.by_name.binary_search_by(|&p| tensors[p].info.name.as_str().cmp(name)).ok().map(|i| self.by_name[i])
    }

    /// The encoded header: length prefix, JSON and padding. When checksums are on, the per-tensor
    /// checksum values are zero placeholders; see [`Layout::patch_checksum`].
    pub fn header_bytes(&self) -> &[u8] {
        &self.header
    }

    /// File offset where the data section begins.
    pub fn data_start(&self) -> usize {
        self.header.len()
    }

    /// Data section length.
    pub fn data_len(&self) -> usize {
        self.data_len
    }

    /// Total file length.
    pub fn total_len(&self) -> u64 {
        self.header.len() as u64 + self.data_len as u64
    }

    /// File byte range of tensor `pos`'s data.
    pub fn file_range(&self, pos: usize) -> Range<u64> {
        let (b, e) = self.tensors[pos].info.data_offsets;
        let start = self.data_start() as u64;
        start + b as u64..start + e as u64
    }

    /// Whether this plan records checksums.
    pub fn has_checksums(&self) -> bool {
        self.checksum_slots.is_some()
    }

    /// File byte range of tensor `pos`'s checksum placeholder (16 hex digits), if checksums are on.
    pub fn checksum_slot(&self, pos: usize) -> Option<Range<usize>> {
        let start = *self.checksum_slots.as_ref()?.get(pos)?;
        Some(start..start + CHECKSUM_HEX_LEN)
    }

    /// Writes tensor `pos`'s checksum into a copy of the header bytes.
    pub fn patch_checksum(&self, header: &mut [u8], pos: usize, sum: u64) {
        if let Some(r) = self.checksum_slot(pos) {
            header[r].copy_from_slice(checksum_hex(sum).as_bytes());
        }
    }

    /// The header with every checksum filled in (`sums` in file order).
    pub fn finished_header(&self, sums: &[u64]) -> Vec<u8> {
        let mut h = self.header.clone();
        for (pos, &s) in sums.iter().enumerate() {
            self.patch_checksum(&mut h, pos, s);
        }
        h
    }
}

/// Encodes the header JSON; returns it with the JSON offsets of the checksum placeholders.
fn encode_json(
    tensors: &[PlannedTensor],
    metadata: Option<&Metadata>,
    checksums: bool,
) -> (String, Option<Vec<usize>>) {
    let mut out = String::with_capacity(64 + tensors.len() * 96);
    let mut slots = None;
    out.push('{');
    if let Some(meta) = metadata {
        out.push('"');
        out.push_str(METADATA_KEY);
        out.push_str("\":{");
        for (i, (k, v)) in meta.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_json_string(&mut out, k);
            out.push(':');
            if checksums && k == INTEGRITY_KEY {
                slots = Some(encode_integrity(&mut out, tensors, v));
            } else {
                write_json_string(&mut out, v);
            }
        }
        out.push('}');
        if !tensors.is_empty() {
            out.push(',');
        }
    }
    let mut num = itoa_buf();
    for (i, t) in tensors.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_string(&mut out, &t.info.name);
        out.push_str(":{\"dtype\":\"");
        out.push_str(t.info.dtype.as_str());
        out.push_str("\",\"shape\":[");
        for (j, d) in t.info.shape.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            out.push_str(num.format(*d));
        }
        out.push_str("],\"data_offsets\":[");
        out.push_str(num.format(t.info.data_offsets.0));
        out.push(',');
        out.push_str(num.format(t.info.data_offsets.1));
        out.push_str("]}");
    }
    out.push('}');
    (out, slots)
}

/// Writes the integrity document as a JSON string value. `header_hex` is the header digest.
fn encode_integrity(out: &mut String, tensors: &[PlannedTensor], header_hex: &str) -> Vec<usize> {
    let mut slots = Vec::with_capacity(tensors.len());
    out.push('"');
    escape_into(
        out,
        &format!(
            "{{\"version\":{INTEGRITY_VERSION},\"algorithm\":\"{CHECKSUM_ALGORITHM}\",\"header\":\"{header_hex}\",\"tensors\":{{"
        ),
    );
    let mut inner = String::new();
    for (i, t) in tensors.iter().enumerate() {
        inner.clear();
        if i > 0 {
            inner.push(',');
        }
        write_json_string(&mut inner, &t.info.name);
        inner.push_str(":\"");
        escape_into(out, &inner);
        slots.push(out.len());
        out.push_str(&"0".repeat(CHECKSUM_HEX_LEN));
        escape_into(out, "\"");
    }
    escape_into(out, "}}");
    out.push('"');
    slots
}

/// A tiny integer formatter that avoids an allocation per number.
struct NumBuf([u8; 20]);

fn itoa_buf() -> NumBuf {
    NumBuf([0; 20])
}

impl NumBuf {
    fn format(&mut self, mut v: usize) -> &str {
        let mut i = self.0.len();
        loop {
            i -= 1;
            self.0[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        std::str::from_utf8(&self.0[i..]).unwrap_or("0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::Header;
    use crate::integrity::{Integrity, checksum};

    #[test]
    fn empty_file_matches_golden_vector() {
        let l = Layout::plan(vec![], None, &LayoutOptions { checksums: false, ..Default::default() }).unwrap();
        assert_eq!(l.header_bytes(), b"\x08\0\0\0\0\0\0\0{}      ");
    }

    #[test]
    fn order_is_dtype_descending_then_name() {
        let specs = vec![
            TensorSpec::new("b", Dtype::U8, [3]),
            TensorSpec::new("a", Dtype::F32, [2]),
            TensorSpec::new("c", Dtype::F64, [1]),
            TensorSpec::new("a2", Dtype::F32, [1]),
        ];
        let l = Layout::plan(specs, None, &LayoutOptions::default()).unwrap();
        let names: Vec<_> = l.tensors().iter().map(|t| t.info.name.as_str()).collect();
        assert_eq!(names, ["c", "a", "a2", "b"]);
        assert_eq!(l.position_of_input(0), Some(3));
        assert_eq!(l.data_len(), 8 + 8 + 4 + 3);
        assert_eq!(l.data_start() % 8, 0);
    }

    #[test]
    fn rejects_bad_specs() {
        let o = LayoutOptions::default();
        let dup = vec![TensorSpec::new("x", Dtype::U8, [1]), TensorSpec::new("x", Dtype::F32, [1])];
        assert!(matches!(Layout::plan(dup, None, &o), Err(FormatError::DuplicateTensor { .. })));
        let reserved = vec![TensorSpec::new("__metadata__", Dtype::U8, [1])];
        assert!(matches!(Layout::plan(reserved, None, &o), Err(FormatError::ReservedName)));
        let sub = vec![TensorSpec::new("x", Dtype::F4, [3])];
        assert!(matches!(Layout::plan(sub, None, &o), Err(FormatError::SubByteMisaligned { .. })));
        let big = vec![TensorSpec::new("x", Dtype::F64, [usize::MAX / 4])];
        assert!(matches!(Layout::plan(big, None, &o), Err(FormatError::ShapeOverflow { .. })));
    }

    #[test]
    fn checksums_round_trip_through_the_parser() {
        let specs = vec![TensorSpec::new("w\"eird\\name\n", Dtype::F32, [2]), TensorSpec::new("b", Dtype::U8, [3])];
        let mut meta = Metadata::new();
        meta.insert("epoch".into(), "3".into());
        meta.insert(INTEGRITY_KEY.into(), "stale".into());
        let opts = LayoutOptions { checksums: true, data_alignment: 4096 };
        let l = Layout::plan(specs, Some(meta), &opts).unwrap();
        assert_eq!(l.data_start() % 4096, 0);
        let data = [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
        let sums = [checksum(&data[..8]), checksum(&data[8..])];
        let mut file = l.finished_header(&sums);
        file.extend_from_slice(&data);
        let h = Header::parse(&file).unwrap();
        let integ = Integrity::from_header(&h).unwrap().unwrap();
        assert!(integ.header_matches(&h));
        assert_eq!(integ.tensors["w\"eird\\name\n"], sums[0]);
        assert_eq!(integ.tensors["b"], sums[1]);
        assert_eq!(h.metadata_value("epoch"), Some("3"));
    }
}
