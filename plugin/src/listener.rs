//! The one accept loop behind every listener (the HTTP API and the gRPC
//! APIs): a connection limit, TLS, HTTP/1.1 or HTTP/2 with hyper, and the
//! timers that keep a hostile client from holding a connection slot.
//!
//! A connection holds a slot only while it earns it:
//! - before its first request it has `header_read_timeout` from accept, TLS
//!   handshake, protocol sniffing and request head included;
//! - with no request in flight it has `idle_timeout` (an HTTP/1.1
//!   keep-alive connection between requests, an HTTP/2 connection with no
//!   streams that only answers PINGs, a TLS session gone quiet);
//! - while every slot is taken and another client waits, connections with
//!   no request in flight that have been idle for [`PRESSURE_MIN_IDLE`] are
//!   closed first, as nginx reuses keep-alive connections under pressure;
//! - a client that takes no bytes for `write_timeout` is cut (slow reader):
//!   a socket write that blocks that long, or (HTTP/2, where a client that
//!   never opens its flow-control window makes no write block) response
//!   bodies that wait that long for hyper to ask for their next frame.
//!
//! Requests in flight are never cut by these timers: a long body to a
//! reader that keeps reading is served to its end.
//!
//! Must not: know what is served. The service comes from the caller.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_io_timeout::TimeoutStream;
use tokio_rustls::TlsAcceptor;

use crate::metrics::ListenerLabel;

/// A connection with no request in flight is closed under pressure (every
/// slot taken, a client waiting) once it has been idle this long.
pub const PRESSURE_MIN_IDLE: Duration = Duration::from_secs(1);

/// How often a waiting client renews the pressure on idle connections.
const PRESSURE_EVERY: Duration = Duration::from_millis(250);

/// How long an idle connection being closed may take to say goodbye
/// (HTTP/2 GOAWAY) before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What a listener allows each connection.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Listener name in logs and metrics (`http`, `grpc`).
    pub name: &'static str,
    pub max_connections: usize,
    /// From accept to the first request's head (TLS handshake included).
    pub header_read_timeout: Duration,
    /// Longest time with no request in flight after the first.
    pub idle_timeout: Duration,
    /// A client that takes no bytes for this long is disconnected.
    pub write_timeout: Duration,
    /// On shutdown, in-flight requests get this long before they are cut.
    pub shutdown_grace: Duration,
}

/// The listener's counters: open connections and why connections were closed by us.
#[derive(Debug, Clone, Default)]
pub struct ListenerMetrics {
    pub open: Gauge,
    pub closed: Family<ListenerLabel, Counter>,
}

impl ListenerMetrics {
    fn closed(&self, listener: &'static str, reason: &'static str) {
        self.closed.get_or_create(&ListenerLabel { listener, reason }).inc();
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What serves a connection: a hyper service whose futures and errors can
/// cross threads.
pub trait ConnService<B>:
    hyper::service::Service<
        Request<hyper::body::Incoming>,
        Response = Response<B>,
        Future: Send + 'static,
        Error: Into<BoxError>,
    > + Send
    + 'static
{
}

impl<S, B> ConnService<B> for S where
    S: hyper::service::Service<
            Request<hyper::body::Incoming>,
            Response = Response<B>,
            Future: Send + 'static,
            Error: Into<BoxError>,
        > + Send
        + 'static
{
}

/// A response body a connection can send from any thread.
pub trait ConnBody: Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

impl<B> ConnBody for B where B: Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

/// A connection as a service factory sees it.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub peer: std::net::SocketAddr,
    /// DER of the verified TLS client certificate chain's leaf, if any.
    pub client_cert: Option<Vec<u8>>,
}

/// Whether a connection has a request in flight, and since when it has not.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    served: AtomicBool,
    idle_since: Mutex<Instant>,
    /// When the connection began; the times below count milliseconds from it.
    born: Instant,
    /// Response bodies that handed hyper a frame and have not been asked for
    /// the next: the client has yet to take what they sent.
    bodies_waiting: AtomicUsize,
    /// When hyper last asked any body of this connection for a frame.
    last_taken_ms: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
            born: Instant::now(),
            bodies_waiting: AtomicUsize::new(0),
            last_taken_ms: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn taken(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_taken_ms.store(ms, Ordering::Relaxed);
    }

