//! No number in a config panics: every numeric key, set to values at and
//! past its edges, is either refused by validation with the key named, or
//! starts a gateway that then stops cleanly.
#![allow(clippy::unwrap_used)]

use std::panic::AssertUnwindSafe;

use proptest::prelude::*;
use shardgate::config::Config;
use shardgate::gateway::Gateway;

/// Whole-number keys (TOML integers).
const INTS: &[&str] = &[
    "server.max_connections",
    "server.max_header_bytes",
    "server.max_ranges",
    "fetch.readahead_chunks",
    "fetch.max_concurrent_fetches",
    "metadata.max_concurrent_fetches",
    "access.anonymous.request_burst",
];
const FLOATS: &[&str] = &["access.anonymous.request_rate"];
const SIZES: &[&str] = &[
    "fetch.span",
    "fetch.max_span",
    "hot_tier.capacity",
    "metadata.cache_capacity",
    "disk_tier.capacity",
    "disk_tier.write_queue",
    "access.anonymous.bandwidth",
    "access.anonymous.bandwidth_burst",
    "access.anonymous.monthly_quota",
];
const DURATIONS: &[&str] = &[
    "server.header_read_timeout",
    "server.idle_timeout",
    "server.write_timeout",
    "server.shutdown_grace",
    "fetch.connect_timeout",
    "fetch.first_byte_timeout",
    "fetch.stall_timeout",
    "usage.commit_interval",
    "usage.retention",
    "reports.manifest_p99_objective",
    "reports.file_ttfb_p99_objective",
];

/// Mostly values in range (so gateways really start), often values at and past the edges.
fn weighted(valid: BoxedStrategy<String>, edges: BoxedStrategy<String>) -> impl Strategy<Value = String> {
    prop_oneof![3 => valid, 2 => edges]
}

fn int_value() -> impl Strategy<Value = String> {
    let edges = prop_oneof![
        Just(0i64),
        Just(1),
        Just(-1),
        Just(7),
        Just(1024),
        Just(65_536),
        Just(i64::from(u32::MAX)),
        Just(i64::MAX),
        any::<i64>(),
    ];
    weighted((1i64..1000).prop_map(|n| n.to_string()).boxed(), edges.prop_map(|n| n.to_string()).boxed())
}

fn float_value() -> impl Strategy<Value = String> {
    let edges = prop_oneof![
        Just("0.0".to_string()),
        Just("-1.0".into()),
        Just("1e-20".into()),
        Just("1e-5".into()),
        Just("0.5".into()),
        Just("1e9".into()),
        Just("1e300".into()),
        Just("nan".into()),
        Just("inf".into()),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:e}")),
    ];
    weighted((1u32..1000).prop_map(|n| format!("{n}.5")).boxed(), edges.boxed())
}

fn size_value() -> impl Strategy<Value = String> {
    let edges = prop_oneof![
        Just("0".to_string()),
        Just("1".into()),
        Just("4096".into()),
        Just("\"64KiB\"".into()),
        Just("\"1GiB\"".into()),
        Just("\"15EiB\"".into()),
        Just(i64::MAX.to_string()),
        (0i64..i64::MAX).prop_map(|n| n.to_string()),
    ];
    weighted(Just("\"4MiB\"".to_string()).boxed(), edges.boxed())
}

fn duration_value() -> impl Strategy<Value = String> {
    let edges = prop_oneof![
        Just("0s"),
        Just("1ns"),
        Just("1ms"),
        Just("500ms"),
        Just("1s"),
        Just("1h"),
        Just("30days"),
        Just("100years"),
        Just("1000000000years"),
    ];
    weighted(Just("\"2h\"".to_string()).boxed(), edges.prop_map(|d| format!("\"{d}\"")).boxed())
}

/// A config text setting a random subset of numeric keys.
fn config_text() -> impl Strategy<Value = Vec<(String, String)>> {
    let pick = |keys: &'static [&'static str], v: BoxedStrategy<String>| {
        proptest::collection::vec((proptest::sample::select(keys), v), 0..4)
    };
    (
        pick(INTS, int_value().boxed()),
        pick(FLOATS, float_value().boxed()),
        pick(SIZES, size_value().boxed()),
        pick(DURATIONS, duration_value().boxed()),
    )
        .prop_map(|(a, b, c, d)| {
            let mut all: Vec<(String, String)> =
                a.into_iter().chain(b).chain(c).chain(d).map(|(k, v)| (k.to_string(), v)).collect();
            all.sort();
            all.dedup_by(|x, y| x.0 == y.0);
            all
        })
}

/// Renders `key = value` pairs under their tables.
fn render(pairs: &[(String, String)], disk: &std::path::Path) -> String {
    let mut tables: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    tables.entry("server".into()).or_default().push("listen = \"127.0.0.1:0\"".into());
    if pairs.iter().any(|(k, _)| k.starts_with("disk_tier.")) {
        tables.entry("disk_tier".into()).or_default().push(format!("path = {:?}", disk.display().to_string()));
    }
    for (k, v) in pairs {
        let (table, key) = k.rsplit_once('.').unwrap();
        tables.entry(table.to_string()).or_default().push(format!("{key} = {v}"));
    }
    tables.iter().map(|(t, lines)| format!("[{t}]\n{}\n", lines.join("\n"))).collect()
}

#[test]
fn no_config_number_panics() {
    let started = std::sync::atomic::AtomicUsize::new(0);
    let refused = std::sync::atomic::AtomicUsize::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 96, ..ProptestConfig::default() });
    runner
        .run(&config_text(), |pairs| {
            let dir = tempfile::tempdir().unwrap();
            let text = render(&pairs, &dir.path().join("tier"));
            let parsed = std::panic::catch_unwind(|| Config::from_toml(&text));
            prop_assert!(parsed.is_ok(), "parsing panicked:\n{}", text);
            let Ok(cfg) = parsed.unwrap() else {
                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(());
            };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
                rt.block_on(async {
                    if let Ok(gw) = Gateway::start(cfg).await {
                        started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        gw.shutdown().await;
                    }
                })
            }));
            prop_assert!(ran.is_ok(), "a gateway with this config panicked:\n{}", text);
            Ok(())
        })
        .unwrap();
    // Both outcomes were exercised, so the property says something.
    let (started, refused) = (started.into_inner(), refused.into_inner());
    assert!(started >= 5 && refused >= 5, "started {started}, refused {refused}");
}

#[test]
fn a_refused_number_names_its_key() {
    for (text, key) in [
        ("[access.anonymous]\nrequest_rate = 1e-20", "request_rate"),
        ("[access.anonymous]\nrequest_rate = nan", "request_rate"),
        ("[server]\nmax_connections = 9223372036854775807", "server.max_connections"),
        ("[server]\nidle_timeout = \"1000000000years\"", "server.idle_timeout"),
        ("[usage]\nretention = \"1000000000years\"", "usage.retention"),
        ("[fetch]\nconnect_timeout = \"0s\"", "fetch.connect_timeout"),
    ] {
        let err = Config::from_toml(text).unwrap_err().to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
}
