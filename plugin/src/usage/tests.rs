#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use super::*;

/// A meter whose clock the test sets.
fn meter_at(t: i64) -> (Arc<Meter>, Arc<AtomicI64>) {
    let now = Arc::new(AtomicI64::new(t));
    let n = now.clone();
    (Arc::new(Meter::new(Arc::new(move || n.load(Ordering::SeqCst)))), now)
}

fn rel(d: &str, v: &str) -> ReleaseTag {
    ReleaseTag { dataset: Arc::from(d), version: Arc::from(v) }
}

fn tenant_key(t: &str, w: i64, s: Source) -> RecordKey {
    RecordKey::TenantUsage {
        tenant: Arc::from(t),
        dataset: Arc::from("ds"),
        version: Arc::from("1.0.0"),
        window: w,
        source: s,
    }
}

// 2026-11-24T10:00:00Z
const T0: i64 = 1_795_514_400;

#[test]
fn windows_are_minutes_and_never_reopen() {
    assert_eq!(window_of(T0 + 59), T0);
    assert_eq!(window_of(T0 + 60), T0 + 60);
    assert_eq!(window_of(-1), -60);
    let (m, now) = meter_at(T0 + 10);
    let a: Arc<str> = Arc::from("a");
    m.record_response(&a, &rel("ds", "1.0.0"), 100, 0, false);
    now.store(T0 + 70, Ordering::SeqCst);
    m.record_response(&a, &rel("ds", "1.0.0"), 5, 7, false);
    let d = m.drain();
    assert_eq!(d.closed_before, T0 + 60);
    assert_eq!(d.deltas[&tenant_key("a", T0, Source::Hot)], Counters { bytes: 100, requests: 1, ..Default::default() });
    // A response with bytes from both sources is one request, under origin.
    assert_eq!(d.deltas[&tenant_key("a", T0 + 60, Source::Hot)], Counters { bytes: 5, ..Default::default() });
    assert_eq!(
        d.deltas[&tenant_key("a", T0 + 60, Source::Origin)],
        Counters { bytes: 7, requests: 1, ..Default::default() }
    );
    // The clock steps back into a closed window: the count lands at the floor.
    now.store(T0 + 5, Ordering::SeqCst);
    m.record_response(&a, &rel("ds", "1.0.0"), 1, 0, true);
    let d = m.drain();
    assert_eq!(
        d.deltas[&tenant_key("a", T0 + 60, Source::Hot)],
        Counters { bytes: 1, requests: 1, aborted_requests: 1, ..Default::default() }
    );
    // At shutdown every window closes, and later counts go to the next one.
    let d = m.drain_all();
    assert_eq!(d.closed_before, T0 + 120);
    m.record_response(&a, &rel("ds", "1.0.0"), 1, 0, false);
    assert!(m.drain().deltas.contains_key(&tenant_key("a", T0 + 120, Source::Hot)));
}

#[test]
fn record_ids_are_deterministic() {
    let k = tenant_key("a", T0, Source::Hot);
    assert_eq!(k.id("gw-1"), tenant_key("a", T0, Source::Hot).id("gw-1"));
    assert_eq!(k.id("gw-1").len(), 32);
    let others = [
        k.id("gw-2"),
        tenant_key("b", T0, Source::Hot).id("gw-1"),
        tenant_key("a", T0 + 60, Source::Hot).id("gw-1"),
        tenant_key("a", T0, Source::Origin).id("gw-1"),
        RecordKey::DatasetCost { dataset: Arc::from("ds"), version: Arc::from("1.0.0"), window: T0 }.id("gw-1"),
    ];
    for o in &others {
        assert_ne!(&k.id("gw-1"), o);
    }
    // Field boundaries are unambiguous: ("ab","c") differs from ("a","bc").
    let x = RecordKey::DatasetCost { dataset: Arc::from("ab"), version: Arc::from("c"), window: 0 };
    let y = RecordKey::DatasetCost { dataset: Arc::from("a"), version: Arc::from("bc"), window: 0 };
    assert_ne!(x.id("g"), y.id("g"));
}

