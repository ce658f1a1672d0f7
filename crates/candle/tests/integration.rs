//! Integration tests for safeckpt-candle.

mod candle_loaders;
mod checkpoint;
mod common;
mod idioms;
mod manager;
mod manager_safety;
mod optim;
#[cfg(feature = "object-store")]
mod remote_manager;
#[cfg(feature = "object-store")]
#[path = "../../store/tests/common/mod.rs"]
mod s3;
mod state_dict;
mod var_builder;
