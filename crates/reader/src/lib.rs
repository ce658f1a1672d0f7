//! # safeckpt-reader
//!
//! Opens safetensors files by memory map in time independent of their size (only the header is
//! read and validated) and hands out [`TensorView`]s that borrow the file's bytes:
//!
//! - zero-copy typed slices (`&[f32]`, `&[half::bf16]`, …) when alignment holds, copying
//!   fallbacks ([`TensorView::typed`], [`TensorView::to_vec`]) when not or on big-endian hosts;
//! - [`TensorSlice`]s that read only the rows (or any rectangle) asked for;
//! - [`ShardedReader`] over HuggingFace `*.safetensors.index.json` sets;
//! - parallel checksum verification ([`Reader::verify`]) against safeckpt's integrity record;
//! - fast owned loads into huge-page-backed vectors ([`Reader::load_all`]).
//!
//! This is the only safeckpt crate with `unsafe` code: the memory map itself and one
//! `madvise` call, each with its safety argument.
//!
//! ```no_run
//! use safeckpt_reader::Reader;
//!
//! let reader = Reader::open("model.safetensors")?;
//! let w = reader.tensor("lm_head.weight")?;
//! let values: &[half::bf16] = w.as_slice()?;
//! let first_rows = w.narrow(0, 0..128)?.to_bytes();
//! println!("{} {:?} {} values, {} bytes of rows", w.dtype(), w.shape(), values.len(), first_rows.len());
//! # Ok::<(), safeckpt_reader::ReadError>(())
//! ```
#![deny(missing_docs, unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

mod backing;
mod element;
mod error;
mod file;
mod load;
mod mapped;
mod region;
mod sharded;
mod verify;
mod view;

pub use element::{Element, swap_bytes_in_place};
pub use error::{ReadError, Result};
pub use file::{ReadOptions, Reader};
pub use load::{LoadMethod, LoadOptions, OwnedData, OwnedTensor, alloc_zeroed};
pub use mapped::MappedFile;
pub use memmap2::Advice;
pub use region::{GlobalSource, GlobalTensor, check_split_pieces, chunk_range};
pub use safeckpt_format as format;
pub use sharded::{ShardedReader, pick_checkpoint, resolve_dir};
pub use verify::{IntegrityFailure, VerifyReport};
pub use view::{TensorSlice, TensorView};
