//! A fleet's summary (`reports.peers`): this gateway's own summary merged
//! with the summaries its peers give for the same days.
//!
//! - **Usage adds up**: bytes, requests, tenant rows, the daily trend, origin
//!   egress and what it cost.
//! - **Storage does not**: BTFS stores each release once however many
//!   gateways serve it, so releases, bytes stored and committed BTT are this
//!   gateway's catalog. A member whose catalog differs (a release missing, or
//!   in another state) is named in a warning.
//! - **Money** is the sum of the members' rounded figures, as `usage export`
//!   with several `--api` sums its lines, so the members' rows add up to the
//!   total to the last digit. A member that prices differently leaves the
//!   fleet's money out (bytes stay), with a warning.
//! - **Latency**: a fleet p99 cannot be made from the members' p99s, but it
//!   is at most the worst of them, which is what is shown.
//!
//! A member that does not answer, refuses the token or answers something
//! that is not a summary is listed with why and left out of the totals, and
//! `complete` is false. A member is never dropped silently. A peer that turns
//! out to be this gateway (the same config on every member lists them all)
//! is recognised by its instance id and counted once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::summary::{BttPanel, Objective, Served, Summary, TenantRow, TrendDay, ratio};
use crate::config::ReportsConfig;
use crate::pricing::Money;

/// Largest summary a peer may send (a year of days and thousands of releases
/// is well under it).
const MAX_SUMMARY_BYTES: usize = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberStatus {
    /// Counted in the totals.
    Ok,
    /// No answer in time: refused, reset, or too slow.
    Unreachable,
    /// Answered with an error status, such as 401 for the token.
    Refused,
    /// Answered something that is not its own summary.
    Invalid,
    /// The same gateway (instance id) as a member listed before: counted once.
    Duplicate,
}

/// One member of the fleet, as the totals counted it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    /// The address it was asked at; `None` for the gateway that made the summary.
    pub url: Option<String>,
    pub instance: Option<String>,
    pub status: MemberStatus,
    /// Why it is not counted.
    pub error: Option<String>,
    pub generated_at: Option<String>,
    pub served: Option<Served>,
    /// What its tenants were charged in the period.
    pub billed: Option<Money>,
    pub manifest_p99_ms: Option<f64>,
    pub file_ttfb_p99_ms: Option<f64>,
    pub checksum_failures: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fleet {
    /// This gateway first, then its peers in configured order.
    pub members: Vec<Member>,
    /// Whether every member is counted in the totals.
    pub complete: bool,
    /// What an operator should look at: members that price differently, whose
    /// catalog differs, or whose days do not line up.
    pub warnings: Vec<String>,
}

/// Why a peer's summary could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    #[error("no answer: {0}")]
    Unreachable(String),
    #[error("answered {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl PeerError {
    fn status(&self) -> MemberStatus {
        match self {
            PeerError::Unreachable(_) => MemberStatus::Unreachable,
            PeerError::Refused { .. } => MemberStatus::Refused,
            PeerError::Invalid(_) => MemberStatus::Invalid,
        }
    }
}

/// Why `reports.peers` could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PeersError {
    #[error("{path}: {why}")]
    Token { path: PathBuf, why: String },
    #[error("the HTTP client: {0}")]
    Client(String),
}

