//! # safeckpt-candle
//!
//! The candle bridge: a candle training loop saves and resumes exactly, and inference loads
//! fast.
//!
//! - [`CandleSource`] / [`view_to_tensor`]: candle tensors into the writer without a copy on CPU,
//!   and tensor views into candle tensors on any device, with parallel dtype casts.
//! - [`save_varmap`] / [`load_varmap`] / [`load_vars`]: name-keyed variables with a load report
//!   like PyTorch's `load_state_dict`: strict by default and all-or-nothing.
//! - [`var_builder`]: a `VarBuilder` over memory-mapped files and sharded sets;
//!   [`sharded_var_builder`]: candle's tensor-parallel `ShardedVarBuilder` contract (`Shard`
//!   hints), each rank reading only its block; with the `object-store` feature, both over sets in
//!   a bucket, fetching only the bytes asked for.
//! - [`optim`]: `AdamW` (with Adam semantics and AMSGrad) and `Sgd` (momentum, dampening,
//!   Nesterov) implementing `candle_nn::Optimizer`, following PyTorch's update rules, with state
//!   that can be saved, restored, and imported from a converted PyTorch checkpoint.
//! - [`TrainState`], [`save_checkpoint`] / [`load_checkpoint`]: one checkpoint = model +
//!   optimizer + state.
//! - [`CheckpointManager`]: a run directory with keep-last-K and keep-best, a crash-safe ledger,
//!   a lock, resume, and asynchronous saves whose only stall is a fence before the next step;
//!   with the `object-store` feature, the same on a bucket prefix, held by a lease.
//!
//! ```no_run
//! use candle_core::{DType, Device};
//! use candle_nn::{VarBuilder, VarMap};
//! use safeckpt_candle::optim::{AdamW, ParamsAdamW, StatefulOptimizer};
//! use safeckpt_candle::{CheckpointManager, ManagerOptions, TrainState, varmap_vars};
//!
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
//! let _layer = candle_nn::linear(20, 64, vb.pp("fc1"))?;
//! let mut opt = AdamW::from_varmap(&varmap, ParamsAdamW::adam(1e-3))?;
//! let mut manager = CheckpointManager::open("runs/mlp", ManagerOptions::default())?;
//! opt.set_fence(Some(manager.fence()));
//! let vars = varmap_vars(&varmap);
//! let start = match manager.resume(&vars, Some(&mut opt))? {
//!     Some(r) => r.state.epoch,
//!     None => 0,
//! };
//! for epoch in start..10 {
//!     // ... train one epoch with opt ...
//!     manager.save_async(&vars, Some(&opt), &TrainState::new(epoch + 1, 0))?;
//! }
//! manager.wait()?;
//! # Ok::<(), safeckpt_candle::CandleError>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod backend;
mod checkpoint;
mod error;
pub mod manager;
pub mod optim;
mod remote_run;
mod state_dict;
mod tensor;
mod train_state;

pub use backend::{
    RegionSource, SafeckptBackend, SafeckptShardedBackend, sharded_var_builder, var_builder, var_builder_from_files,
};
#[cfg(feature = "object-store")]
pub use backend::{remote_sharded_var_builder, remote_var_builder};
pub use checkpoint::{
    CheckpointOptions, Loaded, MODEL_PREFIX, OPTIMIZER_PREFIX, PARAM_GROUPS_KEY, PendingCheckpoint, SnapshotSource,
    checkpoint_metadata, load_checkpoint, read_train_state, save_checkpoint,
};
pub use error::{CandleError, Result};
pub use manager::{CheckpointManager, Fence, FenceHold, KeepBest, Ledger, LedgerEntry, ManagerOptions, Mode, Resumed};
#[cfg(feature = "object-store")]
pub use safeckpt_store as store;
pub use state_dict::{
    LoadOptions, LoadReport, Mismatch, check_vars, load, load_varmap, load_vars, save, save_varmap, save_vars,
    varmap_from_file, varmap_vars,
};
pub use tensor::{CandleSource, bytes_to_tensor, to_candle, to_safetensors, view_to_tensor, view_to_var};
pub use train_state::{CHECKPOINT_KEY, CHECKPOINT_VERSION, TRAIN_STATE_KEY, TrainState};
