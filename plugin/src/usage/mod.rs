//! Usage metering for chargeback: what each tenant read, from where, per
//! 1-minute window, kept durably and served over gRPC.
//!
//! - [`meter`] counts in memory on the request path (one short lock per
//!   response) and decides which window a response lands in.
//! - [`ledger`] is the durable store (redb): grouped commits, window
//!   closing with cursors, totals, acknowledgement and compaction.
//! - [`grpc`] is `shardgate.usage.v1.UsageService`, served by [`crate::grpc`].
//!
//! A response is metered when it ends (completed, hung up on, or cut by the
//! gateway), in the window it ends in, like an access-log line. Windows
//! never reopen: once a window has closed, later responses land in a later
//! window.

pub mod ledger;
pub mod meter;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use ledger::{Ledger, LedgerError};
pub use meter::{Meter, ResponseMeter};

/// Length of a usage window, in seconds.
pub const WINDOW_SECS: i64 = 60;

/// The generated protobuf and gRPC code of `proto/shardgate/usage/v1`.
pub mod proto {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("shardgate.usage.v1");
}

/// Where the body bytes of a response came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Hot,
    Origin,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Hot => "hot",
            Source::Origin => "origin",
        }
    }
}

/// The release a metered response or origin fetch belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReleaseTag {
    pub dataset: Arc<str>,
    pub version: Arc<str>,
}

/// What one ledger record counts: a tenant's reads of a release from one
/// source, or a release's own costs (origin egress, integrity), per window.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RecordKey {
    TenantUsage { tenant: Arc<str>, dataset: Arc<str>, version: Arc<str>, window: i64, source: Source },
    DatasetCost { dataset: Arc<str>, version: Arc<str>, window: i64 },
}

impl RecordKey {
    pub fn window(&self) -> i64 {
        match self {
            RecordKey::TenantUsage { window, .. } | RecordKey::DatasetCost { window, .. } => *window,
        }
    }

    /// The same key in another window (daily sums use the day's start).
    pub fn with_window(&self, w: i64) -> RecordKey {
        let mut k = self.clone();
        match &mut k {
            RecordKey::TenantUsage { window, .. } | RecordKey::DatasetCost { window, .. } => *window = w,
        }
        k
    }

    pub fn tenant(&self) -> Option<&str> {
        match self {
            RecordKey::TenantUsage { tenant, .. } => Some(tenant),
            RecordKey::DatasetCost { .. } => None,
        }
    }

    /// The deterministic record id: the same instance, kind, tenant, dataset,
    /// version, window and source always give the same id.
    pub fn id(&self, instance: &str) -> String {
        let mut h = blake3::Hasher::new_derive_key("shardgate.usage.v1 record id");
        let mut field = |s: &str| {
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        };
        field(instance);
        match self {
            RecordKey::TenantUsage { tenant, dataset, version, window, source } => {
                field("tenant_usage");
                field(tenant);
                field(dataset);
                field(version);
                field(&window.to_string());
                field(source.as_str());
            }
            RecordKey::DatasetCost { dataset, version, window } => {
                field("dataset_cost");
                field(dataset);
                field(version);
                field(&window.to_string());
            }
        }
        hex::encode(&h.finalize().as_bytes()[..16])
    }
}

/// Counters of one record. Tenant records use the first three; dataset
/// cost records the rest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub requests: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub aborted_requests: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub origin_egress_bytes: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub integrity_failed_bytes: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub integrity_aborted_bytes: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub integrity_aborted_requests: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.bytes += o.bytes;
        self.requests += o.requests;
        self.aborted_requests += o.aborted_requests;
        self.origin_egress_bytes += o.origin_egress_bytes;
        self.integrity_failed_bytes += o.integrity_failed_bytes;
        self.integrity_aborted_bytes += o.integrity_aborted_bytes;
        self.integrity_aborted_requests += o.integrity_aborted_requests;
    }
}

/// The start of the window holding Unix second `t`.
pub fn window_of(t: i64) -> i64 {
    t.div_euclid(WINDOW_SECS) * WINDOW_SECS
}

/// The start of the UTC calendar month holding Unix second `t`, and of the next.
pub fn month_bounds(t: i64) -> (i64, i64) {
    let ts = jiff::Timestamp::from_second(t).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let d = ts.to_zoned(jiff::tz::TimeZone::UTC).date();
    let first = d.first_of_month();
    let next = first.checked_add(jiff::Span::new().months(1)).unwrap_or(first);
    let secs =
        |day: jiff::civil::Date| day.to_zoned(jiff::tz::TimeZone::UTC).map(|z| z.timestamp().as_second()).unwrap_or(0);
    (secs(first), secs(next))
}

/// Now, as Unix seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}
