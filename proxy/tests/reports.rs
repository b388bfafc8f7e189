//! Finance reports with the real binary: a gateway holding 90 days of
//! recorded usage plus live traffic from curl; `usage export` agrees with
//! `usage totals` to the byte; `/v1/reports/summary` is behind finance and
//! admin tokens; and `/dashboard`, rendered by headless Chromium, shows the
//! summary's numbers, formatted for people. A screenshot is saved.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::Value;
use shardgate::usage::meter::{Deltas, Drained};
use shardgate::usage::{Counters, Ledger, RecordKey, Source, WINDOW_SECS, unix_now, window_of};
use support::*;

const DAY: i64 = 86_400;
const FILE_A: usize = 3 << 20;
const FILE_B: usize = 1 << 20;

struct Tokens {
    team_a: String,
    team_b: String,
    billing: String,
    finance: String,
    admin: String,
}

fn hashed(t: &str) -> String {
    format!("blake3:{}", hex(shardgate::tenant::hash_key(t)))
}

fn hex(b: [u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Two releases of one dataset, two tenants, pricing, a ledger, gRPC.
fn setup(d: &Path) -> Tokens {
    keygen(d);
    for (v, len, seed) in [("1.0.0", FILE_A, 7u8), ("1.1.0", FILE_B, 11u8)] {
        let src = d.join(format!("src-{v}"));
        std::fs::create_dir_all(&src).unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed).wrapping_add((i >> 12) as u8)).collect();
        std::fs::write(src.join("data.bin"), data).unwrap();
        ok(
            &[
                "pack",
                src.to_str().unwrap(),
                "--name",
                "corpus",
                "--version",
                v,
                "--key",
                "key",
                "--out",
                &format!("rel-{v}"),
            ],
            d,
        );
    }
    let pricing = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/pricing.toml");
    std::fs::copy(pricing, d.join("pricing.toml")).unwrap();
    let t = Tokens {
        team_a: shardgate::tenant::new_key().unwrap().0,
        team_b: shardgate::tenant::new_key().unwrap().0,
        billing: "billing-secret-for-tests".into(),
        finance: "finance-secret-for-tests".into(),
        admin: "admin-secret-for-tests".into(),
    };
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n[trust]\nkeys = [\"key.pub\"]\n\
         [[releases]]\nmanifest = \"rel-1.0.0/manifest.json\"\n[[releases]]\nmanifest = \"rel-1.1.0/manifest.json\"\n\
         [[origins]]\nkind = \"dir\"\npath = \".\"\n\
         [[tenants]]\nid = \"team-a\"\nkeys = [\"{}\"]\ndatasets = [\"corpus\"]\n\
         [[tenants]]\nid = \"team-b\"\nkeys = [\"{}\"]\ndatasets = [\"corpus\"]\n\
         [usage]\nledger = \"state/usage.redb\"\ncommit_interval = \"1s\"\npricing = \"pricing.toml\"\n\
         [grpc]\nlisten = \"127.0.0.1:0\"\nbilling_tokens = [\"{}\"]\nadmin_tokens = [\"{}\"]\n\
         [registry]\npath = \"state/registry.redb\"\n[reports]\nfinance_tokens = [\"{}\"]\nmanifest_p99_objective = \"250ms\"\nfile_ttfb_p99_objective = \"1s\"\n\
         [pin_health]\nenabled = true\ninterval = \"1h\"\nrepair_objective = \"2h\"\n[[pin_health.nodes]]\nurl = \"http://127.0.0.1:9\"\n",
        hashed(&t.team_a),
        hashed(&t.team_b),
        hashed(&t.billing),
        hashed(&t.admin),
        hashed(&t.finance),
    );
    std::fs::write(d.join("gw.toml"), text).unwrap();
    t
}

