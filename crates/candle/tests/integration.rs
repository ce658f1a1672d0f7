//! Integration tests for safeckpt-candle.

mod checkpoint;
mod common;
mod manager;
mod optim;
#[cfg(feature = "object-store")]
mod remote_manager;
mod state_dict;
mod var_builder;
