//! Tenants: who is asking, what they may read, and the limits they are held
//! to. Identity comes from an API key (`Authorization: Bearer`), stored only
//! as its BLAKE3 hash; datasets may be public, read by `anonymous`.
//!
//! Every check here runs before any origin work, so a tenant over its
//! limits costs the origins nothing. Owns no I/O.

pub mod cert;
pub mod clients;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use crate::config::ByteSize;

/// The tenant that public datasets are metered to when no key is given.
pub const ANONYMOUS: &str = "anonymous";
/// Prefix of API keys made by `shardgate tenant key`.
pub const KEY_PREFIX: &str = "sgk_";
/// Prefix of a stored key hash in config.
pub const HASH_PREFIX: &str = "blake3:";

/// Limits, for a tenant or for anonymous readers. Absent means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests per second (may be fractional).
    #[serde(default)]
    pub request_rate: Option<f64>,
    /// Requests allowed at once above the rate (default: the rate, at least 1).
    #[serde(default)]
    pub request_burst: Option<u32>,
    /// Body bytes per second; shapes the body, never rejects.
    #[serde(default)]
    pub bandwidth: Option<ByteSize>,
    /// Bytes allowed at once above the bandwidth (default: one second's worth, at most 4 GiB).
    #[serde(default)]
    pub bandwidth_burst: Option<ByteSize>,
    /// Body bytes per calendar month (UTC), counted by this gateway; past it, 429.
    #[serde(default)]
    pub monthly_quota: Option<ByteSize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Stable id used in metering and billing.
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// API key hashes, `blake3:<hex>`, as printed by `shardgate tenant key`.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Dataset names this tenant may read (glob patterns such as `imagenet-*`).
    #[serde(default)]
    pub datasets: Vec<String>,
    /// TLS client certificate names (subject CN, SAN DNS or URI) that identify
    /// this tenant when `server.tls.client_ca` is set.
    #[serde(default)]
    pub cert_names: Vec<String>,
    /// Policy classes (`compliance_class`) whose plaintext this tenant is cleared to read.
    #[serde(default)]
    pub clearances: Vec<String>,
    #[serde(flatten)]
    pub limits: Limits,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// Datasets readable without a key (globs); metered to `anonymous`.
    /// With no tenants configured, every dataset is public.
    #[serde(default)]
    pub public_datasets: Vec<String>,
    /// Limits for anonymous readers.
    #[serde(default)]
    pub anonymous: Limits,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TenantError {
    #[error("tenants[{index}].{key}: {why}")]
    Invalid { index: usize, key: &'static str, why: String },
    #[error("access.{key}: {why}")]
    Access { key: &'static str, why: String },
}

/// Why a request is refused, before any origin work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// 401 with `WWW-Authenticate: Bearer`.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// 403.
    #[error("tenant {tenant} may not read dataset {dataset}")]
    Forbidden { tenant: String, dataset: String },
    /// 404: the caller may not learn that the thing exists (a blob held only
    /// by datasets it may not read answers as an unknown blob would).
    #[error("{0}")]
    Hidden(String),
    /// 429 with `Retry-After`.
    #[error("tenant {tenant} is over its request rate; retry in {}s", retry_after.as_secs().max(1))]
    RateLimited { tenant: String, retry_after: Duration },
    /// 429 with `Retry-After` until the month ends.
    #[error("tenant {tenant} has used its monthly quota: {used} of {quota} bytes this month; it resets at {resets}")]
    QuotaExhausted { tenant: String, used: u64, quota: u64, resets: String, retry_after: Duration },
}

/// A tenant with its compiled patterns and live limiters.
pub struct Tenant {
    pub id: Arc<str>,
    pub name: String,
    /// Bytes per calendar month, if capped.
    pub monthly_quota: Option<u64>,
    /// Policy classes this tenant may read the plaintext of.
    pub clearances: Vec<String>,
    datasets: Vec<glob::Pattern>,
    requests: Option<DefaultDirectRateLimiter>,
    bandwidth: Option<Bandwidth>,
}

/// Slowest request rate: one a day.
const MIN_REQUEST_RATE: f64 = 1.0 / 86_400.0;
/// Fastest request rate a limiter is kept for (governor counts nanoseconds).
const MAX_REQUEST_RATE: f64 = 1e8;

/// Most governor cells per second: its clock counts nanoseconds, so a cell
/// must stand for at least ~10 ns of the rate or the quota degenerates.
const MAX_CELLS_PER_SEC: u64 = 100_000_000;

/// A bandwidth cap: governor cells of `unit` bytes (one byte per cell up to
/// 100 MB/s, coarser above so the quota keeps its resolution).
struct Bandwidth {
    limiter: DefaultDirectRateLimiter,
    burst_cells: NonZeroU32,
    unit: u64,
}

impl Bandwidth {
    fn new(bps: u64, burst: Option<u64>) -> Result<Self, String> {
        if bps == 0 {
            return Err("bandwidth must be above 0".into());
        }
        let unit = bps.div_ceil(MAX_CELLS_PER_SEC).max(1);
        let rate = NonZeroU32::new(u32::try_from(bps / unit).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
        let burst = burst.unwrap_or(bps);
        if burst == 0 {
            return Err("bandwidth_burst must be above 0".into());
        }
        let burst_cells =
            NonZeroU32::new(u32::try_from(burst.div_ceil(unit)).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
        let limiter = RateLimiter::direct(Quota::per_second(rate).allow_burst(burst_cells));
        Ok(Self { limiter, burst_cells, unit })
    }

    /// The cell quota's replenish interval, for tests of its resolution.
    #[cfg(test)]
    fn cell_interval(&self, bps: u64) -> Duration {
        Duration::from_secs_f64(self.unit as f64 / bps as f64)
    }
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Tenant {
    fn build(id: String, name: String, datasets: Vec<glob::Pattern>, limits: &Limits) -> Result<Self, String> {
        let requests = match limits.request_rate {
            None => None,
            Some(rate) if !(rate.is_finite() && (MIN_REQUEST_RATE..=MAX_REQUEST_RATE).contains(&rate)) => {
                return Err(format!(
                    "request_rate {rate} must be between {MIN_REQUEST_RATE} (one a day) and {MAX_REQUEST_RATE} \
                     requests per second"
                ));
            }
            Some(rate) => {
                let period =
                    Duration::try_from_secs_f64(1.0 / rate).map_err(|e| format!("request_rate {rate}: {e}"))?;
                let burst = limits.request_burst.unwrap_or((rate.ceil() as u32).max(1));
                let burst = NonZeroU32::new(burst).ok_or("request_burst must be at least 1")?;
                let quota = Quota::with_period(period).ok_or("request_rate is too high")?.allow_burst(burst);
                Some(RateLimiter::direct(quota))
            }
        };
        let bandwidth = match limits.bandwidth {
            None => None,
            Some(ByteSize(bps)) => Some(Bandwidth::new(bps, limits.bandwidth_burst.map(|b| b.0))?),
        };
        if limits.monthly_quota.is_some_and(|q| q.0 == 0) {
            return Err("monthly_quota must be above 0; leave it unset for no quota".into());
        }
        Ok(Self {
            id: Arc::from(id),
            name,
            clearances: Vec::new(),
            datasets,
            requests,
            bandwidth,
            monthly_quota: limits.monthly_quota.map(|q| q.0),
        })
    }

    fn may_read(&self, dataset: &str) -> bool {
        self.datasets.iter().any(|p| p.matches(dataset))
    }

    /// Takes one request from the tenant's rate, or says when to retry.
    pub fn admit(&self) -> Result<(), Denied> {
        let Some(limiter) = &self.requests else { return Ok(()) };
        limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            Denied::RateLimited { tenant: self.id.to_string(), retry_after: wait }
        })
    }

    /// Waits until `n` body bytes may be sent under the bandwidth cap.
    pub async fn shape(&self, n: u64) {
        let Some(b) = &self.bandwidth else { return };
        let mut cells = n.div_ceil(b.unit);
        while cells > 0 {
            let take = cells.min(u64::from(b.burst_cells.get()));
            let c = NonZeroU32::new(take as u32).unwrap_or(NonZeroU32::MIN);
            // Within the cap, the common case, no future is built. `take`
            // never exceeds the burst, so capacity is always sufficient.
            if !matches!(b.limiter.check_n(c), Ok(Ok(()))) {
                let _ = b.limiter.until_n_ready(c).await;
            }
            cells -= take;
        }
    }

    pub fn shapes_bandwidth(&self) -> bool {
        self.bandwidth.is_some()
    }
}

/// Who may read what, compiled from config.
#[derive(Debug)]
pub struct Tenants {
    /// Keyed by BLAKE3 hashes of keys, which no client can steer: a fast hasher is safe.
    by_key: HashMap<[u8; 32], Arc<Tenant>, foldhash::fast::RandomState>,
    by_cert: HashMap<String, Arc<Tenant>>,
    by_id: HashMap<String, Arc<Tenant>>,
    anonymous: Arc<Tenant>,
    public: Vec<glob::Pattern>,
    open: bool,
}

fn patterns(globs: &[String]) -> Result<Vec<glob::Pattern>, String> {
    globs.iter().map(|g| glob::Pattern::new(g).map_err(|e| format!("{g:?}: {e}"))).collect()
}

/// Parses `blake3:<hex>` into the stored hash.
pub fn parse_key_hash(s: &str) -> Result<[u8; 32], String> {
    let hex_part =
        s.strip_prefix(HASH_PREFIX).ok_or_else(|| format!("{s:?} is not `blake3:<hex>`; keys are stored hashed"))?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).map_err(|e| format!("{s:?}: {e}"))?;
    Ok(out)
}

/// The credentials of an `Authorization: Bearer <token>` value (the scheme
/// is case-insensitive); `None` for any other scheme.
pub fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The stored form of an API key.
pub fn hash_key(key: &str) -> [u8; 32] {
    *blake3::hash(key.as_bytes()).as_bytes()
}

/// A new random API key and the config line that admits it.
pub fn new_key() -> Result<(String, String), String> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| e.to_string())?;
    let key = format!("{KEY_PREFIX}{}", B64URL.encode(raw));
    let line = format!("{HASH_PREFIX}{}", hex::encode(hash_key(&key)));
    Ok((key, line))
}

