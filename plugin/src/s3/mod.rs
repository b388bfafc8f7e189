//! The read-only S3 API, for loaders that speak only S3 (MosaicML
//! streaming, Lance, s3torchconnector, Daft, DuckDB, s3fs, boto3).
//!
//! - **Addressing:** path-style under `/s3` on the gateway's listener, or at
//!   the root of `s3.listen`; virtual-hosted for hosts `BUCKET.<s3.domains>`.
//!   Bucket = dataset name; key = `<version or tag>/<path in the release>`.
//! - **Operations:** ListBuckets, HeadBucket, GetBucketLocation,
//!   ListObjectsV2, ListObjects (v1), HeadObject, GetObject (one range,
//!   always 206; `If-Match`, `If-None-Match`, `If-Modified-Since`,
//!   `If-Unmodified-Since`; `response-content-*` overrides). Anything that
//!   writes is `405 MethodNotAllowed`; other subresources `501`.
//! - **Authentication:** SigV4 in headers or a presigned query
//!   ([`sigv4`]), with the secret of an access key ([`keys`]); unsigned
//!   requests read as anonymous (public datasets); a `Bearer` API key works
//!   as over HTTP.
//!
//! This module only translates: the caller is admitted by [`crate::door`]
//! (identity, access, quota, rate), the file opened there, and the bytes
//! streamed by the same verified path as `/v1` ([`crate::http`]'s
//! `serve_file`). Errors are S3 XML; nothing here ever redirects.

pub mod keys;
pub mod list;
pub mod sigv4;
pub mod xml;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use crate::config::S3Config;
use crate::door::{self, OpenError};
use crate::gateway::Gateway;
use crate::http::body::{self, Body};
use crate::registry::{Catalog, Release};
use crate::tenant::{Denied, Tenant};
use list::{Item, Query, Root};
use xml::Doc;

/// Marks requests that arrived on `s3.listen`: S3 at the root.
#[derive(Debug, Clone, Copy)]
pub struct S3Listener;

/// Most keys a list page holds, as in S3.
const MAX_KEYS: usize = 1000;
const PREFIX: &str = "/s3";
static REQUEST_ID: HeaderName = HeaderName::from_static("x-amz-request-id");
static BUCKET_REGION: HeaderName = HeaderName::from_static("x-amz-bucket-region");

/// What `encoding-type=url` escapes: all but RFC 3986 unreserved and `/`.
const KEY_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b'/');

/// An S3 error: status, code and message.
#[derive(Debug, Clone)]
pub struct S3Error {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<HeaderValue>,
}

impl S3Error {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidArgument", message)
    }

    fn response(&self, resource: &str, request_id: &str, head: bool) -> Response<Body> {
        let body =
            if head { body::empty() } else { body::full(xml::error(self.code, &self.message, resource, request_id)) };
        let mut r = Response::new(body);
        *r.status_mut() = self.status;
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        if let Some(ra) = &self.retry_after {
            h.insert(header::RETRY_AFTER, ra.clone());
        }
        r
    }
}

impl From<sigv4::SigError> for S3Error {
    fn from(e: sigv4::SigError) -> Self {
        let status = match e {
            sigv4::SigError::Malformed(_) | sigv4::SigError::Unsupported(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::FORBIDDEN,
        };
        Self::new(status, e.code(), e.to_string())
    }
}

/// The door's refusals in S3's words. S3 has no 401: an unauthenticated
/// caller is `AccessDenied`; a rate or quota refusal is `503 SlowDown`, as
/// S3 sends it and every SDK retries it.
fn denied(d: &Denied) -> S3Error {
    match d {
        Denied::Unauthenticated(_) | Denied::Forbidden { .. } => {
            S3Error::new(StatusCode::FORBIDDEN, "AccessDenied", d.to_string())
        }
        Denied::Hidden(m) => S3Error::new(StatusCode::NOT_FOUND, "NoSuchKey", m.clone()),
        Denied::RateLimited { retry_after, .. } | Denied::QuotaExhausted { retry_after, .. } => {
            let secs = (retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)).max(1);
            let mut e = S3Error::new(StatusCode::SERVICE_UNAVAILABLE, "SlowDown", d.to_string());
            e.retry_after = Some(HeaderValue::from(secs));
            e
        }
    }
}

