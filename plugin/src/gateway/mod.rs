//! The assembled gateway: configuration, registry, origins, fetcher and
//! metrics, with start-up loading and live reload. The HTTP layer and the
//! embedded plugin both drive the engine through [`Gateway`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::{Config, ConfigError};
use crate::fetch::Fetcher;
use crate::metrics::{Metrics, ReasonLabel};
use crate::origin;
use crate::registry::{self, Registry};
use crate::release::keys::PublicKey;
use crate::tenant::Tenants;
use crate::tier::HotTier;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("origin: {0}")]
    Origin(#[from] origin::OriginError),
    #[error("trusted key {spec}: {why}")]
    Trust { spec: String, why: String },
}

pub struct Gateway {
    config: ArcSwap<Config>,
    tenants: ArcSwap<Tenants>,
    registry: Registry,
    fetcher: Arc<Fetcher>,
    metrics: Arc<Metrics>,
    origin_ok: AtomicBool,
    loaded: AtomicBool,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

fn trusted_keys(cfg: &Config) -> Result<Vec<PublicKey>, GatewayError> {
    cfg.trust
        .keys
        .iter()
        .map(|k| PublicKey::load(k).map_err(|e| GatewayError::Trust { spec: k.clone(), why: e.to_string() }))
        .collect()
}

fn build_tenants(cfg: &Config) -> Result<Tenants, GatewayError> {
    Tenants::build(&cfg.tenants, &cfg.access)
        .map_err(|e| GatewayError::Config(ConfigError::Invalid { key: "tenants".into(), why: e.to_string() }))
}

impl Gateway {
    /// Builds the engine and loads the configured releases. Releases that
    /// fail to load are refused with a log line saying why; the rest serve.
    pub async fn start(cfg: Config) -> Result<Arc<Self>, GatewayError> {
        cfg.validate()?;
        let metrics = Arc::new(Metrics::new());
        let origins = origin::build(&cfg.origins, &cfg.fetch)?;
        let fetcher = Fetcher::new(
            origins,
            HotTier::new(cfg.hot_tier.capacity.0),
            cfg.fetch.clone(),
            cfg.metadata.cache_capacity.0,
            cfg.metadata.max_concurrent_fetches,
            metrics.clone(),
        );
        let tenants = build_tenants(&cfg)?;
        let gw = Arc::new(Self {
            config: ArcSwap::from_pointee(cfg.clone()),
            tenants: ArcSwap::from_pointee(tenants),
            registry: Registry::default(),
            fetcher,
            metrics,
            origin_ok: AtomicBool::new(false),
            loaded: AtomicBool::new(false),
        });
        gw.load_releases(&cfg).await?;
        gw.probe_origins().await;
        Ok(gw)
    }

    async fn load_releases(&self, cfg: &Config) -> Result<(), GatewayError> {
        let trusted = trusted_keys(cfg)?;
        let origins = self.fetcher.origins();
        let (catalog, errors) = registry::load(&cfg.releases, &trusted, &origins).await;
        for e in &errors {
            tracing::error!(error = %e, "release refused");
        }
        for (name, versions) in catalog.names() {
            for (v, r) in versions {
                tracing::info!(release = %format!("{name}@{v}"), id = %r.signed.id, files = r.signed.manifest.files.len(), "serving release");
            }
        }
        self.metrics.releases.set(catalog.release_count() as i64);
        self.registry.replace(catalog);
        self.loaded.store(true, Ordering::Release);
        Ok(())
    }

    /// Applies a new configuration: releases, trusted keys and origins. A
    /// config that does not validate is refused and the old one kept.
    /// Listener settings (address, TLS, connection limits) need a restart.
    pub async fn reload(&self, cfg: Config) -> Result<(), GatewayError> {
        let result = async {
            cfg.validate()?;
            trusted_keys(&cfg)?;
            // Rate and bandwidth limiters start afresh with the new tenant table.
            let tenants = build_tenants(&cfg)?;
            let origins = origin::build(&cfg.origins, &cfg.fetch)?;
            self.fetcher.set_origins(origins);
            self.load_releases(&cfg).await?;
            self.tenants.store(Arc::new(tenants));
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

    pub fn ready(&self) -> bool {
        self.loaded.load(Ordering::Acquire) && self.origin_ok.load(Ordering::Acquire)
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
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
