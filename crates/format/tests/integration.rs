//! Integration tests for safeckpt-format.

mod differential;
