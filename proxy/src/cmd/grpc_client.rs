//! Connecting to a gateway's gRPC listener (usage and admin APIs).

use std::path::PathBuf;

use anyhow::Context;

/// Where the gRPC listener is and how to authenticate.
#[derive(Debug, clap::Args)]
pub struct Endpoint {
    /// The gateway's gRPC address, e.g. http://127.0.0.1:9090 (https:// for TLS).
    #[arg(long = "api", alias = "admin", alias = "gateway")]
    pub url: String,
    /// PEM CA certificate that signed the listener's TLS certificate.
    #[arg(long)]
    pub ca: Option<PathBuf>,
}

pub async fn connect(url: &str, ca: Option<&std::path::Path>) -> anyhow::Result<tonic::transport::Channel> {
    let mut ep =
        tonic::transport::Endpoint::from_shared(url.to_string()).with_context(|| format!("{url} is not a URL"))?;
    if let Some(ca) = ca {
        shardgate::btfs::install_crypto_provider();
        let pem = std::fs::read(ca).with_context(|| format!("--ca {}", ca.display()))?;
        let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(pem));
        ep = ep.tls_config(tls)?;
    }
    ep.connect().await.with_context(|| format!("connect to {url}"))
}

/// A request with `authorization: Bearer <token>`.
pub fn authed<T>(msg: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().context("token is not valid text")?);
    Ok(r)
}

/// A gRPC error as one line naming the code.
pub fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}
