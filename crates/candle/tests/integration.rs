//! Integration tests for safeckpt-candle.

mod checkpoint;
mod common;
mod manager;
mod optim;
mod state_dict;
