use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use futures_util::FutureExt;
use shardgate::config::{ByteSize, Config};
use shardgate::engine::Engine;
use shardgate::error::{Classify, ErrorClass};
use shardgate::gateway::Gateway;

use super::{ConfigError, parse_size};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Config file (TOML).
    #[arg(long, short, default_value = "conf/shardgate.toml")]
    config: PathBuf,
    /// Override `server.listen`.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Override `hot_tier.capacity`.
    #[arg(long, value_parser = parse_size)]
    hot_tier_capacity: Option<u64>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

pub fn load_config(a: &Args) -> anyhow::Result<Config> {
    let mut cfg = Config::load(&a.config).map_err(|e| ConfigError(e.to_string()))?;
    apply_overrides(&mut cfg, a);
    cfg.validate().map_err(|e| ConfigError(e.to_string()))?;
    Ok(cfg)
}

fn apply_overrides(cfg: &mut Config, a: &Args) {
    if let Some(l) = a.listen {
        cfg.server.listen = l;
    }
    if let Some(c) = a.hot_tier_capacity {
        cfg.hot_tier.capacity = ByteSize(c);
    }
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let cfg = load_config(&a)?;
    let rt = runtime(a.threads)?;
    rt.block_on(async move {
        let reload = {
            let path = a.config.clone();
            move || {
                let mut cfg = Config::load(&path)?;
                apply_overrides(&mut cfg, &a);
                Ok::<_, shardgate::config::ConfigError>(cfg)
            }
        };
        run_gateway(cfg, reload, None).await
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(t) = threads {
        b.worker_threads(t.max(1));
    }
    Ok(b.enable_all().thread_name("shardgate").build()?)
}

/// Starts the engine (the same one the embedded library runs) and serves
/// until SIGTERM or SIGINT; SIGHUP reloads. `on_ready` gets the bound address
/// once the listener is up.
pub async fn run_gateway(
    cfg: Config,
    reload: impl Fn() -> Result<Config, shardgate::config::ConfigError> + Send + Sync + 'static,
    on_ready: Option<Box<dyn FnOnce(SocketAddr) + Send>>,
) -> anyhow::Result<()> {
    // Signal handlers first: a signal that arrives before readiness must not
    // take the default action (exit) and skip the final usage commit.
    let shutdown = shutdown_signal();
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    // Only a config error exits 64; a failing ledger, registry or disk exits 1.
    let engine = Engine::start(cfg).await.map_err(|e| match e.class() {
        ErrorClass::Config => anyhow::Error::new(ConfigError(e.to_string())),
        _ => anyhow::Error::new(e),
    })?;
    match on_ready {
        Some(f) => f(engine.addr()),
        None => println!("shardgate listening on {}://{}", engine.scheme(), engine.addr()),
    }
    if let Some((gaddr, tls)) = engine.grpc() {
        println!("shardgate usage API listening on {}://{gaddr}", if tls { "https" } else { "http" });
    }
    if let Some(saddr) = engine.s3_addr() {
        println!("shardgate S3 API listening on {}://{saddr}", engine.scheme());
    }
    spawn_reloader(engine.gateway().clone(), hangups, reload);
    shutdown.await;
    engine.stop().await;
    Ok(())
}

fn spawn_reloader(
    gw: Arc<Gateway>,
    hangups: std::io::Result<tokio::signal::unix::Signal>,
    reload: impl Fn() -> Result<Config, shardgate::config::ConfigError> + Send + Sync + 'static,
) {
    tokio::spawn(async move {
        let Ok(mut hup) = hangups else {
            tracing::warn!("cannot listen for SIGHUP; reload by restarting");
            return;
        };
        while hup.recv().await.is_some() {
            // Validation refuses every bad value; should anything still
            // panic, this reload is refused and the next SIGHUP is still heard.
            let attempt = async {
                match reload() {
                    Ok(cfg) => gw.reload(cfg).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            };
            let outcome = std::panic::AssertUnwindSafe(attempt)
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err("the reload panicked (a bug); nothing was applied".into()));
            match outcome {
                Ok(()) => tracing::info!("config reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "config reload refused; keeping the running config")
                }
            }
        }
    });
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is
/// called, not when it is first polled, so call it before announcing readiness:
/// a signal that arrives before then must not take the default action (exit).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
            match s {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = wait(term) => tracing::info!("SIGTERM: draining"),
            _ = wait(int) => tracing::info!("SIGINT: draining"),
        }
    }
}