impl Tenants {
    pub fn build(tenants: &[TenantConfig], access: &AccessConfig) -> Result<Self, TenantError> {
        let mut by_key = HashMap::default();
        let mut by_cert = HashMap::new();
        let mut by_id = HashMap::new();
        for (index, t) in tenants.iter().enumerate() {
            let bad = |key: &'static str, why: String| TenantError::Invalid { index, key, why };
            if t.id.is_empty()
                || t.id == ANONYMOUS
                || !t.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(bad("id", format!("{:?} must be letters, digits, - _ . and not {ANONYMOUS:?}", t.id)));
            }
            if by_id.contains_key(&t.id) {
                return Err(bad("id", format!("{:?} is used twice", t.id)));
            }
            let datasets = patterns(&t.datasets).map_err(|w| bad("datasets", w))?;
            let mut tenant =
                Tenant::build(t.id.clone(), t.name.clone().unwrap_or_else(|| t.id.clone()), datasets, &t.limits)
                    .map_err(|w| bad("limits", w))?;
            tenant.clearances = t.clearances.clone();
            let tenant = Arc::new(tenant);
            for k in &t.keys {
                let h = parse_key_hash(k).map_err(|w| bad("keys", w))?;
                if by_key.insert(h, tenant.clone()).is_some() {
                    return Err(bad("keys", format!("{k} belongs to two tenants")));
                }
            }
            for n in &t.cert_names {
                if n.is_empty() || by_cert.insert(n.clone(), tenant.clone()).is_some() {
                    return Err(bad("cert_names", format!("{n:?} is empty or names two tenants")));
                }
            }
            by_id.insert(t.id.clone(), tenant);
        }
        let public =
            patterns(&access.public_datasets).map_err(|why| TenantError::Access { key: "public_datasets", why })?;
        let anonymous = Arc::new(
            Tenant::build(ANONYMOUS.into(), "anonymous readers".into(), Vec::new(), &access.anonymous)
                .map_err(|why| TenantError::Access { key: "anonymous", why })?,
        );
        Ok(Self { by_key, by_cert, by_id, anonymous, public, open: tenants.is_empty() })
    }

    pub fn tenant(&self, id: &str) -> Option<&Arc<Tenant>> {
        if id == ANONYMOUS { Some(&self.anonymous) } else { self.by_id.get(id) }
    }

    pub fn is_public(&self, dataset: &str) -> bool {
        self.open || self.public.iter().any(|p| p.matches(dataset))
    }

    /// Who is asking: the tenant of a valid bearer key; else the tenant a
    /// verified client certificate names; else anonymous. A key that is
    /// present but wrong is refused.
    pub fn identify(&self, authorization: Option<&[u8]>, cert_names: &[String]) -> Result<Arc<Tenant>, Denied> {
        let Some(value) = authorization else {
            let by_cert = cert_names.iter().find_map(|n| self.by_cert.get(n));
            return Ok(by_cert.unwrap_or(&self.anonymous).clone());
        };
        let text = std::str::from_utf8(value).map_err(|_| Denied::Unauthenticated("malformed Authorization header"))?;
        let key = bearer(text).ok_or(Denied::Unauthenticated("Authorization must be `Bearer <key>`"))?;
        self.by_key.get(&hash_key(key)).cloned().ok_or(Denied::Unauthenticated("the API key is not valid"))
    }

    /// Whether `tenant` may read `dataset`.
    pub fn authorize(&self, tenant: &Tenant, dataset: &str) -> Result<(), Denied> {
        if self.is_public(dataset) || tenant.may_read(dataset) {
            return Ok(());
        }
        if &*tenant.id == ANONYMOUS {
            return Err(Denied::Unauthenticated("an API key is required for this dataset"));
        }
        Err(Denied::Forbidden { tenant: tenant.id.to_string(), dataset: dataset.to_string() })
    }

    /// Whether `tenant` may see `dataset` in listings.
    pub fn can_see(&self, tenant: &Tenant, dataset: &str) -> bool {
        self.authorize(tenant, dataset).is_ok()
    }
}

