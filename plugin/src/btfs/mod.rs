//! Client for a BTFS node's HTTP RPC API (go-ipfs's API under `/api/v1`;
//! IPFS/kubo nodes speak the same under `/api/v0`). POST only, with
//! `?token=` when the node has token auth on.
//!
//! Owns the wire details of `add`, `cat` and `pin/ls`; knows nothing of
//! releases beyond bytes and CIDs.

pub mod cid;

use std::path::Path;
use std::time::Duration;

use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};

pub const DEFAULT_API_PREFIX: &str = "/api/v1";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node {url}: {}", redact(&source.to_string()))]
    Http { url: String, source: reqwest::Error },
    #[error("node {url} answered {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("node {url}: unexpected answer: {why}")]
    Protocol { url: String, why: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("node {url}: {what} was cut short: got {got} of {want} bytes")]
    Short { url: String, what: String, got: u64, want: u64 },
    #[error("node {url}: {what} made no progress for {stalled:?} ({sent} of {len} bytes sent)")]
    Stalled { url: String, what: String, stalled: Duration, sent: u64, len: u64 },
}

/// An error's text with any `token=` query value removed: it reaches logs and the audit trail.
fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("token=") {
        out.push_str(&rest[..i + "token=".len()]);
        out.push_str("REDACTED");
        rest = &rest[i + "token=".len()..];
        let end = rest.find(|c: char| c == '&' || c == ')' || c.is_whitespace()).unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

impl NodeError {
    /// Whether trying again (or another node) may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            NodeError::Http { .. } | NodeError::Short { .. } | NodeError::Stalled { .. } => true,
            NodeError::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// Where a node's RPC API is and how to authenticate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Base URL, for example `http://127.0.0.1:5001`.
    pub url: String,
    /// `/api/v1` for BTFS, `/api/v0` for IPFS nodes.
    #[serde(default = "default_prefix")]
    pub api_prefix: String,
    /// Sent as `?token=` when set.
    #[serde(default)]
    pub token: Option<String>,
}

/// A publisher config: the nodes `publish --nodes FILE` places a release on.
///
/// ```toml
/// [[nodes]]
/// url = "http://10.0.0.5:5001"
/// api_prefix = "/api/v1"   # the default
/// token = "..."            # optional
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodesFile {
    pub nodes: Vec<NodeConfig>,
}

impl NodesFile {
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

fn default_prefix() -> String {
    DEFAULT_API_PREFIX.to_string()
}

/// One pooled client for a node's API.
#[derive(Debug, Clone)]
pub struct NodeClient {
    config: NodeConfig,
    http: reqwest::Client,
    /// How long an add may go without progress (no byte taken, and no
    /// answer once all were sent) before it is given up.
    stall: Duration,
}

/// The default [`NodeClient::with_stall`].
pub const DEFAULT_STALL: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AddLine {
    #[serde(default)]
    hash: Option<String>,
}

/// Installs the process-wide rustls crypto provider (ring) once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl NodeClient {
    pub fn new(config: NodeConfig, connect_timeout: Duration) -> Result<Self, NodeError> {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .no_proxy()
            .build()
            .map_err(|source| NodeError::Http { url: config.url.clone(), source })?;
        Ok(Self { config, http, stall: DEFAULT_STALL })
    }

    /// Gives up an add that makes no progress for `stall`. An add is bounded
    /// by its progress, not by a total time, so a large blob on a slow link
    /// is not cut while a dead node is still found out.
    pub fn with_stall(mut self, stall: Duration) -> Self {
        self.stall = stall;
        self
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Full URL of an API command, with the token when configured.
    pub fn command_url(&self, command: &str, args: &[(&str, &str)]) -> Result<reqwest::Url, NodeError> {
        let base = format!(
            "{}{}/{command}",
            self.config.url.trim_end_matches('/'),
            self.config.api_prefix.trim_end_matches('/')
        );
        let mut url = reqwest::Url::parse(&base)
            .map_err(|e| NodeError::Protocol { url: base.clone(), why: format!("bad node URL: {e}") })?;
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in args {
                q.append_pair(k, v);
            }
            if let Some(t) = &self.config.token {
                q.append_pair("token", t);
            }
        }
        Ok(url)
    }

    /// URL with the token removed, for messages and logs.
    fn shown(&self, command: &str) -> String {
        format!("{}{}/{command}", self.config.url.trim_end_matches('/'), self.config.api_prefix)
    }

    async fn check(&self, command: &str, resp: reqwest::Response) -> Result<reqwest::Response, NodeError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["Message"].as_str().map(str::to_string))
            .unwrap_or(body);
        Err(NodeError::Status {
            url: self.shown(command),
            status: status.as_u16(),
            body: message.chars().take(300).collect(),
        })
    }

    /// Adds a file (pinned, CIDv1, raw leaves) and returns its CID. Calls
    /// `on_bytes` as bytes go out, and returns the BLAKE3 of what was sent so
    /// the caller can prove it published the bytes it meant to.
    pub async fn add_file(
        &self,
        path: &Path,
        name: &str,
        on_bytes: &(dyn Fn(u64) + Sync),
    ) -> Result<(String, blake3::Hash), NodeError> {
        let io = |source| NodeError::Io { path: path.display().to_string(), source };
        let file = tokio::fs::File::open(path).await.map_err(io)?;
        let len = file.metadata().await.map_err(io)?.len();
        let hasher = std::sync::Arc::new(std::sync::Mutex::new(blake3::Hasher::new()));
        let h2 = hasher.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).inspect_ok(move |chunk| {
            if let Ok(mut h) = h2.lock() {
                h.update(chunk);
            }
            let _ = tx.send(chunk.len() as u64);
        });
        let part = reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), len)
            .file_name(name.to_string())
            .mime_str("application/octet-stream")
            .map_err(|source| NodeError::Http { url: self.shown("add"), source })?;
        let form = reqwest::multipart::Form::new().part("file", part);
        let url = self.command_url(
            "add",
            &[
                ("pin", "true"),
                ("cid-version", "1"),
                ("raw-leaves", "true"),
                ("cid-base", "base32"),
                ("quieter", "true"),
            ],
        )?;
        let request = self.http.post(url).multipart(form).send();
        tokio::pin!(request);
        let deadline = tokio::time::sleep(self.stall);
        tokio::pin!(deadline);
        let mut sent = 0u64;
        let stalled = |sent| NodeError::Stalled {
            url: self.shown("add"),
            what: format!("add of {name}"),
            stalled: self.stall,
            sent,
            len,
        };
        let resp = loop {
            tokio::select! {
                r = &mut request => break r,
                Some(n) = rx.recv() => {
                    sent += n;
                    on_bytes(n);
                    deadline.as_mut().reset(tokio::time::Instant::now() + self.stall);
                }
                () = &mut deadline => return Err(stalled(sent)),
            }
        };
        while let Ok(n) = rx.try_recv() {
            on_bytes(n);
        }
        let resp = resp.map_err(|source| NodeError::Http { url: self.shown("add"), source })?;
        let resp = self.check("add", resp).await?;
        let body = match tokio::time::timeout(self.stall, resp.text()).await {
            Ok(b) => b.map_err(|source| NodeError::Http { url: self.shown("add"), source })?,
            Err(_) => return Err(stalled(len)),
        };
        let cid = body
            .lines()
            .filter_map(|l| serde_json::from_str::<AddLine>(l).ok())
            .filter_map(|l| l.hash)
            .next_back()
            .ok_or_else(|| NodeError::Protocol { url: self.shown("add"), why: format!("no Hash in {body:?}") })?;
        let sent = hasher.lock().map(|h| h.finalize()).unwrap_or_else(|p| p.into_inner().finalize());
        Ok((cid, sent))
    }

    /// Whether the node holds a recursive pin for `cid`.
    pub async fn is_pinned(&self, cid: &str) -> Result<bool, NodeError> {
        let url = self.command_url("pin/ls", &[("arg", cid), ("type", "recursive")])?;
        let resp =
            self.http.post(url).send().await.map_err(|source| NodeError::Http { url: self.shown("pin/ls"), source })?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if status.is_success() {
            return Ok(body.contains("\"Keys\""));
        }
        // Nodes answer "not pinned" with an error status.
        if body.contains("not pinned") {
            return Ok(false);
        }
        Err(NodeError::Status {
            url: self.shown("pin/ls"),
            status: status.as_u16(),
            body: body.chars().take(300).collect(),
        })
    }

    /// Starts `cat` of `length` bytes at `offset`; the caller streams the body.
    pub async fn cat(
        &self,
        cid: &str,
        offset: u64,
        length: u64,
        timeout: Duration,
    ) -> Result<reqwest::Response, NodeError> {
        let (o, l) = (offset.to_string(), length.to_string());
        let t = format!("{}ms", timeout.as_millis().max(1));
        let url = self.command_url("cat", &[("arg", cid), ("offset", &o), ("length", &l), ("timeout", &t)])?;
        let resp =
            self.http.post(url).send().await.map_err(|source| NodeError::Http { url: self.shown("cat"), source })?;
        self.check("cat", resp).await
    }

    /// Reads `length` bytes at `offset` into memory, insisting on the exact length.
    pub async fn cat_all(
        &self,
        cid: &str,
        offset: u64,
        length: u64,
        timeout: Duration,
    ) -> Result<bytes::Bytes, NodeError> {
        if length == 0 {
            return Ok(bytes::Bytes::new());
        }
        let resp = self.cat(cid, offset, length, timeout).await?;
        let body = resp.bytes().await.map_err(|source| NodeError::Http { url: self.shown("cat"), source })?;
        if body.len() as u64 != length {
            return Err(NodeError::Short {
                url: self.shown("cat"),
                what: format!("cat {cid}"),
                got: body.len() as u64,
                want: length,
            });
        }
        Ok(body)
    }
}

