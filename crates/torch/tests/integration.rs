//! Integration tests for safeckpt-torch.

mod corpus;
mod options;
