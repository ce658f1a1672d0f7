//! Run directories in an object store (feature `object-store`). The manager stages each
//! checkpoint in a local directory exactly as for a local run (so an asynchronous save stalls
//! training no longer), then uploads it: a sharded checkpoint's shards first and its index last,
//! then the ledger. Retention deletes objects only after the ledger that drops them is written.
//! The writer holds the prefix's lease (`safeckpt_store::Lease`, the `.lock` object) for as long
//! as the manager lives and checks it before every write: a second writer is refused, and one
//! whose lease was lost stops committing.
//! Without the feature the prefix type is empty and none of this can be reached.
#![cfg_attr(not(feature = "object-store"), allow(dead_code, unused_imports))]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{CandleError, Result};

#[cfg(feature = "object-store")]
pub use safeckpt_store::ObjectLocation as Prefix;

/// A prefix in an object store (this build has no object-store support, so there is none).
#[cfg(not(feature = "object-store"))]
#[derive(Debug, Clone)]
pub enum Prefix {}

/// The writer's lease on a prefix (this build has no object-store support, so there is none).
#[cfg(not(feature = "object-store"))]
#[derive(Debug)]
pub(crate) enum Lease {}

#[cfg(feature = "object-store")]
pub(crate) use safeckpt_store::Lease;

/// A run's prefix and this writer's lease on it.
#[derive(Debug, Clone)]
pub(crate) struct Remote {
    pub prefix: Prefix,
    lease: Arc<Lease>,
}

/// What a run prefix holds: the ledger's bytes, and each `ckpt-*` entry with whether it is a
/// sharded checkpoint and, if so, whether its index is there.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    pub ledger: Option<Vec<u8>>,
    /// (name, is a directory, has its index)
    pub entries: Vec<(String, bool, bool)>,
}

#[cfg(feature = "object-store")]
mod imp {
    use safeckpt_format::index::DEFAULT_INDEX_NAME;
    use safeckpt_store::{LEASE_NAME, RemoteSet, delete, list, put_bytes};

    use super::*;
    use crate::manager::LEDGER;

    pub(crate) fn url(p: &Prefix, name: &str) -> String {
        p.join(name).url()
    }

    /// Takes the prefix's lease for this process (see `safeckpt_store::Lease`).
    pub(crate) fn acquire(prefix: Prefix, holder: &str, ttl: Duration) -> Result<Remote> {
        let url = prefix.url();
        let waiting = |other: &str| {
            eprintln!(
                "safeckpt: {url} is held by {other}; watching its lease (up to {ttl:?}) to see whether that writer is \
                 still alive"
            )
        };
        let lease = Lease::acquire_reporting(&prefix, holder, ttl, &waiting).map_err(CandleError::from)?;
        Ok(Remote { prefix, lease: Arc::new(lease) })
    }

    /// Whether a lease was taken over from a holder that stopped renewing it, and whose.
    pub(crate) fn taken_over_from(r: &Remote) -> Option<String> {
        r.lease.taken_over_from().map(str::to_string)
    }

    fn check(r: &Remote) -> Result<()> {
        r.lease.check().map_err(CandleError::from)
    }

    pub(crate) fn scan(p: &Prefix) -> Result<Listing> {
        let mut out = Listing::default();
        for (name, _) in list(p).map_err(CandleError::from)? {
            if name == LEASE_NAME {
                continue;
            }
            if name == LEDGER {
                let bytes =
                    safeckpt_store::read_object(&p.join(LEDGER), crate::Ledger::MAX_LEN).map_err(CandleError::from)?;
                out.ledger = Some(bytes);
            } else if let Some(dir) = name.strip_suffix('/') {
                let inner = list(&p.join(dir)).map_err(CandleError::from)?;
                let has_index = inner.iter().any(|(n, _)| n == DEFAULT_INDEX_NAME);
                out.entries.push((dir.to_string(), true, has_index));
            } else {
                out.entries.push((name, false, false));
            }
        }
        Ok(out)
    }

    pub(crate) fn put_ledger(r: &Remote, bytes: &[u8]) -> Result<()> {
        check(r)?;
        put_bytes(&r.prefix.join(LEDGER), bytes.to_vec()).map_err(CandleError::from)
    }

