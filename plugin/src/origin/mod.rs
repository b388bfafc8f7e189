//! Origins: where bytes come from (a BTFS node's RPC API, a BTFS HTTP
//! gateway, or local release directories).
//!
//! An origin returns raw, *unverified* byte streams for a blob range, with
//! connect, first-byte and stall timeouts applied. It must never decide
//! whether bytes are good: verification belongs to [`crate::fetch`].

mod dir;
pub mod outlier;

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

pub use dir::DirIndex;

use crate::btfs::{NodeClient, NodeConfig};
use crate::config::{FetchConfig, OriginConfig};
use crate::release::manifest::Blake3;

/// Raw bytes from an origin, in order, possibly in pieces of any size.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, OriginError>> + Send>>;

/// What went wrong with an origin, and whether another try may help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("origin {origin}: {kind}")]
pub struct OriginError {
    pub origin: String,
    pub kind: OriginErrorKind,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum OriginErrorKind {
    #[error("does not hold blob {0}")]
    NotFound(String),
    #[error("cannot reach: {0}")]
    Connect(String),
    #[error("no first byte within {0:?}")]
    FirstByteTimeout(Duration),
    #[error("body stalled for {0:?}")]
    Stalled(Duration),
    #[error("answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("body ended after {got} of {want} bytes")]
    Short { got: u64, want: u64 },
    #[error("{0}")]
    Io(String),
}

/// Everything an origin may need to find a blob.
#[derive(Debug, Clone, Copy)]
pub struct BlobRef<'a> {
    pub blake3: Blake3,
    pub cid: Option<&'a str>,
    pub size: u64,
}

enum Kind {
    Api(NodeClient),
    Gateway { http: reqwest::Client, url: String, path_prefix: String },
    Dir(Arc<DirIndex>),
}

/// One configured origin.
pub struct Origin {
    name: String,
    kind: Kind,
    first_byte_timeout: Duration,
    stall_timeout: Duration,
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin").field("name", &self.name).finish()
    }
}

