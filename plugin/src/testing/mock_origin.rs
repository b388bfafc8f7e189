//! A mock BTFS origin: the HTTP RPC `cat` command and the `/btfs/CID`
//! gateway path, served from memory, with faults a test can switch on and off
//! while requests are in flight.
//!
//! Wire behaviour follows go-btfs where tests depend on it:
//!
//! - `POST {api_prefix}/cat?arg=CID&offset=O&length=L[&token=T]`; any other
//!   method is `405` with `{"Message":"Method Not Allowed","Code":1,"Type":"error"}`;
//!   a missing or wrong `token` (when one is set) is `401`; an unknown CID, or
//!   an offset past the end, is `500` with a JSON error (`Code` 0); a missing
//!   `length` reads to the end; unknown query parameters (`timeout`, ...) are
//!   ignored. Success is `200`, `application/octet-stream`, with
//!   `Content-Length` set, streamed in frames of at most 64 KiB.
//! - `POST {api_prefix}/version`: `200` with `{"Version":"mock"}`, or the
//!   status of an all-CIDs `Status` fault, so a prober sees a sick node.
//! - `GET {gateway_prefix}/CID` with an optional single `Range: bytes=a-b`,
//!   `bytes=a-` or `bytes=-n`: `206` with `Content-Range`, `200` without a
//!   Range, `416` when unsatisfiable, `404` for an unknown CID. No token.
//!
//! A fault is set per CID or for all CIDs (`None`); a request uses its CID's
//! fault when there is one, else the all-CIDs fault. Faults are looked up
//! after the method and token checks, so `405`/`401` answers never consume a
//! [`MockOrigin::set_fault_times`] budget.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Largest body frame the mock sends, so that faults can hit mid-body.
pub const MAX_FRAME: usize = 64 * 1024;

/// Default prefix of the RPC API (BTFS's; IPFS uses `/api/v0`).
pub const DEFAULT_API_PREFIX: &str = "/api/v1";

/// Default prefix of the gateway path.
pub const DEFAULT_GATEWAY_PREFIX: &str = "/btfs";

/// A fault to inject into answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Flip one bit of the byte at this absolute file offset in every response that covers it.
    CorruptAt(u64),
    /// Flip one bit of a byte in every response: a pseudo-random byte chosen per request (seeded by a counter, deterministic).
    CorruptRandom,
    /// Send headers with the full Content-Length, then close the connection after `n` body bytes.
    TruncateAfter(u64),
    /// Send headers and `n` body bytes, then stall for `dur` (the body simply stops) before continuing.
    StallAfter { bytes: u64, dur: Duration },
    /// Answer with this status and a JSON error body.
    Status(u16),
    /// Delay the response headers by `dur`.
    DelayHeaders(Duration),
}

type Body = BoxBody<Bytes, std::io::Error>;

struct FaultSlot {
    fault: Fault,
    /// `None`: until cleared.
    remaining: Option<u32>,
}

struct State {
    api_prefix: String,
    gateway_prefix: String,
    blobs: Mutex<HashMap<String, Bytes>>,
    token: Mutex<Option<String>>,
    faults: Mutex<HashMap<Option<String>, FaultSlot>>,
    requests: AtomicU64,
    per_cid: Mutex<HashMap<String, u64>>,
    bytes_sent: AtomicU64,
    log: Mutex<Vec<(String, u64, Option<u64>)>>,
    corrupt_seq: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    fn blob(&self, cid: &str) -> Option<Bytes> {
        lock(&self.blobs).get(cid).cloned()
    }

    fn record(&self, cid: &str, offset: u64, length: Option<u64>) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        *lock(&self.per_cid).entry(cid.to_string()).or_default() += 1;
        lock(&self.log).push((cid.to_string(), offset, length));
    }

    /// The fault for this request, consuming one use of a counted fault.
    fn take_fault(&self, cid: &str) -> Option<Fault> {
        let mut faults = lock(&self.faults);
        let specific = Some(cid.to_string());
        let key = if faults.contains_key(&specific) {
            specific
        } else if faults.contains_key(&None) {
            None
        } else {
            return None;
        };
        let slot = faults.get_mut(&key)?;
        let fault = slot.fault.clone();
        if let Some(left) = &mut slot.remaining {
            *left = left.saturating_sub(1);
            if *left == 0 {
                faults.remove(&key);
            }
        }
        Some(fault)
    }
}

/// A mock BTFS node on `127.0.0.1`, serving until dropped.
pub struct MockOrigin {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for MockOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockOrigin").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Drop for MockOrigin {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (a JoinSet), so this
        // stops them too.
        self.task.abort();
    }
}