#[cfg(test)]
mod redact_tests {
    #[test]
    fn tokens_are_redacted() {
        assert_eq!(
            super::redact("error for url (http://a/api/v1/cat?arg=x&token=SECRET)"),
            "error for url (http://a/api/v1/cat?arg=x&token=REDACTED)"
        );
    }
}

#[cfg(test)]
mod stall_tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// A node that takes the connection and then neither reads nor answers:
    /// the add is given up after the stall time, not left hanging.
    #[tokio::test]
    async fn an_add_that_makes_no_progress_is_given_up() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            loop {
                let (c, _) = listener.accept().await.unwrap();
                conns.push(c);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        // Larger than the socket buffers, so the upload itself stalls.
        std::fs::write(&path, vec![7u8; 32 << 20]).unwrap();
        let config = NodeConfig { url: format!("http://{addr}"), api_prefix: "/api/v0".into(), token: None };
        let node = NodeClient::new(config, Duration::from_secs(5)).unwrap().with_stall(Duration::from_millis(400));
        let started = Instant::now();
        let err = node.add_file(&path, "blob", &|_| {}).await.unwrap_err();
        assert!(matches!(err, NodeError::Stalled { .. }), "{err}");
        assert!(err.retryable());
        assert!(err.to_string().contains("made no progress"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
        held.abort();
    }
}
