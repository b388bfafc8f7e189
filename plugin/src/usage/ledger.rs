//! The durable usage ledger, in redb.
//!
//! Tables:
//! - `open`: counts of windows not yet closed, keyed by the record key.
//! - `closed`: closed records by cursor sequence (the order they closed).
//! - `by_tenant`, `by_tenant_time`: indexes for tenant listings and totals.
//! - `month`: bytes per tenant per calendar month, for quotas.
//! - `by_time`: every closed record by window, for chargeback over a period.
//! - `daily`: closed counts summed per UTC day and record key (the window
//!   field holds the day), for trends; kept when records are compacted.
//! - `meta`: instance id, next sequence, acknowledged sequence, floor.
//!
//! [`Ledger::commit`] merges a meter drain and closes windows in one
//! transaction with immediate durability, so a crash loses at most the
//! counts not yet committed. A commit that fails keeps its counts for the
//! next attempt. Calls block (disk I/O); async callers use `spawn_blocking`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::meter::Drained;
use super::{Counters, RecordKey, Source, WINDOW_SECS, month_bounds};

const META_NUM: TableDefinition<&str, u64> = TableDefinition::new("meta_num");
const META_STR: TableDefinition<&str, &str> = TableDefinition::new("meta_str");
const OPEN: TableDefinition<&str, &str> = TableDefinition::new("open");
const CLOSED: TableDefinition<u64, &str> = TableDefinition::new("closed");
const BY_TENANT: TableDefinition<(&str, u64), ()> = TableDefinition::new("by_tenant");
const BY_TENANT_TIME: TableDefinition<(&str, i64, u64), ()> = TableDefinition::new("by_tenant_time");
const MONTH: TableDefinition<(&str, i64), u64> = TableDefinition::new("month");
const BY_TIME: TableDefinition<(i64, u64), ()> = TableDefinition::new("by_time");
const DAILY: TableDefinition<(i64, &str), &str> = TableDefinition::new("daily");

/// Version of the derived tables; older ledgers are re-indexed at open.
const INDEX_VERSION: u64 = 2;
/// Seconds in a UTC day.
pub const DAY_SECS: i64 = 86_400;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("usage ledger {path}: {why}")]
    Open { path: String, why: String },
    #[error("usage ledger: {0}")]
    Storage(String),
    #[error("usage ledger holds a record it cannot read (cursor {seq}): {why}")]
    Corrupt { seq: u64, why: String },
    #[error("cursor {0:?} is not a cursor of this gateway")]
    BadCursor(String),
    #[error("cursor {cursor:?} is ahead of the newest record ({last})")]
    CursorAhead { cursor: String, last: String },
}

fn storage(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Storage(e.to_string())
}

/// A closed record as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closed {
    pub key: RecordKey,
    pub counters: Counters,
}

/// A closed record with its place in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub record: Closed,
}

/// What one commit did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CommitStats {
    pub merged: usize,
    pub closed: usize,
}

pub struct Ledger {
    db: Database,
    instance: String,
    /// Counts drained from the meter and not yet committed.
    pending: Mutex<Drained>,
    /// The newest closed sequence number.
    last: watch::Sender<u64>,
    /// The committed floor: every window below it is closed.
    floor: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("instance", &self.instance).finish_non_exhaustive()
    }
}

fn new_instance_id() -> String {
    let mut raw = [0u8; 6];
    let _ = getrandom::fill(&mut raw);
    format!("gw-{}", hex::encode(raw))
}

/// The start of the UTC day holding Unix second `t`.
pub fn day_of(t: i64) -> i64 {
    t.div_euclid(DAY_SECS) * DAY_SECS
}

/// Adds a closed record's counts to its day in `daily`.
fn add_daily(
    daily: &mut redb::Table<'_, (i64, &'static str), &'static str>,
    key: &RecordKey,
    counters: &Counters,
) -> Result<(), LedgerError> {
    let day = day_of(key.window());
    let k = serde_json::to_string(&key.with_window(day)).map_err(storage)?;
    let mut sum = match daily.get((day, k.as_str())).map_err(storage)? {
        Some(v) => serde_json::from_str::<Counters>(v.value()).map_err(storage)?,
        None => Counters::default(),
    };
    sum.add(counters);
    daily.insert((day, k.as_str()), serde_json::to_string(&sum).map_err(storage)?.as_str()).map_err(storage)?;
    Ok(())
}