fn not_opened(e: &OpenError) -> S3Error {
    let msg = e.to_string();
    match e {
        OpenError::UnknownDataset { .. } => S3Error::new(StatusCode::NOT_FOUND, "NoSuchBucket", msg),
        OpenError::UnknownVersion { .. } | OpenError::UnknownFile { .. } | OpenError::UnknownBlob { .. } => {
            S3Error::new(StatusCode::NOT_FOUND, "NoSuchKey", msg)
        }
        OpenError::TakenDown { .. } => {
            S3Error::new(StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS, "UnavailableForLegalReasons", msg)
        }
        OpenError::NotLoaded { .. } => {
            let mut e = S3Error::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", msg);
            e.retry_after = Some(HeaderValue::from_static("5"));
            e
        }
        OpenError::BadLayout { .. } => S3Error::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", msg),
        e if e.is_forbidden() => S3Error::new(StatusCode::FORBIDDEN, "AccessDenied", msg),
        _ => S3Error::new(StatusCode::NOT_FOUND, "NoSuchKey", msg),
    }
}

/// Whether a request on the gateway's listener is for the S3 API.
pub fn wants<B>(gw: &Gateway, req: &Request<B>) -> bool {
    if req.extensions().get::<S3Listener>().is_some() {
        return true;
    }
    let cfg = gw.config();
    if !cfg.s3.enabled {
        return false;
    }
    let p = req.uri().path();
    p == PREFIX || p.starts_with("/s3/") || virtual_bucket(&cfg.s3, host(req)).is_some()
}

fn host<B>(req: &Request<B>) -> Option<&str> {
    let h = req.headers().get(header::HOST).and_then(|h| h.to_str().ok());
    h.or_else(|| req.uri().authority().map(|a| a.as_str()))
}

/// The bucket of a virtual-hosted request (`BUCKET.DOMAIN[:port]`).
fn virtual_bucket<'a>(cfg: &S3Config, host: Option<&'a str>) -> Option<&'a str> {
    let host = host?;
    let name = match host.rsplit_once(':') {
        Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => host,
    };
    cfg.domains.iter().find_map(|d| {
        let b = name.strip_suffix(d.as_str())?.strip_suffix('.')?;
        (!b.is_empty()).then_some(b)
    })
}

/// Bucket and key of a request, percent-decoded.
#[derive(Debug)]
struct Address {
    bucket: Option<String>,
    key: Option<String>,
}

fn decode(s: &str) -> Result<String, S3Error> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| S3Error::new(StatusCode::BAD_REQUEST, "InvalidURI", "the path is not percent-encoded UTF-8"))
}

fn address<B>(cfg: &S3Config, req: &Request<B>, root: bool) -> Result<Address, S3Error> {
    let path = req.uri().path();
    if let Some(bucket) = virtual_bucket(cfg, host(req)) {
        let key = path.strip_prefix('/').unwrap_or(path);
        let key = (!key.is_empty()).then(|| decode(key)).transpose()?;
        return Ok(Address { bucket: Some(bucket.to_string()), key });
    }
    let rest = if root { path } else { path.strip_prefix(PREFIX).unwrap_or(path) };
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Ok(Address { bucket: None, key: None });
    }
    let (bucket, key) = match rest.split_once('/') {
        Some((b, k)) => (b, (!k.is_empty()).then_some(k)),
        None => (rest, None),
    };
    Ok(Address { bucket: Some(decode(bucket)?), key: key.map(decode).transpose()? })
}

fn request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        u64::from_le_bytes(b)
    });
    format!("{:016X}", seed ^ NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Serves one S3 request; never fails (every problem is an S3 error).
/// Returns the metrics route label and the response.
pub async fn handle<B>(gw: &Arc<Gateway>, req: &Request<B>, started: Instant) -> (&'static str, Response<Body>) {
    let rid = request_id();
    let head = req.method() == Method::HEAD;
    let (label, result) = serve(gw, req, started).await;
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => e.response(req.uri().path(), &rid, head),
    };
    if let Ok(v) = HeaderValue::from_str(&rid) {
        resp.headers_mut().insert(REQUEST_ID.clone(), v);
    }
    (label, resp)
}