impl MockOrigin {
    /// Starts serving `blobs` (CID → content) with the default prefixes
    /// (`/api/v1`, `/btfs`).
    pub async fn start(blobs: impl IntoIterator<Item = (String, Bytes)>) -> MockOrigin {
        Self::start_with_prefixes(DEFAULT_API_PREFIX, DEFAULT_GATEWAY_PREFIX, blobs).await
    }

    /// Like [`MockOrigin::start`] with another RPC prefix (`/api/v0` for IPFS).
    pub async fn start_with_prefix(api_prefix: &str, blobs: impl IntoIterator<Item = (String, Bytes)>) -> MockOrigin {
        Self::start_with_prefixes(api_prefix, DEFAULT_GATEWAY_PREFIX, blobs).await
    }

    /// Like [`MockOrigin::start`] with both prefixes chosen.
    ///
    /// # Panics
    /// If no port on 127.0.0.1 can be bound.
    pub async fn start_with_prefixes(
        api_prefix: &str,
        gateway_prefix: &str,
        blobs: impl IntoIterator<Item = (String, Bytes)>,
    ) -> MockOrigin {
        let state = Arc::new(State {
            api_prefix: normalize_prefix(api_prefix),
            gateway_prefix: normalize_prefix(gateway_prefix),
            blobs: Mutex::new(blobs.into_iter().collect()),
            token: Mutex::new(None),
            faults: Mutex::new(HashMap::new()),
            requests: AtomicU64::new(0),
            per_cid: Mutex::new(HashMap::new()),
            bytes_sent: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            corrupt_seq: AtomicU64::new(0),
        });
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("mock origin: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("mock origin: local address of a bound listener");
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        MockOrigin { addr, state, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requires `?token=` on `cat` when `Some`.
    pub fn set_token(&self, token: Option<String>) {
        *lock(&self.state.token) = token;
    }

    /// Adds or replaces a blob.
    pub fn insert_blob(&self, cid: &str, content: Bytes) {
        lock(&self.state.blobs).insert(cid.to_string(), content);
    }

    /// Sets (`Some`) or clears (`None`) the fault for `cid`, or for all
    /// CIDs with `cid: None`. A CID's own fault wins over the all-CIDs one.
    pub fn set_fault(&self, cid: Option<&str>, fault: Option<Fault>) {
        let key = cid.map(str::to_string);
        let mut faults = lock(&self.state.faults);
        match fault {
            Some(fault) => {
                faults.insert(key, FaultSlot { fault, remaining: None });
            }
            None => {
                faults.remove(&key);
            }
        }
    }

    /// Sets a fault for the next `times` matching requests only (0 clears).
    pub fn set_fault_times(&self, cid: Option<&str>, fault: Fault, times: u32) {
        let key = cid.map(str::to_string);
        let mut faults = lock(&self.state.faults);
        if times == 0 {
            faults.remove(&key);
        } else {
            faults.insert(key, FaultSlot { fault, remaining: Some(times) });
        }
    }

    /// `cat` and gateway requests received (including rejected ones).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// `cat` and gateway requests received for `cid`.
    pub fn requests_for(&self, cid: &str) -> u64 {
        lock(&self.state.per_cid).get(cid).copied().unwrap_or(0)
    }

    /// Body bytes handed to the connection by successful (2xx) answers.
    pub fn bytes_sent(&self) -> u64 {
        self.state.bytes_sent.load(Ordering::SeqCst)
    }

    /// `(cid, offset, length)` of every `cat` and gateway request, in arrival
    /// order. Gateway ranges log the first byte and the requested length
    /// (`None` for open-ended ranges and whole-file requests).
    pub fn request_log(&self) -> Vec<(String, u64, Option<u64>)> {
        lock(&self.state.log).clone()
    }
}

fn normalize_prefix(p: &str) -> String {
    let p = p.trim_end_matches('/');
    if p.is_empty() || p.starts_with('/') { p.to_string() } else { format!("/{p}") }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(serve_connection(stream, state.clone()));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "mock origin: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, state: Arc<State>) {
    let _ = stream.set_nodelay(true);
    let written = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(CountingStream { inner: stream, written: written.clone() });
    let service = service_fn(move |req| handle(state.clone(), written.clone(), req));
    if let Err(e) = http1::Builder::new().serve_connection(io, service).await {
        tracing::debug!(error = %e, "mock origin: connection ended");
    }
}

/// Counts bytes written to the socket, so a truncating body can wait until
/// hyper has flushed what came before the cut.
struct CountingStream {
    inner: TcpStream,
    written: Arc<AtomicU64>,
}

impl AsyncRead for CountingStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.written.fetch_add(*n as u64, Ordering::SeqCst);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r {
            self.written.fetch_add(*n as u64, Ordering::SeqCst);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// go-btfs's JSON error answer.
fn json_error(status: StatusCode, message: &str, code: u8) -> Response<Body> {
    let body = serde_json::json!({ "Message": message, "Code": code, "Type": "error" });
    full(status, "application/json", body.to_string())
}

fn status_of(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes()).into_owned().collect()
}

async fn handle(
    state: Arc<State>,
    written: Arc<AtomicU64>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let cat_path = format!("{}/cat", state.api_prefix);
    let gateway_base = format!("{}/", state.gateway_prefix);
    let resp = if path == cat_path {
        cat(&state, written, &req).await
    } else if path == format!("{}/version", state.api_prefix) {
        // What a prober asks: answers as a sick node would while every CID fails with a status.
        let sick = lock(&state.faults).get(&None).and_then(|slot| match slot.fault {
            Fault::Status(code) => StatusCode::from_u16(code).ok(),
            _ => None,
        });
        match sick {
            Some(code) => full(code, "application/json", "{\"Message\":\"injected\",\"Code\":0,\"Type\":\"error\"}"),
            None => full(StatusCode::OK, "application/json", "{\"Version\":\"mock\"}"),
        }
    } else if let Some(rest) = path.strip_prefix(&gateway_base) {
        let cid = percent_encoding::percent_decode_str(rest.trim_end_matches('/')).decode_utf8_lossy().into_owned();
        gateway(&state, written, &req, &cid).await
    } else {
        full(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "404 page not found\n")
    };
    Ok(resp)
}

async fn cat(state: &Arc<State>, written: Arc<AtomicU64>, req: &Request<Incoming>) -> Response<Body> {
    let query = query_pairs(req.uri().query());
    let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let cid = param("arg").unwrap_or("").to_string();
    let offset_param = param("offset").map(str::parse::<i64>);
    let length_param = param("length").map(str::parse::<i64>);
    let logged_offset = match &offset_param {
        Some(Ok(o)) => u64::try_from(*o).unwrap_or(0),
        _ => 0,
    };
    let logged_length = match &length_param {
        Some(Ok(l)) => u64::try_from(*l).ok(),
        _ => None,
    };
    state.record(&cid, logged_offset, logged_length);

    if req.method() != Method::POST {
        return json_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed", 1);
    }
    let token = lock(&state.token).clone();
    if let Some(token) = token
        && param("token") != Some(token.as_str())
    {
        return json_error(StatusCode::UNAUTHORIZED, "unauthorized: missing or invalid token", 0);
    }
    if cid.is_empty() {
        return json_error(StatusCode::BAD_REQUEST, "argument \"ipfs-path\" is required", 1);
    }
    let offset = match offset_param {
        None => 0,
        Some(Ok(o)) if o >= 0 => o as u64,
        Some(Ok(_)) => {
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, "cannot specify negative offset", 0);
        }
        Some(Err(e)) => {
            return json_error(StatusCode::BAD_REQUEST, &format!("error parsing offset: {e}"), 1);
        }
    };
    let length = match length_param {
        None => None,
        Some(Ok(l)) if l >= 0 => Some(l as u64),
        Some(Ok(_)) => {
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, "cannot specify negative length", 0);
        }
        Some(Err(e)) => {
            return json_error(StatusCode::BAD_REQUEST, &format!("error parsing length: {e}"), 1);
        }
    };

    let fault = state.take_fault(&cid);
    if let Some(resp) = early_fault(fault.as_ref()).await {
        return resp;
    }
    let Some(blob) = state.blob(&cid) else {
        return json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("block was not found locally (offline): ipld: could not find {cid}: merkledag: not found"),
            0,
        );
    };
    let size = blob.len() as u64;
    if offset > size {
        return json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("offset was past the end of the file ({offset} > {size})"),
            0,
        );
    }
    let end = match length {
        Some(l) => offset.saturating_add(l).min(size),
        None => size,
    };
    let mut resp = streamed(state, written, &blob, offset, end, fault);
    let headers = resp.headers_mut();
    headers.insert("X-Stream-Output", HeaderValue::from_static("1"));
    headers.insert("X-Content-Length", HeaderValue::from(end - offset));
    resp
}

