//! File and manifest responses: RFC 9110 conditionals and ranges (200, 206,
//! multipart 206, 304, 416), the headers every loader relies on and that keep
//! browsers from running dataset bytes, metering, the first chunk fetched
//! and verified before the head goes out (502 if no origin can supply it),
//! then the verified streaming body.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use super::body::{self, Body, Piece};
use super::range::{self, MultipartPlan, RangeRequest};
use super::service::{denied, error, not_opened};
use crate::door::{self, OpenFile};
use crate::fetch::Source;
use crate::gateway::Gateway;
use crate::registry::{Catalog, Resolved};
use crate::tenant::Tenant;
use crate::usage::{Meter, ReleaseTag, ResponseMeter};

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// A tag can move: its answers are cached for a minute.
const TAG_CACHE: &str = "public, max-age=60";
static X_CACHE: HeaderName = HeaderName::from_static("x-shardgate-cache");

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

pub(super) fn manifest<B>(
    gw: &Gateway,
    req: &Request<B>,
    name: &str,
    version: &str,
    tenant: &Tenant,
) -> Response<Body> {
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

/// `GET /v1/datasets/{name}/{version}/placement`: where the release's blobs
/// live on BTFS (BLAKE3 to CID), so a client that verifies bytes itself can
/// read them from any IPFS- or BTFS-style gateway. Not signed, and need not
/// be: everything fetched through it is checked against the signed manifest.
pub(super) fn placement<B>(
    gw: &Gateway,
    req: &Request<B>,
    name: &str,
    version: &str,
    tenant: &Tenant,
) -> Response<Body> {
    let (catalog, resolved, release) = match door::open_release(gw, name, version) {
        Ok(x) => x,
        Err(e) => return not_opened(&e),
    };
    // The CIDs reach every byte of the release from any node: as guarded as its files.
    if let Err(e) = door::cleared(gw, &release, tenant) {
        return not_opened(&e);
    }
    let v = resolved.version();
    let Some(p) = &release.placement else {
        return error(StatusCode::NOT_FOUND, format!("this gateway holds no placement for {name}@{v}"));
    };
    let bytes = Bytes::from(p.to_bytes());
    let etag = format!("\"{}\"", blake3::hash(&bytes).to_hex());
    let resp = respond_in_memory(gw, req, bytes, &etag, "application/json");
    if let Some(b) = Billing::new(gw, tenant, release.tag()) {
        b.whole(&resp);
    }
    let mut resp = lifecycle_headers(resp, &catalog, name, &resolved, &format!("/v1/datasets/{name}/{v}/placement"));
    // Not part of the signed release: a republish can change it (a CID added), so it is revalidated.
    if resp.status().is_success() || resp.status() == StatusCode::NOT_MODIFIED {
        resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    resp
}

/// `GET /v1/blobs/{hash}` for a chunk table: the fetcher's table of the file,
/// proven against its own hash and the file's root before it is sent.
pub(super) async fn table<B>(gw: &Gateway, req: &Request<B>, mut open: OpenFile, tenant: &Tenant) -> Response<Body> {
    let table = match gw.fetcher().table(&open.spec).await {
        Ok(Some(t)) => t,
        Ok(None) => return error(StatusCode::NOT_FOUND, "a single-chunk file has no chunk table"),
        Err(e) => {
            return error(StatusCode::BAD_GATEWAY, format!("no origin could supply a verified chunk table: {e}"));
        }
    };
    if let Err(e) = open.liveness.check() {
        return not_opened(&e);
    }
    let bytes = Bytes::from(table.encode());
    let etag = format!("\"{}\"", blake3::hash(&bytes).to_hex());
    let resp = respond_in_memory(gw, req, bytes, &etag, "application/octet-stream");
    if let Some(b) = Billing::new(gw, tenant, open.file.release.tag()) {
        b.whole(&resp);
    }
    resp
}

/// Headers that tell a client where a tag led and what state the release is in.
pub(crate) fn lifecycle_headers(
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
        // A tag moves: point at the immutable URL, and cache the answer briefly
        // (a private answer stays private).
        if let Ok(l) = HeaderValue::from_str(location) {
            h.insert(header::CONTENT_LOCATION, l);
        }
        if h.get(header::CACHE_CONTROL).is_none_or(|v| v != PRIVATE) {
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static(TAG_CACHE));
        }
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
pub(crate) fn served_media_type(raw: &str) -> &str {
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

/// The ETag a reader gets for an opened file: the plaintext's (sealed
/// digest) for a decrypted read, else the stored file's BLAKE3, quoted.
pub(crate) fn etag_of(open: &OpenFile) -> String {
    match &open.plain {
        Some(p) => p.etag.clone(),
        None => format!("\"{}\"", open.file.entry().blake3),
    }
}

pub(crate) async fn serve_file<B>(
    gw: &Arc<Gateway>,
    req: &Request<B>,
    open: OpenFile,
    started: Instant,
    tenant: Arc<Tenant>,
) -> Response<Body> {
    let etag = etag_of(&open);
    let OpenFile { file: f, spec, mut liveness, plain, .. } = open;
    let entry = f.entry();
    // An encrypted file is served as plaintext (to a cleared reader) or as
    // the stored ciphertext, an opaque byte stream (a blob).
    let (len, media_type) = match &plain {
        Some(p) => (p.size, entry.media_type.as_str()),
        None if entry.encryption.is_some() => (entry.size, "application/octet-stream"),
        None => (entry.size, entry.media_type.as_str()),
    };
    let media = served_media_type(media_type);
    let p = plan(req, len, &etag, media, gw.config().server.max_ranges);
    let billing = Billing::new(gw, &tenant, f.release.tag());
    let (head, pieces) = match head_for(p, len, &etag, media_type) {
        Head::Send(h, p) => (h, p),
        Head::Early(mut early) => {
            if plain.is_some() {
                private(early.headers_mut());
            }
            if let Some(b) = &billing {
                b.whole(&early);
            }
            return early;
        }
    };
    let (mut parts, ()) = head.into_parts();
    if plain.is_some() {
        // Decrypted bytes, and their digest in the ETag, are for this reader only: no
        // shared cache may keep them (it would serve them to others, and after a revocation).
        private(&mut parts.headers);
    }
    let fetcher = gw.fetcher().clone();

    // Which chunks the response needs, and how many are hot already.
    let covering: Vec<std::ops::Range<u64>> = pieces
        .iter()
        .filter_map(|p| match p {
            Piece::Range(r) => Some(body::covering(&spec, plain.as_deref(), r.clone())),
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
        Some(c) => c.counts(),
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
        let index = r.start / body::unit(&spec, plain.as_deref());
        let t0 = Instant::now();
        // Fetched, verified (and decrypted, for plaintext) before the head goes out.
        match body::view(&fetcher, &spec, plain.as_deref(), index, end_chunk).await {
            Ok((b, s)) => {
                add_timing(&mut parts.headers, started, Some((s, t0.elapsed())));
                primed = Some((index, b, s));
            }
            Err(body::ViewError::Decrypt(e)) => {
                tracing::error!(error = %e, file = %entry.path, "verified chunk does not decrypt");
                gw.metrics().aborted.get_or_create(&crate::metrics::ReasonLabel { reason: "integrity" }).inc();
                if let Some(b) = &billing {
                    b.meter.record_integrity_abort(&b.release, 0);
                }
                return error(StatusCode::BAD_GATEWAY, format!("{}: {e}", entry.path));
            }
            Err(body::ViewError::Fetch(e)) => {
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
    // Parallel responses may have spent the monthly quota while the first
    // chunk was fetched: refuse now, while a status can still be sent. Once
    // the headers are out, the body stops between chunks instead.
    if let Err(d) = gw.check_quota(&tenant) {
        return denied(&d);
    }
    let quota = tenant.monthly_quota;
    let shaper = tenant.shapes_bandwidth().then_some(tenant);
    let content_length =
        parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok()).unwrap_or(0);
    let meter = billing.map(|b| (b.streaming(content_length, quota), cold.unwrap_or_default()));
    let hooks = body::Hooks { shaper, meter, live: Some(liveness), plain };
    let body = body::chunked(fetcher, spec, pieces, primed, gw.metrics().clone(), hooks);
    Response::from_parts(parts, body)
}

/// The cache policy of a plaintext (decrypted) response.
const PRIVATE: &str = "private, no-store";

fn private(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(PRIVATE));
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
