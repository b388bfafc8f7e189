//! The listener: accepts TCP (optionally TLS) connections up to a limit and
//! serves HTTP/1.1 and HTTP/2 on them with hyper, with header-size, header
//! read and slow-reader limits, and graceful draining on shutdown.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;
use tokio_rustls::TlsAcceptor;

use crate::config::{ClientAuth, ServerConfig, TlsConfig};
use crate::gateway::Gateway;
use crate::http::service::PeerNames;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("TLS {path}: {why}")]
    Tls { path: String, why: String },
}

/// Builds a TLS acceptor (ALPN h2 and http/1.1) from PEM files.
pub fn tls_acceptor(cfg: &TlsConfig) -> Result<TlsAcceptor, ServerError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    crate::btfs::install_crypto_provider();
    let err = |p: &Path, why: String| ServerError::Tls { path: p.display().to_string(), why };
    let certs = CertificateDer::pem_file_iter(&cfg.cert)
        .map_err(|e| err(&cfg.cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(&cfg.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(err(&cfg.cert, "no certificate found".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| err(&cfg.key, e.to_string()))?;
    let builder = rustls::ServerConfig::builder();
    let builder = match &cfg.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| err(ca, e.to_string()))? {
                roots.add(c.map_err(|e| err(ca, e.to_string()))?).map_err(|e| err(ca, e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(err(ca, "no CA certificate found".into()));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots));
            let verifier = match cfg.client_auth {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                ClientAuth::Required => verifier,
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| err(ca, e.to_string()))?)
        }
    };
    let mut tls = builder.with_single_cert(certs, key).map_err(|e| err(&cfg.cert, e.to_string()))?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(tls)))
}

pub async fn bind(cfg: &ServerConfig) -> Result<TcpListener, ServerError> {
    TcpListener::bind(cfg.listen).await.map_err(|source| ServerError::Bind { addr: cfg.listen.to_string(), source })
}

/// Serves until `shutdown` resolves, then stops accepting and lets in-flight
/// responses finish for up to `cfg.shutdown_grace`.
pub async fn serve(
    gw: Arc<Gateway>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(cfg.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    // Every connection task, so shutdown can cut the ones that outlive the
    // grace period and wait until their bodies (and usage meters) are dropped.
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while conns.try_join_next().is_some() {}
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => match a {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let gw = gw.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        let write_timeout = cfg.write_timeout;
        let handshake_timeout = cfg.header_read_timeout;
        conns.spawn(async move {
            let _permit = permit;
            gw.metrics().connections.inc();
            let svc_gw = gw.clone();
            let service = move |peer: PeerNames| {
                let svc_gw = svc_gw.clone();
                service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer.clone());
                    super::service::handle(svc_gw.clone(), req)
                })
            };
            let mut timed = TimeoutStream::new(stream);
            timed.set_write_timeout(Some(write_timeout));
            let timed = Box::pin(timed);
            let result = match tls {
                None => {
                    watcher.watch(builder.serve_connection(TokioIo::new(timed), service(PeerNames::default()))).await
                }
                Some(acceptor) => match tokio::time::timeout(handshake_timeout, acceptor.accept(timed)).await {
                    Ok(Ok(tls_stream)) => {
                        // rustls has verified the chain against client_ca; only then are the names trusted.
                        let names = tls_stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| crate::tenant::cert::names(c.as_ref()))
                            .unwrap_or_default();
                        let svc = service(PeerNames(Arc::new(names)));
                        watcher.watch(builder.serve_connection(TokioIo::new(tls_stream), svc)).await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        Ok(())
                    }
                    Err(_) => Ok(()),
                },
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            gw.metrics().connections.dec();
        });
    }
    drop(listener);
    let grace = cfg.shutdown_grace;
    tracing::info!(?grace, "draining connections");
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            connections = conns.len(),
            "shutdown grace period ended with responses still in flight; cutting them"
        );
        conns.abort_all();
    }
    while conns.join_next().await.is_some() {}
}
