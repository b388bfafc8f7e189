//! The release format: chunk tables, the signed manifest, packing and verifying.
//!
//! Owns everything that decides whether a byte is the published byte. It does
//! no network I/O of its own (publishing goes through [`crate::btfs`]).

pub use shardgate_chunk as chunk;
pub mod drift;
pub mod envelope;
pub mod keys;
pub mod layout;
pub mod manifest;
pub mod pack;
pub mod placement;
pub mod publish;
pub mod verify;
