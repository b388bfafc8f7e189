//! `shardgate usage`: billing tokens, and a client for the gRPC usage API.

use std::process::ExitCode;

use shardgate::tenant::new_key;
use shardgate::usage::proto::usage_service_client::UsageServiceClient;
use shardgate::usage::proto::{self, usage_record};

use super::ConfigError;
use super::grpc_client::{self, authed, status};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Args)]
struct Api {
    /// A gateway's gRPC address, e.g. http://127.0.0.1:9090 (https:// for TLS).
    /// Repeat for a fleet: records are merged by id with a cursor per gateway,
    /// and a gateway reached twice is counted once.
    #[arg(long = "api", alias = "gateway", required = true)]
    urls: Vec<String>,
    /// PEM CA certificate that signed the listeners' TLS certificates.
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// Billing token (the same on every gateway).
    #[arg(long, env = "SHARDGATE_BILLING_TOKEN", hide_env_values = true)]
    token: String,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Make a billing token for `grpc.billing_tokens` (or, with --finance, a
    /// dashboard token for `reports.finance_tokens`). Printed once; only its hash goes in config.
    Token {
        /// A finance token: reads /v1/reports/summary and the dashboard, nothing else.
        #[arg(long)]
        finance: bool,
    },
    /// List closed usage records as JSON lines, following cursors to the newest.
    List {
        #[command(flatten)]
        api: Api,
        /// Start after this cursor (default: the oldest kept).
        #[arg(long, default_value = "")]
        after: String,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// A tenant's totals by source, as JSON.
    Totals {
        #[command(flatten)]
        api: Api,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        dataset: Option<String>,
        /// Unix seconds; windows starting at or after this.
        #[arg(long, default_value_t = 0)]
        from: i64,
        /// Unix seconds; windows starting before this (0: now).
        #[arg(long, default_value_t = 0)]
        to: i64,
    },
    /// Chargeback for a period, per tenant and release, with BTT and fiat: CSV or JSON for spreadsheets.
    Export {
        #[command(flatten)]
        api: Api,
        /// Start: a UTC date (2026-11-01), an RFC 3339 time, or Unix seconds. Default: the start of this month (UTC).
        #[arg(long)]
        from: Option<String>,
        /// End (exclusive), in the same forms. Default: now.
        #[arg(long)]
        to: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Csv)]
        format: Format,
        /// Write here instead of standard output.
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Csv,
    Json,
}

async fn connect(api: &Api, url: &str) -> anyhow::Result<UsageServiceClient<tonic::transport::Channel>> {
    Ok(UsageServiceClient::new(grpc_client::connect(url, api.ca.as_deref()).await?))
}

/// Every closed record of every gateway (after `after` on a single one),
/// each once: records are merged by their deterministic id, following each
/// gateway's own cursor. Also returns, per gateway URL, the instances it
/// answered for and its records.
async fn merged_records(
    api: &Api,
    after: &str,
    tenant: Option<&str>,
) -> anyhow::Result<(Vec<proto::UsageRecord>, Vec<(String, Vec<String>, usize)>)> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut members = Vec::new();
    for url in &api.urls {
        let mut c = connect(api, url).await?;
        let mut cursor = after.to_string();
        let mut instances: Vec<String> = Vec::new();
        let mut count = 0;
        loop {
            let req = proto::ListUsageRequest {
                after_cursor: cursor.clone(),
                limit: 1000,
                tenant: tenant.map(str::to_string),
            };
            let page = c
                .list_usage(authed(req, &api.token)?)
                .await
                .map_err(|e| anyhow::anyhow!("{url}: {}", status(e)))?
                .into_inner();
            for r in page.records.iter() {
                if !instances.contains(&r.gateway_instance) {
                    instances.push(r.gateway_instance.clone());
                }
                count += 1;
                if seen.insert(r.id.clone()) {
                    out.push(r.clone());
                }
            }
            if page.records.is_empty() || page.next_cursor == page.last_cursor {
                break;
            }
            cursor = page.next_cursor;
        }
        members.push((url.clone(), instances, count));
    }
    Ok((out, members))
}

