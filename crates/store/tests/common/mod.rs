//! A loopback S3-compatible server (`s3s-fs`) for the tests, started per test on a free port.
//! Tests that need it are skipped when the binary is missing, unless `SAFECKPT_REQUIRE_S3` is set
//! (as `.ci/run` does after installing it).

#![allow(dead_code)]

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use safeckpt_store::object_store::aws::AmazonS3Builder;
use safeckpt_store::object_store::path::Path as ObjPath;
use safeckpt_store::object_store::{ClientOptions, RetryConfig};
use safeckpt_store::{ObjectLocation, Store, StoreOptions};

pub const ACCESS_KEY: &str = "safeckpt-test";
pub const SECRET_KEY: &str = "safeckpt-test-secret";
pub const BUCKET: &str = "ckpt";

pub struct Server {
    child: Option<Child>,
    pub root: tempfile::TempDir,
    pub port: u16,
    exe: PathBuf,
}

fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SAFECKPT_S3S_FS") {
        return Some(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join("s3s-fs")).find(|p| p.is_file())
}

impl Server {
    /// Starts a server, or returns `None` (test skipped) when `s3s-fs` is not installed.
    pub fn start() -> Option<Server> {
        let Some(exe) = binary() else {
            assert!(std::env::var_os("SAFECKPT_REQUIRE_S3").is_none(), "s3s-fs is required but not installed");
            // Written to the terminal directly, past the test harness's capture, so that a plain
            // `cargo test` shows what it did not run.
            let line = format!(
                "SKIPPED (s3s-fs not installed; CI installs it: cargo install s3s-fs@0.14.1 --locked --features binary): {}\n",
                std::thread::current().name().unwrap_or("a test")
            );
            let _ = std::io::stderr().write_all(line.as_bytes());
            return None;
        };
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut s = Server { child: None, root, port, exe };
        s.launch();
        Some(s)
    }

    /// A handle on a server another process started (not stopped on drop).
    pub fn attach(port: u16) -> Server {
        Server { child: None, root: tempfile::tempdir().unwrap(), port, exe: PathBuf::new() }
    }

    fn launch(&mut self) {
        let child = Command::new(&self.exe)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(20), "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (a store outage) …
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// … and starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment a child process (the CLI) needs to reach the server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
        ]
    }

    /// A connection with the given options, rooted at `key` in the test bucket.
    pub fn location(&self, key: &str, opts: StoreOptions) -> ObjectLocation {
        let s3 = AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_retry(RetryConfig { max_retries: opts.max_retries, ..Default::default() })
            .with_client_options(ClientOptions::new().with_allow_http(true))
            .build()
            .unwrap();
        let store = Store::from_object_store(Arc::new(s3), format!("s3://{BUCKET}"), opts);
        ObjectLocation { store, path: ObjPath::parse(key).unwrap() }
    }

    /// Where the server keeps an object on disk.
    pub fn file_of(&self, key: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(key)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