type Answer = Result<Response<Body>, S3Error>;

async fn serve<B>(gw: &Arc<Gateway>, req: &Request<B>, started: Instant) -> (&'static str, Answer) {
    let cfg = gw.config();
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let e = S3Error::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{} is not allowed: this S3 API is read-only (GET and HEAD)", req.method()),
        );
        return ("s3", Err(e));
    }
    let root = req.extensions().get::<S3Listener>().is_some();
    let addr = match address(&cfg.s3, req, root) {
        Ok(a) => a,
        Err(e) => return ("s3", Err(e)),
    };
    let signed_by = match authenticate(gw, &cfg.s3, req) {
        Ok(t) => t,
        Err(e) => return ("s3", Err(e)),
    };
    let query: Vec<(String, String)> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
    let cert_names = req.extensions().get::<crate::http::service::PeerNames>().map(|p| p.0.as_slice()).unwrap_or(&[]);
    let creds = door::Credentials {
        // A signed request is identified by its signature alone.
        authorization: if signed_by.is_some() {
            None
        } else {
            req.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes)
        },
        cert_names,
        signed_by: signed_by.as_deref(),
        client: req.extensions().get::<crate::http::service::ClientAddr>().map(|c| c.0),
    };
    match (addr.bucket, addr.key) {
        (None, _) => ("s3", admit(gw, creds, door::Target::Any).map(|t| list_buckets(gw, &t))),
        (Some(bucket), None) => {
            let tenant = match admit(gw, creds, door::Target::Dataset(&bucket)) {
                Ok(t) => t,
                Err(e) => return ("s3", Err(e)),
            };
            ("s3_list", bucket_op(gw, &cfg.s3, req, &bucket, &query, &tenant))
        }
        (Some(bucket), Some(key)) => {
            let tenant = match admit(gw, creds, door::Target::Dataset(&bucket)) {
                Ok(t) => t,
                Err(e) => return ("s3_object", Err(e)),
            };
            ("s3_object", object(gw, req, &bucket, &key, &query, tenant, started).await)
        }
    }
}

fn admit(gw: &Gateway, creds: door::Credentials<'_>, target: door::Target<'_>) -> Result<Arc<Tenant>, S3Error> {
    door::admit(gw, creds, target).map_err(|d| denied(&d))
}

/// The tenant a SigV4 signature proves, or `None` for an unsigned request.
fn authenticate<B>(gw: &Gateway, cfg: &S3Config, req: &Request<B>) -> Result<Option<String>, S3Error> {
    let parts = sigv4::Parts {
        method: req.method().as_str(),
        path: req.uri().path(),
        query: req.uri().query().unwrap_or(""),
        headers: req.headers(),
        authority: req.uri().authority().map(|a| a.as_str()),
    };
    let Some(claim) = sigv4::claim(&parts)? else { return Ok(None) };
    let keys = gw.s3_keys();
    let secret =
        keys.get(&claim.access_key_id).ok_or_else(|| sigv4::SigError::UnknownAccessKey(claim.access_key_id.clone()))?;
    sigv4::verify(&claim, &parts, &secret.secret, jiff::Timestamp::now(), cfg.max_skew)?;
    Ok(Some(secret.tenant.clone()))
}

