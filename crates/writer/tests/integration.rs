//! Integration tests for safeckpt-writer.

mod atomicity;
mod common;
mod golden;
mod noreplace;
mod python;
mod ranks;
mod replace;
mod round_trip;
mod sharding;
mod streaming;
