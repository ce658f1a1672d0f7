//! Where a file lives: a local path, or an object in a store named by URL.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use object_store::path::Path as ObjPath;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use crate::error::{Result, StoreError};

/// How to reach object stores. Credentials are never part of these options: they come from the
/// environment the way each cloud's own tools read them (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`, …;
/// `GOOGLE_*`; `AZURE_*`), and are never printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// An S3-compatible endpoint (`--endpoint`), e.g. `http://127.0.0.1:9000`; otherwise
    /// `AWS_ENDPOINT_URL`, otherwise AWS itself.
    pub endpoint: Option<String>,
    /// Region, when not in the environment (`us-east-1` if neither says).
    pub region: Option<String>,
    /// Retries of a failed request (with exponential backoff) before giving up.
    pub max_retries: usize,
    /// Size of each part of a multipart upload and of each ranged read, in bytes (at least
    /// 5 MiB, the S3 minimum part size).
    pub part_size: usize,
    /// Requests in flight at once, per upload or download.
    pub concurrency: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { endpoint: None, region: None, max_retries: 8, part_size: 16 << 20, concurrency: 8 }
    }
}

/// Requests and bytes exchanged with a store, for reports and tests.
#[derive(Debug, Default)]
pub struct Stats {
    gets: AtomicU64,
    bytes_in: AtomicU64,
    puts: AtomicU64,
    bytes_out: AtomicU64,
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// GET requests (each ranged read counts once).
    pub gets: u64,
    /// Bytes received in GET responses.
    pub bytes_in: u64,
    /// PUT requests (each part of a multipart upload counts once).
    pub puts: u64,
    /// Bytes sent.
    pub bytes_out: u64,
}

impl Stats {
    pub(crate) fn got(&self, bytes: u64) {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn put(&self, bytes: u64) {
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            gets: self.gets.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            puts: self.puts.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
        }
    }
}

/// A connection to one bucket or container (cheap to clone).
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<dyn ObjectStore>,
    /// `scheme://bucket`, for messages.
    pub(crate) base: String,
    pub(crate) stats: Arc<Stats>,
    pub(crate) opts: StoreOptions,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("base", &self.base).finish_non_exhaustive()
    }
}

impl Store {
    /// The requests and bytes exchanged through this connection so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// The options it was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.opts
    }

    /// A store over any [`ObjectStore`] (an in-memory one in tests, one configured by hand).
    pub fn from_object_store(inner: Arc<dyn ObjectStore>, base: impl Into<String>, opts: StoreOptions) -> Store {
        Store { inner, base: base.into(), stats: Arc::default(), opts }
    }
}

/// An object (or a prefix) in a store.
#[derive(Debug, Clone)]
pub struct ObjectLocation {
    /// The connection.
    pub store: Store,
    /// The key (or prefix) inside it.
    pub path: ObjPath,
}

impl ObjectLocation {
    /// `scheme://bucket/key`.
    pub fn url(&self) -> String {
        if self.path.as_ref().is_empty() {
            self.store.base.clone()
        } else {
            format!("{}/{}", self.store.base, self.path)
        }
    }

    /// The object `name` below this prefix (`name` may contain `/`).
    pub fn join(&self, name: &str) -> ObjectLocation {
        let mut path = self.path.clone();
        for part in name.split('/').filter(|p| !p.is_empty()) {
            path = path.join(part);
        }
        ObjectLocation { store: self.store.clone(), path }
    }

    /// The prefix this object is in.
    pub fn parent(&self) -> ObjectLocation {
        let parts: Vec<_> = self.path.parts().collect();
        let path = ObjPath::from_iter(parts.iter().take(parts.len().saturating_sub(1)).cloned());
        ObjectLocation { store: self.store.clone(), path }
    }

    /// The last component of the key.
    pub fn file_name(&self) -> String {
        self.path.filename().unwrap_or_default().to_string()
    }
}

impl fmt::Display for ObjectLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url())
    }
}

/// A local path or an object in a store.
#[derive(Debug, Clone)]
pub enum Location {
    /// A local file or directory (`/path`, `relative/path`, `file:///path`).
    Local(PathBuf),
    /// An object or prefix in a store (`s3://bucket/key`, `gs://…`, `az://…`, `https://…`,
    /// `memory:///…`).
    Object(ObjectLocation),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::Object(o) => write!(f, "{o}"),
        }
    }
}

/// Whether `s` names an object store location rather than a local path.
pub fn is_url(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else { return false };
    !rest.is_empty()
        && scheme.len() > 1
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.')
        && scheme != "file"
}