fn xml_response(body: String) -> Response<Body> {
    let mut r = Response::new(body::full(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

/// `2026-12-05T10:00:00.000Z`, as S3 lists times.
fn iso(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S.000Z").to_string()
}

/// A release's time as an HTTP date (`Last-Modified`), whole seconds.
fn http_date(t: jiff::Timestamp) -> Option<HeaderValue> {
    let t = jiff::Timestamp::from_second(t.as_second()).ok()?;
    let s = jiff::fmt::rfc2822::DateTimePrinter::new().timestamp_to_rfc9110_string(&t).ok()?;
    HeaderValue::from_str(&s).ok()
}

/// Releases of `bucket` the tenant may see: served, not taken down, not
/// refused, cleared; each as its version and as every tag pointing at it.
fn roots(gw: &Gateway, catalog: &Catalog, bucket: &str, tenant: &Tenant) -> Vec<Root> {
    let Some(versions) = catalog.versions(bucket) else { return Vec::new() };
    let visible = |r: &Release| {
        door::taken_down(catalog, bucket, r.version()).is_ok() && door::discoverable(gw, catalog, tenant, r)
    };
    let mut roots: Vec<Root> = versions
        .iter()
        .filter(|(_, r)| visible(r))
        .map(|(v, r)| Root { prefix: format!("{v}/"), release: r.clone() })
        .collect();
    if let Some(tags) = catalog.lifecycle().tags.get(bucket) {
        for (tag, v) in tags {
            if let Some(r) = versions.get(v).filter(|r| visible(r)) {
                roots.push(Root { prefix: format!("{tag}/"), release: r.clone() });
            }
        }
    }
    list::sort_roots(&mut roots);
    roots
}

fn list_buckets(gw: &Gateway, tenant: &Tenant) -> Response<Body> {
    let catalog = gw.registry().snapshot();
    let tenants = gw.tenants();
    let mut d = Doc::new("ListAllMyBucketsResult", true);
    d.open("Owner").text("ID", &tenant.id).text("DisplayName", &tenant.id).close();
    d.open("Buckets");
    for (name, versions) in catalog.names() {
        if !tenants.can_see(tenant, name) {
            continue;
        }
        let seen: Vec<_> = versions
            .values()
            .filter(|r| door::taken_down(&catalog, name, r.version()).is_ok())
            .filter(|r| door::discoverable(gw, &catalog, tenant, r))
            .collect();
        let Some(created) = seen.iter().map(|r| r.signed.manifest.created_at).min() else { continue };
        d.open("Bucket").text("Name", name).text("CreationDate", &iso(created)).close();
    }
    d.close();
    xml_response(d.finish())
}

fn param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Subresources this read-only API does not serve (S3 would, for writers or owners).
const UNSUPPORTED: &[&str] = &[
    "acl",
    "policy",
    "cors",
    "lifecycle",
    "versioning",
    "versions",
    "uploads",
    "tagging",
    "website",
    "logging",
    "notification",
    "replication",
    "encryption",
    "object-lock",
    "accelerate",
    "requestPayment",
    "inventory",
    "metrics",
    "analytics",
    "ownershipControls",
    "publicAccessBlock",
    "intelligent-tiering",
    "torrent",
    "attributes",
    "retention",
    "legal-hold",
    "uploadId",
    "restore",
    "select",
];

fn unsupported(query: &[(String, String)]) -> Result<(), S3Error> {
    match query.iter().find(|(k, _)| UNSUPPORTED.contains(&k.as_str())) {
        Some((k, _)) => Err(S3Error::new(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            format!("the {k:?} subresource is not served by this read-only S3 API"),
        )),
        None => Ok(()),
    }
}

fn bucket_op(
    gw: &Gateway,
    cfg: &S3Config,
    req: &Request<impl Sized>,
    bucket: &str,
    query: &[(String, String)],
    tenant: &Tenant,
) -> Answer {
    let catalog = gw.registry().snapshot();
    if catalog.versions(bucket).is_none() {
        return Err(not_opened(&OpenError::UnknownDataset { name: bucket.to_string() }));
    }
    if param(query, "location").is_some() {
        // us-east-1 is an empty constraint, as S3 answers.
        let region = if cfg.region == "us-east-1" { "" } else { cfg.region.as_str() };
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<LocationConstraint xmlns=\"{}\">{}</LocationConstraint>",
            xml::NS,
            quick_xml::escape::escape(region)
        );
        return Ok(xml_response(body));
    }
    unsupported(query)?;
    let region = HeaderValue::from_str(&cfg.region).unwrap_or(HeaderValue::from_static("us-east-1"));
    if req.method() == Method::HEAD {
        let mut r = Response::new(body::empty());
        r.headers_mut().insert(BUCKET_REGION.clone(), region);
        return Ok(r);
    }
    let v2 = match param(query, "list-type") {
        None => false,
        Some("2") => true,
        Some(other) => return Err(S3Error::invalid(format!("list-type {other:?} is not 1 or 2"))),
    };
    let mut r = list_objects(gw, &catalog, bucket, query, tenant, v2)?;
    r.headers_mut().insert(BUCKET_REGION.clone(), region);
    Ok(r)
}

fn list_objects(
    gw: &Gateway,
    catalog: &Catalog,
    bucket: &str,
    query: &[(String, String)],
    tenant: &Tenant,
    v2: bool,
) -> Answer {
    let prefix = param(query, "prefix").unwrap_or("");
    let delimiter = param(query, "delimiter").filter(|d| !d.is_empty());
    let max = match param(query, "max-keys") {
        None => MAX_KEYS,
        Some(m) => m
            .parse::<usize>()
            .map_err(|_| S3Error::invalid(format!("max-keys {m:?} is not a whole number")))?
            .min(MAX_KEYS),
    };
    let url = match param(query, "encoding-type") {
        None => false,
        Some("url") => true,
        Some(other) => return Err(S3Error::invalid(format!("encoding-type {other:?} is not \"url\""))),
    };
    let token = param(query, "continuation-token");
    let start_after = param(query, "start-after");
    let marker = param(query, "marker");
    let after: String = if v2 {
        match token {
            Some(t) => {
                let raw = B64URL
                    .decode(t)
                    .map_err(|_| S3Error::invalid("the continuation token is not one this gateway gave"))?;
                String::from_utf8(raw)
                    .map_err(|_| S3Error::invalid("the continuation token is not one this gateway gave"))?
            }
            None => start_after.unwrap_or("").to_string(),
        }
    } else {
        marker.unwrap_or("").to_string()
    };
    let roots = roots(gw, catalog, bucket, tenant);
    let page = list::list(&roots, Query { prefix, delimiter, after: &after, max });
    let enc = |s: &str| if url { utf8_percent_encode(s, KEY_ESCAPE).to_string() } else { s.to_string() };
    let fetch_owner = !v2 || param(query, "fetch-owner") == Some("true");

    let mut d = Doc::new("ListBucketResult", true);
    d.text("Name", bucket).text("Prefix", &enc(prefix));
    if let Some(delim) = delimiter {
        d.text("Delimiter", &enc(delim));
    }
    d.text("MaxKeys", &max.to_string());
    if url {
        d.text("EncodingType", "url");
    }
    d.text("IsTruncated", if page.truncated { "true" } else { "false" });
    let last = page.items.last().map(|i| i.key().to_string());
    if v2 {
        d.text("KeyCount", &page.items.len().to_string());
        if let Some(t) = token {
            d.text("ContinuationToken", t);
        }
        if let Some(s) = start_after {
            d.text("StartAfter", &enc(s));
        }
        if page.truncated
            && let Some(l) = &last
        {
            d.text("NextContinuationToken", &B64URL.encode(l.as_bytes()));
        }
    } else {
        d.text("Marker", &enc(marker.unwrap_or("")));
        if page.truncated
            && let Some(l) = &last
        {
            d.text("NextMarker", &enc(l));
        }
    }
    let mut prefixes = Vec::new();
    for item in &page.items {
        match item {
            Item::Object { key, root, file, index } => {
                let (etag, size) = listed_representation(catalog, &root.release, file, *index);
                d.open("Contents")
                    .text("Key", &enc(key))
                    .text("LastModified", &iso(root.release.signed.manifest.created_at))
                    .text("ETag", &etag)
                    .text("Size", &size.to_string())
                    .text("StorageClass", "STANDARD");
                if fetch_owner {
                    d.open("Owner").text("ID", "shardgate").text("DisplayName", "shardgate").close();
                }
                d.close();
            }
            Item::Prefix(p) => prefixes.push(p),
        }
    }
    for p in prefixes {
        d.open("CommonPrefixes").text("Prefix", &enc(p)).close();
    }
    Ok(xml_response(d.finish()))
}

/// ETag and size as a GET by this reader would send them: the plaintext of
/// an encrypted file when the gateway holds its key.
fn listed_representation(
    catalog: &Catalog,
    release: &Release,
    file: &crate::release::manifest::FileEntry,
    index: usize,
) -> (String, u64) {
    match &file.encryption {
        None => (format!("\"{}\"", file.blake3), file.size),
        Some(e) => {
            let view = catalog.key_state(&release.signed.id).and_then(|k| k.view(index).ok().flatten().cloned());
            match view {
                Some(v) => (v.etag.clone(), v.size),
                None => (format!("\"{}\"", file.blake3), e.plaintext_size),
            }
        }
    }
}

/// `If-Match` / `If-None-Match` lists against an ETag (`*` matches any).
fn etag_listed(value: &[u8], etag: &str) -> bool {
    let Ok(s) = std::str::from_utf8(value) else { return false };
    s.split(',').map(str::trim).any(|t| t == "*" || t.trim_start_matches("W/") == etag)
}

async fn object<B>(
    gw: &Arc<Gateway>,
    req: &Request<B>,
    bucket: &str,
    key: &str,
    query: &[(String, String)],
    tenant: Arc<Tenant>,
    started: Instant,
) -> Answer {
    unsupported(query)?;
    if &*tenant.id == crate::tenant::ANONYMOUS && query.iter().any(|(k, _)| k.starts_with("response-")) {
        return Err(S3Error::new(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "response-* header overrides need a signed (or API-key) request, as in S3",
        ));
    }
    let no_key = |why: String| S3Error::new(StatusCode::NOT_FOUND, "NoSuchKey", why);
    let Some((segment, path)) = key.split_once('/').filter(|(s, p)| !s.is_empty() && !p.is_empty()) else {
        return Err(no_key(format!("{key:?} is not a key of this bucket: keys are <version or tag>/<path>")));
    };
    if let Err(why) = crate::release::manifest::check_path(path) {
        return Err(no_key(format!("no release holds {path:?}: {why}")));
    }
    let open = door::open_file(gw, bucket, segment, path, door::Reader::Tenant(&tenant)).map_err(|e| not_opened(&e))?;
    let etag = crate::http::file::etag_of(&open);
    let created = open.file.release.signed.manifest.created_at;
    let modified = created.as_second();
    let h = req.headers();
    // RFC 9110 §13.2.2's order: If-Match, else If-Unmodified-Since; then
    // If-None-Match, else If-Modified-Since.
    let failed = |why: &str| S3Error::new(StatusCode::PRECONDITION_FAILED, "PreconditionFailed", why.to_string());
    if let Some(im) = h.get(header::IF_MATCH) {
        if !etag_listed(im.as_bytes(), &etag) {
            return Err(failed("If-Match does not match the object's ETag"));
        }
    } else if let Some(t) = h.get(header::IF_UNMODIFIED_SINCE).and_then(|v| sigv4::parse_http_date(v.to_str().ok()?))
        && modified > t.as_second()
    {
        return Err(failed("the object was modified after If-Unmodified-Since"));
    }
    let not_modified = h.get(header::IF_NONE_MATCH).is_none()
        && h.get(header::IF_MODIFIED_SINCE)
            .and_then(|v| sigv4::parse_http_date(v.to_str().ok()?))
            .is_some_and(|t| modified <= t.as_second());
    let range = h.get(header::RANGE);
    if let Some(r) = range
        && r.as_bytes().contains(&b',')
    {
        return Err(S3Error::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "InvalidRange",
            "S3 serves one range per request; ask for each range separately",
        ));
    }
    // The HTTP route sees only what S3 defines for a GetObject.
    let mut inner = Request::new(());
    *inner.method_mut() = req.method().clone();
    *inner.uri_mut() = req.uri().clone();
    for name in [header::RANGE, header::IF_NONE_MATCH] {
        if let Some(v) = h.get(&name) {
            inner.headers_mut().insert(name, v.clone());
        }
    }
    if not_modified {
        inner
            .headers_mut()
            .insert(header::IF_NONE_MATCH, HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("*")));
    }
    let location =
        format!("{PREFIX}/{bucket}/{}/{}", open.file.release.version(), utf8_percent_encode(path, KEY_ESCAPE));
    let (catalog, resolved) = (open.catalog.clone(), open.resolved.clone());
    let mut resp = crate::http::file::serve_file(gw, &inner, open, started, tenant).await;
    if let Some(r) = &resolved {
        resp = crate::http::file::lifecycle_headers(resp, &catalog, bucket, r, &location);
    }
    let status = resp.status();
    if status.is_client_error() || status.is_server_error() {
        return Err(from_http(resp).await);
    }
    let hdrs = resp.headers_mut();
    if let Some(v) = http_date(created) {
        hdrs.insert(header::LAST_MODIFIED, v);
    }
    if status.is_success() {
        overrides(hdrs, query);
    }
    Ok(resp)
}

