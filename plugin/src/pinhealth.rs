//! Pin health: every `pin_health.interval`, a low-priority task checks that
//! each blob (file, chunk table, manifest) of every live release is pinned on
//! the nodes its placement names, repairs what a node lost, and places copies
//! on spare nodes while a release has fewer healthy copies than its
//! replication target.
//!
//! A repair reads the blob whole from a node that still pins it, checks its
//! BLAKE3 against the signed manifest (the placement is keyed by it), and only
//! then adds and pins it on the node that lost it: a node that answers damaged
//! bytes is never a repair source, and no unverified byte is ever re-added.
//! The task runs one node call at a time, on its own connections, so serving
//! never waits on it. Each repair is counted, timed from when the loss was
//! first seen, and written to the audit trail.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::audit::Event;
use crate::btfs::{NodeClient, NodeConfig, NodeError};
use crate::gateway::Gateway;
use crate::metrics::{ReleaseLabel, ResultLabel};
use crate::release::manifest::Blake3;
use crate::release::placement::BlobPlacement;
use crate::usage::unix_now;

/// What the last round saw of one node, for one release.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeHealth {
    /// Blobs of the release this node should hold (its placement, plus copies placed on it as a spare).
    pub expected: usize,
    /// Of those, pinned when checked.
    pub holds: usize,
    /// Found not pinned and not repaired (yet).
    pub lost: usize,
    pub reachable: bool,
    /// Unix seconds of the last check.
    pub checked_at: i64,
    /// Why it could not be checked, when it could not.
    pub error: Option<String>,
    /// A spare that took copies for this release.
    pub spare: bool,
}

/// A repair, as reported by `release status`.
#[derive(Debug, Clone, PartialEq)]
pub struct Repair {
    pub at: i64,
    pub node: String,
    pub blob: String,
    /// The node the verified bytes came from.
    pub source: Option<String>,
    pub ok: bool,
    pub why: String,
    /// From first detection to repair (or to this failed attempt).
    pub seconds: f64,
}

/// One release's pin health.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReleaseHealth {
    pub target: usize,
    pub blobs: usize,
    /// Blobs held by fewer healthy nodes than `target`.
    pub under_replicated: usize,
    pub nodes: BTreeMap<String, NodeHealth>,
    pub checked_at: i64,
    /// The most recent repairs, newest last (at most 100).
    pub repairs: Vec<Repair>,
}

/// The pin-health state the task keeps and `release status` reads.
#[derive(Debug, Default)]
pub struct PinHealth {
    inner: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    releases: BTreeMap<String, ReleaseHealth>,
    /// Copies placed on spares: blob -> nodes, beyond the placement's.
    extra: HashMap<Blake3, Vec<String>>,
    /// When each (node, blob) loss was first seen.
    lost_since: HashMap<(String, Blake3), Instant>,
}

/// Totals over every release, for the dashboard.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    pub releases: u64,
    pub under_replicated: u64,
    pub repairs_ok: u64,
    pub repairs_failed: u64,
    pub slowest_repair_s: Option<f64>,
}

impl PinHealth {
    /// Totals of the last rounds.
    pub fn summary(&self) -> Totals {
        let mut t = Totals::default();
        let Ok(s) = self.inner.lock() else { return t };
        for h in s.releases.values() {
            t.releases += 1;
            t.under_replicated += h.under_replicated as u64;
            for r in &h.repairs {
                if r.ok {
                    t.repairs_ok += 1;
                    t.slowest_repair_s = Some(t.slowest_repair_s.map_or(r.seconds, |w: f64| w.max(r.seconds)));
                } else {
                    t.repairs_failed += 1;
                }
            }
        }
        t
    }

    /// The last round's view of `name@version`, if it has been checked.
    pub fn release(&self, key: &str) -> Option<ReleaseHealth> {
        self.inner.lock().ok()?.releases.get(key).cloned()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> Option<T> {
        self.inner.lock().ok().map(|mut s| f(&mut s))
    }
}

/// The node clients of `[pin_health]`, by URL (spares flagged).
struct Nodes {
    by_url: BTreeMap<String, (NodeClient, bool)>,
}

fn url_of(c: &NodeConfig) -> String {
    c.url.trim_end_matches('/').to_string()
}

impl Nodes {
    fn new(nodes: &[NodeConfig], spares: &[NodeConfig], timeout: Duration) -> Result<Self, NodeError> {
        let mut by_url = BTreeMap::new();
        for (c, spare) in nodes.iter().map(|c| (c, false)).chain(spares.iter().map(|c| (c, true))) {
            by_url.insert(url_of(c), (NodeClient::new(c.clone(), timeout)?, spare));
        }
        Ok(Self { by_url })
    }