impl Location {
    /// Parses a path or URL. Local paths (and `file://` URLs) stay local and use safeckpt's own
    /// memory-mapped reads and atomic writes; other URLs connect to their store.
    pub fn parse(s: &str, opts: &StoreOptions) -> Result<Location> {
        if let Some(rest) = s.strip_prefix("file://") {
            return Ok(Location::Local(PathBuf::from(rest)));
        }
        if !is_url(s) {
            return Ok(Location::Local(PathBuf::from(s)));
        }
        let bad = |reason: String| StoreError::Url { url: s.to_string(), reason };
        let url = url::Url::parse(s).map_err(|e| bad(e.to_string()))?;
        let (store, base, path): (Arc<dyn ObjectStore>, String, String) = match url.scheme() {
            "s3" | "s3a" => {
                let bucket = url.host_str().ok_or_else(|| bad("no bucket".into()))?.to_string();
                let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(&bucket);
                let endpoint = opts.endpoint.clone().or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
                if let Some(e) = &endpoint {
                    b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
                }
                if std::env::var_os("AWS_UNSIGNED_PAYLOAD").is_none() {
                    b = b.with_unsigned_payload(unsigned_payload(endpoint.as_deref()));
                }
                let region = opts.region.clone().or_else(|| std::env::var("AWS_REGION").ok());
                let region = region.or_else(|| std::env::var("AWS_DEFAULT_REGION").ok());
                b = b
                    .with_region(region.unwrap_or_else(|| "us-east-1".into()))
                    .with_retry(retry(opts))
                    .with_client_options(client(opts, endpoint.as_deref().is_some_and(|e| e.starts_with("http://"))));
                let store = b.build().map_err(|e| bad(e.to_string()))?;
                (Arc::new(store), format!("s3://{bucket}"), url.path().to_string())
            }
            "gs" => {
                let bucket = url.host_str().ok_or_else(|| bad("no bucket".into()))?.to_string();
                let store = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(&bucket)
                    .with_retry(retry(opts))
                    .with_client_options(client(opts, false))
                    .build()
                    .map_err(|e| bad(e.to_string()))?;
                (Arc::new(store), format!("gs://{bucket}"), url.path().to_string())
            }
            "az" | "azure" | "abfs" | "abfss" => {
                let store = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(s)
                    .with_retry(retry(opts))
                    .with_client_options(client(opts, false))
                    .build()
                    .map_err(|e| bad(e.to_string()))?;
                let container = url.host_str().unwrap_or_default();
                (Arc::new(store), format!("{}://{container}", url.scheme()), url.path().to_string())
            }
            "http" | "https" => {
                let origin = url.origin().ascii_serialization();
                let store = object_store::http::HttpBuilder::new()
                    .with_url(&origin)
                    .with_retry(retry(opts))
                    .with_client_options(client(opts, url.scheme() == "http"))
                    .build()
                    .map_err(|e| bad(e.to_string()))?;
                (Arc::new(store), origin, url.path().to_string())
            }
            "memory" => (memory_store(), "memory://".to_string(), url.path().to_string()),
            other => return Err(bad(format!("unknown scheme `{other}` (s3, gs, az, http(s), file or a plain path)"))),
        };
        let path = ObjPath::parse(path.trim_matches('/')).map_err(|e| bad(e.to_string()))?;
        let store = Store { inner: store, base, stats: Arc::default(), opts: opts.clone() };
        Ok(Location::Object(ObjectLocation { store, path }))
    }

    /// The local path, when local.
    pub fn as_local(&self) -> Option<&Path> {
        match self {
            Location::Local(p) => Some(p),
            Location::Object(_) => None,
        }
    }

    /// The object, when remote.
    pub fn as_object(&self) -> Option<&ObjectLocation> {
        match self {
            Location::Local(_) => None,
            Location::Object(o) => Some(o),
        }
    }

    /// Whether the location names a shard index (`*.json`).
    pub fn is_index(&self) -> bool {
        match self {
            Location::Local(p) => p.extension().is_some_and(|e| e == "json"),
            Location::Object(o) => o.path.extension() == Some("json"),
        }
    }
}

/// One in-memory store per process, so that `memory:///` URLs given to different calls (or to
/// the CLI within one process) see the same objects.
fn memory_store() -> Arc<dyn ObjectStore> {
    static MEMORY: std::sync::OnceLock<Arc<dyn ObjectStore>> = std::sync::OnceLock::new();
    MEMORY.get_or_init(|| Arc::new(object_store::memory::InMemory::new())).clone()
}

/// Whether S3 requests skip hashing their body into the signature when `AWS_UNSIGNED_PAYLOAD`
/// does not say: over TLS they do, as the AWS CLI does, since TLS already protects the bytes in
/// transit (and safeckpt's own checksums cover them at rest); over plain HTTP the signature is
/// the only protection, so bodies are signed.
fn unsigned_payload(endpoint: Option<&str>) -> bool {
    !endpoint.is_some_and(|e| e.trim_start().to_ascii_lowercase().starts_with("http://"))
}

fn retry(opts: &StoreOptions) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            base: 2.0,
        },
        max_retries: opts.max_retries,
        retry_timeout: Duration::from_secs(180),
    }
}

fn client(opts: &StoreOptions, allow_http: bool) -> ClientOptions {
    let _ = opts;
    ClientOptions::new()
        .with_allow_http(allow_http)
        .with_timeout(Duration::from_secs(300))
        .with_connect_timeout(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_signed_only_over_plain_http() {
        assert!(unsigned_payload(None), "AWS itself is reached over TLS");
        assert!(unsigned_payload(Some("https://minio.internal:9000")));
        assert!(!unsigned_payload(Some("http://127.0.0.1:9000")));
        assert!(!unsigned_payload(Some("HTTP://127.0.0.1:9000")));
    }
}
