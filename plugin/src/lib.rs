//! shardgate engine: signed BLAKE3 dataset releases, and everything that
//! serves and checks them.

pub mod audit;
pub mod btfs;
mod bufpool;
pub mod config;
pub mod crypt;
pub mod door;
pub mod drill;
pub mod engine;
pub mod error;
pub mod fetch;
pub mod ffi;
pub mod gateway;
pub mod grpc;
pub mod http;
pub mod lifecycle;
pub mod listener;
pub mod metrics;
pub mod origin;
mod pagecache;
pub mod pinhealth;
pub mod policy;
pub mod prewarm;
pub mod pricing;
pub mod progress;
pub mod registry;
pub mod release;
pub mod reports;
pub mod s3;
mod storage;
pub mod tenant;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod tier;
pub mod usage;
