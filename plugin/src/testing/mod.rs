//! Test support: a mock BTFS origin for fault injection; not a substitute for
//! a real node.
//!
//! Compiled only for this crate's tests and with the `test-support` feature.

pub mod mock_origin;

pub use mock_origin::{Fault, MockOrigin};
