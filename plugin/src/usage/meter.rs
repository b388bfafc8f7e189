//! The in-memory meter on the request path.
//!
//! Counting happens once per response, when it ends, under one short lock:
//! the response's body keeps its own counts ([`ResponseMeter`]) while it
//! streams. The ledger drains the meter every commit interval.
//!
//! Window assignment and window closing share the lock, so no count can land
//! in a window the ledger has already closed: a drain raises the *floor*,
//! and every later count goes to a window at or above it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Counters, RecordKey, ReleaseTag, Source, WINDOW_SECS, month_bounds, unix_now, window_of};

/// A source of Unix seconds; tests drive windows with their own.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// Counts taken from the meter for the ledger: every window below
/// `closed_before` is complete.
#[derive(Debug, Default)]
pub struct Drained {
    pub deltas: Deltas,
    pub closed_before: i64,
}

/// Counts by record key. foldhash, not SipHash: the keys come from config
/// and signed manifests, and hashing is most of the meter's per-response cost.
pub type Deltas = HashMap<RecordKey, Counters, foldhash::fast::RandomState>;

#[derive(Debug)]
struct State {
    deltas: Deltas,
    /// No count lands in a window below this one.
    floor: i64,
    /// The calendar month the quota counts cover: [start, end).
    month: (i64, i64),
    /// Bytes billed to each tenant in `month`, as far as this gateway knows.
    month_bytes: HashMap<Arc<str>, u64, foldhash::fast::RandomState>,
    /// Bytes billed to each tenant since start (for the per-tenant metric).
    served: HashMap<Arc<str>, u64, foldhash::fast::RandomState>,
}

pub struct Meter {
    state: Mutex<State>,
    clock: Clock,
    /// Bytes handed to clients by responses still open, per tenant with a
    /// monthly quota: counted against the quota until the response records.
    in_flight: Mutex<HashMap<Arc<str>, Arc<AtomicU64>, foldhash::fast::RandomState>>,
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter").finish_non_exhaustive()
    }
}

impl Default for Meter {
    fn default() -> Self {
        Self::new(Arc::new(unix_now))
    }
}

impl Meter {
    pub fn new(clock: Clock) -> Self {
        let now = clock();
        Self {
            state: Mutex::new(State {
                deltas: Deltas::default(),
                floor: i64::MIN,
                month: month_bounds(now),
                month_bytes: HashMap::default(),
                served: HashMap::default(),
            }),
            clock,
            in_flight: Mutex::default(),
        }
    }

    /// The counter of bytes in flight to `tenant`'s open responses.
    fn in_flight_counter(&self, tenant: &Arc<str>) -> Arc<AtomicU64> {
        let mut map = self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(tenant.clone()).or_default().clone()
    }

