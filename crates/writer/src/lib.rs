//! # safeckpt-writer
//!
//! Writes standard safetensors files, fast and safely:
//!
//! - [`write_file`]: plan from names, dtypes and shapes, then write every tensor's bytes in
//!   parallel with positioned writes, hashing each one as it goes (xxh3-64, recorded in the
//!   header), in a single pass over the data;
//! - [`StreamWriter`]: the same file built from tensors that arrive one at a time, in any order
//!   and from any thread, so a whole state dict never has to be in memory;
//! - [`write_sharded`]: `model-0000K-of-0000N.safetensors` plus a HuggingFace index;
//! - every file is committed atomically: temporary file in the same directory, `fsync`,
//!   `rename`, `fsync` of the directory. A failed write leaves no partial file and never touches
//!   the file it would have replaced.
//!
//! ```no_run
//! use safeckpt_writer::{write_file, WriteOptions};
//! use safeckpt_format::{Dtype, RawTensor};
//!
//! let weight: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|x| x.to_le_bytes()).collect();
//! let tensors = [("linear.weight", RawTensor::borrowed(Dtype::F32, [2, 2], &weight))];
//! write_file("model.safetensors", &tensors, None, &WriteOptions::default())?;
//! # Ok::<(), safeckpt_writer::WriteError>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod atomic;
mod error;
mod file;
mod options;
pub mod rank;
mod shard;

pub use error::{Result, WriteError};
pub use file::{
    PendingFile, StreamWriter, TensorWriter, WriteSummary, plan_layout, write_file, write_file_pending,
    write_file_with_progress,
};
pub use options::WriteOptions;
pub use safeckpt_format as format;
pub use shard::{
    PendingSet, ShardedSummary, commit_set, commit_set_observed, index_file_name, parse_size, plan_shards,
    retire_replaced_set, stage_sharded, write_sharded,
};
