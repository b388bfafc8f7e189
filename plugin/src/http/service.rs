//! Routing and admission: every request's first phase. Parses the route
//! (a hostile path is a 400), answers the open routes (health, readiness,
//! metrics, dashboard), and sends everything under `/v1` through the front
//! door ([`crate::door`]): admission, then opening the release or file.
//! Discovery is in [`super::discovery`], file and manifest responses in
//! [`super::file`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use super::body::{self, Body};
use super::discovery::{Discovery, describe_dataset, list_datasets};
use super::file::{lifecycle_headers, manifest, serve_file};
use super::route::{Route, parse_route};
use crate::door::{self, OpenError};
use crate::gateway::Gateway;
use crate::metrics::RequestLabel;
use crate::tenant::Denied;

/// Names from the connection's verified TLS client certificate, if any.
#[derive(Debug, Clone, Default)]
pub struct PeerNames(pub Arc<Vec<String>>);

/// The connection's peer address.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// The request's client address: the peer, or what a trusted proxy forwarded.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::IpAddr);

/// Serves one request. Never fails: every problem is an HTTP answer.
pub async fn handle<B>(gw: Arc<Gateway>, mut req: Request<B>) -> Result<Response<Body>, Infallible> {
    use tracing::Instrument;
    let started = Instant::now();
    let client = req
        .extensions()
        .get::<Peer>()
        .map(|p| super::forwarded::client(p.0.ip(), req.headers(), &gw.config().server.trusted_proxies));
    if let Some(c) = client {
        req.extensions_mut().insert(ClientAddr(c));
    }
    // Every event logged while the request is served names its client.
    let span = tracing::debug_span!("request", client = client.map(tracing::field::display), path = %req.uri().path());
    let (route, resp) = route(&gw, &req, started).instrument(span.clone()).await;
    span.in_scope(|| tracing::debug!(route, status = resp.status().as_u16(), "answered"));
    let ok = matches!(resp.status().as_u16(), 200 | 206 | 304);
    match route {
        "manifest" if ok => {
            let d = started.elapsed();
            gw.metrics().manifest_latency.observe(d);
            gw.metrics().manifest_seconds.observe(d.as_secs_f64());
        }
        "file" | "s3_object" if ok => {
            let d = started.elapsed();
            gw.metrics().file_first_byte.observe(d);
            gw.metrics().file_first_byte_seconds.observe(d.as_secs_f64());
        }
        _ => {}
    }
    gw.metrics().requests.get_or_create(&RequestLabel { route, status: resp.status().as_u16() }).inc();
    Ok(resp)
}

