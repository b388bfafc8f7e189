//! Request handling: routing, RFC 9110 range and conditional logic, and
//! the response headers every loader relies on.
//!
//! Phases of a file request: resolve the release and file (404), apply
//! conditionals (304, If-Range), plan the ranges (200/206/416), fetch the
//! first chunk (502 if no origin can supply verified bytes), send headers,
//! then stream the remaining verified chunks.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use super::body::{self, Body, Piece};
use super::range::{self, MultipartPlan, RangeRequest};
use super::route::{Route, parse_route};
use crate::door::{self, OpenError, OpenFile};
use crate::fetch::Source;
use crate::gateway::Gateway;
use crate::metrics::RequestLabel;
use crate::registry::{Catalog, Resolved};
use crate::tenant::{Denied, Tenant, Tenants};
use crate::usage::{Meter, ReleaseTag, ResponseMeter};

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// A tag can move: its answers are cached for a minute.
const TAG_CACHE: &str = "public, max-age=60";
static X_CACHE: HeaderName = HeaderName::from_static("x-shardgate-cache");

/// Names from the connection's verified TLS client certificate, if any.
#[derive(Debug, Clone, Default)]
pub struct PeerNames(pub Arc<Vec<String>>);

/// Serves one request. Never fails: every problem is an HTTP answer.
pub async fn handle<B>(gw: Arc<Gateway>, req: Request<B>) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let (route, resp) = route(&gw, &req, started).await;
    let ok = matches!(resp.status().as_u16(), 200 | 206 | 304);
    match route {
        "manifest" if ok => gw.metrics().manifest_latency.observe(started.elapsed()),
        "file" if ok => gw.metrics().file_first_byte.observe(started.elapsed()),
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
            if let Some(d) = gw.fetcher().disk() {
                gw.metrics().disk_bytes.set(d.bytes());
            }
            text(StatusCode::OK, gw.metrics().render(), "text/plain; version=0.0.4; charset=utf-8")
        }
        Route::NotFound => error(StatusCode::NOT_FOUND, format!("no route for {}", req.uri().path())),
        Route::Dashboard { asset } if method == Method::GET || method == Method::HEAD => super::reports::asset(asset)
            .unwrap_or_else(|| error(StatusCode::NOT_FOUND, format!("the dashboard has no {asset:?}"))),
        Route::ReportSummary => super::reports::summary(gw, req).await,
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
            };
            let target = match &route {
                Route::Dataset { name } | Route::Manifest { name, .. } | Route::File { name, .. } => {
                    door::Target::Dataset(name)
                }
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
                Route::Dataset { name } => describe_dataset(gw, name),
                Route::Manifest { name, version } => manifest(gw, req, name, version, &tenant),
                Route::File { name, version, path } => match door::open_file(gw, name, version, &path) {
                    Ok(open) => {
                        let v = open.file.release.version().clone();
                        let location = format!("/v1/datasets/{name}/{v}/files/{}", super::route::encode_path(&path));
                        let (catalog, resolved) = (open.catalog.clone(), open.resolved.clone());
                        let resp = serve_file(gw, req, open, started, tenant).await;
                        match resolved {
                            Some(r) => lifecycle_headers(resp, &catalog, name, &r, &location),
                            None => resp,
                        }
                    }
                    Err(e) => not_opened(&e),
                },
                Route::Blob { hash } => match door::open_blob(gw, &hash, &tenant) {
                    Ok(open) => serve_file(gw, req, open, started, tenant).await,
                    Err(e) => not_opened(&e),
                },
                _ => error(StatusCode::NOT_FOUND, format!("no route for {}", req.uri().path())),
            }
        }
    };
    (label, resp)
}

/// The answer for a release or file the door would not open.
fn not_opened(e: &OpenError) -> Response<Body> {
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
    if !gw.config().fetch.verify {
        body.push_str("warning: fetch.verify = false: chunks from origins are not verified\n");
    }
    let status = if reasons.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    text(status, body, "text/plain; charset=utf-8")
}