/// Keeps the derived tables (`by_time`, `daily`) complete at open: a
/// ledger from before them (or from an older index version) has them rebuilt
/// from its closed records; records an older binary closed since the last
/// indexing are added.
fn reindex(txn: &redb::WriteTransaction) -> Result<(), LedgerError> {
    let mut nums = txn.open_table(META_NUM).map_err(storage)?;
    let version = nums.get("index_version").map_err(storage)?.map(|v| v.value()).unwrap_or(0);
    let last = nums.get("next_seq").map_err(storage)?.map(|v| v.value()).unwrap_or(1) - 1;
    let from = if version < INDEX_VERSION {
        // Start over: day sums are additive, so they must not be rebuilt on top of old ones.
        txn.delete_table(BY_TIME).map_err(storage)?;
        txn.delete_table(DAILY).map_err(storage)?;
        0
    } else {
        nums.get("indexed_seq").map_err(storage)?.map(|v| v.value()).unwrap_or(0)
    };
    if from < last {
        let closed = txn.open_table(CLOSED).map_err(storage)?;
        let mut by_time = txn.open_table(BY_TIME).map_err(storage)?;
        let mut daily = txn.open_table(DAILY).map_err(storage)?;
        let mut n = 0u64;
        for row in closed.range(from + 1..).map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            let seq = k.value();
            let rec: Closed =
                serde_json::from_str(v.value()).map_err(|e| LedgerError::Corrupt { seq, why: e.to_string() })?;
            by_time.insert((rec.key.window(), seq), ()).map_err(storage)?;
            add_daily(&mut daily, &rec.key, &rec.counters)?;
            n += 1;
        }
        if n > 0 {
            tracing::info!(records = n, "usage ledger indexed by time and day");
        }
    }
    nums.insert("index_version", INDEX_VERSION).map_err(storage)?;
    nums.insert("indexed_seq", last).map_err(storage)?;
    Ok(())
}

impl Ledger {
    /// Opens (or creates) the ledger at `path`; `None` keeps it in memory,
    /// for tests and for gateways that do not bill. `instance` overrides the
    /// stored gateway instance id; without one, the stored id is kept, or a
    /// new one is made and stored.
    pub fn open(path: Option<&Path>, instance: Option<&str>) -> Result<Self, LedgerError> {
        let shown = crate::storage::shown(path);
        let err = |e: &dyn std::fmt::Display| LedgerError::Open { path: shown.clone(), why: e.to_string() };
        let db = crate::storage::open_db(path).map_err(|e| err(&e))?;
        let txn = db.begin_write().map_err(|e| err(&e))?;
        let (instance, last, floor) = {
            let mut meta = txn.open_table(META_STR).map_err(|e| err(&e))?;
            let stored = meta.get("instance").map_err(|e| err(&e))?.map(|v| v.value().to_string());
            let nums = txn.open_table(META_NUM).map_err(|e| err(&e))?;
            let has_records = nums.get("next_seq").map_err(|e| err(&e))?.is_some_and(|v| v.value() > 1);
            drop(nums);
            let instance = match (instance, stored) {
                // Record ids and cursors are made from the instance id: changing it
                // under closed records would re-key them and bill them twice.
                (Some(i), Some(s)) if i != s && has_records => {
                    return Err(err(&format!(
                        "usage.instance_id is {i:?} but this ledger's records belong to {s:?}; \
                         keep {s:?} or start a new ledger"
                    )));
                }
                (Some(i), _) => i.to_string(),
                (None, Some(s)) => s,
                (None, None) => new_instance_id(),
            };
            meta.insert("instance", instance.as_str()).map_err(|e| err(&e))?;
            let nums = txn.open_table(META_NUM).map_err(|e| err(&e))?;
            let next = nums.get("next_seq").map_err(|e| err(&e))?.map(|v| v.value()).unwrap_or(1);
            let floor = nums.get("floor").map_err(|e| err(&e))?.map(|v| v.value()).unwrap_or(0);
            (instance, next - 1, floor as i64)
        };
        txn.open_table(OPEN).map_err(|e| err(&e))?;
        txn.open_table(CLOSED).map_err(|e| err(&e))?;
        txn.open_table(BY_TENANT).map_err(|e| err(&e))?;
        txn.open_table(BY_TENANT_TIME).map_err(|e| err(&e))?;
        txn.open_table(MONTH).map_err(|e| err(&e))?;
        reindex(&txn).map_err(|e| err(&e))?;
        txn.open_table(BY_TIME).map_err(|e| err(&e))?;
        txn.open_table(DAILY).map_err(|e| err(&e))?;
        txn.commit().map_err(|e| err(&e))?;
        Ok(Self {
            db,
            instance,
            pending: Mutex::new(Drained::default()),
            last: watch::channel(last).0,
            floor: std::sync::atomic::AtomicI64::new(floor),
        })
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The newest closed sequence number (0: none yet).
    pub fn last_seq(&self) -> u64 {
        *self.last.borrow()
    }

    /// Watches the newest closed sequence number.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.last.subscribe()
    }