/// `response-content-*` overrides (presigned URLs). A type a browser would
/// run stays opaque and an attachment (whatever disposition is asked for),
/// and a private (decrypted) answer stays uncacheable.
fn overrides(h: &mut http::HeaderMap, query: &[(String, String)]) {
    let private = h.get(header::CACHE_CONTROL).is_some_and(|v| v.as_bytes().starts_with(b"private"));
    // `representation_headers` sets a bare `attachment` only when it made the type opaque.
    let mut forced = h.get(header::CONTENT_DISPOSITION).is_some_and(|v| v == "attachment");
    for (k, v) in query {
        let name = match k.as_str() {
            "response-content-type" => header::CONTENT_TYPE,
            "response-content-disposition" => header::CONTENT_DISPOSITION,
            "response-content-language" => header::CONTENT_LANGUAGE,
            "response-content-encoding" => header::CONTENT_ENCODING,
            "response-expires" => header::EXPIRES,
            "response-cache-control" if !private => header::CACHE_CONTROL,
            _ => continue,
        };
        let value = if name == header::CONTENT_TYPE {
            let served = crate::http::file::served_media_type(v);
            forced |= served != v.trim();
            served.to_string()
        } else {
            v.clone()
        };
        if let Ok(val) = HeaderValue::from_str(&value) {
            h.insert(name, val);
        }
    }
    if forced {
        h.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment"));
    }
}