/// The peers and how to ask them (`reports.peers`).
pub struct Peers {
    urls: Vec<String>,
    token: Zeroizing<String>,
    timeout: Duration,
    http: reqwest::Client,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").field("urls", &self.urls).field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl Peers {
    /// The peers of `cfg`, with the token read from `peer_token_file`;
    /// `None` when no peer is configured.
    pub fn from_config(cfg: &ReportsConfig) -> Result<Option<Self>, PeersError> {
        if cfg.peers.is_empty() {
            return Ok(None);
        }
        let Some(path) = &cfg.peer_token_file else {
            return Err(PeersError::Token { path: PathBuf::new(), why: "reports.peer_token_file is not set".into() });
        };
        let token = read_token(path)?;
        crate::btfs::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.peer_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| PeersError::Client(e.to_string()))?;
        let urls = cfg.peers.iter().map(|u| u.trim_end_matches('/').to_string()).collect();
        Ok(Some(Self { urls, token, timeout: cfg.peer_timeout, http }))
    }

    /// Every peer's own summary of the `days` days ending today, asked at once.
    pub async fn fetch_all(&self, days: u32) -> Vec<(String, Result<Summary, PeerError>)> {
        let asks = self.urls.iter().map(|u| async move { (u.clone(), self.fetch(u, days).await) });
        futures_util::future::join_all(asks).await
    }

    async fn fetch(&self, base: &str, days: u32) -> Result<Summary, PeerError> {
        let url = format!("{base}/v1/reports/summary?days={days}&scope=member");
        let ask = async {
            let mut resp = self
                .http
                .get(&url)
                .bearer_auth(self.token.as_str())
                .send()
                .await
                // The URL is on the member's row already.
                .map_err(|e| PeerError::Unreachable(chain(&e.without_url())))?;
            let status = resp.status();
            let mut body = Vec::new();
            while let Some(piece) = resp.chunk().await.map_err(|e| PeerError::Unreachable(chain(&e.without_url())))? {
                if body.len() + piece.len() > MAX_SUMMARY_BYTES {
                    return Err(PeerError::Invalid(format!("its summary is over {} MiB", MAX_SUMMARY_BYTES >> 20)));
                }
                body.extend_from_slice(&piece);
            }
            if !status.is_success() {
                let message = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(|e| e.chars().take(200).collect()))
                    .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
                return Err(PeerError::Refused { status: status.as_u16(), message });
            }
            let s: Summary = serde_json::from_slice(&body)
                .map_err(|e| PeerError::Invalid(format!("what it answered is not a summary: {e}")))?;
            if s.fleet.is_some() {
                // Counting it would count its peers again.
                return Err(PeerError::Invalid("it answered a fleet summary, not its own (scope=member)".into()));
            }
            Ok(s)
        };
        tokio::time::timeout(self.timeout, ask).await.map_err(|_| {
            PeerError::Unreachable(format!("no summary within {} (reports.peer_timeout)", humantime(self.timeout)))
        })?
    }
}

fn humantime(d: Duration) -> String {
    humantime_serde::re::humantime::format_duration(d).to_string()
}

/// An error and its causes, which is where reqwest says what went wrong.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cause = c.source();
    }
    s
}

/// Reads the peer token: the file must be readable by its owner only.
fn read_token(path: &Path) -> Result<Zeroizing<String>, PeersError> {
    let bad = |why: String| PeersError::Token { path: path.into(), why };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(bad(format!(
                "mode {mode:o} lets others read the finance token; make it readable by its owner only (chmod 600)"
            )));
        }
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?);
    let token = text.trim();
    if token.is_empty() {
        return Err(bad("holds no token".into()));
    }
    if token.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(bad("the token must be one line of printable characters".into()));
    }
    Ok(Zeroizing::new(token.to_string()))
}

fn member_of(url: Option<String>, s: &Summary) -> Member {
    Member {
        url,
        instance: Some(s.gateway_instance.clone()),
        status: MemberStatus::Ok,
        error: None,
        generated_at: Some(s.generated_at.clone()),
        served: Some(s.served.clone()),
        billed: s.btt.as_ref().map(|b| b.billed),
        manifest_p99_ms: s.slo.manifest.p99_ms,
        file_ttfb_p99_ms: s.slo.file_ttfb.p99_ms,
        checksum_failures: Some(s.slo.checksum_failures),
    }
}

fn who(url: &str, s: &Summary) -> String {
    format!("{url} ({})", s.gateway_instance)
}

