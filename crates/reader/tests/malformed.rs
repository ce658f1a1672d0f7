//! The malformed corpus: every file gives its specific error, naming the file.

use safeckpt_format::FormatError;
use safeckpt_reader::{ReadError, Reader, ShardedReader};

use crate::common::fixtures;

type Check = fn(&FormatError) -> bool;

const CASES: &[(&str, Check)] = &[
    ("truncated", |e| matches!(e, FormatError::Truncated { expected: _, actual: _ })),
    ("header_past_end", |e| matches!(e, FormatError::HeaderPastEnd { header_len: 1000, .. })),
    ("huge_header", |e| matches!(e, FormatError::HeaderTooLarge { .. })),
    ("too_small", |e| matches!(e, FormatError::HeaderTooSmall { len: 5 })),
    ("overlap", |e| matches!(e, FormatError::Overlap { tensor, previous, .. } if tensor == "b" && previous == "a")),
    ("hole", |e| matches!(e, FormatError::Hole { tensor, begin: 8, expected: 4 } if tensor == "b")),
    ("trailing_bytes", |e| matches!(e, FormatError::TrailingBytes { extra: 4, .. })),
    ("bad_utf8", |e| matches!(e, FormatError::HeaderUtf8 { at: 3 })),
    ("bad_json", |e| matches!(e, FormatError::HeaderJson { .. })),
    ("unknown_dtype", |e| matches!(e, FormatError::UnknownDtype { dtype, .. } if dtype == "F128")),
    ("shape_overflow", |e| matches!(e, FormatError::ShapeOverflow { .. })),
    ("duplicate_names", |e| matches!(e, FormatError::DuplicateTensor { tensor } if tensor == "a")),
    ("byte_length_mismatch", |e| matches!(e, FormatError::ByteLengthMismatch { expected: 12, actual: 8, .. })),
    ("offsets_inverted", |e| matches!(e, FormatError::OffsetsInverted { begin: 4, end: 0, .. })),
    ("metadata_not_string", |e| matches!(e, FormatError::MetadataNotString { key } if key == "epoch")),
    ("metadata_as_tensor", |e| matches!(e, FormatError::ReservedName)),
    ("duplicate_metadata", |e| matches!(e, FormatError::ReservedName)),
    ("duplicate_metadata_key", |e| matches!(e, FormatError::DuplicateMetadataKey { key } if key == "k")),
    ("sub_byte_misaligned", |e| matches!(e, FormatError::SubByteMisaligned { numel: 3, .. })),
    ("missing_field", |e| matches!(e, FormatError::MissingField { field: "data_offsets", .. })),
    ("duplicate_field", |e| matches!(e, FormatError::DuplicateField { field, .. } if field == "dtype")),
    ("deep_nesting", |e| matches!(e, FormatError::TooDeep { .. })),
    ("negative_dim", |e| matches!(e, FormatError::HeaderJson { .. })),
    ("float_offset", |e| matches!(e, FormatError::HeaderJson { .. })),
    ("not_an_object", |e| matches!(e, FormatError::HeaderJson { .. })),
];

#[test]
fn every_malformed_file_gives_its_error() {
    let dir = fixtures().join("malformed");
    let mut seen = 0;
    for (name, check) in CASES {
        let path = dir.join(format!("{name}.safetensors"));
        for result in [
            Reader::open(&path).map(|_| ()),
            Reader::open_read(&path).map(|_| ()),
            ShardedReader::open(&path).map(|_| ()),
        ] {
            let err = result.expect_err(name);
            let msg = err.to_string();
            assert!(msg.contains(&format!("{name}.safetensors")), "{name}: message does not name the file: {msg}");
            match &err {
                ReadError::Format { source, .. } => {
                    assert!(check(source), "{name}: wrong variant {source:?}")
                }
                other => panic!("{name}: expected a format error, got {other:?}"),
            }
        }
        seen += 1;
    }
    // Every file in the corpus is covered by the table.
    let files = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "safetensors"));
    assert_eq!(files.count(), seen);
}

#[test]
fn reference_agrees_that_the_corpus_is_invalid() {
    // Files the reference reader accepts would mean we are stricter; only these are expected.
    let stricter = ["duplicate_names", "duplicate_metadata_key"];
    for (name, _) in CASES {
        let bytes = std::fs::read(fixtures().join("malformed").join(format!("{name}.safetensors"))).unwrap();
        let theirs = safetensors::SafeTensors::deserialize(&bytes);
        assert_eq!(theirs.is_ok(), stricter.contains(name), "{name}: reference result {:?}", theirs.err());
    }
}

#[test]
fn missing_file_is_an_io_error_naming_it() {
    let err = Reader::open("/nonexistent/dir/x.safetensors").unwrap_err();
    assert!(matches!(err, ReadError::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/dir/x.safetensors"));
}