/// An HTTP error answer from the shared file path, in S3's words.
async fn from_http(resp: Response<Body>) -> S3Error {
    let status = resp.status();
    let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
    let bytes = resp.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_string))
        .unwrap_or_else(|| status.to_string());
    let code = match status.as_u16() {
        416 => "InvalidRange",
        412 => "PreconditionFailed",
        403 => "AccessDenied",
        404 => "NoSuchKey",
        451 => "UnavailableForLegalReasons",
        429 => "SlowDown",
        503 => "ServiceUnavailable",
        s if s >= 500 => "InternalError",
        _ => "InvalidRequest",
    };
    let status = if status == StatusCode::TOO_MANY_REQUESTS { StatusCode::SERVICE_UNAVAILABLE } else { status };
    S3Error { status, code, message, retry_after }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_hosts_name_their_bucket() {
        let cfg = S3Config { domains: vec!["s3.example".into()], ..Default::default() };
        assert_eq!(virtual_bucket(&cfg, Some("imagenet.s3.example")), Some("imagenet"));
        assert_eq!(virtual_bucket(&cfg, Some("my.data.s3.example:9000")), Some("my.data"));
        assert_eq!(virtual_bucket(&cfg, Some("s3.example")), None);
        assert_eq!(virtual_bucket(&cfg, Some("xs3.example")), None);
        assert_eq!(virtual_bucket(&cfg, Some("127.0.0.1:9000")), None);
    }

    #[test]
    fn etag_lists_match() {
        assert!(etag_listed(b"\"a\", \"b\"", "\"b\""));
        assert!(etag_listed(b"*", "\"b\""));
        assert!(etag_listed(b"W/\"b\"", "\"b\""));
        assert!(!etag_listed(b"\"a\"", "\"b\""));
    }
}
