use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shardgate::config::{ByteSize, Config};
use shardgate::gateway::Gateway;
use shardgate::http::server;

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

/// Starts the gateway and serves until SIGTERM or SIGINT; SIGHUP reloads.
/// `on_ready` gets the bound address once the listener is up.
pub async fn run_gateway(
    cfg: Config,
    reload: impl Fn() -> Result<Config, shardgate::config::ConfigError> + Send + Sync + 'static,
    on_ready: Option<Box<dyn FnOnce(SocketAddr) + Send>>,
) -> anyhow::Result<()> {
    let tls = cfg.server.tls.as_ref().map(server::tls_acceptor).transpose().map_err(|e| ConfigError(e.to_string()))?;
    let gw = Gateway::start(cfg.clone()).await.map_err(|e| ConfigError(e.to_string()))?;
    gw.spawn_prober(Duration::from_secs(5));
    let listener = server::bind(&cfg.server).await?;
    let addr = listener.local_addr().context("listener address")?;
    let shutdown = shutdown_signal();
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let grpc = match &cfg.grpc {
        None => None,
        Some(g) => {
            if let Some(t) = &g.tls {
                // Check the PEM files now, so a bad one stops start-up (exit 64).
                let check = shardgate::config::TlsConfig {
                    cert: t.cert.clone(),
                    key: t.key.clone(),
                    client_ca: None,
                    client_auth: Default::default(),
                };
                server::tls_acceptor(&check).map_err(|e| ConfigError(format!("grpc.tls: {e}")))?;
            }
            let l =
                tokio::net::TcpListener::bind(g.listen).await.with_context(|| format!("grpc.listen {}", g.listen))?;
            Some((l, g.clone()))
        }
    };
    tracing::info!(%addr, tls = tls.is_some(), "shardgate listening");
    match on_ready {
        Some(f) => f(addr),
        None => {
            let scheme = if tls.is_some() { "https" } else { "http" };
            println!("shardgate listening on {scheme}://{addr}");
        }
    }
    let (grpc_stop, grpc_stopped) = tokio::sync::oneshot::channel::<()>();
    let grpc_task = match grpc {
        None => None,
        Some((l, g)) => {
            let gaddr = l.local_addr().context("usage API address")?;
            let scheme = if g.tls.is_some() { "https" } else { "http" };
            tracing::info!(addr = %gaddr, "gRPC listening (usage and admin APIs)");
            println!("shardgate usage API listening on {scheme}://{gaddr}");
            let gw = gw.clone();
            Some(tokio::spawn(async move {
                let stop = async {
                    let _ = grpc_stopped.await;
                };
                if let Err(e) = shardgate::grpc::serve(gw, &g, l, stop).await {
                    tracing::error!(error = %e, "gRPC listener stopped");
                }
            }))
        }
    };
    spawn_reloader(gw.clone(), hangups, reload);
    server::serve(gw.clone(), listener, tls, cfg.server.clone(), shutdown).await;
    // Every response has ended (drained or cut); stop the gRPC listener (and
    // its pre-warms), then make the final usage commit, which closes every
    // window. Billing reads those windows after the restart, by cursor.
    let _ = grpc_stop.send(());
    if let Some(t) = grpc_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    gw.shutdown().await;
    tracing::info!("usage committed; stopped");
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
            let outcome = match reload() {
                Ok(cfg) => gw.reload(cfg).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
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
