//! Progress reporting for long work (pack, verify, publish, prewarm).
//!
//! The engine reports through this trait; the CLI draws a bar, the embedded
//! plugin and tests ignore it.

/// Receives progress from long operations. All methods default to doing nothing.
pub trait Progress: Sync {
    /// A phase starts, with its total in bytes (0 when unknown).
    fn begin(&self, _label: &str, _total_bytes: u64) {}
    /// `bytes` more are done.
    fn advance(&self, _bytes: u64) {}
    /// A line worth showing to a person.
    fn note(&self, _message: &str) {}
    /// The phase is over.
    fn end(&self) {}
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {}
