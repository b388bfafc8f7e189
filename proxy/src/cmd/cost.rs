//! `shardgate cost`: what a release costs on BTFS, by bucket, in BTT and fiat.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use rust_decimal::Decimal;
use shardgate::pricing::{Money, Pricing, ReleaseCost, ReleaseSize};
use shardgate::release::layout::ReleaseDir;
use shardgate::release::manifest::SignedManifest;

use super::ConfigError;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A packed release (directory or manifest.json), or NAME@VERSION (or NAME@TAG) served by --gateway.
    release: String,
    /// Months the release is kept on BTFS (a month is 30 days; never billed under the minimum contract).
    #[arg(long, default_value_t = 1)]
    months: u32,
    /// Full-dataset training-run retrievals to include in the total.
    #[arg(long, default_value_t = 1)]
    runs: u32,
    /// The pricing file (see conf/pricing.toml).
    #[arg(long, env = "SHARDGATE_PRICING", default_value = "conf/pricing.toml")]
    pricing: PathBuf,
    /// Gateway to read NAME@VERSION's manifest from.
    #[arg(long, env = "SHARDGATE_GATEWAY", default_value = "http://127.0.0.1:8080")]
    gateway: String,
    /// API key for --gateway, if the dataset is not public.
    #[arg(long, env = "SHARDGATE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Reads the manifest from a release directory, or from a gateway for NAME@VERSION.
