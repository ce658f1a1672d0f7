//! The format crate's error type.

use crate::Dtype;

/// Everything that can be wrong with a safetensors header or with a plan to write one.
///
/// Variants name the tensor, key or byte position concerned; the reader adds the file path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The input is shorter than the 8-byte length prefix.
    #[error("file is {len} bytes long, shorter than the 8-byte header length prefix")]
    HeaderTooSmall {
        /// Bytes available.
        len: u64,
    },
    /// The length prefix claims a header larger than [`crate::MAX_HEADER_LEN`].
    #[error("header length {len} exceeds the limit of {max} bytes")]
    HeaderTooLarge {
        /// Claimed header length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The bytes are a known other format (their length prefix makes no sense as safetensors).
    #[error("not a safetensors file: this is {kind}")]
    OtherFormat {
        /// What the first bytes say the file is.
        kind: &'static str,
    },
    /// The length prefix points past the end of the file.
    #[error("header length {header_len} points past the end of the file ({file_len} bytes)")]
    HeaderPastEnd {
        /// Claimed header length.
        header_len: u64,
        /// Actual file length.
        file_len: u64,
    },
    /// The header is not valid UTF-8.
    #[error("header is not valid UTF-8 (at header byte {at})")]
    HeaderUtf8 {
        /// Byte offset inside the header of the first invalid byte.
        at: usize,
    },
    /// The header is not the JSON the format requires.
    #[error("header JSON is invalid at header byte {at}: {msg}")]
    HeaderJson {
        /// Byte offset inside the header.
        at: usize,
        /// What was expected or found.
        msg: String,
    },
    /// JSON nesting deeper than the parser allows.
    #[error("header JSON nests deeper than {max} levels (at header byte {at})")]
    TooDeep {
        /// Byte offset inside the header.
        at: usize,
        /// The nesting limit.
        max: usize,
    },
    /// A tensor has an unknown `dtype`.
    #[error("tensor `{tensor}`: unknown dtype `{dtype}`")]
    UnknownDtype {
        /// The tensor.
        tensor: String,
        /// The dtype string found.
        dtype: String,
    },
    /// A tensor entry lacks a required field.
    #[error("tensor `{tensor}`: missing field `{field}`")]
    MissingField {
        /// The tensor.
        tensor: String,
        /// `dtype`, `shape` or `data_offsets`.
        field: &'static str,
    },
    /// A tensor entry has the same field twice.
    #[error("tensor `{tensor}`: duplicate field `{field}`")]
    DuplicateField {
        /// The tensor.
        tensor: String,
        /// The repeated field.
        field: String,
    },
    /// Two tensors have the same name.
    #[error("tensor `{tensor}` appears more than once in the header")]
    DuplicateTensor {
        /// The name.
        tensor: String,
    },
    /// `__metadata__` appears twice, or a tensor tries to use the reserved name.
    #[error("the name `__metadata__` is reserved for the metadata map and cannot name a tensor")]
    ReservedName,
    /// `__metadata__` is not a string-to-string map.
    #[error("`__metadata__` must map strings to strings; key `{key}` is not a string value")]
    MetadataNotString {
        /// The offending key.
        key: String,
    },
    /// A metadata key appears twice.
    #[error("metadata key `{key}` appears more than once")]
    DuplicateMetadataKey {
        /// The key.
        key: String,
    },
    /// The number of elements or bytes of a tensor overflows.
    #[error("tensor `{tensor}`: shape {shape:?} overflows the element or byte count")]
    ShapeOverflow {
        /// The tensor.
        tensor: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// A sub-byte dtype whose elements do not fill whole bytes.
    #[error("tensor `{tensor}`: {numel} elements of {dtype} do not fill a whole number of bytes")]
    SubByteMisaligned {
        /// The tensor.
        tensor: String,
        /// Its dtype.
        dtype: Dtype,
        /// Its element count.
        numel: usize,
    },
    /// A tensor's data range length disagrees with its dtype and shape.
    #[error("tensor `{tensor}`: {dtype} {shape:?} needs {expected} bytes but its data range holds {actual}")]
    ByteLengthMismatch {
        /// The tensor.
        tensor: String,
        /// Its dtype.
        dtype: Dtype,
        /// Its shape.
        shape: Vec<usize>,
        /// Bytes implied by dtype and shape.
        expected: usize,
        /// Bytes in the data range (or supplied).
        actual: usize,
    },
    /// `data_offsets` has its end before its begin.
    #[error("tensor `{tensor}`: data_offsets [{begin}, {end}] end before they begin")]
    OffsetsInverted {
        /// The tensor.
        tensor: String,
        /// Begin offset.
        begin: usize,
        /// End offset.
        end: usize,
    },
    /// There is a gap in the data section before this tensor.
    #[error("tensor `{tensor}`: data section has a hole; tensor begins at {begin}, expected {expected}")]
    Hole {
        /// The tensor after the gap.
        tensor: String,
        /// Its begin offset.
        begin: usize,
        /// Where the previous tensor ended.
        expected: usize,
    },
    /// This tensor's range overlaps the previous one.
    #[error(
        "tensor `{tensor}`: data range begins at {begin}, inside the range of `{previous}` which ends at {expected}"
    )]
    Overlap {
        /// The tensor.
        tensor: String,
        /// The tensor it overlaps.
        previous: String,
        /// Its begin offset.
        begin: usize,
        /// Where the previous tensor ended.
        expected: usize,
    },
    /// The file is shorter than the header says.
    #[error("file is truncated: header describes {expected} bytes but the file has {actual}")]
    Truncated {
        /// Length the header implies.
        expected: u64,
        /// Actual length.
        actual: u64,
    },
    /// The file has bytes after the last tensor.
    #[error("file has {extra} trailing bytes after the last tensor (expected length {expected})")]
    TrailingBytes {
        /// Length the header implies.
        expected: u64,
        /// Surplus bytes.
        extra: u64,
    },
    /// A value does not fit the platform's `usize`.
    #[error("{what} value {value} does not fit this platform's address space")]
    TooLargeForPlatform {
        /// What the value is.
        what: &'static str,
        /// The value.
        value: u64,
    },
    /// A planned header would exceed [`crate::MAX_HEADER_LEN`].
    #[error("the header would be {len} bytes, over the limit of {max}")]
    PlannedHeaderTooLarge {
        /// Planned length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A data alignment that is not a power of two.
    #[error("data alignment {alignment} is not a power of two")]
    InvalidAlignment {
        /// The requested alignment.
        alignment: usize,
    },
    /// Integrity metadata (`safeckpt.integrity`) is present but malformed.
    #[error("integrity metadata is malformed: {reason}")]
    BadIntegrity {
        /// What is wrong.
        reason: String,
    },
    /// A shard index is malformed or unsafe.
    #[error("shard index is invalid: {reason}")]
    BadIndex {
        /// What is wrong.
        reason: String,
    },
}

/// Result alias for this crate.
pub type Result<T, E = FormatError> = std::result::Result<T, E>;
