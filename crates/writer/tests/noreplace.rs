//! The no-overwrite check cannot be raced, and killed writers' temporary files do not pile up.

use std::path::Path;
use std::process::Command;

use safeckpt_format::{Dtype, RawTensor};
use safeckpt_writer::{WriteError, WriteOptions, write_file, write_file_pending};

use crate::common::listing;

fn tensor(data: &[u8]) -> [(&'static str, RawTensor<'_>); 1] {
    [("w", RawTensor::borrowed(Dtype::U8, [data.len()], data))]
}

#[test]
fn a_file_that_appears_before_the_commit_is_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ckpt.safetensors");
    let data = vec![7u8; 64];
    let opts = WriteOptions::new().overwrite(false);
    // Planned and written while the target does not exist yet.
    let pending = write_file_pending(&p, &tensor(&data), None, &opts, &|_| {}).unwrap();
    // Someone else creates it between the check and the commit.
    std::fs::write(&p, b"theirs").unwrap();
    let e = pending.commit(true).unwrap_err();
    assert!(matches!(&e, WriteError::Exists { path } if path == &p), "{e}");
    assert_eq!(std::fs::read(&p).unwrap(), b"theirs");
    assert_eq!(listing(dir.path()), ["ckpt.safetensors"]);
}

#[test]
fn without_a_race_the_no_overwrite_commit_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ckpt.safetensors");
    let data = vec![7u8; 64];
    let pending = write_file_pending(&p, &tensor(&data), None, &WriteOptions::new().overwrite(false), &|_| {}).unwrap();
    pending.commit(false).unwrap();
    assert_eq!(listing(dir.path()), ["ckpt.safetensors"]);
    assert!(safeckpt_reader::Reader::open(&p).unwrap().verify().unwrap().is_ok());
}

/// The id of a process that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

fn temp_of(dir: &Path, pid: u32) -> String {
    let name = format!(".ckpt.safetensors.safeckpt-tmp.{pid}.3");
    std::fs::write(dir.join(&name), vec![0u8; 4096]).unwrap();
    name
}

#[test]
fn the_next_write_removes_temporary_files_of_dead_writers_only() {
    let dir = tempfile::tempdir().unwrap();
    let dead = dead_pid();
    let stale = temp_of(dir.path(), dead);
    let mine = temp_of(dir.path(), std::process::id());
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let live = temp_of(dir.path(), sleeper.id());
    // Look-alikes that are not exactly our pattern, and a link named like a stale file.
    let odd = format!(".ckpt.safetensors.safeckpt-tmp.{dead}.3.keep");
    std::fs::write(dir.path().join(&odd), b"x").unwrap();
    let target = dir.path().join("elsewhere");
    std::fs::write(&target, b"not ours").unwrap();
    let link = format!(".other.safeckpt-tmp.{dead}.9");
    std::os::unix::fs::symlink(&target, dir.path().join(&link)).unwrap();

    let data = vec![1u8; 16];
    write_file(dir.path().join("ckpt.safetensors"), &tensor(&data), None, &WriteOptions::new()).unwrap();
    let names = listing(dir.path());
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(!names.contains(&stale), "{names:?}");
    for kept in [&mine, &live, &odd, &link] {
        assert!(names.contains(kept), "{kept} removed: {names:?}");
    }
    assert_eq!(std::fs::read(&target).unwrap(), b"not ours");
}