/// The answer to a request refused before any origin work.
fn denied(d: &Denied) -> Response<Body> {
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

/// Discovery filters of `GET /v1/datasets`, all optional, all must match.
#[derive(Debug, Default)]
struct Discovery {
    modality: Option<String>,
    license: Option<String>,
    language: Option<String>,
    compliance: Option<String>,
    label_type: Option<String>,
    updated_since: Option<jiff::Timestamp>,
    /// Free text, lower-cased: matched against the name and every envelope value.
    q: Option<String>,
}

impl Discovery {
    fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut d = Discovery::default();
        let Some(query) = query.filter(|q| !q.is_empty()) else { return Ok(d) };
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let v = v.trim().to_string();
            if v.is_empty() {
                continue;
            }
            match &*k {
                "modality" => d.modality = Some(v.to_lowercase()),
                "license" => d.license = Some(v.to_lowercase()),
                "language" => d.language = Some(v.to_lowercase()),
                "compliance" => d.compliance = Some(v.to_lowercase()),
                "label_type" => d.label_type = Some(v.to_lowercase()),
                "q" => d.q = Some(v.to_lowercase()),
                "updated_since" => {
                    let t = v
                        .parse::<jiff::Timestamp>()
                        .or_else(|_| {
                            v.parse::<jiff::civil::Date>()
                                .and_then(|day| day.to_zoned(jiff::tz::TimeZone::UTC).map(|z| z.timestamp()))
                        })
                        .map_err(|_| format!("updated_since {v:?} is not a date (2026-11-01) or an RFC 3339 time"))?;
                    d.updated_since = Some(t);
                }
                other => {
                    return Err(format!(
                        "unknown filter {other:?}; filters are modality, license, language, compliance, \
                         label_type, updated_since, q"
                    ));
                }
            }
        }
        Ok(d)
    }

    fn matches(&self, r: &crate::registry::Release) -> bool {
        let m = &r.signed.manifest;
        let e = &m.envelope;
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_ref().is_none_or(|w| have.is_some_and(|h| h.to_lowercase() == *w))
        };
        let any = |want: &Option<String>, have: Option<&Vec<String>>| {
            want.as_ref().is_none_or(|w| have.is_some_and(|hs| hs.iter().any(|h| h.to_lowercase() == *w)))
        };
        let text = || {
            let envelope = serde_json::to_string(e).unwrap_or_default().to_lowercase();
            format!("{} {envelope}", m.name.to_lowercase())
        };
        any(&self.modality, e.modality.as_ref())
            && eq(&self.license, e.license.as_deref())
            && any(&self.language, e.languages.as_ref())
            && eq(&self.compliance, e.compliance_class.as_deref())
            && eq(&self.label_type, e.label_taxonomy.as_ref().and_then(|l| l.kind.as_deref()))
            && self.updated_since.is_none_or(|t| m.created_at >= t)
            && self.q.as_ref().is_none_or(|q| text().contains(q.as_str()))
    }
}

fn list_datasets(gw: &Gateway, tenants: &Tenants, tenant: &Tenant, q: &Discovery) -> Response<Body> {
    let catalog = gw.registry().snapshot();
    let datasets: Vec<serde_json::Value> = catalog
        .names()
        .filter(|(name, _)| tenants.can_see(tenant, name))
        .filter_map(|(name, versions)| {
            // Taken-down releases are never discovered.
            let found: Vec<_> = versions
                .values()
                .filter(|r| catalog.state(name, r.version()).taken_down.is_none() && q.matches(r))
                .collect();
            let latest = found.last()?;
            let m = &latest.signed.manifest;
            Some(serde_json::json!({
                "name": name,
                "versions": found.iter().map(|r| r.version().to_string()).collect::<Vec<_>>(),
                "latest": m.version.to_string(),
                "state": catalog.state(name, &m.version).label(),
                "tags": catalog.lifecycle().tags.get(name.as_str()).map(|t| t.keys().cloned().collect::<Vec<_>>()).unwrap_or_default(),
                "license": m.envelope.license,
                "modality": m.envelope.modality,
                "languages": m.envelope.languages,
                "compliance_class": m.envelope.compliance_class,
                "label_type": m.envelope.label_taxonomy.as_ref().and_then(|l| l.kind.clone()),
                "updated_at": m.created_at.to_string(),
                "total_bytes": m.total_bytes,
            }))
        })
        .collect();
    // Configured releases this gateway could not load, so a reader missing
    // one knows why (and whether it is being retried).
    let not_loaded: Vec<serde_json::Value> =
        gw.unloaded().iter().map(|u| serde_json::json!({ "error": u.error, "retrying": u.retry })).collect();
    json(StatusCode::OK, &serde_json::json!({ "datasets": datasets, "not_loaded": not_loaded }))
}

