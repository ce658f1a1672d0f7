//! Integration tests for safeckpt-candle.

mod common;
mod optim;