/// What differs between two catalogs, if anything, in a few words.
fn catalog_difference(here: &Summary, there: &Summary) -> Option<String> {
    let set = |s: &Summary| -> BTreeSet<String> {
        s.releases.iter().map(|r| format!("{}@{} {} ({})", r.name, r.version, r.state, short(&r.release_id))).collect()
    };
    let (a, b) = (set(here), set(there));
    if a == b {
        return None;
    }
    let list = |it: Vec<&String>| {
        let n = it.len();
        let mut s = it.into_iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        if n > 5 {
            s.push_str(&format!(" and {} more", n - 5));
        }
        s
    };
    let only_there: Vec<&String> = b.difference(&a).collect();
    let only_here: Vec<&String> = a.difference(&b).collect();
    let mut parts = Vec::new();
    if !only_there.is_empty() {
        parts.push(format!("only there: {}", list(only_there)));
    }
    if !only_here.is_empty() {
        parts.push(format!("only here: {}", list(only_here)));
    }
    Some(parts.join("; "))
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Adds a peer's count; a peer's figure is input, so it saturates rather than wraps.
fn add(into: &mut u64, n: u64) {
    *into = into.saturating_add(n);
}

fn add_served(into: &mut Served, s: &Served) {
    add(&mut into.hot_bytes, s.hot_bytes);
    add(&mut into.origin_bytes, s.origin_bytes);
    add(&mut into.bytes, s.bytes);
    add(&mut into.requests, s.requests);
    add(&mut into.aborted_requests, s.aborted_requests);
    add(&mut into.origin_egress_bytes, s.origin_egress_bytes);
    add(&mut into.integrity_failed_bytes, s.integrity_failed_bytes);
    add(&mut into.integrity_aborted_requests, s.integrity_aborted_requests);
}

fn add_money(into: Option<Money>, m: Option<Money>) -> Option<Money> {
    match (into, m) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    }
}

/// The worst member's p99 (an upper bound of the fleet's), samples summed.
fn worst(objectives: &[&Objective], objective_ms: f64) -> Objective {
    let p99_ms =
        objectives.iter().filter_map(|o| o.p99_ms).fold(None, |m: Option<f64>, p| Some(m.map_or(p, |m| m.max(p))));
    Objective {
        p99_ms,
        objective_ms,
        samples: objectives.iter().fold(0u64, |a, o| a.saturating_add(o.samples)),
        met: p99_ms.map(|p| p <= objective_ms),
    }
}