    /// How long bodies have waited on a client that takes nothing (an HTTP/2
    /// client that never opens its flow-control window never makes a socket
    /// write block, so the write timeout cannot see it).
    fn reader_stalled_for(&self) -> Option<Duration> {
        if self.bodies_waiting.load(Ordering::Acquire) == 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_taken_ms.load(Ordering::Relaxed));
        Some(self.born.elapsed().saturating_sub(last))
    }

    fn begin(self: &Arc<Self>) -> RequestGuard {
        self.served.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        RequestGuard(self.clone())
    }

    /// `Some(since)` when no request is in flight.
    fn idle(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(*self.idle_since.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

/// Held by a request from its head to the end (or drop) of its response body.
#[derive(Debug)]
struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        // The time is set before the count falls, so an idle reading never sees a stale time.
        *self.0.idle_since.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A service whose responses hold their connection's activity until their bodies end.
#[derive(Debug, Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, ReqB, ResB> hyper::service::Service<Request<ReqB>> for Tracked<S>
where
    S: hyper::service::Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<TrackedBody<ResB>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, req: Request<ReqB>) -> Self::Future {
        let guard = self.activity.begin();
        TrackedFuture { inner: self.inner.call(req), guard: Some(guard) }
    }
}

pin_project_lite::pin_project! {
    struct TrackedFuture<F> {
        #[pin]
        inner: F,
        guard: Option<RequestGuard>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match std::task::ready!(this.inner.poll(cx)) {
            Ok(resp) => {
                let guard = this.guard.take();
                Poll::Ready(Ok(resp.map(|inner| TrackedBody { inner, waiting: false, guard })))
            }
            Err(e) => {
                this.guard.take();
                Poll::Ready(Err(e))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its connection busy until it ends or is
    /// dropped, and tells the connection whether its client takes what it sends.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        // A frame was handed over and the next has not been asked for.
        waiting: bool,
        guard: Option<RequestGuard>,
    }

    impl<B> PinnedDrop for TrackedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if *this.waiting && let Some(g) = this.guard.as_ref() {
                g.0.bodies_waiting.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        if let Some(g) = this.guard.as_ref() {
            // hyper asks for the next frame: the client took the last one.
            g.0.taken();
            if *this.waiting {
                *this.waiting = false;
                g.0.bodies_waiting.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let polled = this.inner.poll_frame(cx);
        if let (Poll::Ready(Some(Ok(_))), Some(g)) = (&polled, this.guard.as_ref()) {
            *this.waiting = true;
            g.0.bodies_waiting.fetch_add(1, Ordering::AcqRel);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves connections from `listener` until `shutdown` resolves, then stops
/// accepting and lets in-flight requests finish for `limits.shutdown_grace`;
/// connections still open after it are cut, and this returns once every
/// connection task (and so every response body) is gone.
///
/// `make_service` builds the service of one connection, after its TLS
/// handshake (so it sees the client certificate).
pub async fn serve<M, S, B>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    builder: auto::Builder<TokioExecutor>,
    limits: Limits,
    metrics: ListenerMetrics,
    make_service: M,
    shutdown: impl Future<Output = ()>,
) where
    M: Fn(Accepted) -> S + Send + Sync + 'static,
    S: ConnService<B>,
    B: ConnBody,
{
    let shared = Arc::new(Shared { builder, tls, limits, metrics, make_service });
    let limits = &shared.limits;
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (pressure_tx, pressure_rx) = watch::channel(0u64);
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while conns.try_join_next().is_some() {}
        // Accept first, then wait for a slot: a client waiting here is what
        // tells idle connections to make room (one socket over the limit).
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => match a {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = limits.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let mut wait = std::pin::pin!(slots.clone().acquire_owned());
                let permit = loop {
                    pressure_tx.send_modify(|n| *n = n.wrapping_add(1));
                    tokio::select! {
                        _ = &mut shutdown => break None,
                        p = &mut wait => break p.ok(),
                        _ = tokio::time::sleep(PRESSURE_EVERY) => {}
                    }
                };
                match permit {
                    Some(p) => p,
                    None => break,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let stop = stop_rx.clone();
        let pressure = pressure_rx.clone();
        conns.spawn(async move {
            let _permit = permit;
            // Decremented on drop, so an aborted task (shutdown) is counted out too.
            let _open = OpenGuard::new(shared.metrics.open.clone());
            shared.connection(stream, peer, stop, pressure).await;
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let grace = limits.shutdown_grace;
    tracing::info!(listener = limits.name, ?grace, "draining connections");
    let drained = tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            listener = limits.name,
            connections = conns.len(),
            "shutdown grace period ended with requests still in flight; cutting them"
        );
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
}

/// Counts a connection in the open gauge while it lives.
struct OpenGuard(Gauge);

impl OpenGuard {
    fn new(g: Gauge) -> Self {
        g.inc();
        Self(g)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

struct Shared<M> {
    builder: auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    metrics: ListenerMetrics,
    make_service: M,
}

/// Why a connection ended, when it was not the client's doing.
enum Ended {
    /// The connection future finished (client closed, or an error).
    Done,
    /// No first request within `header_read_timeout`.
    HeaderTimeout,
    /// No request in flight for `idle_timeout`.
    Idle,
    /// Responses waited `write_timeout` on a client that took nothing.
    SlowReader,
    /// Idle while another client waited for a slot.
    Pressure,
    /// Draining for shutdown; the caller's grace period bounds it.
    Shutdown,
}

impl<M> Shared<M> {
    async fn connection<S, B>(
        &self,
        stream: tokio::net::TcpStream,
        peer: std::net::SocketAddr,
        mut stop: watch::Receiver<bool>,
        pressure: watch::Receiver<u64>,
    ) where
        M: Fn(Accepted) -> S,
        S: ConnService<B>,
        B: ConnBody,
    {
        let deadline = Instant::now() + self.limits.header_read_timeout;
        let mut timed = TimeoutStream::new(stream);
        timed.set_write_timeout(Some(self.limits.write_timeout));
        let timed = Box::pin(timed);
        let activity = Activity::new();
        let ended = match &self.tls {
            None => {
                let svc = (self.make_service)(Accepted { peer, client_cert: None });
                self.drive(TokioIo::new(timed), svc, activity, deadline, &mut stop, pressure).await
            }
            Some(acceptor) => {
                let handshake = tokio::select! {
                    r = tokio::time::timeout_at(deadline, acceptor.accept(timed)) => r,
                    _ = stop.wait_for(|s| *s) => return,
                };
                match handshake {
                    Ok(Ok(tls_stream)) => {
                        // rustls has verified the chain against the client CA; only then is it passed on.
                        let client_cert =
                            tls_stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
                        let svc = (self.make_service)(Accepted { peer, client_cert });
                        self.drive(TokioIo::new(tls_stream), svc, activity, deadline, &mut stop, pressure).await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(listener = self.limits.name, %peer, error = %e, "TLS handshake failed");
                        Ended::Done
                    }
                    Err(_) => Ended::HeaderTimeout,
                }
            }
        };
        let reason = match ended {
            Ended::Done | Ended::Shutdown => return,
            Ended::HeaderTimeout => "header_timeout",
            Ended::Idle => "idle",
            Ended::Pressure => "pressure",
            Ended::SlowReader => "slow_reader",
        };
        tracing::debug!(listener = self.limits.name, %peer, reason, "connection closed by the server");
        self.metrics.closed(self.limits.name, reason);
    }

    /// Drives one connection to its end, closing it when it holds its slot without a request.
    async fn drive<I, S, B>(
        &self,
        io: I,
        svc: S,
        activity: Arc<Activity>,
        first_deadline: Instant,
        stop: &mut watch::Receiver<bool>,
        mut pressure: watch::Receiver<u64>,
    ) -> Ended
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
        S: ConnService<B>,
        B: ConnBody,
    {
        let limits = &self.limits;
        let svc = Tracked { inner: svc, activity: activity.clone() };
        let conn = self.builder.serve_connection(io, svc);
        tokio::pin!(conn);
        pressure.mark_unchanged();
        let mut pressure_open = true;
        let mut draining = false;
        // The timers are checked at least this often, so a request that
        // starts while the next deadline is far off is still watched.
        let period = limits
            .idle_timeout
            .min(limits.header_read_timeout)
            .min(limits.write_timeout / 4)
            .max(Duration::from_millis(50));
        // The first request's deadline runs from accept (a TLS handshake spent part of it).
        let mut check = first_deadline.min(Instant::now() + period);
        let ended = loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(listener = limits.name, error = %e, "connection ended with an error");
                    }
                    return Ended::Done;
                }
                _ = stop.wait_for(|s| *s), if !draining => {
                    // Finish what is in flight, take nothing new.
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
                _ = tokio::time::sleep_until(check) => {
                    let Some(since) = activity.idle() else {
                        if activity.reader_stalled_for().is_some_and(|d| d >= limits.write_timeout) {
                            break Ended::SlowReader;
                        }
                        check = Instant::now() + period;
                        continue;
                    };
                    let (limit, why) = if activity.served.load(Ordering::Relaxed) {
                        (limits.idle_timeout, Ended::Idle)
                    } else {
                        (limits.header_read_timeout, Ended::HeaderTimeout)
                    };
                    if since.elapsed() >= limit {
                        break why;
                    }
                    check = (since + limit).min(Instant::now() + period);
                }
                changed = pressure.changed(), if pressure_open => {
                    if changed.is_err() {
                        // The accept loop is gone; shutdown handles the rest.
                        pressure_open = false;
                        continue;
                    }
                    if activity.idle().is_some_and(|since| since.elapsed() >= PRESSURE_MIN_IDLE) {
                        break Ended::Pressure;
                    }
                }
            }
        };
        if draining {
            return Ended::Shutdown;
        }
        // Say goodbye (HTTP/2 GOAWAY; HTTP/1.1 and a connection still sniffing close at once).
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await;
        ended
    }
}
