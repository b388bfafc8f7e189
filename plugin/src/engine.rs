//! The running engine: a gateway with its HTTP listener and, when
//! configured, its gRPC listener. The sidecar (`shardgate serve`) and the
//! embedded library (the C ABI in [`crate::ffi`]) both run exactly this.
//!
//! Stop order: the HTTP listener drains (responses still running after
//! `server.shutdown_grace` are cut, so every response meter reports), then
//! the gRPC listener stops, then the gateway makes its final usage commit,
//! which closes every window.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::{Config, GrpcConfig, TlsConfig};
use crate::error::{Classify, ErrorClass};
use crate::gateway::{Gateway, GatewayError};
use crate::http::server;

/// Why the engine could not start. [`Classify`] says whose fault it is: only
/// a config error makes the sidecar exit 64 (a failing ledger or disk does not).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The gateway would not start (config, a store, the disk tier).
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    /// A TLS certificate or key is unusable.
    #[error("{what}: {source}")]
    Tls { what: &'static str, source: server::ServerError },
    /// A listener could not be bound.
    #[error("{what}: {detail}")]
    Bind { what: &'static str, detail: String },
}

impl Classify for EngineError {
    fn class(&self) -> ErrorClass {
        match self {
            EngineError::Gateway(e) => e.class(),
            EngineError::Tls { .. } => ErrorClass::Config,
            EngineError::Bind { .. } => ErrorClass::Network,
        }
    }
}

fn bind_err(what: &'static str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Bind { what, detail: e.to_string() }
}

/// A started engine. Dropping it without [`Engine::stop`] stops serving
/// abruptly (no drain, no final usage commit).
pub struct Engine {
    gw: Arc<Gateway>,
    addr: SocketAddr,
    tls: bool,
    grpc: Option<(SocketAddr, bool)>,
    s3: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("addr", &self.addr).field("grpc", &self.grpc).finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts the gateway, binds its listeners and serves in the background
    /// (on the current tokio runtime) until [`Engine::stop`].
    pub async fn start(cfg: Config) -> Result<Engine, EngineError> {
        let tls = cfg
            .server
            .tls
            .as_ref()
            .map(server::tls_acceptor)
            .transpose()
            .map_err(|source| EngineError::Tls { what: "server.tls", source })?;
        if let Some(t) = cfg.grpc.as_ref().and_then(|g| g.tls.as_ref()) {
            // Check the PEM files now, so a bad one stops start-up.
            let check = TlsConfig {
                cert: t.cert.clone(),
                key: t.key.clone(),
                client_ca: None,
                client_auth: Default::default(),
            };
            server::tls_acceptor(&check).map_err(|source| EngineError::Tls { what: "grpc.tls", source })?;
        }
        let gw = Gateway::start(cfg.clone()).await?;
        gw.spawn_prober(Duration::from_secs(5));
        gw.spawn_release_retry();
        gw.spawn_pin_health();
        let listener = server::bind(&cfg.server).await.map_err(|e| bind_err("server.listen", e))?;
        let addr = listener.local_addr().map_err(|e| bind_err("server.listen", e))?;
        let grpc = match &cfg.grpc {
            None => None,
            Some(g) => {
                let l = tokio::net::TcpListener::bind(g.listen)
                    .await
                    .map_err(|e| bind_err("grpc.listen", format!("{}: {e}", g.listen)))?;
                let gaddr = l.local_addr().map_err(|e| bind_err("grpc.listen", e))?;
                Some((l, gaddr, g.clone()))
            }
        };
        let s3 = match cfg.s3.listen {
            None => None,
            Some(a) => {
                let l =
                    tokio::net::TcpListener::bind(a).await.map_err(|e| bind_err("s3.listen", format!("{a}: {e}")))?;
                let saddr = l.local_addr().map_err(|e| bind_err("s3.listen", e))?;
                Some((l, saddr))
            }
        };
        let s3_addr = s3.as_ref().map(|(_, a)| *a);
        tracing::info!(%addr, tls = tls.is_some(), "shardgate listening");
        let grpc_info = grpc.as_ref().map(|(_, a, g)| (*a, g.tls.is_some()));
        let (stop, stopped) = oneshot::channel::<()>();
        let s3 = s3.map(|(l, _)| l);
        let task = tokio::spawn(run(gw.clone(), listener, tls, cfg.server.clone(), grpc, s3, stopped));
        Ok(Engine {
            gw,
            addr,
            tls: cfg.server.tls.is_some(),
            grpc: grpc_info,
            s3: s3_addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gw
    }

    /// The bound HTTP address (a configured port 0 is resolved).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// The bound gRPC address and whether it uses TLS.
    pub fn grpc(&self) -> Option<(SocketAddr, bool)> {
        self.grpc
    }

    /// The address of `s3.listen`, if configured (S3 at its root).
    pub fn s3_addr(&self) -> Option<SocketAddr> {
        self.s3
    }

    /// Drains and stops: unready at once (`/readyz` 503) while still serving
    /// for `server.drain_delay`, then HTTP drains, then gRPC, then the final
    /// usage commit.
    pub async fn stop(mut self) {
        self.gw.begin_draining();
        let delay = self.gw.config().server.drain_delay;
        if !delay.is_zero() {
            tracing::info!(?delay, "draining: unready, still serving until the balancer stops sending");
            tokio::time::sleep(delay).await;
        }
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take()
            && let Err(e) = t.await
        {
            tracing::error!(error = %e, "engine task failed");
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn run(
    gw: Arc<Gateway>,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    server_cfg: crate::config::ServerConfig,
    grpc: Option<(tokio::net::TcpListener, SocketAddr, GrpcConfig)>,
    s3: Option<tokio::net::TcpListener>,
    stopped: oneshot::Receiver<()>,
) {
    // The S3 listener stops accepting with the HTTP one and drains alongside it.
    let (s3_stop, s3_stopped) = tokio::sync::watch::channel(false);
    let s3_task = s3.map(|l| {
        let (gw, tls, cfg) = (gw.clone(), tls.clone(), server_cfg.clone());
        let mut rx = s3_stopped.clone();
        tokio::spawn(async move {
            server::serve(gw, l, tls, cfg, true, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await;
        })
    });
    let (grpc_stop, grpc_stopped) = oneshot::channel::<()>();
    let grpc_task = grpc.map(|(l, gaddr, g)| {
        tracing::info!(addr = %gaddr, "gRPC listening (usage and admin APIs)");
        let gw = gw.clone();
        tokio::spawn(async move {
            let stop = async {
                let _ = grpc_stopped.await;
            };
            if let Err(e) = crate::grpc::serve(gw, &g, l, stop).await {
                tracing::error!(error = %e, "gRPC listener stopped");
            }
        })
    });
    server::serve(gw.clone(), listener, tls, server_cfg, false, async {
        let _ = stopped.await;
        let _ = s3_stop.send(true);
    })
    .await;
    if let Some(t) = s3_task {
        let _ = t.await;
    }
    drop(s3_stopped);
    // Every response has ended (drained or cut); stop the gRPC listener (and
    // its pre-warms), then make the final usage commit, which closes every
    // window. Billing reads those windows after a restart, by cursor.
    let _ = grpc_stop.send(());
    if let Some(mut t) = grpc_task
        && tokio::time::timeout(Duration::from_secs(5), &mut t).await.is_err()
    {
        // Nothing may meter after the final commit.
        t.abort();
        let _ = t.await;
    }
    gw.shutdown().await;
    tracing::info!("usage committed; stopped");
}