/// This gateway's summary `local`, with its peers' answers added in.
pub fn merge(local: Summary, peers: Vec<(String, Result<Summary, PeerError>)>) -> Summary {
    let mut members = vec![member_of(None, &local)];
    // Instance id -> (member index, boot id).
    let mut seen: BTreeMap<String, (usize, String)> =
        BTreeMap::from([(local.gateway_instance.clone(), (0, local.boot.clone()))]);
    let mut warnings = Vec::new();
    let mut counted: Vec<Summary> = Vec::new();
    let mut money = true;
    for (url, got) in peers {
        let s = match got {
            Ok(s) => s,
            Err(e) => {
                members.push(Member {
                    url: Some(url),
                    instance: None,
                    status: e.status(),
                    error: Some(e.to_string()),
                    generated_at: None,
                    served: None,
                    billed: None,
                    manifest_p99_ms: None,
                    file_ttfb_p99_ms: None,
                    checksum_failures: None,
                });
                continue;
            }
        };
        if let Some((first, boot)) = seen.get(&s.gateway_instance).cloned() {
            // This very process (the same boot id), not another with a copied `usage.instance_id`.
            if first == 0 && members[0].url.is_none() && s.boot == local.boot {
                // This gateway, listed among the peers: the same config on every member.
                members[0].url = Some(url);
                continue;
            }
            let mut m = member_of(Some(url), &s);
            let earlier = members[first].url.clone().unwrap_or_else(|| "this gateway".into());
            if s.boot == boot {
                m.status = MemberStatus::Duplicate;
                m.error = Some(format!("the same gateway ({}) as {earlier}: counted once", s.gateway_instance));
            } else {
                // Another process with the same id: a copied `usage.instance_id`. Not counted, and said so.
                m.status = MemberStatus::Invalid;
                m.error = Some(format!(
                    "another gateway with the same instance id ({}) as {earlier}: give each member its own usage.instance_id",
                    s.gateway_instance
                ));
            }
            m.served = None;
            m.billed = None;
            members.push(m);
            continue;
        }
        seen.insert(s.gateway_instance.clone(), (members.len(), s.boot.clone()));
        if s.pricing != local.pricing {
            money = false;
            warnings.push(format!(
                "{} prices usage differently from this gateway (usage.pricing): the fleet's BTT and fiat figures are left out, bytes are complete",
                who(&url, &s)
            ));
        }
        if (s.from, s.to) != (local.from, local.to) {
            warnings.push(format!(
                "{} covers days from {} to {}, this gateway from {} to {}: are the clocks right?",
                who(&url, &s),
                s.from,
                s.to,
                local.from,
                local.to
            ));
        }
        if let Some(d) = catalog_difference(&local, &s) {
            warnings.push(format!("{} serves a different catalog: {d}", who(&url, &s)));
        }
        members.push(member_of(Some(url), &s));
        counted.push(s);
    }
    if counted.is_empty() && members.len() == 1 {
        // Every peer was this gateway: a fleet of one.
        let mut local = local;
        local.fleet = Some(Fleet { members, complete: true, warnings });
        return local;
    }
    let complete = members.iter().all(|m| matches!(m.status, MemberStatus::Ok | MemberStatus::Duplicate));
    let money = money && local.pricing.is_some();

    let all: Vec<&Summary> = std::iter::once(&local).chain(&counted).collect();
    let mut served = Served::default();
    let mut tenants: BTreeMap<String, TenantRow> = BTreeMap::new();
    let mut trend: BTreeMap<i64, TrendDay> = BTreeMap::new();
    for s in &all {
        add_served(&mut served, &s.served);
        for t in &s.tenants {
            let row = tenants.entry(t.tenant.clone()).or_insert_with(|| TenantRow::empty(&t.tenant));
            add(&mut row.hot_bytes, t.hot_bytes);
            add(&mut row.origin_bytes, t.origin_bytes);
            add(&mut row.bytes, t.bytes);
            add(&mut row.requests, t.requests);
            row.charge = if money { add_money(row.charge, t.charge) } else { None };
        }
        for d in &s.trend {
            let day = trend.entry(d.start).or_insert_with(|| TrendDay {
                day: d.day.clone(),
                start: d.start,
                hot_bytes: 0,
                origin_bytes: 0,
                origin_egress_bytes: 0,
                requests: 0,
                retrieval_btt: None,
            });
            add(&mut day.hot_bytes, d.hot_bytes);
            add(&mut day.origin_bytes, d.origin_bytes);
            add(&mut day.origin_egress_bytes, d.origin_egress_bytes);
            add(&mut day.requests, d.requests);
            day.retrieval_btt = match (money, day.retrieval_btt, d.retrieval_btt) {
                (false, ..) => None,
                (true, Some(a), Some(b)) => Some(a.saturating_add(b)),
                (true, a, b) => a.or(b),
            };
        }
    }
    served.hit_ratio = ratio(served.hot_bytes, served.bytes);
    let tenants: Vec<TenantRow> = tenants
        .into_values()
        .map(|mut r| {
            r.hit_ratio = ratio(r.hot_bytes, r.bytes);
            r
        })
        .collect();
    let btt = local.btt.as_ref().filter(|_| money).map(|b| {
        let retrieval_spent =
            all.iter().filter_map(|s| s.btt.as_ref()).map(|b| b.retrieval_spent).fold(Money::default(), |a, b| a + b);
        BttPanel {
            committed: b.committed,
            spent: retrieval_spent + b.storage_accrued,
            retrieval_spent,
            storage_accrued: b.storage_accrued,
            billed: tenants.iter().filter_map(|t| t.charge).fold(Money::default(), |a, b| a + b),
        }
    });
    let mut slo = local.slo.clone();
    let manifests: Vec<&Objective> = all.iter().map(|s| &s.slo.manifest).collect();
    let files: Vec<&Objective> = all.iter().map(|s| &s.slo.file_ttfb).collect();
    slo.manifest = worst(&manifests, local.slo.manifest.objective_ms);
    slo.file_ttfb = worst(&files, local.slo.file_ttfb.objective_ms);
    slo.checksum_failures = all.iter().fold(0u64, |a, s| a.saturating_add(s.slo.checksum_failures));
    slo.since = all.iter().map(|s| s.slo.since).min().unwrap_or(slo.since);
    if slo.pin_health.is_none() {
        slo.pin_health = counted.iter().find_map(|s| s.slo.pin_health.clone());
    }
    Summary {
        served,
        tenants,
        trend: trend.into_values().collect(),
        btt,
        slo,
        fleet: Some(Fleet { members, complete, warnings }),
        ..local
    }
}