#[cfg(test)]
mod tests;

/// A set of bearer tokens stored as hashes (`blake3:<hex>`), parsed once
/// from config; checking a request hashes its token once.
#[derive(Debug, Clone, Default)]
pub struct TokenSet {
    hashes: Arc<Vec<[u8; 32]>>,
}

/// Why a bearer token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    Missing,
    Malformed,
    Unknown,
}

impl TokenSet {
    /// Parses `(list name, hashes)` lists into one set; an error is the key
    /// (such as `grpc.admin_tokens[1]`) and why.
    pub fn parse<'a>(lists: impl IntoIterator<Item = (&'a str, &'a [String])>) -> Result<Self, (String, String)> {
        let mut hashes = Vec::new();
        for (list, items) in lists {
            for (i, t) in items.iter().enumerate() {
                hashes.push(parse_key_hash(t).map_err(|why| (format!("{list}[{i}]"), why))?);
            }
        }
        Ok(Self { hashes: Arc::new(hashes) })
    }

    /// Checks an `Authorization` value (`Bearer <token>`).
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), TokenRefusal> {
        let value = authorization.ok_or(TokenRefusal::Missing)?;
        let text = std::str::from_utf8(value).map_err(|_| TokenRefusal::Malformed)?;
        let token = bearer(text).ok_or(TokenRefusal::Malformed)?;
        let h = hash_key(token);
        if self.hashes.iter().any(|k| k == &h) { Ok(()) } else { Err(TokenRefusal::Unknown) }
    }
}
