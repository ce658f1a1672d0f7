//! A plain HTTP file server on loopback for tests, as model hubs serve files: `GET` and `HEAD`,
//! byte ranges (`206 Partial Content`), and `/resolve/<rev>/<file>` answered with a redirect to
//! `/cdn/<file>`, the way the Hugging Face Hub sends downloads to its CDN. It counts requests and
//! body bytes sent.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A running server; stops when dropped.
pub struct HttpServer {
    pub port: u16,
    pub root: tempfile::TempDir,
    requests: Arc<AtomicU64>,
    body_bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl HttpServer {
    pub fn start() -> HttpServer {
        let root = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (requests, body_bytes, stop) = (Arc::default(), Arc::default(), Arc::new(AtomicBool::new(false)));
        let dir = root.path().to_path_buf();
        let (r, b, s) = (Arc::clone(&requests), Arc::clone(&body_bytes), Arc::clone(&stop));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (dir, r, b) = (dir.clone(), Arc::clone(&r), Arc::clone(&b));
                std::thread::spawn(move || {
                    let _ = serve(conn, &dir, &r, &b);
                });
            }
        });
        HttpServer { port, root, requests, body_bytes, stop }
    }

    /// `http://127.0.0.1:PORT/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// Where `/<name>` and `/cdn/<name>` are served from.
    pub fn file(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// (requests, body bytes) so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.requests.load(Ordering::SeqCst), self.body_bytes.load(Ordering::SeqCst))
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(conn: TcpStream, dir: &Path, requests: &AtomicU64, body_bytes: &AtomicU64) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("/").to_string());
        let mut range = None;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("range")
            {
                range = v.trim().strip_prefix("bytes=").map(str::to_string);
            }
        }
        requests.fetch_add(1, Ordering::SeqCst);
        let path = target.split('?').next().unwrap_or("/");
        if let Some(rest) = path.strip_prefix("/resolve/") {
            let file = rest.split_once('/').map_or(rest, |(_, f)| f);
            write!(out, "HTTP/1.1 302 Found\r\nLocation: /cdn/{file}\r\nContent-Length: 0\r\n\r\n")?;
            continue;
        }
        let name = path.strip_prefix("/cdn/").unwrap_or(path).trim_start_matches('/');
        let Ok(bytes) = std::fs::read(dir.join(name)) else {
            write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
            continue;
        };
        let total = bytes.len() as u64;
        let (status, start, end) = match range.as_deref().and_then(|r| r.split_once('-')) {
            Some((a, b)) => {
                let a: u64 = a.parse().unwrap_or(0);
                let b: u64 =
                    if b.is_empty() { total - 1 } else { b.parse::<u64>().unwrap_or(total - 1).min(total - 1) };
                if a >= total {
                    write!(
                        out,
                        "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\nContent-Length: 0\r\n\r\n"
                    )?;
                    continue;
                }
                (206, a, b + 1)
            }
            None => (200, 0, total),
        };
        let body = &bytes[start as usize..end as usize];
        let mut head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nLast-Modified: Fri, 27 Nov 2026 00:00:00 GMT\r\nETag: \"{total}\"\r\n",
            if status == 206 { "Partial Content" } else { "OK" },
            body.len()
        );
        if status == 206 {
            head.push_str(&format!("Content-Range: bytes {start}-{}/{total}\r\n", end - 1));
        }
        head.push_str("\r\n");
        out.write_all(head.as_bytes())?;
        if method != "HEAD" {
            out.write_all(body)?;
            body_bytes.fetch_add(body.len() as u64, Ordering::SeqCst);
        }
    }
}