    fn get(&self, url: &str) -> Option<&NodeClient> {
        self.by_url.get(url).map(|(c, _)| c)
    }

    fn spares(&self) -> impl Iterator<Item = (&String, &NodeClient)> {
        self.by_url.iter().filter(|(_, (_, s))| *s).map(|(u, (c, _))| (u, c))
    }
}

impl Gateway {
    /// Starts the pin-health task when `[pin_health]` is enabled; it stops when the gateway is dropped.
    pub fn spawn_pin_health(self: &Arc<Self>) {
        let cfg = self.config().pin_health.clone();
        if !cfg.enabled {
            return;
        }
        let nodes = match Nodes::new(&cfg.nodes, &cfg.spares, cfg.timeout) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "pin health: a node is misconfigured; the task is not started");
                return;
            }
        };
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(cfg.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(gw) = weak.upgrade() else { break };
                gw.pin_round(&nodes, cfg.timeout).await;
            }
        });
    }

    /// One pass over every live release with a placement.
    async fn pin_round(&self, nodes: &Nodes, timeout: Duration) {
        let catalog = self.registry().snapshot();
        let mut unreachable: BTreeMap<String, String> = BTreeMap::new();
        for (name, versions) in catalog.names() {
            for (version, release) in versions {
                if catalog.state(name, version).taken_down.is_some() {
                    continue;
                }
                let Some(placement) = &release.placement else { continue };
                let key = format!("{name}@{version}");
                let manifest = &release.signed.manifest;
                let placed = placement.blobs.values().map(|b| b.nodes.len()).max().unwrap_or(0);
                let target = manifest.envelope.replication_target.map(|t| t as usize).unwrap_or(placed).max(1);
                let repairs = self.pin_health().release(&key).map(|h| h.repairs).unwrap_or_default();
                let mut health = ReleaseHealth { target, blobs: placement.blobs.len(), repairs, ..Default::default() };
                for (hash, blob) in &placement.blobs {
                    let healthy = self
                        .check_blob(
                            nodes,
                            timeout,
                            &key,
                            release.signed.id,
                            *hash,
                            blob,
                            target,
                            &mut health,
                            &mut unreachable,
                        )
                        .await;
                    if healthy < target {
                        health.under_replicated += 1;
                    }
                }
                health.checked_at = unix_now();
                let label = ReleaseLabel { release: key.clone() };
                self.metrics().pin_under_replicated.get_or_create(&label).set(health.under_replicated as i64);
                let n = health.repairs.len();
                if n > 100 {
                    health.repairs.drain(..n - 100);
                }
                self.pin_health().with(|s| s.releases.insert(key.clone(), health));
            }
        }
        self.metrics().pin_nodes_unreachable.set(unreachable.len() as i64);
    }

    /// Checks one blob on every node that should hold it, repairs what was
    /// lost, tops up on spares; returns the healthy copies after.
    #[allow(clippy::too_many_arguments)]
    async fn check_blob(
        &self,
        nodes: &Nodes,
        timeout: Duration,
        key: &str,
        release_id: Blake3,
        hash: Blake3,
        blob: &BlobPlacement,
        target: usize,
        health: &mut ReleaseHealth,
        unreachable: &mut BTreeMap<String, String>,
    ) -> usize {
        let extra = self.pin_health().with(|s| s.extra.get(&hash).cloned().unwrap_or_default()).unwrap_or_default();
        let mut holders: Vec<String> = blob.nodes.clone();
        holders.extend(extra.into_iter().filter(|u| !blob.nodes.contains(u)));
        let (mut healthy, mut lost) = (Vec::new(), Vec::new());
        for url in &holders {
            let entry = health.nodes.entry(url.clone()).or_default();
            entry.expected += 1;
            entry.checked_at = unix_now();
            entry.spare = nodes.by_url.get(url).is_some_and(|(_, s)| *s);
            let Some(node) = nodes.get(url) else {
                entry.error = Some("not in pin_health.nodes or spares: not checked".into());
                continue;
            };
            if let Some(why) = unreachable.get(url) {
                entry.error = Some(why.clone());
                continue;
            }
            match tokio::time::timeout(timeout, node.is_pinned(&blob.cid)).await {
                Ok(Ok(true)) => {
                    entry.reachable = true;
                    entry.holds += 1;
                    healthy.push(url.clone());
                }
                Ok(Ok(false)) => {
                    entry.reachable = true;
                    lost.push(url.clone());
                }
                Ok(Err(e)) => {
                    unreachable.insert(url.clone(), e.to_string());
                    entry.error = Some(e.to_string());
                }
                Err(_) => {
                    let why = format!("pin/ls did not answer within {timeout:?}");
                    unreachable.insert(url.clone(), why.clone());
                    entry.error = Some(why);
                }
            }
        }
        for url in lost {
            let (since, first) = self
                .pin_health()
                .with(|s| match s.lost_since.get(&(url.clone(), hash)) {
                    Some(t) => (*t, false),
                    None => {
                        let now = Instant::now();
                        s.lost_since.insert((url.clone(), hash), now);
                        (now, true)
                    }
                })
                .unwrap_or_else(|| (Instant::now(), true));
            let outcome = self.repair(nodes, timeout, &healthy, &url, hash, blob).await;
            let done = self.record_repair(key, release_id, &url, hash, since, first, outcome, health).await;
            if done {
                healthy.push(url.clone());
                if let Some(e) = health.nodes.get_mut(&url) {
                    e.holds += 1;
                }
            } else if let Some(e) = health.nodes.get_mut(&url) {
                e.lost += 1;
            }
        }
        // Too few healthy copies (a node gone): copies on spares, while there are any.
        if healthy.len() < target {
            let spares: Vec<(String, NodeClient)> = nodes
                .spares()
                .filter(|(u, _)| !holders.contains(u) && !unreachable.contains_key(*u))
                .map(|(u, c)| (u.clone(), c.clone()))
                .collect();
            for (url, spare) in spares {
                if healthy.len() >= target {
                    break;
                }
                // A spare that does not answer is skipped (no attempt is recorded); one
                // that already pins the blob (a copy from an earlier run) counts as is.
                let copied = match tokio::time::timeout(timeout, spare.is_pinned(&blob.cid)).await {
                    Ok(Ok(true)) => true,
                    Ok(Ok(false)) => {
                        let outcome = self.repair(nodes, timeout, &healthy, &url, hash, blob).await;
                        self.record_repair(key, release_id, &url, hash, Instant::now(), true, outcome, health).await
                    }
                    Ok(Err(e)) => {
                        unreachable.insert(url.clone(), e.to_string());
                        false
                    }
                    Err(_) => {
                        unreachable.insert(url.clone(), format!("pin/ls did not answer within {timeout:?}"));
                        false
                    }
                };
                if copied {
                    self.pin_health().with(|s| s.extra.entry(hash).or_default().push(url.clone()));
                    let e = health.nodes.entry(url.clone()).or_default();
                    e.expected += 1;
                    e.holds += 1;
                    e.reachable = true;
                    e.spare = true;
                    e.checked_at = unix_now();
                    healthy.push(url);
                }
            }
        }
        healthy.len()
    }

    /// Reads the blob from the first healthy node whose bytes verify and pins it on `to`.
    async fn repair(
        &self,
        nodes: &Nodes,
        timeout: Duration,
        sources: &[String],
        to: &str,
        hash: Blake3,
        blob: &BlobPlacement,
    ) -> Result<String, String> {
        let Some(target) = nodes.get(to) else { return Err(format!("{to} is not a configured node")) };
        let mut why = Vec::new();
        for src in sources {
            let Some(node) = nodes.get(src) else { continue };
            match fetch_verified(node, &blob.cid, blob.size, hash, timeout).await {
                Ok(file) => {
                    let added =
                        tokio::time::timeout(timeout, target.add_file(file.path(), &hash.to_hex(), &|_| {})).await;
                    return match added {
                        Ok(Ok((cid, _))) if cid == blob.cid => Ok(src.clone()),
                        Ok(Ok((cid, _))) => Err(format!("{to} added it as {cid}, not {}", blob.cid)),
                        Ok(Err(e)) => Err(format!("adding to {to}: {e}")),
                        Err(_) => Err(format!("adding to {to} took longer than {timeout:?}")),
                    };
                }
                Err(e) => why.push(format!("{src}: {e}")),
            }
        }
        if why.is_empty() {
            Err("no healthy node holds it to copy from".into())
        } else {
            Err(format!("no source served verified bytes: {}", why.join("; ")))
        }
    }

    /// Counts, times and reports one repair, and writes it to the audit
    /// trail (a failure only on the first attempt for a loss, so a repair
    /// that keeps failing does not flood the trail); whether it succeeded.
    #[allow(clippy::too_many_arguments)]
    async fn record_repair(
        &self,
        key: &str,
        release_id: Blake3,
        node: &str,
        hash: Blake3,
        since: Instant,
        first: bool,
        outcome: Result<String, String>,
        health: &mut ReleaseHealth,
    ) -> bool {
        let seconds = since.elapsed().as_secs_f64();
        let ok = outcome.is_ok();
        let result = if ok { "ok" } else { "failed" };
        self.metrics().pin_repairs.get_or_create(&ResultLabel { result }).inc();
        if ok {
            self.metrics().pin_repair_seconds.observe(seconds);
            self.pin_health().with(|s| s.lost_since.remove(&(node.to_string(), hash)));
        }
        let (source, why) = match &outcome {
            Ok(src) => (Some(src.clone()), String::new()),
            Err(e) => (None, e.clone()),
        };
        let objective = self.config().pin_health.repair_objective.as_secs_f64();
        let (name, version) = key.rsplit_once('@').unwrap_or((key, ""));
        let mut event = Event::new("gateway", "repair")
            .with("node", node)
            .with("blob", hash.to_hex())
            .with("ok", ok)
            .with("seconds", (seconds * 1000.0).round() / 1000.0)
            .with("within_objective", seconds <= objective);
        event.release = Some(format!("{name}@{version}"));
        event.release_id = Some(release_id.to_hex());
        event = match &source {
            Some(s) => event.with("source", s.clone()),
            None => event.with("why", why.clone()),
        };
        if (ok || first)
            && let Err(e) = self.audit(event).await
        {
            tracing::error!(error = %e, "pin health: the audit trail did not take a repair");
        }
        if ok {
            tracing::warn!(release = key, node, blob = %hash, source = ?source, seconds, "pin repaired");
        } else {
            tracing::error!(release = key, node, blob = %hash, why, "pin repair failed");
        }
        health.repairs.push(Repair {
            at: unix_now(),
            node: node.to_string(),
            blob: hash.to_hex(),
            source,
            ok,
            why,
            seconds,
        });
        ok
    }
}