    pub fn cursor(&self, seq: u64) -> String {
        format!("{}:{seq}", self.instance)
    }

    /// Parses a cursor of this ledger; empty means "from the start".
    pub fn parse_cursor(&self, cursor: &str) -> Result<u64, LedgerError> {
        if cursor.is_empty() {
            return Ok(0);
        }
        let bad = || LedgerError::BadCursor(cursor.to_string());
        let (instance, seq) = cursor.rsplit_once(':').ok_or_else(bad)?;
        if instance != self.instance {
            return Err(bad());
        }
        let seq: u64 = seq.parse().map_err(|_| bad())?;
        if seq > self.last_seq() {
            // The watch moves an instant after a commit is readable: ask the store.
            let durable = self.num("next_seq")?.saturating_sub(1);
            if seq > durable {
                return Err(LedgerError::CursorAhead { cursor: cursor.to_string(), last: self.cursor(durable) });
            }
        }
        Ok(seq)
    }

    fn num(&self, key: &str) -> Result<u64, LedgerError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(META_NUM).map_err(storage)?;
        Ok(t.get(key).map_err(storage)?.map(|v| v.value()).unwrap_or(0))
    }

    /// Windows below this are closed; the meter resumes from here.
    pub fn floor(&self) -> Result<i64, LedgerError> {
        Ok(self.floor.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Bytes billed per tenant in the calendar month holding `t`.
    pub fn month_bytes(&self, t: i64) -> Result<HashMap<String, u64>, LedgerError> {
        let (start, _) = month_bounds(t);
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(MONTH).map_err(storage)?;
        let mut out = HashMap::new();
        for row in table.iter().map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            let (tenant, month) = k.value();
            if month == start {
                out.insert(tenant.to_string(), v.value());
            }
        }
        Ok(out)
    }

    /// Merges a meter drain and closes every window before its
    /// `closed_before`, durably, in one transaction. On error the counts are
    /// kept and retried by the next commit.
    pub fn commit(&self, drained: Drained) -> Result<CommitStats, LedgerError> {
        let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (k, c) in drained.deltas {
            pending.deltas.entry(k).or_default().add(&c);
        }
        pending.closed_before = pending.closed_before.max(drained.closed_before);
        if pending.deltas.is_empty() && pending.closed_before <= self.floor.load(std::sync::atomic::Ordering::Acquire) {
            // Nothing counted and no window to close: an idle gateway writes nothing.
            return Ok(CommitStats::default());
        }
        let (stats, last) = self.write(&pending)?;
        pending.deltas.clear();
        self.floor.fetch_max(pending.closed_before.max(0), std::sync::atomic::Ordering::AcqRel);
        self.last.send_if_modified(|l| {
            let changed = *l != last;
            *l = last;
            changed
        });
        Ok(stats)
    }

    fn write(&self, p: &Drained) -> Result<(CommitStats, u64), LedgerError> {
        let mut txn = self.db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate).map_err(storage)?;
        let mut stats = CommitStats::default();
        let last;
        {
            let mut open = txn.open_table(OPEN).map_err(storage)?;
            let mut month = txn.open_table(MONTH).map_err(storage)?;
            for (key, c) in &p.deltas {
                let k = serde_json::to_string(key).map_err(storage)?;
                let mut total = match open.get(k.as_str()).map_err(storage)? {
                    Some(v) => serde_json::from_str::<Counters>(v.value()).map_err(storage)?,
                    None => Counters::default(),
                };
                total.add(c);
                open.insert(k.as_str(), serde_json::to_string(&total).map_err(storage)?.as_str()).map_err(storage)?;
                if let Some(tenant) = key.tenant().filter(|_| c.bytes > 0) {
                    let m = month_bounds(key.window()).0;
                    let before = month.get((tenant, m)).map_err(storage)?.map(|v| v.value()).unwrap_or(0);
                    month.insert((tenant, m), before + c.bytes).map_err(storage)?;
                }
                stats.merged += 1;
            }
            // Close windows: move them to `closed` in key order, so the same
            // counts always close in the same order.
            let mut closing: BTreeMap<RecordKey, Counters> = BTreeMap::new();
            for row in open.iter().map_err(storage)? {
                let (k, v) = row.map_err(storage)?;
                let key: RecordKey = serde_json::from_str(k.value()).map_err(storage)?;
                if key.window() < p.closed_before {
                    closing.insert(key, serde_json::from_str(v.value()).map_err(storage)?);
                }
            }
            let mut nums = txn.open_table(META_NUM).map_err(storage)?;
            let mut next = nums.get("next_seq").map_err(storage)?.map(|v| v.value()).unwrap_or(1);
            let mut closed = txn.open_table(CLOSED).map_err(storage)?;
            let mut by_tenant = txn.open_table(BY_TENANT).map_err(storage)?;
            let mut by_time = txn.open_table(BY_TENANT_TIME).map_err(storage)?;
            let mut all_by_time = txn.open_table(BY_TIME).map_err(storage)?;
            let mut daily = txn.open_table(DAILY).map_err(storage)?;
            for (key, counters) in closing {
                open.remove(serde_json::to_string(&key).map_err(storage)?.as_str()).map_err(storage)?;
                if let Some(t) = key.tenant() {
                    by_tenant.insert((t, next), ()).map_err(storage)?;
                    by_time.insert((t, key.window(), next), ()).map_err(storage)?;
                }
                all_by_time.insert((key.window(), next), ()).map_err(storage)?;
                add_daily(&mut daily, &key, &counters)?;
                let rec = serde_json::to_string(&Closed { key, counters }).map_err(storage)?;
                closed.insert(next, rec.as_str()).map_err(storage)?;
                next += 1;
                stats.closed += 1;
            }
            nums.insert("next_seq", next).map_err(storage)?;
            nums.insert("indexed_seq", next - 1).map_err(storage)?;
            let floor = nums.get("floor").map_err(storage)?.map(|v| v.value()).unwrap_or(0);
            nums.insert("floor", floor.max(p.closed_before.max(0) as u64)).map_err(storage)?;
            last = next - 1;
        }
        txn.commit().map_err(storage)?;
        Ok((stats, last))
    }

    fn read_closed(t: &impl ReadableTable<u64, &'static str>, seq: u64) -> Result<Option<Closed>, LedgerError> {
        match t.get(seq).map_err(storage)? {
            None => Ok(None),
            Some(v) => {
                serde_json::from_str(v.value()).map(Some).map_err(|e| LedgerError::Corrupt { seq, why: e.to_string() })
            }
        }
    }

    /// Up to `limit` closed records after sequence `after`, oldest first,
    /// optionally of one tenant only.
    /// One page of [`Ledger::list`] with its cursors: `next` (where the next
    /// page starts) never passes `last` (the newest closed record), even
    /// while commits land: a record can be readable an instant before the
    /// newest-sequence watch moves, so `last` covers every listed record.
    pub fn page(&self, after: u64, limit: usize, tenant: Option<&str>) -> Result<(Vec<Entry>, u64, u64), LedgerError> {
        let entries = self.list(after, limit, tenant)?;
        let next = entries.last().map_or(after, |e| e.seq);
        let last = self.last_seq().max(self.num("next_seq")?.saturating_sub(1)).max(next);
        Ok((entries, next, last))
    }

    pub fn list(&self, after: u64, limit: usize, tenant: Option<&str>) -> Result<Vec<Entry>, LedgerError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let closed = txn.open_table(CLOSED).map_err(storage)?;
        let mut out = Vec::new();
        match tenant {
            None => {
                for row in closed.range(after.saturating_add(1)..).map_err(storage)?.take(limit) {
                    let (k, v) = row.map_err(storage)?;
                    let seq = k.value();
                    let record = serde_json::from_str(v.value())
                        .map_err(|e| LedgerError::Corrupt { seq, why: e.to_string() })?;
                    out.push(Entry { seq, record });
                }
            }
            Some(t) => {
                let idx = txn.open_table(BY_TENANT).map_err(storage)?;
                for row in idx.range((t, after.saturating_add(1))..=(t, u64::MAX)).map_err(storage)?.take(limit) {
                    let (k, _) = row.map_err(storage)?;
                    let seq = k.value().1;
                    if let Some(record) = Self::read_closed(&closed, seq)? {
                        out.push(Entry { seq, record });
                    }
                }
            }
        }
        Ok(out)
    }

    /// Sums of `tenant`'s closed records, by source, whose window starts in
    /// `[from, to)`, optionally for one dataset.
    pub fn totals(
        &self,
        tenant: &str,
        dataset: Option<&str>,
        from: i64,
        to: i64,
    ) -> Result<BTreeMap<Source, Counters>, LedgerError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let closed = txn.open_table(CLOSED).map_err(storage)?;
        let idx = txn.open_table(BY_TENANT_TIME).map_err(storage)?;
        let mut out: BTreeMap<Source, Counters> = BTreeMap::new();
        if from >= to {
            return Ok(out);
        }
        for row in idx.range((tenant, from, 0)..(tenant, to, 0)).map_err(storage)? {
            let (k, _) = row.map_err(storage)?;
            let seq = k.value().2;
            let Some(rec) = Self::read_closed(&closed, seq)? else { continue };
            if let RecordKey::TenantUsage { dataset: d, source, .. } = &rec.key
                && dataset.is_none_or(|want| want == &**d)
            {
                out.entry(*source).or_default().add(&rec.counters);
            }
        }
        Ok(out)
    }

    /// Every closed record whose window starts in `[from, to)`, tenants' and
    /// releases' alike: the records [`Ledger::totals`] sums, for all tenants.
    pub fn period(&self, from: i64, to: i64) -> Result<Vec<Closed>, LedgerError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let closed = txn.open_table(CLOSED).map_err(storage)?;
        let idx = txn.open_table(BY_TIME).map_err(storage)?;
        let mut out = Vec::new();
        if from >= to {
            return Ok(out);
        }
        for row in idx.range((from, 0)..(to, 0)).map_err(storage)? {
            let (k, _) = row.map_err(storage)?;
            if let Some(rec) = Self::read_closed(&closed, k.value().1)? {
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// Closed counts summed per UTC day, for days starting in `[from, to)`.
    /// Each record's window is the start of its day. Kept after compaction.
    pub fn daily(&self, from: i64, to: i64) -> Result<Vec<Closed>, LedgerError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let daily = txn.open_table(DAILY).map_err(storage)?;
        let mut out = Vec::new();
        if from >= to {
            return Ok(out);
        }
        for row in daily.range((from, "")..(to, "")).map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            let key: RecordKey = serde_json::from_str(k.value().1).map_err(storage)?;
            let counters: Counters = serde_json::from_str(v.value()).map_err(storage)?;
            out.push(Closed { key, counters });
        }
        Ok(out)
    }

    /// Marks records up to `seq` as consumed; returns the highest acknowledged.
    pub fn ack(&self, seq: u64) -> Result<u64, LedgerError> {
        let txn = self.db.begin_write().map_err(storage)?;
        let acked = {
            let mut nums = txn.open_table(META_NUM).map_err(storage)?;
            let acked = nums.get("acked").map_err(storage)?.map(|v| v.value()).unwrap_or(0).max(seq);
            nums.insert("acked", acked).map_err(storage)?;
            acked
        };
        txn.commit().map_err(storage)?;
        Ok(acked)
    }

    pub fn acked(&self) -> Result<u64, LedgerError> {
        self.num("acked")
    }

    /// Deletes acknowledged records whose window ended before `cutoff`.
    /// Returns how many were deleted.
    pub fn compact(&self, cutoff: i64) -> Result<usize, LedgerError> {
        let acked = self.acked()?;
        let txn = self.db.begin_write().map_err(storage)?;
        let mut removed = 0;
        {
            let mut closed = txn.open_table(CLOSED).map_err(storage)?;
            let mut by_tenant = txn.open_table(BY_TENANT).map_err(storage)?;
            let mut by_time = txn.open_table(BY_TENANT_TIME).map_err(storage)?;
            let mut all_by_time = txn.open_table(BY_TIME).map_err(storage)?;
            let mut doomed = Vec::new();
            for row in closed.range(..=acked).map_err(storage)? {
                let (k, v) = row.map_err(storage)?;
                let seq = k.value();
                let rec: Closed =
                    serde_json::from_str(v.value()).map_err(|e| LedgerError::Corrupt { seq, why: e.to_string() })?;
                if rec.key.window() + WINDOW_SECS > cutoff {
                    // Windows close in order: everything later is newer still.
                    break;
                }
                doomed.push((seq, rec.key));
            }
            for (seq, key) in doomed {
                closed.remove(seq).map_err(storage)?;
                all_by_time.remove((key.window(), seq)).map_err(storage)?;
                if let Some(t) = key.tenant() {
                    by_tenant.remove((t, seq)).map_err(storage)?;
                    by_time.remove((t, key.window(), seq)).map_err(storage)?;
                }
                removed += 1;
            }
        }
        txn.commit().map_err(storage)?;
        Ok(removed)
    }
}
