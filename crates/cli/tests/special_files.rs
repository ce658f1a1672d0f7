//! Inputs that are not regular files (a device, a FIFO) are refused at once, with exit status 2,
//! instead of being read until memory runs out or blocking forever.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `safeckpt args…`, killing it if it has not finished within ten seconds. Returns the exit
/// status and the standard error.
fn run_bounded(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_safeckpt"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            return (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned());
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`safeckpt {}` still running after 10 s", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_refused(args: &[&str], path: &str) {
    let (code, err) = run_bounded(args);
    assert_eq!(code, Some(2), "`safeckpt {}`: {err}", args.join(" "));
    assert!(err.contains(path), "{err}");
    assert!(err.contains("not a regular file (a device, FIFO or directory)"), "{err}");
}

fn fifo(dir: &Path) -> String {
    let p = dir.join("pipe.safetensors");
    let st = Command::new("mkfifo").arg(&p).status().unwrap();
    assert!(st.success());
    p.to_str().unwrap().to_string()
}

#[test]
fn a_device_is_refused() {
    assert_refused(&["inspect", "/dev/zero"], "/dev/zero");
    assert_refused(&["verify", "/dev/zero"], "/dev/zero");
    assert_refused(&["diff", "/dev/zero", "/dev/zero"], "/dev/zero");
}

#[test]
fn a_symbolic_link_to_a_device_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("model.safetensors");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    let link = link.to_str().unwrap();
    assert_refused(&["inspect", link], link);
    assert_refused(&["verify", link], link);
}

#[test]
fn a_fifo_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let p = fifo(dir.path());
    assert_refused(&["verify", &p], &p);
    assert_refused(&["diff", &p, &p], &p);
}

#[test]
fn inspect_refuses_a_fifo_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let p = fifo(dir.path());
    assert_refused(&["inspect", &p], &p);
}

#[test]
fn an_index_that_is_a_fifo_or_a_device_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("model.safetensors.index.json");
    let status = Command::new("mkfifo").arg(&index).status().unwrap();
    assert!(status.success());
    let p = index.to_str().unwrap();
    assert_refused(&["verify", p], p);
    assert_refused(&["inspect", p], p);
    let linked = dir.path().join("zero.safetensors.index.json");
    std::os::unix::fs::symlink("/dev/zero", &linked).unwrap();
    let l = linked.to_str().unwrap();
    assert_refused(&["verify", l], l);
}