fn source(s: i32) -> &'static str {
    match proto::Source::try_from(s) {
        Ok(proto::Source::Hot) => "hot",
        Ok(proto::Source::Origin) => "origin",
        _ => "unspecified",
    }
}

fn record_json(r: &proto::UsageRecord) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": r.id,
        "gateway_instance": r.gateway_instance,
        "cursor": r.cursor,
        "window_start": r.window_start,
        "window_end": r.window_end,
    });
    match &r.counters {
        Some(usage_record::Counters::TenantUsage(t)) => {
            v["tenant_usage"] = serde_json::json!({
                "tenant": t.tenant, "dataset": t.dataset, "version": t.version, "source": source(t.source),
                "bytes": t.bytes, "requests": t.requests, "aborted_requests": t.aborted_requests,
            });
        }
        Some(usage_record::Counters::DatasetCost(d)) => {
            v["dataset_cost"] = serde_json::json!({
                "dataset": d.dataset, "version": d.version, "origin_egress_bytes": d.origin_egress_bytes,
                "integrity_failed_bytes": d.integrity_failed_bytes,
                "integrity_aborted_bytes": d.integrity_aborted_bytes,
                "integrity_aborted_requests": d.integrity_aborted_requests,
            });
        }
        None => {}
    }
    v
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let rt = || tokio::runtime::Builder::new_current_thread().enable_all().build();
    match a.action {
        Action::Token { finance } => token(finance),
        Action::Export { api, from, to, format, output } => {
            let now = jiff::Timestamp::now().as_second();
            let from = match from {
                Some(f) => parse_time(&f, "--from")?,
                None => shardgate::usage::month_bounds(now).0,
            };
            let to = match to {
                Some(t) => parse_time(&t, "--to")?,
                None => 0,
            };
            if to != 0 && from >= to {
                return Err(ConfigError(format!("--from ({from}) must be before --to ({to})")).into());
            }
            rt()?.block_on(export(api, from, to, format, output))
        }
        Action::List { api, after, tenant } => rt()?.block_on(list(api, after, tenant)),
        Action::Totals { api, tenant, dataset, from, to } => {
            rt()?.block_on(totals(api, proto::GetTotalsRequest { tenant, dataset, from, to }))
        }
    }
}

