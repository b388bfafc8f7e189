//! shardgate engine: signed BLAKE3 dataset releases, and everything that
//! serves and checks them.

pub mod btfs;
pub mod progress;
pub mod release;
