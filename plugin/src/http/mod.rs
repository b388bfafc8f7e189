//! The HTTP face of the gateway: routes, RFC 9110 ranges and conditionals,
//! verified streaming bodies, and the listener (HTTP/1.1, HTTP/2, TLS).
//!
//! Owns the wire protocol; asks [`crate::fetch`] for verified bytes and never
//! touches origins directly.

pub mod body;
mod discovery;
pub(crate) mod file;
pub mod forwarded;
mod prewarm;
pub mod range;
mod reports;
pub mod route;
pub mod server;
pub mod service;
