//! Integration tests for safeckpt-torch.

mod attacks;
mod corpus;
mod options;