fn describe_dataset(gw: &Gateway, name: &str) -> Response<Body> {
    let catalog = gw.registry().snapshot();
    let Some(versions) = catalog.versions(name) else {
        return error(StatusCode::NOT_FOUND, format!("no dataset named {name:?} is served"));
    };
    let versions: Vec<serde_json::Value> = versions
        .values()
        .map(|r| {
            let m = &r.signed.manifest;
            let state = catalog.state(name, &m.version);
            let deprecation = state.deprecated.as_ref().map(|d| {
                serde_json::json!({
                    "reason": d.reason,
                    "successor": d.successor.as_ref().map(ToString::to_string),
                    "sunset": d.sunset.and_then(|t| jiff::Timestamp::from_second(t).ok()).map(|t| t.to_string()),
                })
            });
            let takedown = state.taken_down.as_ref().map(|t| serde_json::json!({ "reason": t.reason }));
            serde_json::json!({
                "version": m.version.to_string(),
                "state": state.label(),
                "tags": catalog.lifecycle().tags_of(name, &m.version),
                "deprecation": deprecation,
                "takedown": takedown,
                "release_id": r.signed.id.to_hex(),
                "signer": r.signed.signer.to_string(),
                "created_at": m.created_at.to_string(),
                "files": m.files.len(),
                "total_bytes": m.total_bytes,
                "records": m.records,
                "manifest_url": format!("/v1/datasets/{}/{}/manifest", m.name, m.version),
                "envelope": m.envelope,
            })
        })
        .collect();
    let tags: serde_json::Map<String, serde_json::Value> = catalog
        .lifecycle()
        .tags
        .get(name)
        .map(|t| t.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.to_string()))).collect())
        .unwrap_or_default();
    json(StatusCode::OK, &serde_json::json!({ "name": name, "tags": tags, "versions": versions }))
}

/// Who to bill for a response, unless metering is off.
struct Billing {
    meter: Arc<Meter>,
    tenant: Arc<str>,
    release: ReleaseTag,
}

impl Billing {
    fn new(gw: &Gateway, tenant: &Tenant, release: ReleaseTag) -> Option<Self> {
        gw.config().usage.enabled.then(|| Self { meter: gw.meter().clone(), tenant: tenant.id.clone(), release })
    }

    /// Meters a response whose body is sent at once (or has none), if it is a success.
    fn whole(&self, resp: &Response<Body>) {
        let s = resp.status();
        if s.is_success() || s == StatusCode::NOT_MODIFIED {
            let bytes = http_body::Body::size_hint(resp.body()).exact().unwrap_or(0);
            self.meter.record_response(&self.tenant, &self.release, bytes, 0, false);
        }
    }

    fn streaming(self, expected: u64, quota: Option<u64>) -> ResponseMeter {
        ResponseMeter::new(self.meter, self.tenant, self.release, expected).with_quota(quota)
    }
}