fn token(finance: bool) -> anyhow::Result<ExitCode> {
    let (token, hash) = new_key().map_err(anyhow::Error::msg)?;
    println!("{token}");
    if finance {
        eprintln!("Give the token above to finance; it is not stored anywhere and cannot be shown again.");
        eprintln!("It opens /dashboard and GET /v1/reports/summary only. Add its hash to the gateway config:\n");
        eprintln!("[reports]\nfinance_tokens = [\"{hash}\"]");
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("Give the token above to the billing system; it is not stored anywhere and cannot be shown again.");
    eprintln!("Add its hash to the gateway config:\n");
    eprintln!("[grpc]\nbilling_tokens = [\"{hash}\"]");
    Ok(ExitCode::SUCCESS)
}

async fn list(api: Api, after: String, tenant: Option<String>) -> anyhow::Result<ExitCode> {
    if api.urls.len() > 1 {
        if !after.is_empty() {
            return Err(ConfigError("--after is one gateway's cursor: give a single --api with it".into()).into());
        }
        let (records, _) = merged_records(&api, "", tenant.as_deref()).await?;
        for r in &records {
            println!("{}", record_json(r));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut c = connect(&api, &api.urls[0]).await?;
    let mut cursor = after;
    loop {
        let req = proto::ListUsageRequest { after_cursor: cursor.clone(), limit: 1000, tenant: tenant.clone() };
        let page = c.list_usage(authed(req, &api.token)?).await.map_err(status)?.into_inner();
        for r in &page.records {
            println!("{}", record_json(r));
        }
        if page.records.is_empty() || page.next_cursor == page.last_cursor {
            return Ok(ExitCode::SUCCESS);
        }
        cursor = page.next_cursor;
    }
}

async fn totals(api: Api, req: proto::GetTotalsRequest) -> anyhow::Result<ExitCode> {
    if req.tenant.is_empty() {
        return Err(ConfigError("--tenant must not be empty".into()).into());
    }
    let (t, members) = if api.urls.len() == 1 {
        let mut c = connect(&api, &api.urls[0]).await?;
        (c.get_totals(authed(req, &api.token)?).await.map_err(status)?.into_inner(), None)
    } else {
        let (records, members) = merged_records(&api, "", Some(&req.tenant)).await?;
        (fleet_totals(&records, &req), Some(members))
    };
    let by: serde_json::Map<String, serde_json::Value> = t
        .by_source
        .iter()
        .map(|s| {
            let v =
                serde_json::json!({ "bytes": s.bytes, "requests": s.requests, "aborted_requests": s.aborted_requests });
            (source(s.source).to_string(), v)
        })
        .collect();
    let mut out = serde_json::json!({
        "tenant": t.tenant, "bytes": t.bytes, "requests": t.requests,
        "aborted_requests": t.aborted_requests, "by_source": by,
    });
    if let Some(members) = members {
        out["gateways"] = members
            .iter()
            .map(|(url, instances, records)| serde_json::json!({ "api": url, "instances": instances, "records": records }))
            .collect();
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}

/// A tenant's totals from merged records, as one gateway's `GetTotals` sums
/// its own: tenant records of windows starting in [from, to).
fn fleet_totals(records: &[proto::UsageRecord], req: &proto::GetTotalsRequest) -> proto::GetTotalsResponse {
    let to = if req.to == 0 { i64::MAX } else { req.to };
    let mut by: std::collections::BTreeMap<i32, proto::SourceTotals> = Default::default();
    let mut out = proto::GetTotalsResponse { tenant: req.tenant.clone(), ..Default::default() };
    for r in records {
        let Some(usage_record::Counters::TenantUsage(u)) = &r.counters else { continue };
        if u.tenant != req.tenant
            || req.dataset.as_ref().is_some_and(|d| d != &u.dataset)
            || r.window_start < req.from
            || r.window_start >= to
        {
            continue;
        }
        out.bytes += u.bytes;
        out.requests += u.requests;
        out.aborted_requests += u.aborted_requests;
        let s = by.entry(u.source).or_insert_with(|| proto::SourceTotals { source: u.source, ..Default::default() });
        s.bytes += u.bytes;
        s.requests += u.requests;
        s.aborted_requests += u.aborted_requests;
    }
    out.by_source = by.into_values().collect();
    out
}

/// A time for --from/--to: a UTC date, an RFC 3339 timestamp, or Unix seconds.
fn parse_time(s: &str, flag: &str) -> anyhow::Result<i64> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i64>() {
        return Ok(n);
    }
    if let Ok(ts) = t.parse::<jiff::Timestamp>() {
        return Ok(ts.as_second());
    }
    if let Ok(d) = t.parse::<jiff::civil::Date>() {
        return Ok(d.to_zoned(jiff::tz::TimeZone::UTC)?.timestamp().as_second());
    }
    Err(ConfigError(format!(
        "{flag} {s:?} is not a date (2026-11-01), an RFC 3339 time (2026-11-01T00:00:00Z) or Unix seconds"
    ))
    .into())
}

fn money_json(m: &Option<proto::Money>) -> serde_json::Value {
    match m {
        Some(m) => serde_json::json!({ "btt": m.btt, "fiat": m.fiat, "fiat_buffered": m.fiat_buffered }),
        None => serde_json::Value::Null,
    }
}

/// One chargeback over a fleet: lines summed by tenant, dataset and version,
/// spend by release. A gateway instance answering at two URLs is counted
/// once; gateways that price differently are refused (export them apart).
fn merge_chargebacks(
    parts: Vec<(String, proto::GetChargebackResponse)>,
) -> anyhow::Result<proto::GetChargebackResponse> {
    use rust_decimal::Decimal;
    use std::collections::BTreeMap;
    let mut parts = parts.into_iter();
    let Some((first_url, mut out)) = parts.next() else { anyhow::bail!("no gateway given") };
    let mut instances = vec![(first_url.clone(), out.gateway_instance.clone())];
    let rest: Vec<_> = parts.collect();
    if rest.is_empty() {
        return Ok(out);
    }
    let pricing = |p: &Option<proto::Pricing>| p.as_ref().map(|p| format!("{p:?}"));
    let mut lines: BTreeMap<(String, String, String), proto::ChargebackLine> = BTreeMap::new();
    let mut spends: BTreeMap<(String, String), proto::ReleaseSpend> = BTreeMap::new();
    let dec = |m: &Option<proto::Money>| -> anyhow::Result<[Decimal; 3]> {
        let Some(m) = m else { return Ok([Decimal::ZERO; 3]) };
        let p = |s: &str| s.parse::<Decimal>().map_err(|e| anyhow::anyhow!("amount {s:?}: {e}"));
        Ok([p(&m.btt)?, p(&m.fiat)?, p(&m.fiat_buffered)?])
    };
    let add = |into: &mut Option<proto::Money>, m: &Option<proto::Money>| -> anyhow::Result<()> {
        if m.is_none() {
            return Ok(());
        }
        let [a, b, c] = dec(into)?;
        let [x, y, z] = dec(m)?;
        *into = Some(proto::Money {
            btt: (a + x).to_string(),
            fiat: (b + y).to_string(),
            fiat_buffered: (c + z).to_string(),
        });
        Ok(())
    };
    let mut take = |r: &proto::GetChargebackResponse| -> anyhow::Result<()> {
        for l in &r.lines {
            let e = lines.entry((l.tenant.clone(), l.dataset.clone(), l.version.clone())).or_insert_with(|| {
                proto::ChargebackLine {
                    tenant: l.tenant.clone(),
                    dataset: l.dataset.clone(),
                    version: l.version.clone(),
                    ..Default::default()
                }
            });
            e.hot_bytes += l.hot_bytes;
            e.origin_bytes += l.origin_bytes;
            e.bytes += l.bytes;
            e.requests += l.requests;
            e.aborted_requests += l.aborted_requests;
            add(&mut e.charge, &l.charge)?;
        }
        for s in &r.releases {
            let e = spends.entry((s.dataset.clone(), s.version.clone())).or_insert_with(|| proto::ReleaseSpend {
                dataset: s.dataset.clone(),
                version: s.version.clone(),
                ..Default::default()
            });
            e.origin_egress_bytes += s.origin_egress_bytes;
            e.integrity_failed_bytes += s.integrity_failed_bytes;
            e.integrity_aborted_requests += s.integrity_aborted_requests;
            add(&mut e.spend, &s.spend)?;
        }
        Ok(())
    };
    take(&out)?;
    let (mut total_charge, mut total_spend) = (out.total_charge.clone(), out.total_spend.clone());
    for (url, r) in rest {
        if let Some((other, _)) = instances.iter().find(|(_, i)| *i == r.gateway_instance) {
            eprintln!("{url} is the same gateway as {other} (instance {}): counted once", r.gateway_instance);
            continue;
        }
        if pricing(&r.pricing) != pricing(&out.pricing) {
            anyhow::bail!(ConfigError(format!(
                "{url} prices usage differently from {first_url}: export the gateways one at a time"
            )));
        }
        take(&r)?;
        add(&mut total_charge, &r.total_charge)?;
        add(&mut total_spend, &r.total_spend)?;
        instances.push((url, r.gateway_instance.clone()));
    }
    out.gateway_instance = instances.iter().map(|(_, i)| i.as_str()).collect::<Vec<_>>().join("+");
    out.lines = lines.into_values().collect();
    out.releases = spends.into_values().collect();
    out.total_charge = total_charge;
    out.total_spend = total_spend;
    Ok(out)
}

const CSV_HEADER: [&str; 19] = [
    "kind",
    "from",
    "to",
    "gateway_instance",
    "tenant",
    "dataset",
    "version",
    "hot_bytes",
    "origin_bytes",
    "bytes",
    "requests",
    "aborted_requests",
    "origin_egress_bytes",
    "integrity_failed_bytes",
    "integrity_aborted_requests",
    "btt",
    "fiat",
    "fiat_buffered",
    "currency",
];

async fn export(
    api: Api,
    from: i64,
    to: i64,
    format: Format,
    output: Option<std::path::PathBuf>,
) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let mut parts = Vec::new();
    for url in &api.urls {
        let mut c = connect(&api, url).await?;
        let r = c
            .get_chargeback(authed(proto::GetChargebackRequest { from, to }, &api.token)?)
            .await
            .map_err(|e| anyhow::anyhow!("{url}: {}", status(e)))?
            .into_inner();
        parts.push((url.clone(), r));
    }
    let r = merge_chargebacks(parts)?;
    let currency = r.pricing.as_ref().map(|p| p.currency.clone()).unwrap_or_default();
    let mut out: Box<dyn std::io::Write> = match &output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("--output {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    match format {
        Format::Json => {
            let v = serde_json::json!({
                "from": r.from, "to": r.to, "gateway_instance": r.gateway_instance,
                "pricing": r.pricing.as_ref().map(|p| serde_json::json!({
                    "currency": p.currency, "fiat_rate": p.fiat_rate, "rate_date": p.rate_date,
                    "risk_buffer_percent": p.risk_buffer_percent, "retrieval_ubtt_per_mib": p.retrieval_ubtt_per_mib,
                })),
                "lines": r.lines.iter().map(|l| serde_json::json!({
                    "tenant": l.tenant, "dataset": l.dataset, "version": l.version,
                    "hot_bytes": l.hot_bytes, "origin_bytes": l.origin_bytes, "bytes": l.bytes,
                    "requests": l.requests, "aborted_requests": l.aborted_requests, "charge": money_json(&l.charge),
                })).collect::<Vec<_>>(),
                "releases": r.releases.iter().map(|s| serde_json::json!({
                    "dataset": s.dataset, "version": s.version, "origin_egress_bytes": s.origin_egress_bytes,
                    "integrity_failed_bytes": s.integrity_failed_bytes,
                    "integrity_aborted_requests": s.integrity_aborted_requests, "spend": money_json(&s.spend),
                })).collect::<Vec<_>>(),
                "total_charge": money_json(&r.total_charge),
                "total_spend": money_json(&r.total_spend),
            });
            serde_json::to_writer_pretty(&mut out, &v)?;
            writeln!(out)?;
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(&mut out);
            w.write_record(CSV_HEADER)?;
            let (f, t) = (r.from.to_string(), r.to.to_string());
            let m = |m: &Option<proto::Money>| match m {
                Some(m) => [m.btt.clone(), m.fiat.clone(), m.fiat_buffered.clone()],
                None => Default::default(),
            };
            for l in &r.lines {
                let [btt, fiat, buffered] = m(&l.charge);
                w.write_record([
                    "charge",
                    &f,
                    &t,
                    &r.gateway_instance,
                    &l.tenant,
                    &l.dataset,
                    &l.version,
                    &l.hot_bytes.to_string(),
                    &l.origin_bytes.to_string(),
                    &l.bytes.to_string(),
                    &l.requests.to_string(),
                    &l.aborted_requests.to_string(),
                    "",
                    "",
                    "",
                    &btt,
                    &fiat,
                    &buffered,
                    &currency,
                ])?;
            }
            for s in &r.releases {
                let [btt, fiat, buffered] = m(&s.spend);
                w.write_record([
                    "spend",
                    &f,
                    &t,
                    &r.gateway_instance,
                    "",
                    &s.dataset,
                    &s.version,
                    "",
                    "",
                    "",
                    "",
                    "",
                    &s.origin_egress_bytes.to_string(),
                    &s.integrity_failed_bytes.to_string(),
                    &s.integrity_aborted_requests.to_string(),
                    &btt,
                    &fiat,
                    &buffered,
                    &currency,
                ])?;
            }
            w.flush()?;
        }
    }
    out.flush()?;
    let lines = r.lines.len();
    eprintln!(
        "{lines} charge line{} and {} release spend line{}",
        if lines == 1 { "" } else { "s" },
        r.releases.len(),
        if r.releases.len() == 1 { "" } else { "s" }
    );
    Ok(ExitCode::SUCCESS)
}