/// Applies `DelayHeaders`, and answers for `Status`.
async fn early_fault(fault: Option<&Fault>) -> Option<Response<Body>> {
    match fault {
        Some(Fault::DelayHeaders(d)) => {
            tokio::time::sleep(*d).await;
            None
        }
        Some(Fault::Status(code)) => Some(json_error(status_of(*code), &format!("injected fault: status {code}"), 0)),
        _ => None,
    }
}

enum RangeReq {
    None,
    From(u64, Option<u64>),
    Suffix(u64),
}

/// A single `bytes=` range; anything else is ignored (whole file).
fn parse_range(value: Option<&HeaderValue>) -> RangeReq {
    let Some(spec) = value.and_then(|v| v.to_str().ok()).and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeReq::None;
    };
    if spec.contains(',') {
        return RangeReq::None;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeReq::None;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        return b.parse().map(RangeReq::Suffix).unwrap_or(RangeReq::None);
    }
    let Ok(a) = a.parse::<u64>() else {
        return RangeReq::None;
    };
    if b.is_empty() {
        return RangeReq::From(a, None);
    }
    match b.parse::<u64>() {
        Ok(b) if b >= a => RangeReq::From(a, Some(b)),
        _ => RangeReq::None,
    }
}

async fn gateway(state: &Arc<State>, written: Arc<AtomicU64>, req: &Request<Incoming>, cid: &str) -> Response<Body> {
    let range = parse_range(req.headers().get(header::RANGE));
    let blob = state.blob(cid);
    let size = blob.as_ref().map_or(0, |b| b.len() as u64);
    let (log_offset, log_length) = match range {
        RangeReq::None => (0, None),
        RangeReq::From(a, None) => (a, None),
        RangeReq::From(a, Some(b)) => (a, Some(b - a + 1)),
        RangeReq::Suffix(n) => (size.saturating_sub(n), Some(n.min(size))),
    };
    state.record(cid, log_offset, log_length);

    if req.method() != Method::GET {
        let mut resp = full(StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "405 method not allowed\n");
        resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET"));
        return resp;
    }
    let fault = state.take_fault(cid);
    if let Some(resp) = early_fault(fault.as_ref()).await {
        return resp;
    }
    let Some(blob) = blob else {
        return full(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            format!("failed to resolve /btfs/{cid}: not found\n"),
        );
    };
    let unsatisfiable = || {
        let mut resp = full(StatusCode::RANGE_NOT_SATISFIABLE, "text/plain; charset=utf-8", "invalid range\n");
        if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
            resp.headers_mut().insert(header::CONTENT_RANGE, v);
        }
        resp
    };
    let (start, end) = match range {
        RangeReq::None => {
            let mut resp = streamed(state, written, &blob, 0, size, fault);
            resp.headers_mut().insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            return resp;
        }
        RangeReq::From(a, _) if a >= size => return unsatisfiable(),
        RangeReq::From(a, b) => (a, b.map_or(size, |b| b.saturating_add(1).min(size))),
        RangeReq::Suffix(0) => return unsatisfiable(),
        RangeReq::Suffix(n) => (size.saturating_sub(n), size),
    };
    let mut resp = streamed(state, written, &blob, start, end, fault);
    *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
    let headers = resp.headers_mut();
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)) {
        headers.insert(header::CONTENT_RANGE, v);
    }
    resp
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A 200 answer of `blob[start..end]` with `fault` applied to the body.
fn streamed(
    state: &Arc<State>,
    written: Arc<AtomicU64>,
    blob: &Bytes,
    start: u64,
    end: u64,
    fault: Option<Fault>,
) -> Response<Body> {
    let (s, e) = (start as usize, end as usize);
    let mut data = blob.slice(s..e);
    let flip_at = match &fault {
        Some(Fault::CorruptAt(at)) if (start..end).contains(at) => Some((at - start) as usize),
        Some(Fault::CorruptRandom) if !data.is_empty() => {
            let seq = state.corrupt_seq.fetch_add(1, Ordering::SeqCst);
            Some((splitmix64(seq) % data.len() as u64) as usize)
        }
        _ => None,
    };
    if let Some(i) = flip_at {
        let mut copy = BytesMut::from(&data[..]);
        copy[i] ^= 0x01;
        data = copy.freeze();
    }
    let len = data.len() as u64;
    let cut = |n: u64| (n < len).then_some(n as usize);
    let sender = Sender {
        data,
        pos: 0,
        truncate: match &fault {
            Some(Fault::TruncateAfter(n)) => cut(*n),
            _ => None,
        },
        stall: match &fault {
            Some(Fault::StallAfter { bytes, dur }) => cut(*bytes).map(|b| (b, *dur)),
            _ => None,
        },
        done: false,
        state: state.clone(),
        written,
    };
    let stream = futures_util::stream::unfold(sender, Sender::next);
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

struct Sender {
    data: Bytes,
    pos: usize,
    truncate: Option<usize>,
    stall: Option<(usize, Duration)>,
    done: bool,
    state: Arc<State>,
    written: Arc<AtomicU64>,
}

impl Sender {
    async fn next(mut self) -> Option<(Result<Frame<Bytes>, std::io::Error>, Sender)> {
        if self.done {
            return None;
        }
        if let Some((at, dur)) = self.stall
            && self.pos >= at
        {
            self.stall = None;
            tokio::time::sleep(dur).await;
        }
        if let Some(at) = self.truncate
            && self.pos >= at
        {
            self.done = true;
            self.wait_flushed().await;
            let err = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "mock origin: injected truncation");
            return Some((Err(err), self));
        }
        if self.pos >= self.data.len() {
            return None;
        }
        let mut end = (self.pos + MAX_FRAME).min(self.data.len());
        for at in [self.truncate, self.stall.map(|(b, _)| b)].into_iter().flatten() {
            if at > self.pos {
                end = end.min(at);
            }
        }
        let frame = self.data.slice(self.pos..end);
        self.pos = end;
        self.state.bytes_sent.fetch_add(frame.len() as u64, Ordering::SeqCst);
        Some((Ok(Frame::data(frame)), self))
    }

    /// Gives hyper the chance to flush what it has buffered (an error from
    /// the body drops hyper's write buffer): waits until the socket write
    /// count stops moving, at most a few seconds.
    async fn wait_flushed(&self) {
        let mut last = self.written.load(Ordering::SeqCst);
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(15)).await;
            let now = self.written.load(Ordering::SeqCst);
            if now == last {
                return;
            }
            last = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const CID: &str = "bafkreiaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const OTHER: &str = "bafkreibbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const SIZE: usize = 300_000;

    fn content(n: usize, salt: u8) -> Bytes {
        (0..n).map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_right(13) as u8 ^ salt).collect::<Vec<u8>>().into()
    }

    async fn origin() -> (MockOrigin, Bytes) {
        let blob = content(SIZE, 0);
        let m = MockOrigin::start([(CID.to_string(), blob.clone()), (OTHER.to_string(), content(1000, 0x5a))]).await;
        (m, blob)
    }

    #[derive(Debug)]
    struct Raw {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        /// The read ended with an error (reset) rather than EOF.
        read_error: bool,
    }

    impl Raw {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
        }
        fn content_length(&self) -> Option<usize> {
            self.header("content-length").and_then(|v| v.parse().ok())
        }
        fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).expect("JSON body")
        }
    }

    fn split_head(buf: &[u8]) -> Option<usize> {
        buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
    }

    fn parse_head(head: &[u8]) -> (u16, Vec<(String, String)>) {
        let text = std::str::from_utf8(head).expect("ASCII head");
        let mut lines = text.split("\r\n");
        let status_line = lines.next().expect("status line");
        let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status code");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        (status, headers)
    }

    /// One HTTP/1.1 request with `Connection: close`; reads to EOF (or
    /// error). `on_progress` gets each instant and body length seen.
    async fn raw_with(
        m: &MockOrigin,
        method: &str,
        target: &str,
        extra: &str,
        mut on_progress: impl FnMut(Instant, usize),
    ) -> Raw {
        let work = async {
            let mut s = TcpStream::connect(m.addr()).await.expect("connect");
            let req = format!(
                "{method} {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: 0\r\n{extra}\r\n",
                m.addr()
            );
            s.write_all(req.as_bytes()).await.expect("write request");
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 16 * 1024];
            let mut read_error = false;
            loop {
                match s.read(&mut chunk).await {
                    Ok(0) => break,
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(h) = split_head(&buf) {
                            on_progress(Instant::now(), buf.len() - h);
                        }
                    }
                    Err(_) => {
                        read_error = true;
                        break;
                    }
                }
            }
            let h = split_head(&buf).expect("complete response head");
            let (status, headers) = parse_head(&buf[..h]);
            Raw { status, headers, body: buf[h..].to_vec(), read_error }
        };
        tokio::time::timeout(Duration::from_secs(20), work).await.expect("request timed out")
    }

    async fn raw(m: &MockOrigin, method: &str, target: &str) -> Raw {
        raw_with(m, method, target, "", |_, _| {}).await
    }

    fn cat_target(cid: &str, offset: u64, length: Option<u64>) -> String {
        let mut t = format!("/api/v1/cat?arg={cid}&offset={offset}");
        if let Some(l) = length {
            t.push_str(&format!("&length={l}"));
        }
        t
    }

    #[tokio::test]
    async fn cat_returns_exact_bytes() {
        let (m, blob) = origin().await;
        for (offset, length) in [
            (0u64, Some(10u64)),
            (1000, Some(5000)),
            (65_530, Some(150_000)),      // several frames
            (SIZE as u64 - 7, Some(100)), // clamped at the end
            (123_456, None),              // to the end
            (SIZE as u64, Some(10)),      // empty at the very end
            (17, Some(0)),
        ] {
            let r = raw(&m, "POST", &cat_target(CID, offset, length)).await;
            assert_eq!(r.status, 200, "{offset} {length:?}");
            assert_eq!(r.header("content-type"), Some("application/octet-stream"));
            let s = offset as usize;
            let e = length.map_or(SIZE, |l| (s + l as usize).min(SIZE));
            assert_eq!(r.content_length(), Some(e - s));
            assert!(r.body == blob[s..e], "bytes differ at {offset} {length:?}");
            assert!(!r.read_error);
        }
        // Unknown parameters, and escapes, are fine.
        let r = raw(&m, "POST", &format!("/api/v1/cat?arg={CID}&offset=%3100&length=5&timeout=10ms&x=y")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, &blob[100..105]);
        // Other paths are not API commands.
        assert_eq!(raw(&m, "POST", "/api/v1/add").await.status, 404);
    }

    #[tokio::test]
    async fn get_on_cat_is_405() {
        let (m, _) = origin().await;
        let r = raw(&m, "GET", &cat_target(CID, 0, Some(10))).await;
        assert_eq!(r.status, 405);
        assert_eq!(r.json(), serde_json::json!({"Message": "Method Not Allowed", "Code": 1, "Type": "error"}));
        assert_eq!(raw(&m, "PUT", &cat_target(CID, 0, Some(10))).await.status, 405);
    }

    #[tokio::test]
    async fn token_is_required_when_set() {
        let (m, blob) = origin().await;
        m.set_token(Some("s3cret".into()));
        let base = cat_target(CID, 5, Some(5));
        let r = raw(&m, "POST", &base).await;
        assert_eq!(r.status, 401);
        assert!(r.json()["Message"].as_str().is_some_and(|s| s.contains("token")));
        assert_eq!(raw(&m, "POST", &format!("{base}&token=nope")).await.status, 401);
        let ok = raw(&m, "POST", &format!("{base}&token=s3cret")).await;
        assert_eq!(ok.status, 200);
        assert_eq!(ok.body, &blob[5..10]);
        m.set_token(None);
        assert_eq!(raw(&m, "POST", &base).await.status, 200);
    }

    #[tokio::test]
    async fn unknown_cid_and_offset_past_end_are_500() {
        let (m, _) = origin().await;
        let r = raw(&m, "POST", &cat_target("bafkreinope", 0, Some(1))).await;
        assert_eq!(r.status, 500);
        let j = r.json();
        assert!(j["Message"].as_str().is_some_and(|s| s.contains("not found")));
        assert_eq!(j["Code"], 0);
        assert_eq!(j["Type"], "error");
        let r = raw(&m, "POST", &cat_target(CID, SIZE as u64 + 1, Some(1))).await;
        assert_eq!(r.status, 500);
        assert_eq!(r.json()["Type"], "error");
        assert_eq!(raw(&m, "POST", "/api/v1/cat?offset=0").await.status, 400);
    }

    #[tokio::test]
    async fn corrupt_at_flips_exactly_that_byte() {
        let (m, blob) = origin().await;
        let at = 70_000u64;
        m.set_fault(Some(CID), Some(Fault::CorruptAt(at)));
        let r = raw(&m, "POST", &cat_target(CID, 65_536, Some(10_000))).await;
        assert_eq!(r.status, 200);
        let want = &blob[65_536..75_536];
        let diffs: Vec<usize> = (0..want.len()).filter(|&i| r.body[i] != want[i]).collect();
        assert_eq!(diffs, vec![(at - 65_536) as usize]);
        assert_eq!((r.body[diffs[0]] ^ want[diffs[0]]).count_ones(), 1);
        // A response not covering it is intact; other CIDs are untouched.
        let r = raw(&m, "POST", &cat_target(CID, 0, Some(1000))).await;
        assert_eq!(r.body, &blob[..1000]);
        // Cleared.
        m.set_fault(Some(CID), None);
        let r = raw(&m, "POST", &cat_target(CID, 65_536, Some(10_000))).await;
        assert!(r.body == want);
    }

    #[tokio::test]
    async fn corrupt_random_flips_one_byte_per_response() {
        let (m, blob) = origin().await;
        m.set_fault(None, Some(Fault::CorruptRandom));
        for _ in 0..3 {
            let r = raw(&m, "POST", &cat_target(CID, 100, Some(50_000))).await;
            let want = &blob[100..50_100];
            let diffs: Vec<usize> = (0..want.len()).filter(|&i| r.body[i] != want[i]).collect();
            assert_eq!(diffs.len(), 1);
            assert_eq!((r.body[diffs[0]] ^ want[diffs[0]]).count_ones(), 1);
        }
    }

    #[tokio::test]
    async fn truncate_after_closes_mid_body() {
        let (m, blob) = origin().await;
        m.set_fault(Some(CID), Some(Fault::TruncateAfter(100_000)));
        let r = raw(&m, "POST", &cat_target(CID, 1000, Some(150_000))).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.content_length(), Some(150_000));
        assert_eq!(r.body.len(), 100_000, "exactly the bytes before the cut");
        assert!(r.body == blob[1000..101_000]);
        // Truncating at 0 still sends the headers.
        m.set_fault(Some(CID), Some(Fault::TruncateAfter(0)));
        let r = raw(&m, "POST", &cat_target(CID, 0, Some(10))).await;
        assert_eq!((r.status, r.content_length(), r.body.len()), (200, Some(10), 0));
        // A cut beyond the end changes nothing.
        m.set_fault(Some(CID), Some(Fault::TruncateAfter(10)));
        let r = raw(&m, "POST", &cat_target(CID, 0, Some(10))).await;
        assert_eq!(r.body, &blob[..10]);
    }

    #[tokio::test]
    async fn stall_after_stops_the_body() {
        let (m, blob) = origin().await;
        let dur = Duration::from_millis(500);
        m.set_fault(Some(CID), Some(Fault::StallAfter { bytes: 1000, dur }));
        let mut first: Option<Instant> = None;
        let mut last: Option<Instant> = None;
        let r = raw_with(&m, "POST", &cat_target(CID, 0, Some(200_000)), "", |t, n| {
            if n >= 1000 && first.is_none() {
                first = Some(t);
            }
            last = Some(t);
        })
        .await;
        assert_eq!(r.status, 200);
        assert!(r.body == blob[..200_000]);
        let (first, last) = (first.expect("1000 bytes seen"), last.expect("end seen"));
        assert!(last - first >= Duration::from_millis(400), "stalled only {:?}", last - first);
    }

    #[tokio::test]
    async fn delay_headers_and_status() {
        let (m, _) = origin().await;
        m.set_fault(None, Some(Fault::DelayHeaders(Duration::from_millis(300))));
        let t = Instant::now();
        assert_eq!(raw(&m, "POST", &cat_target(CID, 0, Some(1))).await.status, 200);
        assert!(t.elapsed() >= Duration::from_millis(300));
        m.set_fault(None, Some(Fault::Status(503)));
        let r = raw(&m, "POST", &cat_target(CID, 0, Some(1))).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.json()["Type"], "error");
    }

    #[tokio::test]
    async fn set_fault_times_clears_after_n() {
        let (m, _) = origin().await;
        m.set_fault_times(Some(CID), Fault::Status(502), 2);
        let status = |cid: &'static str| {
            let m = &m;
            async move { raw(m, "POST", &cat_target(cid, 0, Some(1))).await.status }
        };
        assert_eq!(status(CID).await, 502);
        assert_eq!(status(OTHER).await, 200); // does not match, not consumed
        assert_eq!(status(CID).await, 502);
        assert_eq!(status(CID).await, 200);
        // All-CIDs, counted across CIDs; a CID's own fault wins.
        m.set_fault_times(None, Fault::Status(504), 2);
        m.set_fault(Some(OTHER), Some(Fault::Status(418)));
        assert_eq!(status(OTHER).await, 418);
        assert_eq!(status(CID).await, 504);
        assert_eq!(status(CID).await, 504);
        assert_eq!(status(CID).await, 200);
        assert_eq!(status(OTHER).await, 418);
    }

    #[tokio::test]
    async fn counters_and_request_log() {
        let (m, blob) = origin().await;
        raw(&m, "POST", &cat_target(CID, 0, Some(100))).await;
        raw(&m, "POST", &cat_target(OTHER, 10, None)).await;
        raw(&m, "POST", &cat_target(CID, 262_144, Some(37_856))).await;
        raw_with(&m, "GET", &format!("/btfs/{CID}"), "Range: bytes=5-9\r\n", |_, _| {}).await;
        assert_eq!(m.requests(), 4);
        assert_eq!(m.requests_for(CID), 3);
        assert_eq!(m.requests_for(OTHER), 1);
        assert_eq!(m.requests_for("nope"), 0);
        assert_eq!(m.bytes_sent(), 100 + 990 + 37_856 + 5);
        assert_eq!(
            m.request_log(),
            vec![
                (CID.to_string(), 0, Some(100)),
                (OTHER.to_string(), 10, None),
                (CID.to_string(), 262_144, Some(37_856)),
                (CID.to_string(), 5, Some(5)),
            ]
        );
        assert_eq!(blob.len(), SIZE);
    }

    #[tokio::test]
    async fn gateway_serves_ranges() {
        let (m, blob) = origin().await;
        let path = format!("/btfs/{CID}");
        let range = |r: &str| format!("Range: {r}\r\n");
        let get = |extra: String| {
            let (m, path) = (&m, path.clone());
            async move { raw_with(m, "GET", &path, &extra, |_, _| {}).await }
        };
        let r = get(range("bytes=10-19")).await;
        assert_eq!(r.status, 206);
        assert_eq!(r.header("content-range"), Some(format!("bytes 10-19/{SIZE}").as_str()));
        assert_eq!(r.body, &blob[10..20]);
        let r = get(range("bytes=299990-")).await;
        assert_eq!(r.status, 206);
        assert_eq!(r.body, &blob[299_990..]);
        let r = get(range("bytes=-4")).await;
        assert_eq!((r.status, r.body.as_slice()), (206, &blob[SIZE - 4..]));
        let r = get(range("bytes=299990-999999")).await;
        assert_eq!(r.header("content-range"), Some(format!("bytes 299990-299999/{SIZE}").as_str()));
        let r = get(String::new()).await;
        assert_eq!(r.status, 200);
        assert!(r.body == blob[..]);
        let r = get(range(&format!("bytes={SIZE}-"))).await;
        assert_eq!(r.status, 416);
        assert_eq!(raw(&m, "GET", "/btfs/bafkreinope").await.status, 404);
        assert_eq!(raw(&m, "POST", &path).await.status, 405);
        // Faults apply to the gateway too.
        m.set_fault(Some(CID), Some(Fault::CorruptAt(15)));
        let r = get(range("bytes=10-19")).await;
        assert_eq!(r.body[5], blob[15] ^ 1);
        m.set_fault(Some(CID), Some(Fault::TruncateAfter(3)));
        let r = get(range("bytes=10-19")).await;
        assert_eq!((r.content_length(), r.body.len()), (Some(10), 3));
    }

    #[tokio::test]
    async fn prefixes_are_configurable() {
        let blob = content(100, 1);
        let m = MockOrigin::start_with_prefixes("/api/v0/", "ipfs", [(CID.to_string(), blob.clone())]).await;
        let r = raw(&m, "POST", &format!("/api/v0/cat?arg={CID}&offset=1&length=2")).await;
        assert_eq!(r.body, &blob[1..3]);
        assert_eq!(raw(&m, "POST", &cat_target(CID, 0, Some(1))).await.status, 404);
        assert_eq!(raw(&m, "GET", &format!("/ipfs/{CID}")).await.status, 200);
        assert!(m.url().starts_with("http://127.0.0.1:"));
    }

    #[tokio::test]
    async fn drop_stops_serving() {
        let (m, _) = origin().await;
        let addr = m.addr();
        drop(m);
        let mut refused = false;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused, "still accepting after drop");
    }

    #[tokio::test]
    async fn node_client_reads_through_the_mock() {
        use crate::btfs::{NodeClient, NodeConfig};
        let (m, blob) = origin().await;
        m.set_token(Some("t0k".into()));
        let client = NodeClient::new(
            NodeConfig { url: m.url(), api_prefix: DEFAULT_API_PREFIX.to_string(), token: Some("t0k".into()) },
            Duration::from_secs(5),
        )
        .expect("client");
        let t = Duration::from_secs(5);
        let got = client.cat_all(CID, 4096, 100_000, t).await.expect("cat");
        assert!(got == blob[4096..104_096]);
        m.set_fault_times(Some(CID), Fault::TruncateAfter(50_000), 1);
        let err = client.cat_all(CID, 0, 100_000, t).await.expect_err("truncated");
        assert!(err.retryable(), "{err}");
        m.set_fault_times(Some(CID), Fault::Status(500), 1);
        let err = client.cat_all(CID, 0, 10, t).await.expect_err("status");
        assert!(err.to_string().contains("injected"), "{err}");
        assert_eq!(client.cat_all(CID, 0, 10, t).await.expect("recovered"), &blob[..10]);
        assert_eq!(m.request_log().len(), 4);
    }
}