fn manifest(a: &Args) -> anyhow::Result<SignedManifest> {
    let path = Path::new(&a.release);
    if path.exists() {
        let m = ReleaseDir::from_arg(path).manifest();
        let bytes = std::fs::read(&m).with_context(|| m.display().to_string())?;
        return SignedManifest::parse(&bytes).with_context(|| m.display().to_string());
    }
    let Some((name, version)) = a.release.split_once('@').filter(|(n, v)| !n.is_empty() && !v.is_empty()) else {
        return Err(ConfigError(format!(
            "{:?} is neither a release directory nor NAME@VERSION (no such file, and no @)",
            a.release
        ))
        .into());
    };
    let url = format!("{}/v1/datasets/{name}/{version}/manifest", a.gateway.trim_end_matches('/'));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let bytes = rt.block_on(async {
        shardgate::btfs::install_crypto_provider();
        let mut req = reqwest::Client::new().get(&url);
        if let Some(k) = &a.api_key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let body = resp.bytes().await.with_context(|| format!("GET {url}"))?;
        if !status.is_success() {
            anyhow::bail!("GET {url}: {status}: {}", String::from_utf8_lossy(&body).trim());
        }
        Ok(body)
    })?;
    SignedManifest::parse(&bytes).with_context(|| format!("manifest from {url}"))
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    if a.months == 0 || a.months > shardgate::pricing::MAX_MONTHS {
        return Err(ConfigError(format!("--months must be 1 to {}", shardgate::pricing::MAX_MONTHS)).into());
    }
    if a.runs > 1_000_000 {
        return Err(ConfigError("--runs must be at most 1000000".into()).into());
    }
    let pricing = Pricing::load(&a.pricing).map_err(|e| ConfigError(e.to_string()))?;
    let signed = manifest(&a)?;
    let m = &signed.manifest;
    let size = ReleaseSize::of(&signed);
    let cost = pricing.release_cost(size, a.months, a.runs);
    let age = jiff::Zoned::now().date().since(pricing.rate_date).map(|s| s.get_days()).unwrap_or(0);
    if age > 30 {
        eprintln!(
            "warning: the BTT rate in {} is from {} ({age} days ago); update btt.fiat_rate and btt.rate_date",
            a.pricing.display(),
            pricing.rate_date
        );
    }
    if a.json {
        let v = serde_json::json!({
            "release": format!("{}@{}", m.name, m.version),
            "release_id": signed.id.to_hex(),
            "currency": pricing.currency,
            "fiat_rate": pricing.fiat_rate.normalize().to_string(),
            "rate_date": pricing.rate_date.to_string(),
            "risk_buffer_percent": pricing.risk_buffer_percent.normalize().to_string(),
            "cost": rounded(&cost),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    print_table(&format!("{}@{}", m.name, m.version), &signed.id.to_hex(), &pricing, &cost);
    Ok(ExitCode::SUCCESS)
}

fn rounded(c: &ReleaseCost) -> ReleaseCost {
    ReleaseCost {
        per_gib_month: c.per_gib_month.rounded(),
        per_replica: c.per_replica.rounded(),
        per_training_run: c.per_training_run.rounded(),
        storage: c.storage.rounded(),
        retrieval: c.retrieval.rounded(),
        operations: c.operations.rounded(),
        total: c.total.rounded(),
        ..c.clone()
    }
}

/// `1234567.5` as `1,234,567.50`: at least `min` and at most `max` decimals.
pub fn grouped(v: Decimal, min: u32, max: u32) -> String {
    let r = v.round_dp(max).normalize();
    let text = format!("{:.*}", (r.scale()).max(min) as usize, r);
    let (neg, text) = text.strip_prefix('-').map(|t| (true, t)).unwrap_or((false, text.as_str()));
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let mut out = String::new();
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    if neg { format!("-{out}") } else { out }
}

/// A fiat amount for people: cents, or two significant digits under a cent.
pub fn fiat(v: Decimal, currency: &str) -> String {
    let a = v.abs();
    if !a.is_zero() && a < Decimal::new(1, 2) {
        // Two significant digits: scale so the first one is in the tenths.
        let mut digits = 2u32;
        let mut t = a;
        while t < Decimal::new(1, 1) {
            t *= Decimal::TEN;
            digits += 1;
        }
        return format!("{} {currency}", grouped(v, 0, digits));
    }
    format!("{} {currency}", grouped(v, 2, 2))
}

fn bytes(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
}

fn print_table(name: &str, id: &str, p: &Pricing, c: &ReleaseCost) {
    let cur = &p.currency;
    println!("release      {name}");
    println!("id           {id}");
    println!(
        "size         {} of files; {} with manifest and chunk tables",
        bytes(c.size.file_bytes),
        bytes(c.size.stored_bytes)
    );
    println!("on hosts     {} ({})", bytes(c.stored_with_replication_bytes), c.replication.describe());
    println!(
        "period       {} month{}, billed {} days (minimum contract {} days); {} training run{}",
        c.months,
        if c.months == 1 { "" } else { "s" },
        c.billed_days,
        p.min_contract_days,
        c.runs,
        if c.runs == 1 { "" } else { "s" }
    );
    println!(
        "prices       storage {} µBTT/GiB/day, retrieval {} µBTT/MiB, operations {}",
        grouped(p.storage_ubtt_per_gib_day, 0, 6),
        grouped(p.retrieval_ubtt_per_mib, 0, 6),
        fiat(p.labor_per_release, cur)
    );
    println!(
        "rate         1 BTT = {} {cur} on {}; risk buffer {}%",
        p.fiat_rate.normalize(),
        p.rate_date,
        p.risk_buffer_percent.normalize()
    );
    println!();
    let buffered = format!("{cur} +{}%", p.risk_buffer_percent.normalize());
    println!("{:<26} {:>22} {:>18} {:>18}", "", "BTT", cur, buffered);
    let row = |label: &str, m: &Money, btt: bool| {
        let b = if btt { grouped(m.btt, 2, 6) } else { "-".into() };
        println!("{label:<26} {b:>22} {:>18} {:>18}", fiat(m.fiat, cur), fiat(m.fiat_buffered, cur));
    };
    row("per GiB-month", &c.per_gib_month, true);
    row("per replica", &c.per_replica, true);
    row("per training-run read", &c.per_training_run, true);
    println!();
    row(&format!("storage ({} days)", c.billed_days), &c.storage, true);
    row(&format!("retrieval ({} run{})", c.runs, if c.runs == 1 { "" } else { "s" }), &c.retrieval, true);
    row("operations (labour)", &c.operations, false);
    row("total", &c.total, true);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap_or_default()
    }

    #[test]
    fn figures_are_grouped_for_people() {
        assert_eq!(grouped(d("1234567.5"), 2, 6), "1,234,567.50");
        assert_eq!(grouped(d("327.4"), 2, 6), "327.40");
        assert_eq!(grouped(d("0.123456789"), 2, 6), "0.123457");
        assert_eq!(grouped(d("-1000"), 0, 2), "-1,000");
        assert_eq!(grouped(d("100"), 2, 2), "100.00");
        assert_eq!(fiat(d("120"), "USD"), "120.00 USD");
        assert_eq!(fiat(d("0.00014625"), "USD"), "0.00015 USD");
        assert_eq!(fiat(d("0.0123"), "USD"), "0.01 USD");
        assert_eq!(fiat(d("0"), "USD"), "0.00 USD");
    }
}