    /// Bytes billed to `tenant` this month plus bytes its open responses
    /// have handed out, for quota checks.
    pub fn month_bytes_with_in_flight(&self, tenant: &str) -> (u64, i64) {
        let in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(tenant)
            .map_or(0, |c| c.load(Ordering::Acquire));
        let (used, end) = self.month_bytes(tenant);
        (used.saturating_add(in_flight), end)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the counts half-updated
        // in a way that matters more than losing them; keep metering.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The window a count taken now lands in; rolls the quota month over.
    fn window(&self, st: &mut State) -> i64 {
        let now = (self.clock)();
        let w = window_of(now).max(st.floor);
        if w >= st.month.1 || w < st.month.0 {
            st.month = month_bounds(w);
            st.month_bytes.clear();
        }
        w
    }

    /// Starts the meter where the ledger left off: windows below `floor` are
    /// closed, and `month_bytes` are the tenants' bytes in the current month.
    pub fn resume(&self, floor: i64, month_bytes: HashMap<String, u64>) {
        let mut st = self.lock();
        st.floor = st.floor.max(floor);
        let w = self.window(&mut st);
        st.month = month_bounds(w);
        st.month_bytes = month_bytes.into_iter().map(|(k, v)| (Arc::from(k), v)).collect();
    }

    /// Records one response to `tenant` for `release`: `hot` and `origin`
    /// body bytes written, and whether the client hung up first.
    pub fn record_response(&self, tenant: &Arc<str>, release: &ReleaseTag, hot: u64, origin: u64, aborted: bool) {
        let mut st = self.lock();
        let window = self.window(&mut st);
        let request_source = if origin > 0 { Source::Origin } else { Source::Hot };
        for (source, bytes) in [(Source::Hot, hot), (Source::Origin, origin)] {
            let is_request = source == request_source;
            if bytes == 0 && !is_request {
                continue;
            }
            let key = RecordKey::TenantUsage {
                tenant: tenant.clone(),
                dataset: release.dataset.clone(),
                version: release.version.clone(),
                window,
                source,
            };
            let c = st.deltas.entry(key).or_default();
            c.bytes += bytes;
            if is_request {
                c.requests += 1;
                c.aborted_requests += u64::from(aborted);
            }
        }
        *st.month_bytes.entry(tenant.clone()).or_default() += hot + origin;
        *st.served.entry(tenant.clone()).or_default() += hot + origin;
    }

    /// Bytes billed to each tenant since this gateway started.
    pub fn tenant_totals(&self) -> Vec<(Arc<str>, u64)> {
        self.lock().served.iter().map(|(t, b)| (t.clone(), *b)).collect()
    }

    fn dataset_cost(&self, release: &ReleaseTag, f: impl FnOnce(&mut Counters)) {
        let mut st = self.lock();
        let window = self.window(&mut st);
        let key = RecordKey::DatasetCost { dataset: release.dataset.clone(), version: release.version.clone(), window };
        f(st.deltas.entry(key).or_default());
    }

    /// A response the gateway cut because it had no verified bytes to send:
    /// its bytes are counted against the release, never billed to the tenant.
    pub fn record_integrity_abort(&self, release: &ReleaseTag, bytes: u64) {
        self.dataset_cost(release, |c| {
            c.integrity_aborted_bytes += bytes;
            c.integrity_aborted_requests += 1;
        });
    }

    /// Bytes received from an origin for `release`; `failed` of them failed verification.
    pub fn record_egress(&self, release: &ReleaseTag, bytes: u64, failed: u64) {
        if bytes == 0 && failed == 0 {
            return;
        }
        self.dataset_cost(release, |c| {
            c.origin_egress_bytes += bytes;
            c.integrity_failed_bytes += failed;
        });
    }

    /// Bytes billed to `tenant` this calendar month (UTC), and when the month ends.
    pub fn month_bytes(&self, tenant: &str) -> (u64, i64) {
        let mut st = self.lock();
        self.window(&mut st);
        (st.month_bytes.get(tenant).copied().unwrap_or(0), st.month.1)
    }

    /// Bytes billed to each tenant this calendar month (UTC), committed or
    /// not, and the month's bounds.
    pub fn month_totals(&self) -> (std::collections::BTreeMap<String, u64>, (i64, i64)) {
        let mut st = self.lock();
        self.window(&mut st);
        (st.month_bytes.iter().map(|(k, v)| (k.to_string(), *v)).collect(), st.month)
    }

    /// Takes the counts so far. Windows before the current one close.
    pub fn drain(&self) -> Drained {
        self.drain_inner(0)
    }

    /// Takes the counts so far and closes every window, the current one
    /// included (at shutdown). Counts after this land in the next window.
    pub fn drain_all(&self) -> Drained {
        self.drain_inner(WINDOW_SECS)
    }

    fn drain_inner(&self, ahead: i64) -> Drained {
        let mut st = self.lock();
        let w = self.window(&mut st);
        st.floor = w + ahead;
        Drained { deltas: std::mem::take(&mut st.deltas), closed_before: st.floor }
    }
}

/// The running count of one streamed response, reported to the meter when
/// the response ends, however it ends.
///
/// Bytes count once hyper has taken them: a frame is *confirmed* when hyper
/// asks for the next one. A client that hangs up is billed what was
/// confirmed; a completed response is billed in full; a response the gateway
/// cut for want of verified bytes is billed nothing.
pub struct ResponseMeter {
    meter: Arc<Meter>,
    tenant: Arc<str>,
    release: ReleaseTag,
    expected: u64,
    sent: [u64; 2],
    confirmed: [u64; 2],
    failed: bool,
    /// The tenant's monthly quota and its bytes in flight, when it has one.
    quota: Option<(u64, Arc<AtomicU64>)>,
}

impl std::fmt::Debug for ResponseMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseMeter").field("tenant", &self.tenant).field("sent", &self.sent).finish()
    }
}

impl ResponseMeter {
    pub fn new(meter: Arc<Meter>, tenant: Arc<str>, release: ReleaseTag, expected: u64) -> Self {
        Self { meter, tenant, release, expected, sent: [0; 2], confirmed: [0; 2], failed: false, quota: None }
    }

    /// Counts this response's bytes against `quota` while it streams, so
    /// parallel responses cannot overrun the tenant's monthly quota by more
    /// than a frame each ([`ResponseMeter::quota_spent`]).
    pub fn with_quota(mut self, quota: Option<u64>) -> Self {
        self.quota = quota.map(|q| (q, self.meter.in_flight_counter(&self.tenant)));
        self
    }

    /// Whether the tenant's quota is spent, counting every open response's
    /// bytes: the body stops before its next frame.
    ///
    /// Never before the first frame: hyper writes the response head together
    /// with the first body frame, so a body that fails at once would reach
    /// the client as a dropped connection with no status. The handler checks
    /// the quota just before it answers; the first frame then always goes,
    /// which keeps the overrun within one frame per response.
    pub fn quota_spent(&self) -> bool {
        let Some((quota, in_flight)) = &self.quota else { return false };
        if self.sent == [0; 2] {
            return false;
        }
        let (used, _) = self.meter.month_bytes(&self.tenant);
        used.saturating_add(in_flight.load(Ordering::Acquire)) >= *quota
    }

    /// hyper asked for the next frame: everything handed over so far was taken.
    pub fn polled(&mut self) {
        self.confirmed = self.sent;
    }

    /// A frame of `n` bytes from `source` is handed to hyper.
    pub fn handed(&mut self, n: u64, source: Source) {
        self.sent[source as usize] += n;
        if let Some((_, in_flight)) = &self.quota {
            in_flight.fetch_add(n, Ordering::AcqRel);
        }
    }

    /// The gateway cut the response (no verified bytes could be had).
    pub fn failed(&mut self) {
        self.failed = true;
    }
}

impl Drop for ResponseMeter {
    fn drop(&mut self) {
        let [hot, origin] = self.sent;
        if self.failed {
            self.meter.record_integrity_abort(&self.release, hot + origin);
        } else if hot + origin >= self.expected {
            self.meter.record_response(&self.tenant, &self.release, hot, origin, false);
        } else {
            let [hot, origin] = self.confirmed;
            self.meter.record_response(&self.tenant, &self.release, hot, origin, true);
        }
        // Recorded (into the month's bytes) before it leaves the in-flight count.
        if let Some((_, in_flight)) = &self.quota {
            in_flight.fetch_sub(hot + origin, Ordering::AcqRel);
        }
    }
}