fn manifest<B>(gw: &Gateway, req: &Request<B>, name: &str, version: &str, tenant: &Tenant) -> Response<Body> {
    let (catalog, resolved, release) = match door::open_release(gw, name, version) {
        Ok(x) => x,
        Err(e) => return not_opened(&e),
    };
    let v = resolved.version();
    let etag = format!("\"{}\"", release.signed.id);
    let bytes = Bytes::from(release.signed.bytes.clone());
    let resp = respond_in_memory(gw, req, bytes, &etag, "application/json");
    if let Some(b) = Billing::new(gw, tenant, release.tag()) {
        b.whole(&resp);
    }
    lifecycle_headers(resp, &catalog, name, &resolved, &format!("/v1/datasets/{name}/{v}/manifest"))
}

/// Headers that tell a client where a tag led and what state the release is in.
fn lifecycle_headers(
    mut resp: Response<Body>,
    catalog: &Catalog,
    name: &str,
    resolved: &Resolved,
    location: &str,
) -> Response<Body> {
    let s = resp.status();
    if !(s.is_success() || s == StatusCode::NOT_MODIFIED) {
        return resp;
    }
    let v = resolved.version();
    let h = resp.headers_mut();
    if let Resolved::Tag(..) = resolved {
        // A tag moves: point at the immutable URL, and cache the answer briefly.
        if let Ok(l) = HeaderValue::from_str(location) {
            h.insert(header::CONTENT_LOCATION, l);
        }
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(TAG_CACHE));
    }
    if let Some(d) = catalog.state(name, v).deprecated {
        // RFC 9745: `Deprecation: @<unix seconds>`.
        if let Ok(val) = HeaderValue::from_str(&format!("@{}", d.at)) {
            h.insert(HeaderName::from_static("deprecation"), val);
        }
        // RFC 8594: an HTTP-date.
        if let Some(sunset) = d.sunset.and_then(|t| jiff::Timestamp::from_second(t).ok()) {
            let printer = jiff::fmt::rfc2822::DateTimePrinter::new();
            if let Some(val) =
                printer.timestamp_to_rfc9110_string(&sunset).ok().and_then(|t| HeaderValue::from_str(&t).ok())
            {
                h.insert(HeaderName::from_static("sunset"), val);
            }
        }
        if let Some(succ) = &d.successor
            && let Ok(val) = HeaderValue::from_str(&format!("</v1/datasets/{name}/{succ}>; rel=\"successor-version\""))
        {
            h.append(header::LINK, val);
        }
    }
    resp
}

/// Dataset bytes as the response will label them: a media type a browser
/// could run script in (HTML, XHTML, SVG, any XML, JavaScript) is sent as
/// `application/octet-stream`, and so is one that does not parse. The type
/// is read as RFC 9110 does: surrounding whitespace, case and parameters do
/// not hide it.
pub(super) fn served_media_type(raw: &str) -> &str {
    const OPAQUE: &str = "application/octet-stream";
    let essence = raw.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let Some((kind, sub)) = essence.split_once('/') else { return OPAQUE };
    let token = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b));
    if !token(kind) || !token(sub) || HeaderValue::from_str(raw.trim()).is_err() {
        return OPAQUE;
    }
    let active = matches!(
        essence.as_str(),
        "text/html"
            | "application/xhtml+xml"
            | "image/svg+xml"
            | "text/xml"
            | "application/xml"
            | "text/xsl"
            | "application/xslt+xml"
            | "text/javascript"
            | "application/javascript"
            | "application/x-javascript"
            | "text/ecmascript"
            | "application/ecmascript"
            | "multipart/x-mixed-replace"
            | "application/x-shockwave-flash"
    ) || sub.ends_with("+xml")
        || sub == "xml";
    if active { OPAQUE } else { raw.trim() }
}

