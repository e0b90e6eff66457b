//! Cross-crate integration tests for Warren. The tests live in `tests/`; this library will hold
//! the shared fixtures (in-process clusters on loopback) as the control plane and agent land.