#[test]
fn month_counts_roll_over_at_the_calendar_month() {
    let (start, next) = month_bounds(T0);
    assert_eq!(jiff::Timestamp::from_second(start).unwrap().to_string(), "2026-11-01T00:00:00Z");
    assert_eq!(jiff::Timestamp::from_second(next).unwrap().to_string(), "2026-12-01T00:00:00Z");
    let (m, now) = meter_at(next - 30);
    let a: Arc<str> = Arc::from("a");
    m.resume(0, [("a".to_string(), 1000)].into());
    m.record_response(&a, &rel("ds", "1"), 24, 0, false);
    assert_eq!(m.month_bytes("a"), (1024, next));
    now.store(next + 1, Ordering::SeqCst);
    assert_eq!(m.month_bytes("a").0, 0, "a new month starts from zero");
    m.record_response(&a, &rel("ds", "1"), 10, 0, false);
    assert_eq!(m.month_bytes("a").0, 10);
}

#[test]
fn a_response_is_billed_what_hyper_took() {
    let (m, _) = meter_at(T0);
    let a: Arc<str> = Arc::from("a");
    let r = rel("ds", "1.0.0");
    // Completed: everything handed over, including the last frame.
    {
        let mut rm = ResponseMeter::new(m.clone(), a.clone(), r.clone(), 30);
        rm.polled();
        rm.handed(10, Source::Hot);
        rm.polled();
        rm.handed(20, Source::Origin);
    }
    // Hung up: the frame handed over but never followed by another poll is not billed.
    {
        let mut rm = ResponseMeter::new(m.clone(), a.clone(), r.clone(), 100);
        rm.polled();
        rm.handed(10, Source::Hot);
        rm.polled();
        rm.handed(40, Source::Hot);
    }
    // Cut by the gateway: counted against the release, never billed.
    {
        let mut rm = ResponseMeter::new(m.clone(), a.clone(), r.clone(), 100);
        rm.polled();
        rm.handed(64, Source::Origin);
        rm.failed();
    }
    let d = m.drain_all().deltas;
    assert_eq!(
        d[&tenant_key("a", T0, Source::Hot)],
        Counters { bytes: 20, requests: 1, aborted_requests: 1, ..Default::default() }
    );
    assert_eq!(d[&tenant_key("a", T0, Source::Origin)], Counters { bytes: 20, requests: 1, ..Default::default() });
    let cost = &d[&RecordKey::DatasetCost { dataset: Arc::from("ds"), version: Arc::from("1.0.0"), window: T0 }];
    assert_eq!((cost.integrity_aborted_bytes, cost.integrity_aborted_requests), (64, 1));
    assert_eq!(m.month_bytes("a").0, 40);
}

fn drained(entries: &[(RecordKey, Counters)], closed_before: i64) -> meter::Drained {
    meter::Drained { deltas: entries.iter().cloned().collect(), closed_before }
}

fn bytes(n: u64) -> Counters {
    Counters { bytes: n, requests: 1, ..Default::default() }
}

#[test]
fn ledger_closes_windows_in_order_with_stable_cursors() {
    let l = Ledger::open(None, Some("gw-test")).unwrap();
    assert_eq!(l.last_seq(), 0);
    // Open windows are not listed.
    l.commit(drained(&[(tenant_key("a", T0, Source::Hot), bytes(5))], T0)).unwrap();
    assert!(l.list(0, 100, None).unwrap().is_empty());
    // More counts for the same open window merge; then it closes.
    l.commit(drained(
        &[(tenant_key("a", T0, Source::Hot), bytes(6)), (tenant_key("b", T0, Source::Hot), bytes(1))],
        T0,
    ))
    .unwrap();
    let stats = l.commit(drained(&[(tenant_key("a", T0 + 60, Source::Origin), bytes(9))], T0 + 60)).unwrap();
    assert_eq!(stats.closed, 2);
    let all = l.list(0, 100, None).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].record.key, tenant_key("a", T0, Source::Hot));
    assert_eq!(all[0].record.counters, Counters { bytes: 11, requests: 2, ..Default::default() });
    assert_eq!(all[1].record.key, tenant_key("b", T0, Source::Hot));
    assert_eq!(l.list(0, 100, None).unwrap(), all, "reading twice gives the same records");
    assert_eq!(l.list(all[0].seq, 100, None).unwrap(), all[1..]);
    assert_eq!(l.list(0, 100, Some("b")).unwrap(), all[1..]);
    assert_eq!(l.list(0, 1, None).unwrap(), all[..1]);
    // Cursors.
    let c = l.cursor(all[0].seq);
    assert_eq!(l.parse_cursor(&c).unwrap(), all[0].seq);
    assert_eq!(l.parse_cursor("").unwrap(), 0);
    assert!(matches!(l.parse_cursor("gw-other:1"), Err(LedgerError::BadCursor(_))));
    assert!(matches!(l.parse_cursor("gw-test:x"), Err(LedgerError::BadCursor(_))));
    assert!(matches!(l.parse_cursor("garbage"), Err(LedgerError::BadCursor(_))));
    assert!(matches!(l.parse_cursor("gw-test:99"), Err(LedgerError::CursorAhead { .. })));
    // Totals count closed windows only, within [from, to).
    let t = l.totals("a", None, T0, T0 + 3600).unwrap();
    assert_eq!(t.get(&Source::Hot).map(|c| c.bytes), Some(11));
    assert_eq!(t.get(&Source::Origin), None, "the T0+60 window is still open");
    assert!(l.totals("a", None, T0 + 60, T0 + 3600).unwrap().is_empty());
    assert!(l.totals("a", Some("other"), T0, T0 + 3600).unwrap().is_empty());
}