/// Common headers of every representation response. No browser runs
/// dataset bytes on this origin (which also serves the dashboard): the
/// type is never sniffed, a sandbox policy gives the document an opaque
/// origin with no scripts, and a type a browser would run is sent as an
/// attachment under an opaque type.
fn representation_headers(h: &mut HeaderMap, etag: &str, content_type: &str) {
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    let served = served_media_type(content_type);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(served).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    if served != content_type.trim() {
        h.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment"));
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox; default-src 'none'"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
}

/// What a GET or HEAD of a representation of `len` bytes will send.
enum Plan {
    NotModified,
    Unsatisfiable,
    TooManyRanges(String),
    Send {
        status: StatusCode,
        pieces: Vec<Piece>,
        content_length: u64,
        content_range: Option<String>,
        multipart_type: Option<String>,
    },
}

fn plan<B>(req: &Request<B>, len: u64, etag: &str, content_type: &str, max_ranges: usize) -> Plan {
    let h = req.headers();
    if let Some(inm) = h.get(header::IF_NONE_MATCH)
        && range::if_none_match_matches(inm.as_bytes(), etag)
    {
        return Plan::NotModified;
    }
    let range_header = h
        .get(header::RANGE)
        .filter(|_| h.get(header::IF_RANGE).is_none_or(|ir| range::if_range_matches(ir.as_bytes(), etag)));
    let request = match range_header {
        None => RangeRequest::Full,
        Some(v) => match range::parse_range(v.as_bytes(), len, max_ranges) {
            Ok(r) => r,
            Err(e) => return Plan::TooManyRanges(e.to_string()),
        },
    };
    match request {
        RangeRequest::Full => Plan::Send {
            status: StatusCode::OK,
            pieces: if len > 0 { vec![Piece::Range(0..len)] } else { vec![] },
            content_length: len,
            content_range: None,
            multipart_type: None,
        },
        RangeRequest::Single(r) => Plan::Send {
            status: StatusCode::PARTIAL_CONTENT,
            content_length: r.end - r.start,
            content_range: Some(range::content_range(&r, len)),
            pieces: vec![Piece::Range(r)],
            multipart_type: None,
        },
        RangeRequest::Multi(ranges) => {
            let boundary = format!("shardgate-{}", &etag.trim_matches('"')[..16.min(etag.len().saturating_sub(2))]);
            let mp = MultipartPlan::new(&ranges, len, content_type, boundary);
            let mut pieces = Vec::with_capacity(mp.parts.len() * 2 + 1);
            for p in &mp.parts {
                pieces.push(Piece::Literal(p.head.clone()));
                pieces.push(Piece::Range(p.range.clone()));
            }
            pieces.push(Piece::Literal(mp.tail()));
            Plan::Send {
                status: StatusCode::PARTIAL_CONTENT,
                content_length: mp.content_length,
                content_range: None,
                multipart_type: Some(mp.content_type()),
                pieces,
            }
        }
        RangeRequest::Unsatisfiable => Plan::Unsatisfiable,
    }
}

/// The head of a planned response, or a complete early answer (304, 416).
enum Head {
    Early(Response<Body>),
    Send(Response<()>, Vec<Piece>),
}

fn head_for(plan: Plan, len: u64, etag: &str, content_type: &str) -> Head {
    let mut r = Response::new(());
    representation_headers(r.headers_mut(), etag, content_type);
    match plan {
        Plan::NotModified => {
            let mut resp = Response::new(body::empty());
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            let h = resp.headers_mut();
            if let Ok(v) = HeaderValue::from_str(etag) {
                h.insert(header::ETAG, v);
            }
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            Head::Early(resp)
        }
        Plan::Unsatisfiable | Plan::TooManyRanges(_) => {
            let msg = match plan {
                Plan::TooManyRanges(m) => m,
                _ => format!("no requested range is within the {len} bytes of this file"),
            };
            let mut resp = error(StatusCode::RANGE_NOT_SATISFIABLE, msg);
            let h = resp.headers_mut();
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            if let Ok(v) = HeaderValue::from_str(&range::unsatisfied_content_range(len)) {
                h.insert(header::CONTENT_RANGE, v);
            }
            if let Ok(v) = HeaderValue::from_str(etag) {
                h.insert(header::ETAG, v);
            }
            Head::Early(resp)
        }
        Plan::Send { status, pieces, content_length, content_range, multipart_type } => {
            *r.status_mut() = status;
            let h = r.headers_mut();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(content_length));
            if let Some(cr) = content_range.and_then(|c| HeaderValue::from_str(&c).ok()) {
                h.insert(header::CONTENT_RANGE, cr);
            }
            if let Some(mt) = multipart_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
                h.insert(header::CONTENT_TYPE, mt);
            }
            Head::Send(r, pieces)
        }
    }
}