/// Usage from before this gateway run: closed records spread over 90 days.
/// Returns bytes by (tenant, source) and the origin egress recorded.
fn record_history(d: &Path) -> (BTreeMap<(String, Source), u64>, u64) {
    std::fs::create_dir_all(d.join("state")).unwrap();
    let ledger = Ledger::open(Some(&d.join("state/usage.redb")), None).unwrap();
    let now = unix_now();
    let mut deltas = Deltas::default();
    let mut want: BTreeMap<(String, Source), u64> = BTreeMap::new();
    let mut egress = 0;
    for (i, days_ago) in [85i64, 60, 33, 12, 5, 2].into_iter().enumerate() {
        let window = window_of(now - days_ago * DAY);
        for (tenant, scale) in [("team-a", 7u64), ("team-b", 3u64)] {
            for (source, base) in [(Source::Hot, 40u64 << 30), (Source::Origin, 9u64 << 30)] {
                let bytes = base * scale / 5 + (i as u64) * 123_457;
                let key = RecordKey::TenantUsage {
                    tenant: tenant.into(),
                    dataset: "corpus".into(),
                    version: "1.0.0".into(),
                    window,
                    source,
                };
                deltas.insert(key, Counters { bytes, requests: 1000 + i as u64, ..Counters::default() });
                *want.entry((tenant.to_string(), source)).or_default() += bytes;
            }
        }
        let e = (20u64 << 30) + i as u64 * 1_000_003;
        egress += e;
        let key = RecordKey::DatasetCost { dataset: "corpus".into(), version: "1.0.0".into(), window };
        deltas.insert(key, Counters { origin_egress_bytes: e, ..Counters::default() });
    }
    ledger.commit(Drained { deltas, closed_before: window_of(now) - WINDOW_SECS }).unwrap();
    (want, egress)
}

fn curl(args: &[&str]) -> (u16, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-sS", "--noproxy", "*", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let mut body = out.stdout;
    let split = body.iter().rposition(|&b| b == b'\n').unwrap();
    let code = std::str::from_utf8(&body[split + 1..]).unwrap().trim().parse().unwrap();
    body.truncate(split);
    (code, body)
}