impl Origin {
    pub fn new(index: usize, cfg: &OriginConfig, fetch: &FetchConfig) -> Result<Self, OriginError> {
        let name = cfg.name(index);
        let err = |e: String| OriginError { origin: name.clone(), kind: OriginErrorKind::Connect(e) };
        let kind = match cfg {
            OriginConfig::BtfsApi { url, api_prefix, token, .. } => Kind::Api(
                NodeClient::new(
                    NodeConfig { url: url.clone(), api_prefix: api_prefix.clone(), token: token.clone() },
                    fetch.connect_timeout,
                )
                .map_err(|e| err(e.to_string()))?,
            ),
            OriginConfig::BtfsGateway { url, path_prefix, .. } => {
                crate::btfs::install_crypto_provider();
                let http = reqwest::Client::builder()
                    .connect_timeout(fetch.connect_timeout)
                    .tcp_nodelay(true)
                    .no_proxy()
                    .build()
                    .map_err(|e| err(e.to_string()))?;
                Kind::Gateway { http, url: url.trim_end_matches('/').to_string(), path_prefix: path_prefix.clone() }
            }
            OriginConfig::Dir { path, .. } => Kind::Dir(Arc::new(DirIndex::scan(path))),
        };
        Ok(Self { name, kind, first_byte_timeout: fetch.first_byte_timeout, stall_timeout: fetch.stall_timeout })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The local directory index, for a `dir` origin.
    pub fn dir_index(&self) -> Option<&Arc<DirIndex>> {
        match &self.kind {
            Kind::Dir(d) => Some(d),
            _ => None,
        }
    }

    /// The node client, for a `btfs-api` origin (used to fetch manifests by CID).
    pub fn node(&self) -> Option<&NodeClient> {
        match &self.kind {
            Kind::Api(n) => Some(n),
            _ => None,
        }
    }

    /// Whether each piece this origin yields is a buffer of its own (a file
    /// read fills one chunk buffer), which a cached chunk may keep without
    /// copying. An HTTP client's pieces are slices of its read buffer:
    /// keeping one would pin that larger buffer in the hot tier and make the
    /// client allocate, and fault in, a fresh one for every read.
    pub fn yields_own_buffers(&self) -> bool {
        matches!(self.kind, Kind::Dir(_))
    }

    fn error(&self, kind: OriginErrorKind) -> OriginError {
        OriginError { origin: self.name.clone(), kind }
    }

    /// Starts reading `range` of a blob. The stream yields exactly
    /// `range.end - range.start` bytes or ends with an error.
    pub async fn read(&self, blob: BlobRef<'_>, range: Range<u64>) -> Result<ByteStream, OriginError> {
        let want = range.end - range.start;
        let start = async {
            match &self.kind {
                Kind::Dir(index) => index.read(blob.blake3, range.clone()).await.map_err(|k| self.error(k)),
                Kind::Api(node) => {
                    let cid = blob.cid.ok_or_else(|| self.error(OriginErrorKind::NotFound(blob.blake3.to_hex())))?;
                    let resp = node.cat(cid, range.start, want, self.first_byte_timeout).await.map_err(|e| {
                        self.error(match e {
                            crate::btfs::NodeError::Status { status, body, .. } => {
                                OriginErrorKind::Status { status, body }
                            }
                            other => OriginErrorKind::Connect(other.to_string()),
                        })
                    })?;
                    Ok(self.body_stream(resp))
                }
                Kind::Gateway { http, url, path_prefix } => {
                    let cid = blob.cid.ok_or_else(|| self.error(OriginErrorKind::NotFound(blob.blake3.to_hex())))?;
                    let resp = http
                        .get(format!("{url}{path_prefix}/{cid}"))
                        .header("Range", format!("bytes={}-{}", range.start, range.end - 1))
                        .header("Accept-Encoding", "identity")
                        .send()
                        .await
                        .map_err(|e| self.error(OriginErrorKind::Connect(e.to_string())))?;
                    let status = resp.status().as_u16();
                    let whole = status == 200 && range.start == 0 && range.end == blob.size;
                    if status != 206 && !whole {
                        // Read one piece at most: a gateway that ignored Range may be sending the whole blob.
                        let mut resp = resp;
                        let first = resp.chunk().await.ok().flatten().unwrap_or_default();
                        let body = String::from_utf8_lossy(&first[..first.len().min(200)]).into_owned();
                        return Err(self.error(OriginErrorKind::Status { status, body }));
                    }
                    if status == 206 {
                        let cr = resp.headers().get("content-range").and_then(|v| v.to_str().ok()).unwrap_or("");
                        let expect = format!("bytes {}-{}/", range.start, range.end - 1);
                        if !cr.starts_with(&expect) {
                            return Err(self.error(OriginErrorKind::Status {
                                status,
                                body: format!("Content-Range {cr:?}, asked for {expect}"),
                            }));
                        }
                    }
                    Ok(self.body_stream(resp))
                }
            }
        };
        let stream = tokio::time::timeout(self.first_byte_timeout, start)
            .await
            .map_err(|_| self.error(OriginErrorKind::FirstByteTimeout(self.first_byte_timeout)))??;
        Ok(exact_length(stalling(stream, self.stall_timeout, self.name.clone()), want, self.name.clone()))
    }

    fn body_stream(&self, resp: reqwest::Response) -> ByteStream {
        let name = self.name.clone();
        Box::pin(resp.bytes_stream().map(move |r| {
            r.map_err(|e| OriginError { origin: name.clone(), kind: OriginErrorKind::Io(e.to_string()) })
        }))
    }

    /// Whether the origin answers at all (for `/readyz`).
    pub async fn probe(&self) -> bool {
        match &self.kind {
            Kind::Dir(index) => index.root_exists(),
            Kind::Api(node) => match node.command_url("version", &[]) {
                Ok(url) => {
                    let client = reqwest::Client::new();
                    tokio::time::timeout(Duration::from_secs(3), client.post(url).send())
                        .await
                        .is_ok_and(|r| r.is_ok_and(|r| r.status().is_success()))
                }
                Err(_) => false,
            },
            Kind::Gateway { http, url, .. } => {
                tokio::time::timeout(Duration::from_secs(3), http.head(url).send()).await.is_ok_and(|r| r.is_ok())
            }
        }
    }
}

/// Ends the stream with an error if no piece arrives within `stall`.
fn stalling(inner: ByteStream, stall: Duration, origin: String) -> ByteStream {
    Box::pin(futures_util::stream::unfold(Some(inner), move |state| {
        let origin = origin.clone();
        async move {
            let mut s = state?;
            match tokio::time::timeout(stall, s.next()).await {
                Ok(Some(item)) => Some((item, Some(s))),
                Ok(None) => None,
                Err(_) => Some((Err(OriginError { origin, kind: OriginErrorKind::Stalled(stall) }), None)),
            }
        }
    }))
}

/// Insists the stream yields exactly `want` bytes: a short body is an error,
/// and bytes past `want` are an error rather than silently dropped.
fn exact_length(inner: ByteStream, want: u64, origin: String) -> ByteStream {
    Box::pin(futures_util::stream::unfold((Some(inner), 0u64), move |(state, got)| {
        let origin = origin.clone();
        async move {
            let mut s = state?;
            match s.next().await {
                Some(Ok(b)) => {
                    let got = got + b.len() as u64;
                    if got > want {
                        let e = OriginError {
                            origin,
                            kind: OriginErrorKind::Io(format!("sent more than the {want} bytes asked for")),
                        };
                        return Some((Err(e), (None, got)));
                    }
                    Some((Ok(b), (Some(s), got)))
                }
                Some(Err(e)) => Some((Err(e), (None, got))),
                None if got < want => {
                    Some((Err(OriginError { origin, kind: OriginErrorKind::Short { got, want } }), (None, got)))
                }
                None => None,
            }
        }
    }))
}

/// The configured origins, in failover order.
pub type Origins = Arc<Vec<Origin>>;

/// Builds every configured origin.
pub fn build(cfgs: &[OriginConfig], fetch: &FetchConfig) -> Result<Vec<Origin>, OriginError> {
    cfgs.iter().enumerate().map(|(i, c)| Origin::new(i, c, fetch)).collect()
}

/// Files a `dir` origin can serve, by BLAKE3.
pub(crate) type PathIndex = HashMap<Blake3, PathBuf>;