fn respond_in_memory<B>(
    gw: &Gateway,
    req: &Request<B>,
    bytes: Bytes,
    etag: &str,
    content_type: &str,
) -> Response<Body> {
    let len = bytes.len() as u64;
    let p = plan(req, len, etag, content_type, gw.config().server.max_ranges);
    let (head, pieces) = match head_for(p, len, etag, content_type) {
        Head::Send(h, p) => (h, p),
        Head::Early(early) => return early,
    };
    let (parts, ()) = head.into_parts();
    if req.method() == Method::HEAD {
        return Response::from_parts(parts, body::empty());
    }
    let mut out = Vec::with_capacity(
        pieces
            .iter()
            .map(|p| match p {
                Piece::Literal(b) => b.len(),
                Piece::Range(r) => (r.end - r.start) as usize,
            })
            .sum(),
    );
    for p in pieces {
        match p {
            Piece::Literal(b) => out.extend_from_slice(&b),
            Piece::Range(r) => out.extend_from_slice(&bytes[r.start as usize..r.end as usize]),
        }
    }
    Response::from_parts(parts, body::full(out))
}

async fn serve_file<B>(
    gw: &Arc<Gateway>,
    req: &Request<B>,
    open: OpenFile,
    started: Instant,
    tenant: Arc<Tenant>,
) -> Response<Body> {
    let OpenFile { file: f, spec, mut liveness, .. } = open;
    let entry = f.entry();
    let etag = format!("\"{}\"", entry.blake3);
    let len = entry.size;
    let media = served_media_type(&entry.media_type);
    let p = plan(req, len, &etag, media, gw.config().server.max_ranges);
    let billing = Billing::new(gw, &tenant, f.release.tag());
    let (head, pieces) = match head_for(p, len, &etag, &entry.media_type) {
        Head::Send(h, p) => (h, p),
        Head::Early(early) => {
            if let Some(b) = &billing {
                b.whole(&early);
            }
            return early;
        }
    };
    let (mut parts, ()) = head.into_parts();
    let fetcher = gw.fetcher().clone();

    // Which chunks the response needs, and how many are hot already.
    let covering: Vec<std::ops::Range<u64>> = pieces
        .iter()
        .filter_map(|p| match p {
            Piece::Range(r) => Some(spec.layout.chunks_covering(r.clone())),
            Piece::Literal(_) => None,
        })
        .collect();
    // A metered body needs every chunk's state, snapshot before any fetch
    // starts (its own spans and read-ahead will have put chunks in the hot
    // tier by the time it reads them); the cache header comes from the same
    // scan. Otherwise (HEAD, metering off) a capped scan serves the header.
    let body_wanted = req.method() != Method::HEAD && !pieces.is_empty();
    let cold = (billing.is_some() && body_wanted).then(|| fetcher.cold_set(&spec, &covering));
    let (hot, total) = match &cold {
        Some(c) => c.counts(&covering),
        None => covering.iter().fold((0, 0), |(h, t), c| {
            let (a, b) = fetcher.cached(&spec, c.clone());
            (h + a, t + b)
        }),
    };
    let cache = if total == 0 || hot == total {
        "hit"
    } else if hot == 0 {
        "miss"
    } else {
        "partial"
    };
    parts.headers.insert(X_CACHE.clone(), HeaderValue::from_static(cache));

    if req.method() == Method::HEAD || pieces.is_empty() {
        add_timing(&mut parts.headers, started, None);
        let resp = Response::from_parts(parts, body::empty());
        if let Some(b) = &billing {
            b.whole(&resp);
        }
        return resp;
    }

    // The first chunk is fetched before the headers go out, so a file that no
    // origin can supply gets a clean 502 instead of a cut body.
    let first_range = pieces.iter().find_map(|p| match p {
        Piece::Range(r) => Some(r.clone()),
        Piece::Literal(_) => None,
    });
    let mut primed = None;
    // The first miss fetches within the first range only (see body.rs).
    let end_chunk = covering.first().map(|c| c.end).unwrap_or(0);
    if let Some(r) = first_range {
        let index = r.start / spec.layout.chunk_size();
        let t0 = Instant::now();
        match fetcher.chunk(&spec, index, end_chunk).await {
            Ok((b, s)) => {
                add_timing(&mut parts.headers, started, Some((s, t0.elapsed())));
                primed = Some((index, b, s));
            }
            Err(e) => {
                tracing::warn!(error = %e, file = %entry.blake3, "no verified bytes for the first chunk");
                if let Some(b) = &billing {
                    b.meter.record_integrity_abort(&b.release, 0);
                }
                return error(StatusCode::BAD_GATEWAY, format!("no origin could supply verified bytes: {e}"));
            }
        }
    }
    // A takedown (or a reload that dropped the release) that landed while
    // the first chunk was fetched is seen here, before any byte leaves.
    if let Err(e) = liveness.check() {
        gw.metrics().aborted.get_or_create(&crate::metrics::ReasonLabel { reason: "taken_down" }).inc();
        return not_opened(&e);
    }
    let quota = tenant.monthly_quota;
    let shaper = tenant.shapes_bandwidth().then_some(tenant);
    let content_length =
        parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok()).unwrap_or(0);
    let meter = billing.map(|b| (b.streaming(content_length, quota), cold.unwrap_or_default()));
    let hooks = body::Hooks { shaper, meter, live: Some(liveness) };
    let body = body::chunked(fetcher, spec, pieces, primed, gw.metrics().clone(), hooks);
    Response::from_parts(parts, body)
}

