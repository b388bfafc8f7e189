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
use crate::fetch::FileSpec;
use crate::gateway::Gateway;
use crate::metrics::{ReleaseLabel, ResultLabel};
use crate::release::manifest::{Blake3, FileEntry};
use crate::release::placement::{BlobPlacement, Placement};
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
    /// The last block sample: which chunk of which file was read back and
    /// verified, and what came of it.
    pub sample: Option<String>,
    /// Whether that sample found damaged or unreadable bytes (not repaired).
    pub sample_failed: bool,
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
    /// Each (node, blob) loss: when first seen, the round that last saw it,
    /// and what it is.
    lost_since: HashMap<(String, Blake3), Loss>,
    /// Rounds done.
    round: u64,
}

/// A loss being repaired.
#[derive(Debug, Clone, Copy)]
struct Loss {
    since: Instant,
    seen: u64,
    cause: Cause,
    /// A re-add was made and the node still failed its sample (a damaged
    /// block it keeps): re-adding again would not help.
    readd_failed: bool,
}

/// Why a node's copy is not healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// Not pinned.
    Lost,
    /// Pinned, but its sampled bytes do not verify.
    Sample,
    /// A spare that is to take a copy.
    Spare,
}

impl Cause {
    fn label(self) -> &'static str {
        match self {
            Cause::Lost => "lost",
            Cause::Sample => "sample",
            Cause::Spare => "spare",
        }
    }
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
            // An add is bounded by its progress (no byte taken for `timeout`), not by a total time.
            let client = NodeClient::new(c.clone(), timeout)?.with_stall(timeout);
            by_url.entry(url_of(c)).or_insert((client, spare));
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
        let mut checked = std::collections::BTreeSet::new();
        for (name, versions) in catalog.names() {
            for (version, release) in versions {
                if catalog.state(name, version).taken_down.is_some() {
                    continue;
                }
                let Some(placement) = &release.placement else { continue };
                let key = format!("{name}@{version}");
                checked.insert(key.clone());
                let manifest = &release.signed.manifest;
                let placed = placement.blobs.values().map(|b| b.nodes.len()).max().unwrap_or(0);
                let target = manifest.envelope.replication_target.map(|t| t as usize).unwrap_or(placed).max(1);
                let repairs = self.pin_health().release(&key).map(|h| h.repairs).unwrap_or_default();
                let mut health = ReleaseHealth { target, blobs: placement.blobs.len(), repairs, ..Default::default() };
                let mut healthy_on: BTreeMap<Blake3, Vec<String>> = BTreeMap::new();
                for (hash, blob) in &placement.blobs {
                    let healthy = self
                        .check_blob(nodes, timeout, &key, release.signed.id, *hash, blob, &mut health, &mut unreachable)
                        .await;
                    healthy_on.insert(*hash, healthy);
                }
                // A copy that is pinned but cannot give back verified bytes is not healthy.
                let sample = Sample { key: &key, release_id: release.signed.id, files: &manifest.files, placement };
                for (node, hash) in
                    self.sample_blocks(nodes, timeout, &sample, &healthy_on, &mut health, &mut unreachable).await
                {
                    if let Some(h) = healthy_on.get_mut(&hash) {
                        h.retain(|n| n != &node);
                    }
                }
                // Too few healthy copies (a node gone, or its bytes damaged): copies on spares.
                for (hash, blob) in &placement.blobs {
                    if let Some(healthy) = healthy_on.get_mut(hash)
                        && healthy.len() < target
                    {
                        let to = (key.as_str(), release.signed.id, *hash, blob, target);
                        self.top_up(nodes, timeout, to, healthy, &mut health, &mut unreachable).await;
                    }
                }
                health.under_replicated = healthy_on.values().filter(|h| h.len() < target).count();
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
        // A release taken down (or dropped) since the last round is no longer reported.
        let gone = self
            .pin_health()
            .with(|s| {
                let gone: Vec<String> = s.releases.keys().filter(|k| !checked.contains(*k)).cloned().collect();
                s.releases.retain(|k, _| checked.contains(k));
                // A loss not seen this round (repaired by other means, its node
                // not checked, its release gone) no longer runs a repair clock.
                // A node that did not answer this round keeps its losses' clocks.
                let round = s.round;
                // A copy found damaged after a re-add stays so until a sample of it verifies.
                s.lost_since.retain(|(node, _), l| {
                    l.seen == round || unreachable.contains_key(node) || (l.cause == Cause::Sample && l.readd_failed)
                });
                s.round += 1;
                gone
            })
            .unwrap_or_default();
        for release in gone {
            self.metrics().pin_under_replicated.remove(&ReleaseLabel { release });
        }
        self.metrics().pin_nodes_unreachable.set(unreachable.len() as i64);
    }

    /// Checks one blob on every node that should hold it and repairs what was
    /// lost; returns the nodes with a pinned copy after.
    #[allow(clippy::too_many_arguments)]
    async fn check_blob(
        &self,
        nodes: &Nodes,
        timeout: Duration,
        key: &str,
        release_id: Blake3,
        hash: Blake3,
        blob: &BlobPlacement,
        health: &mut ReleaseHealth,
        unreachable: &mut BTreeMap<String, String>,
    ) -> Vec<String> {
        let extra = self.pin_health().with(|s| s.extra.get(&hash).cloned().unwrap_or_default()).unwrap_or_default();
        // Placement URLs as node ids (no trailing slash), each once.
        let mut holders: Vec<String> = Vec::new();
        for url in blob.nodes.iter().map(|u| u.trim_end_matches('/').to_string()).chain(extra) {
            if !holders.contains(&url) {
                holders.push(url);
            }
        }
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
                    // Pinned again by other means (an operator's re-pin): the loss is over.
                    self.pin_health().with(|s| {
                        if s.lost_since.get(&(url.clone(), hash)).is_some_and(|l| l.cause == Cause::Lost) {
                            s.lost_since.remove(&(url.clone(), hash));
                        }
                    });
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
            let (loss, first) = self.loss_seen(&url, hash, Cause::Lost);
            let outcome = self.repair(nodes, timeout, &healthy, &url, hash, blob, unreachable).await;
            let done = self.record_repair(key, release_id, &url, hash, loss, first, outcome, health).await;
            if done {
                healthy.push(url.clone());
                if let Some(e) = health.nodes.get_mut(&url) {
                    e.holds += 1;
                }
            } else if let Some(e) = health.nodes.get_mut(&url) {
                e.lost += 1;
            }
        }
        healthy
    }

    /// Copies `hash` onto spares while it has fewer healthy copies than the
    /// target, and while some node has a healthy copy to take it from.
    async fn top_up(
        &self,
        nodes: &Nodes,
        timeout: Duration,
        (key, release_id, hash, blob, target): (&str, Blake3, Blake3, &BlobPlacement, usize),
        healthy: &mut Vec<String>,
        health: &mut ReleaseHealth,
        unreachable: &mut BTreeMap<String, String>,
    ) {
        if healthy.is_empty() {
            return;
        }
        let extra = self.pin_health().with(|s| s.extra.get(&hash).cloned().unwrap_or_default()).unwrap_or_default();
        let holders: Vec<String> =
            blob.nodes.iter().map(|u| u.trim_end_matches('/').to_string()).chain(extra).collect();
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
                    let (loss, first) = self.loss_seen(&url, hash, Cause::Spare);
                    let outcome = self.repair(nodes, timeout, healthy, &url, hash, blob, unreachable).await;
                    self.record_repair(key, release_id, &url, hash, loss, first, outcome, health).await
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

    /// Reads back one random chunk of one random file from each node that
    /// pins any, and verifies it: a pin says nothing of whether the node's
    /// blocks are still there and intact. A node whose sample fails is
    /// repaired (the blob re-added from a verified source, which restores
    /// missing blocks) and sampled again; returns the (node, blob) copies
    /// that still fail.
    async fn sample_blocks(
        &self,
        nodes: &Nodes,
        timeout: Duration,
        r: &Sample<'_>,
        healthy_on: &BTreeMap<Blake3, Vec<String>>,
        health: &mut ReleaseHealth,
        unreachable: &mut BTreeMap<String, String>,
    ) -> Vec<(String, Blake3)> {
        let mut failed = Vec::new();
        let urls: Vec<String> = health.nodes.keys().cloned().collect();
        for url in urls {
            let Some(node) = nodes.get(&url) else { continue };
            if unreachable.contains_key(&url) {
                continue;
            }
            let held: Vec<&FileEntry> = r
                .files
                .iter()
                .filter(|f| f.size > 0 && healthy_on.get(&f.blake3).is_some_and(|h| h.contains(&url)))
                .collect();
            let Some(file) = pick(&held) else { continue };
            let Some(blob) = r.placement.blobs.get(&file.blake3) else { continue };
            let Ok(layout) = file.layout() else { continue };
            let index = random() % layout.chunk_count().max(1);
            let spec = FileSpec {
                blake3: file.blake3,
                layout,
                table: file.chunk_table,
                cid: Some(blob.cid.clone()),
                table_cid: file.chunk_table.and_then(|t| r.placement.blobs.get(&t).map(|b| b.cid.clone())),
                release: None,
                purge_mark: self.fetcher().purge_mark(),
            };
            let what = format!("{} chunk {index} of {}", file.path, layout.chunk_count());
            let verdict = match self.sample_chunk(node, &spec, index, timeout).await {
                Verdict::Unreachable(why) => {
                    unreachable.insert(url.clone(), why);
                    continue;
                }
                Verdict::Unknown(why) => {
                    if let Some(e) = health.nodes.get_mut(&url) {
                        e.sample = Some(format!("{what}: not verified: {why}"));
                    }
                    continue;
                }
                v => v,
            };
            self.metrics()
                .pin_samples
                .get_or_create(&ResultLabel { result: if verdict == Verdict::Good { "ok" } else { "failed" } })
                .inc();
            let Verdict::Bad(why) = verdict else {
                if let Some(e) = health.nodes.get_mut(&url) {
                    e.sample = Some(format!("{what}: verified"));
                }
                self.pin_health().with(|s| {
                    if s.lost_since.get(&(url.clone(), file.blake3)).is_some_and(|l| l.cause == Cause::Sample) {
                        s.lost_since.remove(&(url.clone(), file.blake3));
                    }
                });
                continue;
            };
            tracing::warn!(release = r.key, node = %url, sample = %what, why, "pin health: a block sample failed");
            let (loss, first) = self.loss_seen(&url, file.blake3, Cause::Sample);
            if loss.readd_failed {
                // Re-added once already and still damaged: not re-added every round.
                if let Some(e) = health.nodes.get_mut(&url) {
                    e.sample = Some(format!(
                        "{what}: {why}; still damaged after a re-add: remove the damaged block on the node"
                    ));
                    e.sample_failed = true;
                }
                failed.push((url, file.blake3));
                continue;
            }
            let sources: Vec<String> =
                healthy_on.get(&file.blake3).into_iter().flatten().filter(|n| **n != url).cloned().collect();
            let mut outcome = self.repair(nodes, timeout, &sources, &url, file.blake3, blob, unreachable).await;
            if let Ok(src) = &outcome {
                // Re-adding restores missing blocks, not a damaged one the node keeps: check again.
                outcome = match self.sample_chunk(node, &spec, index, timeout).await {
                    Verdict::Good => Ok(src.clone()),
                    Verdict::Bad(again) => {
                        self.pin_health().with(|s| {
                            if let Some(l) = s.lost_since.get_mut(&(url.clone(), file.blake3)) {
                                l.readd_failed = true;
                            }
                        });
                        Err(format!(
                            "re-added from {src}, but {url} still fails the sample ({again}): its block store \
                             holds a damaged block, which has to be removed there"
                        ))
                    }
                    Verdict::Unknown(again) | Verdict::Unreachable(again) => {
                        Err(format!("re-added from {src}, but the re-check could not be made: {again}"))
                    }
                };
            }
            let outcome = outcome.map_err(|e| format!("{what}: {why}; {e}"));
            let repaired =
                self.record_repair(r.key, r.release_id, &url, file.blake3, loss, first, outcome, health).await;
            if let Some(e) = health.nodes.get_mut(&url) {
                e.sample = Some(format!("{what}: {why}{}", if repaired { "; repaired" } else { "" }));
                e.sample_failed = !repaired;
            }
            if !repaired {
                failed.push((url, file.blake3));
            }
        }
        failed
    }

    /// Reads chunk `index` of `spec` from `node` and verifies it.
    async fn sample_chunk(&self, node: &NodeClient, spec: &FileSpec, index: u64, timeout: Duration) -> Verdict {
        let Some(cid) = spec.cid.as_deref() else { return Verdict::Unknown("no CID placed".into()) };
        let range = spec.layout.chunk_range(index);
        let want = range.end - range.start;
        // Not answering at all is the node's absence; answering and then
        // failing (an error status, a body cut short) is the copy's fault.
        let resp = match tokio::time::timeout(timeout, node.cat(cid, range.start, want, timeout)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e @ NodeError::Http { .. })) => return Verdict::Unreachable(e.to_string()),
            Ok(Err(e)) => return Verdict::Bad(format!("unreadable: {e}")),
            Err(_) => return Verdict::Bad(format!("unreadable: no answer within {timeout:?}")),
        };
        let data = match tokio::time::timeout(timeout, resp.bytes()).await {
            Ok(Ok(d)) if d.len() as u64 == want => d,
            Ok(Ok(d)) => return Verdict::Bad(format!("cut short: {} of {want} bytes", d.len())),
            Ok(Err(e)) => return Verdict::Bad(format!("cut short: {e}")),
            Err(_) => return Verdict::Bad(format!("stalled: the chunk did not arrive within {timeout:?}")),
        };
        match self.fetcher().verify_chunk(spec, index, &data).await {
            Ok(true) => Verdict::Good,
            Ok(false) => Verdict::Bad("damaged: the bytes do not match the chunk table".into()),
            Err(e) => Verdict::Unknown(format!("the chunk table could not be had: {e}")),
        }
    }

    /// The loss of `hash` on `node`: when first seen (now, if this is the
    /// first time; a loss of another cause starts over), and whether it is
    /// the first time.
    fn loss_seen(&self, node: &str, hash: Blake3, cause: Cause) -> (Loss, bool) {
        let fresh = |seen| Loss { since: Instant::now(), seen, cause, readd_failed: false };
        self.pin_health()
            .with(|s| {
                let round = s.round;
                match s.lost_since.get_mut(&(node.to_string(), hash)) {
                    Some(l) if l.cause == cause => {
                        l.seen = round;
                        (*l, false)
                    }
                    _ => {
                        let l = fresh(round);
                        s.lost_since.insert((node.to_string(), hash), l);
                        (l, true)
                    }
                }
            })
            .unwrap_or_else(|| (fresh(0), true))
    }

    /// Reads the blob from the first healthy node whose bytes verify and pins
    /// it on `to`. A target that fails the add for a reason that is not the
    /// blob's (unreachable, 5xx, stalled) is marked unreachable for the round.
    #[allow(clippy::too_many_arguments)]
    async fn repair(
        &self,
        nodes: &Nodes,
        timeout: Duration,
        sources: &[String],
        to: &str,
        hash: Blake3,
        blob: &BlobPlacement,
        unreachable: &mut BTreeMap<String, String>,
    ) -> Result<String, String> {
        let Some(target) = nodes.get(to) else { return Err(format!("{to} is not a configured node")) };
        let mut why = Vec::new();
        for src in sources {
            let Some(node) = nodes.get(src) else { continue };
            match fetch_verified(node, &blob.cid, blob.size, hash, timeout).await {
                Ok(file) => {
                    return match target.add_file(file.path(), &hash.to_hex(), &|_| {}).await {
                        Ok((cid, _)) if cid == blob.cid => Ok(src.clone()),
                        Ok((cid, _)) => Err(format!("{to} added it as {cid}, not {}", blob.cid)),
                        Err(e) => {
                            if e.retryable() {
                                unreachable.insert(to.to_string(), e.to_string());
                            }
                            Err(format!("adding to {to}: {e}"))
                        }
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
        loss: Loss,
        first: bool,
        outcome: Result<String, String>,
        health: &mut ReleaseHealth,
    ) -> bool {
        let seconds = loss.since.elapsed().as_secs_f64();
        let cause = loss.cause.label();
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
            .with("cause", cause)
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

/// What a block sample needs of a release.
struct Sample<'a> {
    key: &'a str,
    release_id: Blake3,
    files: &'a [FileEntry],
    placement: &'a Placement,
}

/// What reading back one chunk found.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Good,
    /// Damaged, short or unreadable while the node answers.
    Bad(String),
    /// The node did not answer at all.
    Unreachable(String),
    /// Nothing could be concluded (the chunk table was not to be had).
    Unknown(String),
}

fn random() -> u64 {
    let mut b = [0u8; 8];
    // A failed draw samples chunk 0 of the first file: still a sample.
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

fn pick<'a, T>(items: &[&'a T]) -> Option<&'a T> {
    if items.is_empty() { None } else { Some(items[(random() % items.len() as u64) as usize]) }
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
