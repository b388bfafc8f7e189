//! Every gRPC adapter in one place: the listener, the token checks (hashes
//! parsed once, at start), `shardgate.usage.v1.UsageService` ([`usage`])
//! behind billing tokens, `shardgate.admin.v1.AdminService` ([`admin`])
//! behind admin tokens, and the open `grpc.health.v1.Health` and server
//! reflection (v1 and v1alpha) that load balancers and grpcurl expect.
//!
//! Must not: hold logic of its own beyond mapping protobuf to the engine's
//! operations and their errors to statuses.

pub mod admin;
pub mod usage;

use std::future::Future;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::{Request, Status};

use self::admin::AdminApi;
use self::usage::UsageApi;
use crate::config::{GrpcConfig, GrpcTlsConfig};
use crate::gateway::Gateway;
use crate::lifecycle::proto::admin_service_server::AdminServiceServer;
use crate::listener::{Accepted, Limits};
use crate::tenant::{TokenRefusal, TokenSet};
use crate::usage::proto::usage_service_server::UsageServiceServer;

/// Every service's encoded descriptors, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("shardgate_descriptor");

#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("grpc.{key}: {why}")]
    Token { key: String, why: String },
    #[error("grpc.tls {path}: {why}")]
    Tls { path: String, why: String },
    #[error("gRPC server: {0}")]
    Serve(String),
}

/// Who a request authenticated as (an admin or billing token's id), for the audit trail.
#[derive(Debug, Clone)]
pub(crate) struct Actor(pub String);

/// Checks `authorization: Bearer <token>` against one token list, parsed once.
#[derive(Clone)]
struct TokenAuth {
    tokens: TokenSet,
    what: &'static str,
}

impl TokenAuth {
    fn new(list: &'static str, hashes: &[String], what: &'static str) -> Result<Self, GrpcError> {
        let tokens = TokenSet::parse([(list, hashes)]).map_err(|(key, why)| GrpcError::Token { key, why })?;
        Ok(Self { tokens, what })
    }
}

impl tonic::service::Interceptor for TokenAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let what = self.what;
        let presented = req.metadata().get("authorization").map(|v| v.as_bytes().to_vec());
        match self.tokens.check(presented.as_deref()) {
            Ok(()) => {
                let mut req = req;
                // The same parse the check used (the scheme is case-insensitive).
                let text = presented.as_deref().and_then(|v| std::str::from_utf8(v).ok()).unwrap_or_default();
                let token = crate::tenant::bearer(text).unwrap_or_default();
                req.extensions_mut().insert(Actor(crate::audit::token_actor(token)));
                Ok(req)
            }
            Err(TokenRefusal::Missing) => {
                Err(Status::unauthenticated(format!("{what} is required (authorization: Bearer <token>)")))
            }
            Err(TokenRefusal::Malformed) => Err(Status::unauthenticated("authorization must be `Bearer <token>`")),
            Err(TokenRefusal::Unknown) => Err(Status::unauthenticated(format!("the {what} is not valid"))),
        }
    }
}

/// Serves the usage and admin APIs on `listener` until `shutdown` resolves.
/// Open usage streams end when it does. Connections go through the same
/// accept loop as the HTTP listener ([`crate::listener`]): a connection
/// limit, and timers for connections that hold a slot without a request.
pub async fn serve(
    gw: Arc<Gateway>,
    cfg: &GrpcConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), GrpcError> {
    let billing = TokenAuth::new("billing_tokens", &cfg.billing_tokens, "billing token")?;
    let admin = TokenAuth::new("admin_tokens", &cfg.admin_tokens, "admin token")?;
    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<UsageServiceServer<UsageApi>>().await;
    health.set_serving::<AdminServiceServer<AdminApi>>().await;
    let reflection = |b: tonic_reflection::server::Builder<'static>| {
        b.register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = reflection(tonic_reflection::server::Builder::configure())
        .build_v1()
        .map_err(|e| GrpcError::Serve(e.to_string()))?;
    let v1alpha = reflection(tonic_reflection::server::Builder::configure())
        .build_v1alpha()
        .map_err(|e| GrpcError::Serve(e.to_string()))?;
    let tls = cfg.tls.as_ref().map(tls_acceptor).transpose()?;
    let (stop_tx, stop) = watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let usage = UsageApi::new(gw.clone(), stop.clone());
    let routes = tonic::service::Routes::new(health_svc)
        .add_service(v1)
        .add_service(v1alpha)
        .add_service(UsageServiceServer::with_interceptor(usage, billing))
        .add_service(AdminServiceServer::with_interceptor(AdminApi::new(gw.clone(), stop), admin))
        .prepare();
    let mut builder = auto::Builder::new(TokioExecutor::new()).http2_only();
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(16 * 1024)
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)))
        .keep_alive_timeout(std::time::Duration::from_secs(20));
    let limits = Limits {
        name: "grpc",
        max_connections: cfg.max_connections,
        header_read_timeout: cfg.header_read_timeout,
        idle_timeout: cfg.idle_timeout,
        write_timeout: cfg.write_timeout,
        shutdown_grace: std::time::Duration::from_secs(5),
    };
    let metrics = gw.metrics().listener(true);
    let make_service = move |_: Accepted| TowerToHyperService::new(routes.clone());
    crate::listener::serve(listener, tls, builder, limits, metrics, make_service, shutdown).await;
    Ok(())
}

/// TLS for the gRPC listener: ALPN h2 only.
fn tls_acceptor(t: &GrpcTlsConfig) -> Result<tokio_rustls::TlsAcceptor, GrpcError> {
    let cfg = crate::config::TlsConfig {
        cert: t.cert.clone(),
        key: t.key.clone(),
        client_ca: None,
        client_auth: Default::default(),
    };
    let acceptor = crate::http::server::tls_acceptor(&cfg)
        .map_err(|e| GrpcError::Tls { path: t.cert.display().to_string(), why: e.to_string() })?;
    let mut config = (**acceptor.config()).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use tonic::service::Interceptor;

    use super::*;

    #[test]
    fn the_actor_is_named_by_the_token_whatever_the_scheme_case() {
        let token = "sgk_admin-token-for-the-test";
        let hash = format!("blake3:{}", hex::encode(crate::tenant::hash_key(token)));
        let mut auth = TokenAuth::new("grpc.admin_tokens", &[hash], "admin token").unwrap();
        for scheme in ["Bearer", "bearer", "BEARER"] {
            let mut req = Request::new(());
            req.metadata_mut().insert("authorization", format!("{scheme} {token}").parse().unwrap());
            let req = auth.call(req).unwrap();
            assert_eq!(req.extensions().get::<Actor>().unwrap().0, crate::audit::token_actor(token), "{scheme}");
        }
        let mut req = Request::new(());
        req.metadata_mut().insert("authorization", "Bearer sgk_other".parse().unwrap());
        assert_eq!(auth.call(req).unwrap_err().code(), tonic::Code::Unauthenticated);
    }
}