fn get_json(url: &str, token: Option<&str>) -> (u16, Value) {
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut args = vec![url];
    if let Some(a) = &auth {
        args.extend(["-H", a.as_str()]);
    }
    let (code, body) = curl(&args);
    (code, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

// ---- the page's formatting rules, written independently of app.js ----

fn group(int: &str) -> String {
    let mut out = String::new();
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A number with at least `min` and at most `max` decimals, grouped, rounded
/// half away from zero (as browsers' Intl.NumberFormat does).
fn fixed(v: Decimal, min: u32, max: u32) -> String {
    let r = v.round_dp_with_strategy(max, RoundingStrategy::MidpointAwayFromZero);
    let s = format!("{:.*}", max as usize, r);
    let (int, frac) = s.split_once('.').unwrap_or((&s, ""));
    let mut frac = frac.to_string();
    while frac.len() > min as usize && frac.ends_with('0') {
        frac.pop();
    }
    if frac.is_empty() { group(int) } else { format!("{}.{frac}", group(int)) }
}

fn fmt_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{} B", group(&n.to_string()));
    }
    let (mut v, mut u) = (Decimal::from(n), 0);
    while v >= Decimal::from(1024) && u < units.len() - 1 {
        v /= Decimal::from(1024);
        u += 1;
    }
    format!("{} {}", fixed(v, 2, 2), units[u])
}

fn fmt_fiat(v: Decimal) -> String {
    if !v.is_zero() && v.abs() < Decimal::new(1, 2) {
        // Two significant digits.
        let (mut t, mut decimals) = (v.abs(), 1);
        while t < Decimal::ONE {
            t *= Decimal::TEN;
            decimals += 1;
        }
        return format!("${}", fixed(v, 0, decimals));
    }
    format!("${}", fixed(v, 2, 2))
}

/// The text a figure should have, by what its field holds.
fn expected_text(field: &str, raw: &str) -> String {
    let last = field.rsplit('.').next().unwrap();
    if raw.is_empty() {
        return match last {
            "hit_ratio" => "n/a".into(),
            "p99_ms" => "no requests yet".into(),
            "slowest_repair_s" => "none yet".into(),
            _ => panic!("{field} is empty"),
        };
    }
    let d = || raw.parse::<Decimal>().unwrap_or_else(|e| panic!("{field}: {raw:?}: {e}"));
    match last {
        "btt" => format!("{} BTT", fixed(d(), 2, 6)),
        "fiat" | "fiat_buffered" => fmt_fiat(d()),
        "hit_ratio" => format!("{}%", fixed(d() * Decimal::from(100), 1, 1)),
        "p99_ms" | "objective_ms" => format!("{} ms", fixed(d(), 1, 1)),
        "slowest_repair_s" | "repair_objective_s" => format!("{} s", fixed(d(), 1, 1)),
        "under_replicated_blobs" | "repairs_ok" | "repairs_failed" => fixed(d(), 0, 0),
        "state" => raw.replace('_', " "),
        "requests" | "files" | "samples" | "live_releases" | "checksum_failures" => fixed(d(), 0, 0),
        l if l == "bytes" || l.ends_with("_bytes") => fmt_bytes(raw.parse().unwrap()),
        _ => panic!("no formatting rule for {field}"),
    }
}

/// The JSON value a data-field names.
fn lookup<'a>(s: &'a Value, field: &str) -> &'a Value {
    let (head, rest) = field.split_once('.').unwrap();
    let (root, path) = match head {
        "tenants" | "releases" => {
            let (id, path) = rest.split_once('.').unwrap();
            let id = if head == "releases" {
                // name@version, where the version holds dots: the field is the last segment(s).
                let full = rest;
                let row = s["releases"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|r| {
                        full.starts_with(&format!(
                            "{}@{}.",
                            r["name"].as_str().unwrap(),
                            r["version"].as_str().unwrap()
                        ))
                    })
                    .unwrap_or_else(|| panic!("no release for {field}"));
                let prefix = format!("{}@{}.", row["name"].as_str().unwrap(), row["version"].as_str().unwrap());
                return walk(row, &full[prefix.len()..]);
            } else {
                id
            };
            let row = s["tenants"].as_array().unwrap().iter().find(|r| r["tenant"] == id).unwrap();
            (row, path)
        }
        _ => (&s[head], rest),
    };
    walk(root, path)
}

fn walk<'a>(mut v: &'a Value, path: &str) -> &'a Value {
    for p in path.split('.') {
        v = &v[p];
    }
    v
}

/// (field, raw, text) of every figure in a DOM dump.
fn figures(dom: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut rest = dom;
    while let Some(i) = rest.find("data-field=\"") {
        let tag_start = rest[..i].rfind('<').unwrap();
        let tag_end = i + rest[i..].find('>').unwrap();
        let tag = &rest[tag_start..tag_end];
        let attr = |name: &str| {
            let k = format!("{name}=\"");
            let a = tag.find(&k).unwrap() + k.len();
            html_unescape(&tag[a..a + tag[a..].find('"').unwrap()])
        };
        let close = tag_end + 1 + rest[tag_end + 1..].find('<').unwrap();
        out.push((attr("data-field"), attr("data-raw"), html_unescape(&rest[tag_end + 1..close])));
        rest = &rest[tag_end..];
    }
    out
}

fn html_unescape(s: &str) -> String {
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&#39;", "'").replace("&amp;", "&")
}

