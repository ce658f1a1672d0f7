//! Integration tests for safeckpt-reader.

mod common;
mod interop;
mod malformed;
mod sharded;
mod verify;
mod views;
