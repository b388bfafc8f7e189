//! The assembled gateway: configuration, registry, origins, fetcher and
//! metrics, with start-up loading and live reload. The HTTP layer and the
//! embedded plugin both drive the engine through [`Gateway`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::watch;

use crate::config::{Config, ConfigError};
use crate::fetch::Fetcher;
use crate::lifecycle::{Store, StoreError};
use crate::metrics::{Metrics, ReasonLabel};
use crate::origin;
use crate::pricing::Pricing;
use crate::registry::{self, Catalog, Registry};
use crate::release::keys::PublicKey;
use crate::tenant::{Denied, Tenant, Tenants};
use crate::tier::{DiskTier, HotTier, Tiers};
use crate::usage::{Ledger, LedgerError, Meter, unix_now};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("origin: {0}")]
    Origin(#[from] origin::OriginError),
    #[error("trusted key {spec}: {why}")]
    Trust { spec: String, why: String },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Registry(#[from] StoreError),
    #[error("{0}")]
    DiskTier(String),
    #[error("usage.pricing: {0}")]
    Pricing(#[from] crate::pricing::PricingError),
    /// The tenant table does not build (a config error).
    #[error(transparent)]
    Tenants(#[from] crate::tenant::TenantError),
    /// A reload would change keys only a restart applies; nothing was applied.
    #[error("{} need{} a restart; the reload was refused and nothing was applied", .0.join(", "), if .0.len() == 1 { "s" } else { "" })]
    RestartOnly(Vec<String>),
    /// `[keys]` or `[policy]` does not load (a config error naming the key).
    #[error("{key}: {why}")]
    Security { key: String, why: String },
}

/// What the gateway decrypts with and checks releases against: `[keys]` and `[policy]`.
#[derive(Debug, Default)]
pub struct Security {
    pub policy: Option<crate::policy::Policy>,
    pub unwrappers: crate::crypt::envelope::Unwrappers,
}

fn load_security(cfg: &Config) -> Result<Security, GatewayError> {
    let policy = match &cfg.policy.path {
        None => None,
        Some(p) => Some(
            crate::policy::Policy::load(p)
                .map_err(|e| GatewayError::Security { key: "policy.path".into(), why: e.to_string() })?,
        ),
    };
    let mut age = Vec::new();
    for (i, path) in cfg.keys.age_identities.iter().enumerate() {
        let ids = crate::crypt::envelope::read_identities(path)
            .map_err(|e| GatewayError::Security { key: format!("keys.age_identities[{i}]"), why: e.to_string() })?;
        age.extend(ids);
    }
    if let Some(p) = &cfg.keys.pkcs11
        && !p.module.is_file()
    {
        return Err(GatewayError::Security {
            key: "keys.pkcs11.module".into(),
            why: format!("{} is not a file", p.module.display()),
        });
    }
    Ok(Security { policy, unwrappers: crate::crypt::envelope::Unwrappers { age, pkcs11: cfg.keys.pkcs11.clone() } })
}

pub struct Gateway {
    config: ArcSwap<Config>,
    /// `usage.pricing`, read at start and on reload.
    pricing: ArcSwapOption<Pricing>,
    tenants: ArcSwap<Tenants>,
    /// Tokens that may read the finance summary: finance and admin tokens.
    report_tokens: ArcSwap<crate::tenant::TokenSet>,
    /// Admin tokens, for operator work over HTTP (pre-warm through a balancer).
    admin_tokens: ArcSwap<crate::tenant::TokenSet>,
    /// `reports.peers` and their token, read at start and on reload.
    peers: ArcSwapOption<crate::reports::fleet::Peers>,
    registry: Registry,
    fetcher: Arc<Fetcher>,
    metrics: Arc<Metrics>,
    origin_ok: AtomicBool,
    loaded: AtomicBool,
    /// Set on SIGTERM (before draining): `/readyz` answers 503 from then on.
    draining: AtomicBool,
    /// Configured or registered releases that could not be loaded, and why;
    /// retried in the background until they load.
    unloaded: ArcSwap<Vec<registry::Unloaded>>,
    meter: Arc<Meter>,
    ledger: Arc<Ledger>,
    /// Tells the ledger committer to make its final commit and stop.
    committer: Mutex<Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>>,
    /// Releases registered over the admin API, tags and states.
    store: Arc<Store>,
    /// Admin changes are made one at a time (read catalog, write store, swap catalog).
    admin: tokio::sync::Mutex<()>,
    /// `[keys]` and `[policy]`, read at start and on reload.
    security: ArcSwap<Security>,
    /// S3 access keys (`s3.credentials`), read at start and on reload.
    s3_keys: ArcSwap<crate::s3::keys::S3Keys>,
    /// What the pin-health task last saw (`release status`).
    pin_health: crate::pinhealth::PinHealth,
    clients: crate::tenant::clients::ClientTally,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

pub(crate) fn trusted_keys(cfg: &Config) -> Result<Vec<PublicKey>, GatewayError> {
    cfg.trust
        .keys
        .iter()
        .map(|k| PublicKey::load(k).map_err(|e| GatewayError::Trust { spec: k.clone(), why: e.to_string() }))
        .collect()
}

fn report_tokens(cfg: &Config) -> Result<crate::tenant::TokenSet, GatewayError> {
    let admin = cfg.grpc.as_ref().map(|g| g.admin_tokens.as_slice()).unwrap_or(&[]);
    crate::tenant::TokenSet::parse([
        ("reports.finance_tokens", cfg.reports.finance_tokens.as_slice()),
        ("grpc.admin_tokens", admin),
    ])
    .map_err(|(key, why)| GatewayError::Config(ConfigError::Invalid { key, why }))
}

fn admin_tokens(cfg: &Config) -> Result<crate::tenant::TokenSet, GatewayError> {
    let admin = cfg.grpc.as_ref().map(|g| g.admin_tokens.as_slice()).unwrap_or(&[]);
    crate::tenant::TokenSet::parse([("grpc.admin_tokens", admin)])
        .map_err(|(key, why)| GatewayError::Config(ConfigError::Invalid { key, why }))
}

fn build_tenants(cfg: &Config) -> Result<Tenants, GatewayError> {
    Ok(Tenants::build(&cfg.tenants, &cfg.access)?)
}

/// `reports.peers`, with the token read from `reports.peer_token_file`.
fn load_peers(cfg: &Config) -> Result<Option<Arc<crate::reports::fleet::Peers>>, GatewayError> {
    crate::reports::fleet::Peers::from_config(&cfg.reports).map(|p| p.map(Arc::new)).map_err(|e| {
        GatewayError::Config(ConfigError::Invalid { key: "reports.peer_token_file".into(), why: e.to_string() })
    })
}

/// The S3 access keys file, if configured; every key must name a configured tenant.
fn load_s3_keys(cfg: &Config) -> Result<crate::s3::keys::S3Keys, GatewayError> {
    let Some(path) = &cfg.s3.credentials else { return Ok(Default::default()) };
    crate::s3::keys::S3Keys::load(path, |t| cfg.tenants.iter().any(|c| c.id == t))
        .map_err(|e| GatewayError::Config(ConfigError::Invalid { key: "s3.credentials".into(), why: e.to_string() }))
}

impl crate::error::Classify for GatewayError {
    fn class(&self) -> crate::error::ErrorClass {
        use crate::error::ErrorClass;
        match self {
            // Origins are only built from config here (a URL that does not parse).
            GatewayError::Config(_)
            | GatewayError::Origin(_)
            | GatewayError::Trust { .. }
            | GatewayError::Pricing(_)
            | GatewayError::Tenants(_)
            | GatewayError::Security { .. }
            | GatewayError::RestartOnly(_) => ErrorClass::Config,
            GatewayError::Ledger(e) => e.class(),
            GatewayError::Registry(e) => e.class(),
            GatewayError::DiskTier(_) => ErrorClass::Storage,
        }
    }
}

/// Reads `usage.pricing`, if set.
async fn load_pricing(cfg: &Config) -> Result<Option<Arc<Pricing>>, GatewayError> {
    let Some(path) = cfg.usage.pricing.clone() else { return Ok(None) };
    let shown = path.display().to_string();
    let p = tokio::task::spawn_blocking(move || Pricing::load(&path)).await.map_err(|e| {
        crate::pricing::PricingError::Read { path: shown, source: std::io::Error::other(e.to_string()) }
    })??;
    Ok(Some(Arc::new(p)))
}

/// Opens the usage ledger and a meter that resumes where it left off.
async fn open_usage(cfg: &Config) -> Result<(Arc<Ledger>, Arc<Meter>), GatewayError> {
    let path = cfg.usage.ledger.clone();
    let instance = cfg.usage.instance_id.clone();
    if path.is_none() {
        tracing::warn!("usage.ledger is not set: usage is kept in memory and lost on exit");
    }
    let (ledger, floor, month) = tokio::task::spawn_blocking(move || {
        let ledger = Ledger::open(path.as_deref(), instance.as_deref())?;
        let floor = ledger.floor()?;
        // After a shutdown in a month's last minute, counting resumes in the next month.
        let month = ledger.month_bytes(unix_now().max(floor))?;
        Ok::<_, LedgerError>((ledger, floor, month))
    })
    .await
    .map_err(|e| LedgerError::Storage(e.to_string()))??;
    let meter = Arc::new(Meter::default());
    meter.resume(floor, month);
    tracing::info!(instance = ledger.instance(), "usage ledger open");
    Ok((Arc::new(ledger), meter))
}

impl Gateway {
    /// Builds the engine and loads the configured releases. Releases that
    /// fail to load are refused with a log line saying why; the rest serve.
    pub async fn start(cfg: Config) -> Result<Arc<Self>, GatewayError> {
        cfg.validate()?;
        let metrics = Arc::new(Metrics::new());
        metrics.verification.set(i64::from(cfg.fetch.verify));
        if !cfg.fetch.verify {
            tracing::warn!(
                "fetch.verify = false: chunks from origins are NOT verified and unverified bytes may be served; \
                 this setting is for benchmarks only"
            );
        }
        let (ledger, meter) = open_usage(&cfg).await?;
        let path = cfg.registry.path.clone();
        if path.is_none() {
            tracing::warn!("registry.path is not set: releases registered over the admin API are lost on exit");
        }
        let store = tokio::task::spawn_blocking(move || Store::open(path.as_deref()))
            .await
            .map_err(|e| StoreError::Storage(e.to_string()))??;
        let origins = origin::build(&cfg.origins, &cfg.fetch)?;
        let disk = match cfg.disk_tier.path.clone() {
            Some(path) => {
                let (capacity, queue) = (cfg.disk_tier.capacity.0, cfg.disk_tier.write_queue.0);
                let counters = metrics.disk.clone();
                let tier = tokio::task::spawn_blocking(move || DiskTier::open(&path, capacity, queue, counters))
                    .await
                    .map_err(|e| GatewayError::DiskTier(e.to_string()))?
                    .map_err(|e| GatewayError::DiskTier(e.to_string()))?;
                Some(tier)
            }
            None => None,
        };
        let hot = match &disk {
            Some(_) => HotTier::with_disk_admission(cfg.hot_tier.capacity.0),
            None => HotTier::new(cfg.hot_tier.capacity.0),
        };
        let fetcher = Fetcher::new(
            origins,
            Tiers { hot, disk, plain: crate::tier::PlainTier::new(cfg.hot_tier.plaintext_capacity.0) },
            cfg.fetch.clone(),
            cfg.metadata.cache_capacity.0,
            cfg.metadata.max_concurrent_fetches,
            metrics.clone(),
            meter.clone(),
        );
        let tenants = build_tenants(&cfg)?;
        let pricing = load_pricing(&cfg).await?;
        let security = load_security(&cfg)?;
        let s3_keys = load_s3_keys(&cfg)?;
        let peers = load_peers(&cfg)?;
        let gw = Arc::new(Self {
            config: ArcSwap::from_pointee(cfg.clone()),
            pricing: ArcSwapOption::new(pricing),
            tenants: ArcSwap::from_pointee(tenants),
            report_tokens: ArcSwap::from_pointee(report_tokens(&cfg)?),
            admin_tokens: ArcSwap::from_pointee(admin_tokens(&cfg)?),
            peers: ArcSwapOption::new(peers),
            registry: Registry::default(),
            fetcher,
            metrics,
            origin_ok: AtomicBool::new(false),
            loaded: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            unloaded: ArcSwap::from_pointee(Vec::new()),
            meter,
            ledger,
            committer: Mutex::new(None),
            store: Arc::new(store),
            admin: tokio::sync::Mutex::new(()),
            security: ArcSwap::from_pointee(security),
            s3_keys: ArcSwap::from_pointee(s3_keys),
            pin_health: Default::default(),
            clients: Default::default(),
        });
        gw.spawn_committer(cfg.usage.commit_interval, cfg.usage.retention);
        gw.load_releases(&cfg).await?;
        gw.probe_origins().await;
        Ok(gw)
    }

    async fn load_releases(&self, cfg: &Config) -> Result<(), GatewayError> {
        // Admin changes read the catalog, write the store and swap: a reload
        // in between would undo one or the other.
        let _admin = self.admin.lock().await;
        self.load_releases_locked(cfg).await
    }

    /// [`Gateway::load_releases`] with the admin lock already held.
    async fn load_releases_locked(&self, cfg: &Config) -> Result<(), GatewayError> {
        let trusted = trusted_keys(cfg)?;
        let origins = self.fetcher.origins();
        let (mut catalog, errors) = registry::load(&cfg.releases, &trusted, &origins).await;
        for e in &errors {
            if e.retry {
                tracing::error!(error = %e, "release not loaded; retried in the background");
            } else {
                tracing::error!(error = %e, "release refused");
            }
        }
        let mut unloaded = errors;
        let store = self.store.clone();
        let (registered, lifecycle) =
            tokio::task::spawn_blocking(move || Ok::<_, StoreError>((store.registered()?, store.lifecycle()?)))
                .await
                .map_err(|e| StoreError::Storage(e.to_string()))??;
        for r in registered {
            let loaded = registry::release_from_bytes(&r.manifest, r.placement.as_deref(), &trusted);
            match loaded.and_then(|rel| {
                let (name, version) = (rel.name().to_string(), rel.version().clone());
                catalog.insert(rel)?;
                catalog.mark_registered(&name, &version);
                Ok(())
            }) {
                Ok(()) => {}
                Err(e) => {
                    tracing::error!(error = %e, "registered release refused");
                    unloaded.push(registry::Unloaded { error: e.to_string(), retry: false, source: None });
                }
            }
        }
        catalog.set_lifecycle(lifecycle);
        self.secure(&mut catalog).await?;
        for (name, versions) in catalog.names() {
            for (v, r) in versions {
                tracing::info!(release = %format!("{name}@{v}"), id = %r.signed.id, files = r.signed.manifest.files.len(), "serving release");
            }
        }
        self.metrics.releases.set(catalog.release_count() as i64);
        self.metrics.releases_unloaded.set(unloaded.len() as i64);
        self.unloaded.store(Arc::new(unloaded));
        self.registry.replace(catalog);
        self.loaded.store(true, Ordering::Release);
        Ok(())
    }

    /// Tries again the configured releases that are waiting on their
    /// origins, adding those that load now to the catalog in force. Releases
    /// already served are left as they are (a retry never drops one because
    /// an origin is still unwell).
    /// Returns how many are still waiting.
    async fn retry_unloaded(&self) -> usize {
        let _admin = self.admin.lock().await;
        let cfg = self.config();
        let Ok(trusted) = trusted_keys(&cfg) else { return self.unloaded().iter().filter(|u| u.retry).count() };
        let origins = self.fetcher.origins();
        let mut next = (*self.registry.snapshot()).clone();
        let mut still = Vec::new();
        let mut loaded = 0;
        for u in self.unloaded().iter() {
            let Some(src) = u.source.as_ref().filter(|_| u.retry) else {
                still.push(u.clone());
                continue;
            };
            match registry::load_source(src, &trusted, &origins).await {
                Ok(release) => {
                    let what = format!("{}@{}", release.name(), release.version());
                    match next.insert(release) {
                        Ok(()) => {
                            tracing::info!(release = %what, "release loaded on retry");
                            loaded += 1;
                        }
                        Err(e) => still.push(registry::Unloaded { error: e.to_string(), retry: false, source: None }),
                    }
                }
                Err(u) => still.push(u),
            }
        }
        if loaded > 0 {
            if let Err(e) = self.secure(&mut next).await {
                tracing::error!(error = %e, "releases loaded on retry wait: the registry could not be read");
                return self.unloaded().iter().filter(|u| u.retry).count();
            }
            self.metrics.releases.set(next.release_count() as i64);
            self.registry.replace(next);
        }
        self.metrics.releases_unloaded.set(still.len() as i64);
        let waiting = still.iter().filter(|u| u.retry).count();
        self.unloaded.store(Arc::new(still));
        waiting
    }

    /// Releases that could not be loaded, with why (empty when all are served).
    pub fn unloaded(&self) -> Arc<Vec<registry::Unloaded>> {
        self.unloaded.load_full()
    }

    /// Retries loading while any release is not loaded: after 1 s, then
    /// backing off to every 10 s, so a release whose origins heal is served
    /// within seconds without a SIGHUP. Stops when the gateway is dropped.
    pub fn spawn_release_retry(self: &Arc<Self>) {
        const FIRST: Duration = Duration::from_secs(1);
        const MOST: Duration = Duration::from_secs(10);
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut wait = FIRST;
            loop {
                tokio::time::sleep(wait).await;
                let Some(gw) = weak.upgrade() else { break };
                if !gw.unloaded().iter().any(|u| u.retry) {
                    wait = FIRST;
                    continue;
                }
                let waiting = gw.retry_unloaded().await;
                wait = if waiting == 0 { FIRST } else { (wait * 2).min(MOST) };
            }
        });
    }

    /// Applies a new configuration: releases, trusted keys, origins, tenants,
    /// pricing and reports. A config that does not validate, or that changes
    /// a restart-only key ([`Config::restart_only_changes`]: listeners,
    /// `fetch.verify` and the fetcher's shape, tiers, stores), is refused
    /// whole and the old one kept.
    pub async fn reload(&self, cfg: Config) -> Result<(), GatewayError> {
        let result = async {
            cfg.validate()?;
            let changed = self.config().restart_only_changes(&cfg);
            if !changed.is_empty() {
                return Err(GatewayError::RestartOnly(changed));
            }
            trusted_keys(&cfg)?;
            // Rate and bandwidth limiters start afresh with the new tenant table.
            let tenants = build_tenants(&cfg)?;
            let origins = origin::build(&cfg.origins, &cfg.fetch)?;
            let pricing = load_pricing(&cfg).await?;
            let tokens = report_tokens(&cfg)?;
            let admins = admin_tokens(&cfg)?;
            let security = load_security(&cfg)?;
            let s3_keys = load_s3_keys(&cfg)?;
            let peers = load_peers(&cfg)?;
            // Under the admin lock throughout, so the background retry never
            // loads releases from a config this reload has replaced.
            let _admin = self.admin.lock().await;
            self.fetcher.set_origins(origins, cfg.fetch.outlier);
            self.pricing.store(pricing);
            let before = self.security.swap(Arc::new(security));
            if let Err(e) = self.load_releases_locked(&cfg).await {
                self.security.store(before);
                return Err(e);
            }
            self.tenants.store(Arc::new(tenants));
            self.report_tokens.store(Arc::new(tokens));
            self.admin_tokens.store(Arc::new(admins));
            self.s3_keys.store(Arc::new(s3_keys));
            self.peers.store(peers);
            self.config.store(Arc::new(cfg));
            Ok(())
        }
        .await;
        let outcome = if result.is_ok() { "ok" } else { "refused" };
        self.metrics.reloads.get_or_create(&ReasonLabel { reason: outcome }).inc();
        result
    }

    /// Checks whether any origin answers; `/readyz` reports the last result.
    pub async fn probe_origins(&self) -> bool {
        let origins = self.fetcher.origins();
        let mut ok = false;
        for o in origins.iter() {
            if o.probe().await {
                ok = true;
                break;
            }
        }
        self.origin_ok.store(ok, Ordering::Release);
        ok
    }

    /// Re-probes origins every `every` until the gateway is dropped.
    pub fn spawn_prober(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(gw) = weak.upgrade() else { break };
                gw.probe_origins().await;
            }
        });
    }

    /// Commits metered usage to the ledger every `every`, and compacts
    /// acknowledged records past `retention` once an hour.
    fn spawn_committer(self: &Arc<Self>, every: Duration, retention: Duration) {
        let (stop_tx, mut stop) = watch::channel(false);
        let meter = self.meter.clone();
        let ledger = self.ledger.clone();
        let metrics = self.metrics.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut compacted = Instant::now();
            loop {
                let last = tokio::select! {
                    _ = tick.tick() => false,
                    _ = stop.changed() => true,
                };
                let drained = if last { meter.drain_all() } else { meter.drain() };
                let l = ledger.clone();
                let compact = !last && compacted.elapsed() >= Duration::from_secs(3600);
                let outcome = tokio::task::spawn_blocking(move || {
                    let stats = l.commit(drained)?;
                    if compact {
                        let cutoff = unix_now() - retention.as_secs() as i64;
                        let n = l.compact(cutoff)?;
                        if n > 0 {
                            tracing::info!(records = n, "compacted acknowledged usage records");
                        }
                    }
                    Ok::<_, LedgerError>(stats)
                })
                .await;
                if compact {
                    compacted = Instant::now();
                }
                let ok = match outcome {
                    Ok(Ok(stats)) => {
                        if stats.closed > 0 {
                            tracing::debug!(closed = stats.closed, "usage windows closed");
                        }
                        true
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "usage commit failed; counts are kept and retried");
                        false
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "usage commit task failed");
                        false
                    }
                };
                metrics.usage_commits.get_or_create(&ReasonLabel { reason: if ok { "ok" } else { "error" } }).inc();
                if last {
                    break;
                }
            }
        });
        *self.committer.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((stop_tx, task));
    }

    /// Stops the engine's background work and makes the final usage commit,
    /// closing every window. Call after the listeners have drained.
    pub async fn shutdown(&self) {
        // Origin fetches still running (a span past the end of a response that
        // finished, a read-ahead winding down) record their egress first.
        self.fetcher.quiesce(Duration::from_secs(10)).await;
        // Queued disk-tier writes and deletions (takedown purges among them) are carried out.
        if let Some(d) = self.fetcher.disk() {
            let d = d.clone();
            let _ = tokio::task::spawn_blocking(move || d.flush(Duration::from_secs(10))).await;
        }
        let committer = self.committer.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some((stop, task)) = committer {
            let _ = stop.send(true);
            if let Err(e) = task.await {
                tracing::error!(error = %e, "usage committer failed at shutdown");
            }
        }
    }

    /// Refuses a tenant whose monthly quota is spent (before any origin work).
    pub fn check_quota(&self, tenant: &Tenant) -> Result<(), Denied> {
        let Some(quota) = tenant.monthly_quota else { return Ok(()) };
        // Bytes of responses still streaming count too: parallel downloads
        // cannot each pass this check against the same remaining quota.
        let (used, month_end) = self.meter.month_bytes_with_in_flight(&tenant.id);
        if used < quota {
            return Ok(());
        }
        let resets = jiff::Timestamp::from_second(month_end).map(|t| t.to_string()).unwrap_or_default();
        let wait = Duration::from_secs(month_end.saturating_sub(unix_now()).max(1) as u64);
        Err(Denied::QuotaExhausted { tenant: tenant.id.to_string(), used, quota, resets, retry_after: wait })
    }

    /// The pin-health task's view of each release.
    pub fn clients(&self) -> &crate::tenant::clients::ClientTally {
        &self.clients
    }

    pub fn pin_health(&self) -> &crate::pinhealth::PinHealth {
        &self.pin_health
    }

    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub(crate) fn admin_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.admin
    }

    pub fn meter(&self) -> &Arc<Meter> {
        &self.meter
    }

    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// Releases loaded (every one that may still load), and an origin answers.
    pub fn ready(&self) -> bool {
        self.not_ready_reasons().is_empty()
    }

    /// Why `/readyz` says not ready, one line each; empty when ready. A
    /// release still being retried (by CID) keeps the gateway unready; one
    /// refused for good (an untrusted or invalid manifest) is a warning
    /// ([`Gateway::readiness_warnings`]), or one bad manifest would take
    /// every replica out of a balancer's rotation.
    /// Marks the gateway as shutting down: unready at once, still serving.
    pub fn begin_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn not_ready_reasons(&self) -> Vec<String> {
        let mut why = Vec::new();
        if self.is_draining() {
            why.push("draining: shutting down, finishing the responses in flight".to_string());
        }
        if !self.loaded.load(Ordering::Acquire) {
            why.push("releases are still loading".to_string());
        }
        if !self.origin_ok.load(Ordering::Acquire) {
            why.push("no origin answers yet".to_string());
        }
        for u in self.unloaded().iter().filter(|u| u.retry) {
            why.push(format!("not loaded (retrying): {u}"));
        }
        why
    }

    /// What `/readyz` reports without being unready: releases refused for
    /// good, verification off.
    pub fn readiness_warnings(&self) -> Vec<String> {
        let mut w: Vec<String> = self.unloaded().iter().filter(|u| !u.retry).map(|u| format!("refused: {u}")).collect();
        let catalog = self.registry.snapshot();
        for r in catalog.all() {
            if let Some(why) = catalog.refusal(&r.signed.id) {
                w.push(format!("refused: {why}"));
            }
            if let Some(crate::crypt::access::KeyState::Unavailable(why)) =
                catalog.key_state(&r.signed.id).map(|k| &**k)
            {
                w.push(format!("not decryptable: {why}"));
            }
        }
        for o in self.fetcher.origins().iter() {
            let label = crate::metrics::OriginLabel { origin: o.name().to_string() };
            match self.metrics.origin_state.get_or_create(&label).get() {
                1 => w.push(format!("origin {} is ejected (failing; tried after the others)", o.name())),
                2 => w.push(format!("origin {} is being probed after an ejection", o.name())),
                _ => {}
            }
        }
        if !self.config().fetch.verify {
            w.push("fetch.verify = false: chunks from origins are not verified".into());
        }
        w
    }

    /// Checks every release of `catalog` against the policy and unwraps the
    /// data keys of encrypted ones with the gateway's keys, recording why
    /// where it cannot. Called before every swap that adds releases or
    /// changes keys; the caller holds the admin lock.
    pub(crate) async fn secure(&self, catalog: &mut Catalog) -> Result<(), StoreError> {
        let sec = self.security.load_full();
        let store = self.store.clone();
        let releases: Vec<Arc<registry::Release>> = catalog.all().cloned().collect();
        let (keys, refused) = tokio::task::spawn_blocking(move || {
            let envelopes = store.key_envelopes()?;
            let mut keys = crate::crypt::access::Keys::new();
            let mut refused = std::collections::HashMap::new();
            for r in releases {
                let (id, m) = (r.signed.id, &r.signed.manifest);
                if let Some(p) = &sec.policy
                    && let Err(e) = p.check(m)
                {
                    tracing::error!(error = %e, "release refused by policy");
                    refused.insert(id, e.to_string());
                }
                if crate::crypt::access::is_encrypted(&r.signed) {
                    let env = envelopes.get(&crate::lifecycle::key(&m.name, &m.version));
                    let state = crate::crypt::access::unlock(&r.signed, env.map(Vec::as_slice), &sec.unwrappers);
                    if let crate::crypt::access::KeyState::Unavailable(why) = &state {
                        tracing::warn!(release = %format!("{}@{}", m.name, m.version), why = %why, "encrypted release cannot be decrypted here");
                    }
                    keys.insert(id, Arc::new(state));
                }
            }
            Ok::<_, StoreError>((keys, refused))
        })
        .await
        .map_err(|e| StoreError::Storage(e.to_string()))??;
        // Plaintext decrypted with keys this catalog no longer holds is dropped.
        let live = keys.values().filter_map(|k| k.generation()).collect();
        self.fetcher.retain_plain_generations(live);
        catalog.set_security(keys, refused);
        Ok(())
    }

    /// The policy in force, if `policy.path` is set.
    pub fn security(&self) -> Arc<Security> {
        self.security.load_full()
    }

    /// The S3 access keys in force.
    pub fn s3_keys(&self) -> Arc<crate::s3::keys::S3Keys> {
        self.s3_keys.load_full()
    }

    /// The cost model, when `usage.pricing` is set.
    pub fn pricing(&self) -> Option<Arc<Pricing>> {
        self.pricing.load_full()
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The fleet's other members (`reports.peers`), if any.
    pub fn peers(&self) -> Option<Arc<crate::reports::fleet::Peers>> {
        self.peers.load_full()
    }

    /// The admin tokens (`grpc.admin_tokens`), as of the last reload.
    pub fn admin_tokens(&self) -> Arc<crate::tenant::TokenSet> {
        self.admin_tokens.load_full()
    }

    /// Finance and admin tokens, for `/v1/reports/summary`.
    pub fn report_tokens(&self) -> Arc<crate::tenant::TokenSet> {
        self.report_tokens.load_full()
    }

    pub fn tenants(&self) -> Arc<Tenants> {
        self.tenants.load_full()
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn fetcher(&self) -> &Arc<Fetcher> {
        &self.fetcher
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}