/// The whole blob from `node`, into a temporary file, checked against `hash`.
async fn fetch_verified(
    node: &NodeClient,
    cid: &str,
    size: u64,
    hash: Blake3,
    timeout: Duration,
) -> Result<tempfile::NamedTempFile, String> {
    let mut file = tempfile::NamedTempFile::new().map_err(|e| format!("temporary file: {e}"))?;
    let mut hasher = blake3::Hasher::new();
    let mut got = 0u64;
    if size > 0 {
        let resp = tokio::time::timeout(timeout, node.cat(cid, 0, size, timeout))
            .await
            .map_err(|_| format!("cat did not answer within {timeout:?}"))?
            .map_err(|e| e.to_string())?;
        let mut body = resp.bytes_stream();
        loop {
            let next = tokio::time::timeout(timeout, body.next()).await.map_err(|_| "cat stalled".to_string())?;
            let Some(piece) = next else { break };
            let piece = piece.map_err(|e| format!("cat cut short: {e}"))?;
            got += piece.len() as u64;
            if got > size {
                return Err(format!("cat sent more than the {size} bytes placed"));
            }
            hasher.update(&piece);
            file.write_all(&piece).map_err(|e| format!("temporary file: {e}"))?;
        }
    }
    if got != size {
        return Err(format!("cat sent {got} of {size} bytes"));
    }
    let actual = Blake3::from(hasher.finalize());
    if actual != hash {
        return Err(format!("served bytes hash to {actual}, not the published {hash}: damaged, not used"));
    }
    file.flush().map_err(|e| format!("temporary file: {e}"))?;
    Ok(file)
}