    /// Uploads a staged checkpoint (a file, or a directory whose index goes last).
    pub(crate) fn upload_checkpoint(r: &Remote, local: &Path) -> Result<()> {
        check(r)?;
        let p = &r.prefix;
        let name = local.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if local.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(local)
                .map_err(|e| CandleError::io(local, e))?
                .map(|e| e.map(|e| e.path()))
                .collect::<std::io::Result<_>>()
                .map_err(|e| CandleError::io(local, e))?;
            files.sort_by_key(|f| (f.extension().is_some_and(|e| e == "json"), f.clone()));
            for f in files {
                let file = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                safeckpt_store::upload_file(&f, &p.join(&format!("{name}/{file}")), &|_| {})
                    .map_err(CandleError::from)?;
            }
        } else {
            safeckpt_store::upload_file(local, &p.join(&name), &|_| {}).map_err(CandleError::from)?;
        }
        Ok(())
    }

    /// Deletes a checkpoint: a file, or a sharded one's index first (it stops being a
    /// checkpoint at once), then its shards.
    pub(crate) fn delete_checkpoint(r: &Remote, name: &str) -> Result<()> {
        check(r)?;
        let p = &r.prefix;
        let as_dir = p.join(name);
        let inner = list(&as_dir).map_err(CandleError::from)?;
        if inner.is_empty() {
            return delete(&p.join(name)).map_err(CandleError::from);
        }
        delete(&as_dir.join(DEFAULT_INDEX_NAME)).map_err(CandleError::from)?;
        for (n, _) in inner {
            delete(&as_dir.join(&n)).map_err(CandleError::from)?;
        }
        Ok(())
    }

    /// Copies a checkpoint into `into`; returns the local file or index.
    pub(crate) fn download_checkpoint(p: &Prefix, name: &str, is_dir: bool, into: &Path) -> Result<PathBuf> {
        let loc = if is_dir { p.join(&format!("{name}/{DEFAULT_INDEX_NAME}")) } else { p.join(name) };
        let set = RemoteSet::open(&loc).map_err(CandleError::from)?;
        let dir = if is_dir { into.join(name) } else { into.to_path_buf() };
        set.download(&dir).map_err(CandleError::from)
    }
}

#[cfg(not(feature = "object-store"))]
mod imp {
    use super::*;

    pub(crate) fn url(p: &Prefix, _: &str) -> String {
        match *p {}
    }
    pub(crate) fn scan(p: &Prefix) -> Result<Listing> {
        match *p {}
    }
    pub(crate) fn acquire(p: Prefix, _: &str, _: Duration) -> Result<Remote> {
        match p {}
    }
    pub(crate) fn taken_over_from(r: &Remote) -> Option<String> {
        match r.prefix {}
    }
    pub(crate) fn put_ledger(r: &Remote, _: &[u8]) -> Result<()> {
        match r.prefix {}
    }
    pub(crate) fn upload_checkpoint(r: &Remote, _: &Path) -> Result<()> {
        match r.prefix {}
    }
    pub(crate) fn delete_checkpoint(r: &Remote, _: &str) -> Result<()> {
        match r.prefix {}
    }
    pub(crate) fn download_checkpoint(p: &Prefix, _: &str, _: bool, _: &Path) -> Result<PathBuf> {
        match *p {}
    }
}

pub(crate) use imp::{
    acquire, delete_checkpoint, download_checkpoint, put_ledger, scan, taken_over_from, upload_checkpoint, url,
};

/// A private local directory for staging, removed on drop. It is made afresh (never an existing
/// directory or a symbolic link someone placed there), under an unpredictable name, readable
/// only by its owner.
#[derive(Debug)]
pub(crate) struct Staging(tempfile::TempDir);

impl Staging {
    pub(crate) fn new() -> Result<Staging> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("safeckpt-run-");
        #[cfg(unix)]
        builder.permissions(<std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o700));
        let dir = builder.tempdir().map_err(|e| CandleError::io(std::env::temp_dir(), e))?;
        Ok(Staging(dir))
    }

    pub(crate) fn path(&self) -> &Path {
        self.0.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The staging directory is made afresh under an unpredictable name, private to its owner:
    /// a symbolic link planted at a name another user could guess is neither followed nor used.
    #[cfg(unix)]
    #[test]
    fn staging_is_a_fresh_private_directory() {
        use std::os::unix::fs::PermissionsExt;
        let elsewhere = tempfile::tempdir().unwrap();
        let planted: Vec<PathBuf> =
            (0..16).map(|n| std::env::temp_dir().join(format!("safeckpt-run-{}-{n}", std::process::id()))).collect();
        for p in &planted {
            let _ = std::fs::remove_file(p);
            std::os::unix::fs::symlink(elsewhere.path(), p).unwrap();
        }
        let staging = Staging::new().unwrap();
        let path = staging.path().to_path_buf();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        for p in &planted {
            let _ = std::fs::remove_file(p);
        }
        assert!(!planted.contains(&path), "{path:?}");
        assert!(meta.file_type().is_dir(), "{path:?} is not a plain directory");
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        assert!(path.file_name().unwrap().to_string_lossy().starts_with("safeckpt-run-"));
        std::fs::write(path.join("x"), b"x").unwrap();
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
        drop(staging);
        assert!(!path.exists());
    }
}
