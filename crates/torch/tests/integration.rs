//! Integration tests for safeckpt-torch.
