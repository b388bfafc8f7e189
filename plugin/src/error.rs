//! Where a failure came from: every library error names its class, so exit
//! codes, status codes, abort labels and metrics follow from the type rather
//! than from reading a message (pingora's classified errors).
//!
//! - `Client`: the request or the caller's input (a 4xx, never retried as is).
//! - `Config`: the configuration or an argument; the sidecar exits 64 for
//!   these and only these.
//! - `Origin`: an origin could not supply bytes (unreachable, status, timeout,
//!   stall, short body); another origin or a retry may help.
//! - `Integrity`: bytes that failed verification against the signed manifest.
//! - `Storage`: a local store (usage ledger, release registry, disk tier)
//!   failed; not the operator's config.
//! - `Network`: a listener could not be bound.

/// A failure's class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    Client,
    Config,
    Origin,
    Integrity,
    Storage,
    Network,
}

impl ErrorClass {
    /// The label in metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            ErrorClass::Client => "client",
            ErrorClass::Config => "config",
            ErrorClass::Origin => "origin",
            ErrorClass::Integrity => "integrity",
            ErrorClass::Storage => "storage",
            ErrorClass::Network => "network",
        }
    }

    /// The sidecar's exit status: 64 (EX_USAGE) for bad configuration only.
    pub fn exit_code(self) -> u8 {
        if self == ErrorClass::Config { 64 } else { 1 }
    }
}

/// An error that knows its class.
pub trait Classify {
    fn class(&self) -> ErrorClass;
}

impl Classify for crate::config::ConfigError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Config
    }
}

impl Classify for crate::usage::LedgerError {
    fn class(&self) -> ErrorClass {
        use crate::usage::LedgerError as E;
        match self {
            E::BadCursor(_) | E::CursorAhead { .. } => ErrorClass::Client,
            E::Open { .. } | E::Storage(_) | E::Corrupt { .. } => ErrorClass::Storage,
        }
    }
}

impl Classify for crate::lifecycle::StoreError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Storage
    }
}

impl Classify for crate::pricing::PricingError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Config
    }
}

impl Classify for crate::origin::OriginError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Origin
    }
}