fn add_timing(h: &mut HeaderMap, started: Instant, first: Option<(Source, std::time::Duration)>) {
    let mut v = format!("total;dur={:.3}", started.elapsed().as_secs_f64() * 1000.0);
    if let Some((s, d)) = first {
        let name = if s == Source::Hot { "hot" } else { "origin" };
        v = format!("{name};dur={:.3}, {v}", d.as_secs_f64() * 1000.0);
    }
    if let Ok(v) = HeaderValue::from_str(&v) {
        h.insert(HeaderName::from_static("server-timing"), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_a_browser_could_run_are_never_sent_as_themselves() {
        for t in [
            "text/html",
            " text/html",
            "TEXT/HTML; charset=utf-8",
            "\ttext/html",
            "image/svg+xml",
            " image/SVG+xml ",
            "application/xhtml+xml",
            "application/xml",
            "text/xml",
            "application/rss+xml",
            "text/javascript",
            "application/javascript; charset=utf-8",
            "not a type",
            "",
            "text/html\r\nx: y",
        ] {
            assert_eq!(served_media_type(t), "application/octet-stream", "{t:?}");
            let mut h = HeaderMap::new();
            representation_headers(&mut h, "\"e\"", t);
            assert_eq!(h[header::CONTENT_TYPE], "application/octet-stream", "{t:?}");
            assert_eq!(h[header::CONTENT_DISPOSITION], "attachment", "{t:?}");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert!(h[header::CONTENT_SECURITY_POLICY].to_str().unwrap().starts_with("sandbox"));
        }
        for t in ["application/vnd.apache.parquet", "image/png", "application/json", "text/plain; charset=utf-8"] {
            assert_eq!(served_media_type(t), t);
            let mut h = HeaderMap::new();
            representation_headers(&mut h, "\"e\"", t);
            assert!(h.get(header::CONTENT_DISPOSITION).is_none(), "{t}");
            assert_eq!(h[header::CONTENT_SECURITY_POLICY], "sandbox; default-src 'none'");
        }
    }
}
