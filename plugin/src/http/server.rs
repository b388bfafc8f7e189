//! The HTTP listener: TLS set-up, and hyper's HTTP/1.1 and HTTP/2 settings
//! (header size and read time) over the shared accept loop in
//! [`crate::listener`], which owns connection limits, idle and slow-client
//! timers and draining.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::{ClientAuth, ServerConfig, TlsConfig};
use crate::gateway::Gateway;
use crate::http::service::PeerNames;
use crate::listener::{Accepted, Limits};

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
/// responses finish for up to `cfg.shutdown_grace` (see [`crate::listener`]).
///
/// `s3_root` marks the listener of `s3.listen`: every request is S3, at the root.
pub async fn serve(
    gw: Arc<Gateway>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    cfg: ServerConfig,
    s3_root: bool,
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
    let limits = Limits {
        name: if s3_root { "s3" } else { "http" },
        max_connections: cfg.max_connections,
        header_read_timeout: cfg.header_read_timeout,
        idle_timeout: cfg.idle_timeout,
        write_timeout: cfg.write_timeout,
        shutdown_grace: cfg.shutdown_grace,
    };
    let metrics = gw.metrics().listener(false);
    let make_service = move |a: Accepted| {
        // rustls verified the chain against client_ca; only then are the names trusted.
        let names = a.client_cert.as_deref().map(crate::tenant::cert::names).unwrap_or_default();
        let peer = PeerNames(Arc::new(names));
        let addr = crate::http::service::Peer(a.peer);
        let gw = gw.clone();
        service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(peer.clone());
            req.extensions_mut().insert(addr);
            if s3_root {
                req.extensions_mut().insert(crate::s3::S3Listener);
            }
            super::service::handle(gw.clone(), req)
        })
    };
    crate::listener::serve(listener, tls, builder, limits, metrics, make_service, shutdown).await;
}
