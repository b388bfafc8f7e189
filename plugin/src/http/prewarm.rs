//! Pre-warm through a balancer, with an admin token:
//! - `POST /v1/datasets/{name}/{version}/manifest`: the plan, the release's
//!   files (path, size, chunks) with the version a tag resolved to, as JSON;
//! - `POST /v1/datasets/{name}/{version}/files/{path}`: pre-warms that file
//!   on this gateway.
//!
//! A file's pre-warm is sent on the file's own path, so a balancer that
//! hashes paths sends it to the member that serves the file's reads;
//! `shardgate release prewarm --via LB` sends one per file.
//!
//! The answer streams one JSON object per line (`application/x-ndjson`):
//! progress after every span, a line every [`HEARTBEAT`] while waiting for
//! this gateway's one pre-warm at a time (so a balancer's inactivity timeout
//! does not cut it), and a last line that is either `"done": true` with the
//! figures or `"error"`. Every line names this gateway's instance, which is
//! how the caller learns which member warmed what.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Frame;
use tokio::sync::mpsc;

use super::body::{Body, BodyError};
use super::service::{ClientAddr, denied, not_opened};
use crate::door;
use crate::gateway::Gateway;
use crate::prewarm::{PrewarmError, Progress};

/// Longest silence while a pre-warm waits for its turn.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// What one line says.
#[derive(Debug, serde::Serialize)]
struct Line<'a> {
    instance: &'a str,
    /// Waiting for this gateway's one pre-warm at a time.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    waiting: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    done: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// Why it stopped, for callers: `stopped` (this gateway is shutting
    /// down: the file may go to another member), `taken_down`, `fetch`, `ended`.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(flatten)]
    progress: &'a Progress,
}

fn line(l: &Line<'_>) -> Bytes {
    let mut v = serde_json::to_vec(l).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

struct State {
    gw: Arc<Gateway>,
    rx: mpsc::Receiver<Result<Progress, PrewarmError>>,
    last: Progress,
    /// Whether the pre-warm has had its turn (its first message came).
    started: bool,
    finished: bool,
}

fn operator<B>(gw: &Gateway, req: &Request<B>) -> Result<(), crate::tenant::Denied> {
    let creds = door::Credentials {
        authorization: req.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes),
        client: req.extensions().get::<ClientAddr>().map(|c| c.0),
        ..door::Credentials::default()
    };
    door::admit_operator(gw, creds)
}

/// `POST .../manifest`: what `release prewarm --via` warms, file by file.
pub fn plan<B>(gw: &Arc<Gateway>, req: &Request<B>, name: &str, version: &str) -> Response<Body> {
    if let Err(d) = operator(gw, req) {
        return denied(&d);
    }
    let (_, resolved, release) = match door::open_release(gw, name, version) {
        Ok(o) => o,
        Err(e) => return not_opened(&e),
    };
    let files: Vec<serde_json::Value> =
        release.signed.manifest.files.iter().map(|f| serde_json::json!({ "path": f.path, "size": f.size })).collect();
    let v = serde_json::json!({
        "instance": gw.ledger().instance(),
        "name": name,
        "version": resolved.version().to_string(),
        "release_id": release.signed.id.to_hex(),
        "files": files,
    });
    super::service::json(http::StatusCode::OK, &v)
}

pub async fn file<B>(gw: &Arc<Gateway>, req: &Request<B>, name: &str, version: &str, path: String) -> Response<Body> {
    if let Err(d) = operator(gw, req) {
        return denied(&d);
    }
    let opened = match door::open_files(gw, name, version, std::slice::from_ref(&path)) {
        Ok(o) => o,
        Err(e) => return not_opened(&e),
    };
    let last = Progress {
        file: path,
        bytes_total: opened.iter().map(|o| o.file.entry().size).sum(),
        chunks_total: opened.iter().map(|o| o.spec.layout.chunk_count()).sum(),
        ..Progress::default()
    };
    let (tx, rx) = mpsc::channel(16);
    let warm_gw = gw.clone();
    tokio::spawn(async move {
        let stop = warm_gw.clone();
        crate::prewarm::warm(&warm_gw, opened, move || stop.is_draining(), tx).await
    });
    let state = State { gw: gw.clone(), rx, last, started: false, finished: false };
    let lines = futures_util::stream::unfold(state, |mut st| async move {
        if st.finished {
            return None;
        }
        let instance = st.gw.ledger().instance().to_string();
        let out = match tokio::time::timeout(HEARTBEAT, st.rx.recv()).await {
            Err(_) => {
                let waiting = !st.started;
                line(&Line { instance: &instance, waiting, done: false, error: None, reason: None, progress: &st.last })
            }
            Ok(Some(Ok(p))) => {
                st.started = true;
                st.last = p;
                line(&Line {
                    instance: &instance,
                    waiting: false,
                    done: false,
                    error: None,
                    reason: None,
                    progress: &st.last,
                })
            }
            Ok(Some(Err(e))) => {
                st.finished = true;
                let reason = Some(match e {
                    PrewarmError::Stopped => "stopped",
                    PrewarmError::TakenDown => "taken_down",
                    PrewarmError::Fetch { .. } => "fetch",
                });
                let error = Some(e.to_string());
                line(&Line { instance: &instance, waiting: false, done: false, error, reason, progress: &st.last })
            }
            Ok(None) => {
                st.finished = true;
                let done = st.last.chunks_done == st.last.chunks_total;
                let error = (!done).then(|| "the pre-warm ended early".to_string());
                let reason = (!done).then_some("ended");
                line(&Line { instance: &instance, waiting: false, done, error, reason, progress: &st.last })
            }
        };
        Some((Ok::<_, BodyError>(Frame::data(out)), st))
    });
    let mut r = Response::new(http_body_util::StreamBody::new(lines).boxed());
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
