//! # safeckpt-store
//!
//! safetensors checkpoints in object storage (S3 and S3-compatible servers, Google Cloud
//! Storage, Azure Blob Storage, HTTP) through the [`object_store`] crate, behind one seam:
//! [`Location::parse`] takes a plain path, a `file://` URL or a store URL, and the functions here
//! dispatch to safeckpt's local reader and writer or to the store.
//!
//! - Reading: [`RemoteSet::open`] reads a file's header by ranged reads (the 8-byte length, then
//!   the header, nothing else) and a shard index's headers in parallel; tensors and regions of
//!   tensors are then fetched alone, nearby ranges coalesced and long ones cut into parts fetched
//!   in parallel.
//! - Writing: [`upload_tensors`] streams a file in order through a multipart upload with bounded
//!   memory; the object appears only when complete. Sets and multi-rank saves write their shards
//!   first and their index last, so a checkpoint is visible only once whole.
//! - Requests are retried with exponential backoff on transient errors.
//! - [`Lease`] gives one writer at a time a prefix, through conditional writes.
//!
//! Credentials come from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_REGION`, `AWS_ENDPOINT_URL`, …) and are never printed.
//!
//! The API is blocking (it drives its own runtime); from async code call it inside
//! `spawn_blocking`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod any;
mod error;
mod fetch;
mod lease;
mod location;
mod rank;
mod remote;
mod upload;

use std::future::Future;
use std::sync::OnceLock;

pub use any::{AnySet, open, save};
pub use error::{Result, StoreError};
pub use fetch::{COALESCE_GAP, plan_requests};
pub use lease::{LEASE_NAME, Lease, MAX_TTL};
pub use location::{Location, ObjectLocation, Stats, StatsSnapshot, Store, StoreOptions, is_url};
pub use object_store;
pub use rank::{commit_ranks_to, save_rank_to};
pub use remote::{RemoteFile, RemoteSet, download_object, read_object};
pub use upload::{UploadSummary, delete, exists, list, put_bytes, size, upload_file, upload_tensors};

/// Runs a future to completion on the crate's I/O runtime.
pub(crate) fn block_on<F: Future>(f: F) -> F::Output {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .thread_name("safeckpt-io")
                .enable_all()
                .build()
                .expect("the I/O runtime cannot start (out of threads?)")
        })
        .block_on(f)
}