#[test]
fn ledger_survives_reopen_and_compacts_only_acknowledged_old_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.redb");
    let last = {
        let l = Ledger::open(Some(&path), None).unwrap();
        assert!(l.instance().starts_with("gw-"));
        l.commit(drained(&[(tenant_key("a", T0, Source::Hot), bytes(5))], T0 + 60)).unwrap();
        l.commit(drained(&[(tenant_key("a", T0 + 60, Source::Hot), bytes(7))], T0 + 60)).unwrap();
        (l.instance().to_string(), l.last_seq())
    };
    let l = Ledger::open(Some(&path), None).unwrap();
    assert_eq!((l.instance().to_string(), l.last_seq()), last, "instance id and cursors persist");
    assert_eq!(l.floor().unwrap(), T0 + 60);
    assert_eq!(l.month_bytes(T0).unwrap().get("a"), Some(&12), "month bytes include open windows");
    // The open window from before the restart closes on the next commit.
    l.commit(drained(&[], T0 + 120)).unwrap();
    assert_eq!(l.list(0, 10, None).unwrap().len(), 2);
    // Nothing is compacted before it is acknowledged.
    assert_eq!(l.compact(T0 + 100_000).unwrap(), 0);
    assert_eq!(l.ack(1).unwrap(), 1);
    assert_eq!(l.ack(0).unwrap(), 1, "acknowledgement never goes back");
    assert_eq!(l.compact(T0 + 30).unwrap(), 0, "not past retention yet");
    assert_eq!(l.compact(T0 + 100_000).unwrap(), 1);
    let left = l.list(0, 10, None).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].seq, 2);
    assert!(l.totals("a", None, 0, T0 + 3600).unwrap()[&Source::Hot].bytes == 7);
}

fn cost_key(w: i64) -> RecordKey {
    RecordKey::DatasetCost { dataset: Arc::from("ds"), version: Arc::from("1.0.0"), window: w }
}