pub(super) fn error(status: StatusCode, message: impl std::fmt::Display) -> Response<Body> {
    let body = serde_json::json!({ "error": message.to_string(), "status": status.as_u16() }).to_string();
    let mut r = Response::new(body::full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

pub(super) fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(body::full(serde_json::to_vec_pretty(v).unwrap_or_default()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn text(status: StatusCode, s: impl Into<Bytes>, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(body::full(s));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn route<B>(gw: &Arc<Gateway>, req: &Request<B>, started: Instant) -> (&'static str, Response<Body>) {
    if crate::s3::wants(gw, req) {
        return crate::s3::handle(gw, req, started).await;
    }
    let route = match parse_route(req.uri().path()) {
        Ok(r) => r,
        Err(e) => return ("other", error(StatusCode::BAD_REQUEST, e)),
    };
    let label = route.label();
    let method = req.method();
    let plain = "text/plain; charset=utf-8";
    let resp = match route {
        Route::Healthz => text(StatusCode::OK, "ok\n", plain),
        Route::Readyz => readyz(gw),
        Route::Metrics => {
            gw.metrics().hot_bytes.set(gw.fetcher().hot().weighted_bytes());
            gw.metrics().plain_tier_bytes.set(gw.fetcher().plain_bytes());
            if let Some(d) = gw.fetcher().disk() {
                gw.metrics().disk_bytes.set(d.bytes());
            }
            gw.metrics().tenant_clients.clear();
            for (tenant, n) in gw.clients().last_minute() {
                let label = crate::metrics::TenantLabel { tenant: tenant.to_string() };
                gw.metrics().tenant_clients.get_or_create(&label).set(n as i64);
            }
            for (tenant, bytes) in gw.meter().tenant_totals() {
                let c = gw
                    .metrics()
                    .tenant_bytes
                    .get_or_create(&crate::metrics::TenantLabel { tenant: tenant.to_string() });
                c.inner().store(bytes, std::sync::atomic::Ordering::Relaxed);
            }
            text(StatusCode::OK, gw.metrics().render(), "text/plain; version=0.0.4; charset=utf-8")
        }
        Route::NotFound => error(StatusCode::NOT_FOUND, format!("no route for {}", req.uri().path())),
        Route::Dashboard { asset } if method == Method::GET || method == Method::HEAD => super::reports::asset(asset)
            .unwrap_or_else(|| error(StatusCode::NOT_FOUND, format!("the dashboard has no {asset:?}"))),
        Route::ReportSummary => super::reports::summary(gw, req).await,
        // Operators' pre-warm, on the file's own path so a balancer hashing
        // paths sends it to the member that serves the file.
        Route::File { name, version, path } if method == Method::POST => {
            return ("prewarm", super::prewarm::file(gw, req, name, version, path).await);
        }
        Route::Manifest { name, version } if method == Method::POST => {
            return ("prewarm", super::prewarm::plan(gw, req, name, version));
        }
        _ if method != Method::GET && method != Method::HEAD => {
            let mut r = error(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed here"));
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            r
        }
        _ => {
            // Everything under /v1 goes through the front door: who is asking,
            // may they, within quota and rate, all before any origin work.
            let cert_names = req.extensions().get::<PeerNames>().map(|p| p.0.as_slice()).unwrap_or(&[]);
            let creds = door::Credentials {
                authorization: req.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes),
                cert_names,
                signed_by: None,
                client: req.extensions().get::<ClientAddr>().map(|c| c.0),
            };
            let target = match &route {
                Route::Dataset { name }
                | Route::Manifest { name, .. }
                | Route::Placement { name, .. }
                | Route::File { name, .. } => door::Target::Dataset(name),
                Route::Blob { hash } => door::Target::Blob(hash),
                _ => door::Target::Any,
            };
            let tenant = match door::admit(gw, creds, target) {
                Ok(t) => t,
                Err(d) => return (label, denied(&d)),
            };
            match route {
                Route::ListDatasets => match Discovery::parse(req.uri().query()) {
                    Ok(q) => list_datasets(gw, &gw.tenants(), &tenant, &q),
                    Err(e) => error(StatusCode::BAD_REQUEST, e),
                },
                Route::Dataset { name } => describe_dataset(gw, name, &tenant),
                Route::Manifest { name, version } => manifest(gw, req, name, version, &tenant),
                Route::File { name, version, path } => {
                    match door::open_file(gw, name, version, &path, door::Reader::Tenant(&tenant)) {
                        Ok(open) => {
                            let v = open.file.release.version().clone();
                            let location =
                                format!("/v1/datasets/{name}/{v}/files/{}", super::route::encode_path(&path));
                            let (catalog, resolved) = (open.catalog.clone(), open.resolved.clone());
                            let resp = serve_file(gw, req, open, started, tenant).await;
                            match resolved {
                                Some(r) => lifecycle_headers(resp, &catalog, name, &r, &location),
                                None => resp,
                            }
                        }
                        Err(e) => not_opened(&e),
                    }
                }
                Route::Blob { hash } => match door::open_blob(gw, &hash, &tenant) {
                    Ok(open) => serve_file(gw, req, open, started, tenant).await,
                    // Not a file: the chunk table of one, served verified for
                    // clients that check chunks themselves.
                    Err(OpenError::UnknownBlob { .. }) => match door::open_table(gw, &hash, &tenant) {
                        Ok(open) => super::file::table(gw, req, open, &tenant).await,
                        Err(e) => not_opened(&e),
                    },
                    Err(e) => not_opened(&e),
                },
                Route::Placement { name, version } => super::file::placement(gw, req, name, version, &tenant),
                _ => error(StatusCode::NOT_FOUND, format!("no route for {}", req.uri().path())),
            }
        }
    };
    (label, resp)
}

/// The answer for a release or file the door would not open.
pub(super) fn not_opened(e: &OpenError) -> Response<Body> {
    match e {
        OpenError::TakenDown { name, reason, at, successor, .. } => {
            let successor = successor.as_ref().map(|s| format!("/v1/datasets/{name}/{s}"));
            let body = serde_json::json!({
                "error": e.to_string(),
                "status": 451,
                "reason": reason,
                "taken_down_at": jiff::Timestamp::from_second(*at).map(|t| t.to_string()).unwrap_or_default(),
                "successor": successor,
            });
            let mut r = Response::new(body::full(body.to_string()));
            *r.status_mut() = StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS;
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        OpenError::NotLoaded { .. } => {
            // It may be one of the releases still being retried: come back soon.
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, e);
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            r
        }
        OpenError::BadLayout { .. } => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        e if e.is_forbidden() => {
            let mut r = error(StatusCode::FORBIDDEN, e);
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        _ => error(StatusCode::NOT_FOUND, e),
    }
}

/// `/readyz`: 200 when releases are loaded and an origin answers, else 503;
/// the body says why, and always says when verification is off.
fn readyz(gw: &Gateway) -> Response<Body> {
    let reasons = gw.not_ready_reasons();
    let mut body = if reasons.is_empty() {
        String::from("ready\n")
    } else {
        reasons.iter().map(|r| format!("not ready: {r}\n")).collect()
    };
    for w in gw.readiness_warnings() {
        body.push_str(&format!("warning: {w}\n"));
    }
    let status = if reasons.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    text(status, body, "text/plain; charset=utf-8")
}

/// The answer to a request refused before any origin work.
pub(super) fn denied(d: &Denied) -> Response<Body> {
    match d {
        Denied::Unauthenticated(_) => {
            let mut r = error(StatusCode::UNAUTHORIZED, d);
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"shardgate\""));
            r
        }
        Denied::Forbidden { .. } => error(StatusCode::FORBIDDEN, d),
        Denied::Hidden(_) => error(StatusCode::NOT_FOUND, d),
        Denied::RateLimited { retry_after, .. } | Denied::QuotaExhausted { retry_after, .. } => {
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, d);
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            r
        }
    }
}