fn raw_of(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[test]
fn the_formatting_rules_round_like_a_browser() {
    assert_eq!(fmt_bytes(1000), "1,000 B");
    assert_eq!(fmt_bytes(1152), "1.13 KiB");
    assert_eq!(fmt_bytes(5 << 30), "5.00 GiB");
    assert_eq!(fmt_fiat("0.000146250".parse().unwrap()), "$0.00015");
    assert_eq!(fmt_fiat("0.0050".parse().unwrap()), "$0.005");
    assert_eq!(fmt_fiat("1234.565".parse().unwrap()), "$1,234.57");
    assert_eq!(fmt_fiat(Decimal::ZERO), "$0.00");
    assert_eq!(expected_text("served.hit_ratio", "0.0625"), "6.3%");
    assert_eq!(expected_text("btt.spent.btt", "1234567.5"), "1,234,567.50 BTT");
}

#[test]
fn dashboard_and_chargeback_show_the_recorded_usage() {
    let Some(chrome_bin) = chromium() else {
        eprintln!("skipped: no chromium");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let t = setup(d);
    let (want, history_egress) = record_history(d);

    // First run: live traffic from curl, then SIGTERM (the final commit closes every window).
    let mut s = Server::start(&d.join("gw.toml"));
    let base = s.base.clone();
    let api = s.usage_api.clone().unwrap();
    let url = |v: &str| format!("{base}/v1/datasets/corpus/{v}/files/data.bin");
    let auth = |k: &str| format!("Authorization: Bearer {k}");
    for (key, v, range, len) in [
        (&t.team_a, "1.0.0", None, FILE_A as u64),
        (&t.team_a, "1.0.0", Some("0-999999"), 1_000_000),
        (&t.team_b, "1.1.0", None, FILE_B as u64),
        (&t.team_b, "1.1.0", None, FILE_B as u64),
    ] {
        let a = auth(key);
        let u = url(v);
        let mut args = vec![u.as_str(), "-H", a.as_str()];
        let r = range.map(|r| format!("Range: bytes={r}"));
        if let Some(r) = &r {
            args.extend(["-H", r.as_str()]);
        }
        let (code, body) = curl(&args);
        assert!(code == 200 || code == 206, "{code}");
        assert_eq!(body.len() as u64, len);
    }
    // Manifest bytes are billed too.
    let (code, manifest) = curl(&[&format!("{base}/v1/datasets/corpus/1.0.0/manifest"), "-H", &auth(&t.team_a)]);
    assert_eq!(code, 200);
    let manifest_len = manifest.len() as u64;
    // Deprecate 1.0.0 and tag 1.1.0 stable: the releases table shows states and tags.
    ok(
        &[
            "release",
            "deprecate",
            "corpus@1.0.0",
            "--successor",
            "1.1.0",
            "--reason",
            "superseded",
            "--api",
            &api,
            "--token",
            &t.admin,
        ],
        d,
    );
    ok(&["release", "tag", "corpus", "stable", "1.1.0", "--api", &api, "--token", &t.admin], d);
    s.signal("TERM");
    assert_eq!(s.wait_exit(Duration::from_secs(20)), Some(0), "{}", s.logs());
    drop(s);

    // Second run: the gateway now holds 90 days of closed usage.
    let s = Server::start(&d.join("gw.toml"));
    let base = s.base.clone();
    let api = s.usage_api.clone().unwrap();
    // Live latency samples for the service-level panel.
    for _ in 0..5 {
        assert_eq!(curl(&[&format!("{base}/v1/datasets/corpus/1.1.0/manifest"), "-H", &auth(&t.team_b)]).0, 200);
        let (code, _) = curl(&[
            &format!("{base}/v1/datasets/corpus/1.1.0/files/data.bin"),
            "-H",
            &auth(&t.team_b),
            "-H",
            "Range: bytes=0-1023",
        ]);
        assert_eq!(code, 206);
    }

    // Chargeback: `usage export` agrees with `usage totals` (GetTotals) to the byte.
    let from = (window_of(unix_now()) / DAY - 89) * DAY;
    let from_s = from.to_string();
    let csv = ok(&["usage", "export", "--api", &api, "--token", &t.billing, "--from", &from_s], d);
    let mut rows = csv.lines();
    let header: Vec<&str> = rows.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let mut by_tenant: BTreeMap<(String, &str), u64> = BTreeMap::new();
    let mut egress = 0u64;
    let mut charged = 0usize;
    for line in rows {
        let f: Vec<&str> = line.split(',').collect();
        match f[col("kind")] {
            "charge" => {
                let tenant = f[col("tenant")].to_string();
                *by_tenant.entry((tenant.clone(), "hot")).or_default() += f[col("hot_bytes")].parse::<u64>().unwrap();
                *by_tenant.entry((tenant, "origin")).or_default() += f[col("origin_bytes")].parse::<u64>().unwrap();
                // Priced: bytes / MiB x 2500 µBTT.
                let bytes: u64 = f[col("bytes")].parse().unwrap();
                let btt: f64 = f[col("btt")].parse().unwrap();
                let expect = bytes as f64 / (1u64 << 20) as f64 * 2500.0 / 1e6;
                assert!((btt - expect).abs() <= 1e-6 + expect * 1e-12, "{btt} vs {expect}");
                assert_eq!(f[col("currency")], "USD");
                charged += 1;
            }
            "spend" => egress += f[col("origin_egress_bytes")].parse::<u64>().unwrap(),
            k => panic!("unexpected kind {k}"),
        }
    }
    assert!(charged >= 3, "{csv}");
    assert!(egress >= history_egress + FILE_A as u64, "egress {egress}");
    for tenant in ["team-a", "team-b"] {
        let totals: Value = serde_json::from_str(&ok(
            &["usage", "totals", "--api", &api, "--token", &t.billing, "--tenant", tenant, "--from", &from_s],
            d,
        ))
        .unwrap();
        for src in ["hot", "origin"] {
            let got = by_tenant.get(&(tenant.to_string(), src)).copied().unwrap_or(0);
            assert_eq!(got, totals["by_source"][src]["bytes"].as_u64().unwrap_or(0), "{tenant} {src}");
        }
    }
    // The live traffic is in there, on top of the history.
    let live_a = FILE_A as u64 + 1_000_000 + manifest_len;
    let live_b = 2 * FILE_B as u64;
    let hist = |t: &str| want.iter().filter(|((n, _), _)| n == t).map(|(_, b)| b).sum::<u64>();
    assert_eq!(
        by_tenant.iter().filter(|((n, _), _)| n == "team-a").map(|(_, b)| b).sum::<u64>(),
        hist("team-a") + live_a
    );
    assert_eq!(
        by_tenant.iter().filter(|((n, _), _)| n == "team-b").map(|(_, b)| b).sum::<u64>(),
        hist("team-b") + live_b
    );
    let json_export: Value = serde_json::from_str(&ok(
        &["usage", "export", "--api", &api, "--token", &t.billing, "--from", &from_s, "--format", "json"],
        d,
    ))
    .unwrap();
    assert_eq!(json_export["lines"].as_array().unwrap().len(), charged);
    fails(&["usage", "export", "--api", &api, "--token", &t.billing, "--from", "last tuesday"], d, "--from");

    // The summary: finance and admin tokens only.
    let summary_url = format!("{base}/v1/reports/summary?days=90");
    assert_eq!(get_json(&summary_url, None).0, 401);
    assert_eq!(get_json(&summary_url, Some(&t.billing)).0, 401);
    assert_eq!(get_json(&summary_url, Some(&t.team_a)).0, 401);
    assert_eq!(get_json(&format!("{base}/v1/reports/summary?days=0"), Some(&t.finance)).0, 400);
    let (code, admin_view) = get_json(&summary_url, Some(&t.admin));
    assert_eq!(code, 200);
    let (code, summary) = get_json(&summary_url, Some(&t.finance));
    assert_eq!(code, 200, "{summary}");
    assert_eq!(admin_view["tenants"], summary["tenants"]);
    assert_eq!(summary["days"], 90);
    assert_eq!(summary["trend"].as_array().unwrap().len(), 90);
    // Its tenant figures are the ledger's: history plus live traffic, to the byte.
    let tenants = summary["tenants"].as_array().unwrap();
    for (tenant, live) in [("team-a", live_a), ("team-b", live_b)] {
        let row = tenants.iter().find(|r| r["tenant"] == tenant).unwrap();
        assert_eq!(row["bytes"].as_u64().unwrap(), hist(tenant) + live, "{tenant}");
        assert_eq!(row["hot_bytes"].as_u64().unwrap(), by_tenant[&(tenant.to_string(), "hot")], "{tenant}");
    }
    let trend_bytes: u64 = summary["trend"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["hot_bytes"].as_u64().unwrap() + d["origin_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(trend_bytes, summary["served"]["bytes"].as_u64().unwrap());
    let states: BTreeMap<String, String> = summary["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["version"].as_str().unwrap().to_string(), r["state"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(states["1.0.0"], "deprecated");
    assert_eq!(states["1.1.0"], "active");
    assert!(summary["slo"]["manifest"]["samples"].as_u64().unwrap() >= 5);
    assert!(summary["slo"]["file_ttfb"]["samples"].as_u64().unwrap() >= 5);
    assert!(summary["btt"]["committed"]["btt"].as_str().unwrap().parse::<f64>().unwrap() > 0.0);

    // The page, in a real browser, from that JSON alone.
    let profile = tempfile::tempdir().unwrap();
    let page = format!("{base}/dashboard#token={}&days=90", t.finance);
    let dom = String::from_utf8(chrome(&chrome_bin, profile.path(), &["--dump-dom"], &page)).unwrap();
    std::fs::write(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.html"), &dom).unwrap();
    assert!(dom.contains("data-state=\"ready\""), "the page did not finish loading:\n{dom}");
    assert!(dom.contains("data-days=\"90\""));
    // What the browser fetched is what we fetched (the page has no other data).
    let (_, summary) = get_json(&summary_url, Some(&t.finance));
    let figs = figures(&dom);
    let mut seen = std::collections::BTreeSet::new();
    for (field, raw, text) in &figs {
        let v = lookup(&summary, field);
        // SLO counters move with every request (including the browser's own).
        if !field.starts_with("slo.") {
            assert_eq!(raw, &raw_of(v), "{field}: the page holds {raw:?}, the JSON {v}");
        }
        assert_eq!(text, &expected_text(field, raw), "{field}");
        seen.insert(field.clone());
    }
    for must in [
        "stored.stored_bytes",
        "stored.replicated_bytes",
        "served.bytes",
        "served.hot_bytes",
        "served.origin_bytes",
        "served.hit_ratio",
        "btt.committed.btt",
        "btt.spent.btt",
        "btt.spent.fiat",
        "btt.spent.fiat_buffered",
        "tenants.team-a.bytes",
        "tenants.team-a.charge.btt",
        "tenants.team-b.hit_ratio",
        "releases.corpus@1.0.0.state",
        "releases.corpus@1.1.0.committed.btt",
        "slo.manifest.p99_ms",
        "slo.file_ttfb.p99_ms",
        "slo.checksum_failures",
        "slo.pin_health.under_replicated_blobs",
        "slo.pin_health.repairs_ok",
        "slo.pin_health.slowest_repair_s",
        "slo.pin_health.repair_objective_s",
    ] {
        assert!(seen.contains(must), "the page does not show {must}; it shows {seen:?}");
    }
    // Spot checks a person would do.
    let text_of = |f: &str| figs.iter().find(|(k, _, _)| k == f).map(|(_, _, t)| t.clone()).unwrap();
    assert!(text_of("served.bytes").ends_with(" GiB") || text_of("served.bytes").ends_with(" TiB"));
    assert!(text_of("btt.committed.btt").ends_with(" BTT"));
    assert!(text_of("btt.spent.fiat").starts_with('$'));
    assert!(text_of("served.hit_ratio").ends_with('%'));
    assert!(dom.contains("<svg"), "no trend chart");

    // A screenshot, for people.
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let profile = tempfile::tempdir().unwrap();
    chrome(
        &chrome_bin,
        profile.path(),
        &["--window-size=1280,2000", &format!("--screenshot={}", shot.display())],
        &page,
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    assert!(png.len() > 20_000, "screenshot is {} bytes", png.len());
    eprintln!("dashboard screenshot: {}", shot.display());
    drop(s);
}