#[test]
fn ledger_lists_a_period_and_sums_days_and_reindexes_an_older_ledger() {
    use crate::usage::ledger::{DAY_SECS, day_of};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.redb");
    let day = day_of(T0);
    let egress = Counters { origin_egress_bytes: 50, ..Default::default() };
    {
        let l = Ledger::open(Some(&path), None).unwrap();
        l.commit(drained(
            &[
                (tenant_key("a", day - DAY_SECS + 60, Source::Hot), bytes(1)),
                (tenant_key("a", day + 60, Source::Hot), bytes(10)),
                (tenant_key("a", day + 120, Source::Hot), bytes(100)),
                (tenant_key("b", day + 120, Source::Origin), bytes(1000)),
                (cost_key(day + 120), egress),
            ],
            day + 180,
        ))
        .unwrap();
        // A period is windows starting in [from, to), both kinds of record.
        let p = l.period(day, day + 120).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].counters.bytes, 10);
        let p = l.period(day, day + DAY_SECS).unwrap();
        assert_eq!(p.iter().map(|c| c.counters.bytes).sum::<u64>(), 1110);
        assert_eq!(p.iter().map(|c| c.counters.origin_egress_bytes).sum::<u64>(), 50);
        assert!(l.period(day + 10, day).unwrap().is_empty());
        // Days sum their windows per key.
        let d = l.daily(day, day + DAY_SECS).unwrap();
        let a = d.iter().find(|c| c.key == tenant_key("a", day, Source::Hot)).unwrap();
        assert_eq!(a.counters, Counters { bytes: 110, requests: 2, ..Default::default() });
        assert_eq!(d.len(), 3, "a hot, b origin, the release's cost: {d:?}");
        assert_eq!(l.daily(day - DAY_SECS, day).unwrap().len(), 1);
    }
    // A ledger from before the time and day tables: they are rebuilt once, at open.
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let by_time: redb::TableDefinition<(i64, u64), ()> = redb::TableDefinition::new("by_time");
        let daily: redb::TableDefinition<(i64, &str), &str> = redb::TableDefinition::new("daily");
        let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta_num");
        assert!(txn.delete_table(by_time).unwrap());
        assert!(txn.delete_table(daily).unwrap());
        txn.open_table(meta).unwrap().remove("index_version").unwrap();
        txn.commit().unwrap();
    }
    let reopened = || {
        let l = Ledger::open(Some(&path), None).unwrap();
        assert_eq!(l.period(day, day + DAY_SECS).unwrap().iter().map(|c| c.counters.bytes).sum::<u64>(), 1110);
        let d = l.daily(day, day + DAY_SECS).unwrap();
        assert_eq!(d.iter().find(|c| c.key == tenant_key("a", day, Source::Hot)).unwrap().counters.bytes, 110);
        l
    };
    drop(reopened());
    // An index version bump rebuilds from scratch: day sums are not counted twice.
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta_num");
        txn.open_table(meta).unwrap().insert("index_version", 1).unwrap();
        txn.commit().unwrap();
    }
    drop(reopened());
    // Records closed by a binary that did not index them are indexed at the next open.
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta_num");
        let by_time: redb::TableDefinition<(i64, u64), ()> = redb::TableDefinition::new("by_time");
        let daily: redb::TableDefinition<(i64, &str), &str> = redb::TableDefinition::new("daily");
        txn.open_table(meta).unwrap().insert("indexed_seq", 0).unwrap();
        txn.delete_table(by_time).unwrap();
        txn.delete_table(daily).unwrap();
        txn.commit().unwrap();
    }
    let l = reopened();
    // Compaction drops records from periods; day sums stay for trends.
    l.ack(l.last_seq()).unwrap();
    assert_eq!(l.compact(day + 10 * DAY_SECS).unwrap(), 5);
    assert!(l.period(day - DAY_SECS, day + DAY_SECS).unwrap().is_empty());
    assert_eq!(l.daily(day - DAY_SECS, day + DAY_SECS).unwrap().len(), 4);
}

#[test]
fn a_page_never_hands_out_a_next_cursor_past_its_last_cursor_while_commits_land() {
    let l = Arc::new(Ledger::open(None, Some("gw-race")).unwrap());
    let writer = {
        let l = l.clone();
        std::thread::spawn(move || {
            // Each commit closes the previous window: a record a minute.
            for i in 0..300 {
                let w = T0 + 60 * i;
                l.commit(drained(&[(tenant_key("a", w, Source::Hot), bytes(1))], w)).unwrap();
            }
        })
    };
    let mut after = 0;
    let mut pages = 0;
    while !writer.is_finished() || after < l.last_seq() {
        let (entries, next, last) = l.page(after, 7, None).unwrap();
        assert!(next <= last, "next {next} past last {last}");
        // The next page's cursor is always accepted.
        assert_eq!(l.parse_cursor(&l.cursor(next)).unwrap(), next);
        if let Some(e) = entries.last() {
            assert_eq!(e.seq, next);
        }
        after = next;
        pages += 1;
        assert!(pages < 100_000, "paging did not finish");
    }
    writer.join().unwrap();
    assert_eq!(after, l.last_seq(), "every record was paged");
}
