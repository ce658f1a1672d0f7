//! A failed write leaves no partial file and never harms the previous one.

use std::os::unix::fs::PermissionsExt;

use safeckpt_format::{Dtype, FormatError, RawTensor};
use safeckpt_reader::Reader;
use safeckpt_writer::atomic::{is_temp_name, remove_leftovers};
use safeckpt_writer::{WriteError, WriteOptions, write_file};

use crate::common::{Liar, listing};

fn good(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("ckpt.safetensors");
    let data = vec![9u8; 16];
    write_file(&p, &[("w", RawTensor::borrowed(Dtype::F32, [4], &data))], None, &WriteOptions::default()).unwrap();
    p
}

#[test]
fn mismatched_length_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let p = good(dir.path());
    let before = std::fs::read(&p).unwrap();
    let data = vec![0u8; 10];
    let err = write_file(&p, &[("w", RawTensor::borrowed(Dtype::F32, [4], &data))], None, &WriteOptions::default())
        .unwrap_err();
    assert!(
        matches!(
            &err,
            WriteError::Format { source: FormatError::ByteLengthMismatch { expected: 16, actual: 10, .. }, .. }
        ),
        "{err}"
    );
    assert_eq!(std::fs::read(&p).unwrap(), before);
    assert_eq!(listing(dir.path()), ["ckpt.safetensors"]);
}

#[test]
fn a_source_that_fails_mid_write_leaves_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = good(dir.path());
    let before = std::fs::read(&p).unwrap();
    let err = write_file(&p, &[("w", Liar { shape: vec![4] })], None, &WriteOptions::default()).unwrap_err();
    assert!(matches!(err, WriteError::WrongLength { expected: 16, actual: 3, .. }), "{err}");
    assert_eq!(std::fs::read(&p).unwrap(), before);
    assert_eq!(listing(dir.path()), ["ckpt.safetensors"]);
    assert!(Reader::open(&p).unwrap().verify().unwrap().is_ok());
}

#[test]
fn invalid_sets_are_refused_with_the_format_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.safetensors");
    let d = vec![0u8; 4];
    let dup = [("a", RawTensor::borrowed(Dtype::F32, [1], &d)), ("a", RawTensor::borrowed(Dtype::F32, [1], &d))];
    let e = write_file(&p, &dup, None, &WriteOptions::default()).unwrap_err();
    assert!(matches!(e, WriteError::Format { source: FormatError::DuplicateTensor { .. }, .. }));
    let reserved = [("__metadata__", RawTensor::borrowed(Dtype::F32, [1], &d))];
    let e = write_file(&p, &reserved, None, &WriteOptions::default()).unwrap_err();
    assert!(matches!(e, WriteError::Format { source: FormatError::ReservedName, .. }));
    assert!(listing(dir.path()).is_empty());
}

#[test]
fn overwrite_can_be_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = good(dir.path());
    let d = vec![0u8; 4];
    let e =
        write_file(&p, &[("a", RawTensor::borrowed(Dtype::U8, [4], &d))], None, &WriteOptions::new().overwrite(false))
            .unwrap_err();
    assert!(matches!(e, WriteError::Exists { .. }));
    // The library names its own option, never a command-line flag.
    assert!(e.to_string().contains("overwrite(true)") && !e.to_string().contains("--force"), "{e}");
}

#[test]
fn io_errors_name_the_path() {
    let d = vec![0u8; 4];
    let e = write_file(
        "/nonexistent-dir/x.safetensors",
        &[("a", RawTensor::borrowed(Dtype::U8, [4], &d))],
        None,
        &WriteOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, WriteError::Io { .. }));
    // The target is named, not the temporary file the write goes through.
    assert!(e.to_string().contains("/nonexistent-dir/x.safetensors") && !e.to_string().contains("safeckpt-tmp"), "{e}");
}

#[test]
fn new_files_honour_the_umask_like_any_other_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = good(dir.path());
    let reference = dir.path().join("plain");
    std::fs::write(&reference, b"x").unwrap();
    let mode = |f: &std::path::Path| std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&p), mode(&reference));
}

#[test]
fn leftovers_from_crashed_writers_are_recognised_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    good(dir.path());
    std::fs::write(dir.path().join(".ckpt.safetensors.safeckpt-tmp.123.0"), b"partial").unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"keep").unwrap();
    assert!(is_temp_name(".ckpt.safetensors.safeckpt-tmp.123.0"));
    assert!(!is_temp_name("ckpt.safetensors"));
    assert_eq!(remove_leftovers(dir.path()).unwrap(), 1);
    assert_eq!(listing(dir.path()), ["ckpt.safetensors", "notes.txt"]);
}
