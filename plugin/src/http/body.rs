//! Response bodies: in-memory bytes, or a stream of verified chunks.
//!
//! A chunked body pulls each chunk from the fetcher (hot tier or a verified
//! origin fetch), slices it to the requested range, and yields it. A fetch
//! failure after the headers went out becomes a body error, which makes
//! hyper abort the response: HTTP/1.1 closes the connection short of
//! Content-Length, HTTP/2 resets the stream. A cut body is never passed off
//! as a whole one.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;

use crate::crypt::access::PlainView;
use crate::fetch::{ColdSet, Fetcher, FileSpec, ReadAhead, Source};
use crate::metrics::{Metrics, ReasonLabel, SourceLabel};
use crate::tenant::Tenant;
use crate::usage::{self, ResponseMeter};

/// The error that aborts a response mid-body.
#[derive(Debug, thiserror::Error)]
#[error("response aborted: {0}")]
pub struct BodyError(pub String);

pub type Body = BoxBody<Bytes, BodyError>;

pub fn empty() -> Body {
    full(Bytes::new())
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// One piece of a body plan: literal bytes (multipart heads and tail) or a
/// byte range of the file.
#[derive(Debug, Clone)]
pub enum Piece {
    Literal(Bytes),
    Range(Range<u64>),
}

pub use crate::door::Liveness;

/// A chunk fetched before the headers were sent, to be used first.
pub type Primed = Option<(u64, Bytes, Source)>;

struct ChunkedState {
    fetcher: Arc<Fetcher>,
    file: Arc<FileSpec>,
    pieces: VecDeque<Piece>,
    /// The chunk this reader is at, published so read-ahead stays in step.
    pace: tokio::sync::watch::Sender<u64>,
    /// This reader's running read-ahead, if any.
    readahead: Option<Arc<ReadAhead>>,
    /// The last chunk (exclusive) the whole request needs.
    end_chunk: u64,
    primed: Primed,
    /// The tenant whose bandwidth cap shapes this body, if it has one.
    shaper: Option<Arc<Tenant>>,
    metrics: Arc<Metrics>,
    /// This response's usage count, reported when the body ends or is dropped,
    /// and the chunks that were cold when the request arrived (origin bytes).
    meter: Option<(ResponseMeter, ColdSet)>,
    /// Cut the body if the release is taken down while it streams.
    live: Option<Liveness>,
    /// Set for the plaintext of an encrypted file: chunks are decrypted
    /// (after verification) and ranges address the plaintext.
    plain: Option<Arc<PlainView>>,
}

impl ChunkedState {
    /// Why the body must stop now, if it must (counted by reason).
    fn gone(&mut self) -> Option<BodyError> {
        let e = self.live.as_mut()?.check().err()?;
        let reason = match e {
            crate::door::OpenError::KeyUnavailable { .. } => "key_revoked",
            crate::door::OpenError::NotCleared { .. } => "not_cleared",
            crate::door::OpenError::Refused { .. } => "refused",
            _ => "taken_down",
        };
        self.metrics.aborted.get_or_create(&ReasonLabel { reason }).inc();
        let why = match e {
            crate::door::OpenError::TakenDown { .. } => "the release was taken down".to_string(),
            other => other.to_string(),
        };
        Some(BodyError(why))
    }

    /// Bytes of the representation per chunk.
    fn unit(&self) -> u64 {
        unit(&self.file, self.plain.as_deref())
    }

    fn covering(&self, r: Range<u64>) -> Range<u64> {
        covering(&self.file, self.plain.as_deref(), r)
    }
}

/// Bytes of the representation per chunk: the chunk size, or for plaintext
/// the segment size (chunk `i` holds plaintext segment `i`).
pub fn unit(file: &FileSpec, plain: Option<&PlainView>) -> u64 {
    plain.map_or(file.layout.chunk_size(), |p| p.cipher.segment_size())
}

/// The chunks that hold representation bytes `r`.
pub fn covering(file: &FileSpec, plain: Option<&PlainView>, r: Range<u64>) -> Range<u64> {
    match plain.and_then(|p| p.cipher.segments()) {
        Some(s) => s.covering(r),
        None => file.layout.chunks_covering(r),
    }
}

/// A verified chunk as the representation holds it: as stored, or
/// decrypted (and then kept in the plaintext tier).
pub fn view_chunk(
    fetcher: &Fetcher,
    file: &FileSpec,
    plain: Option<&PlainView>,
    index: u64,
    chunk: Bytes,
) -> Result<Bytes, crate::crypt::CryptError> {
    match plain {
        None => Ok(chunk),
        Some(p) => {
            let segment = Bytes::from(p.cipher.decrypt_segment(index, &chunk)?);
            fetcher.keep_plain_segment(p.key(index), file.purge_mark, segment.clone());
            Ok(segment)
        }
    }
}

/// Why chunk `index` of a representation could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// No verified bytes (from any origin or tier).
    #[error(transparent)]
    Fetch(#[from] crate::fetch::FetchError),
    /// Verified ciphertext that does not decrypt: the release is bad.
    #[error(transparent)]
    Decrypt(#[from] crate::crypt::CryptError),
}

/// Chunk `index` as the representation holds it: from the plaintext tier,
/// or fetched (verified) and then, for plaintext, decrypted. A miss fetches
/// no further than chunk `end`.
pub async fn view(
    fetcher: &Arc<Fetcher>,
    file: &Arc<FileSpec>,
    plain: Option<&PlainView>,
    index: u64,
    end: u64,
) -> Result<(Bytes, Source), ViewError> {
    if let Some(b) = plain.and_then(|p| fetcher.plain_segment(&p.key(index))) {
        return Ok((b, Source::Hot));
    }
    let (chunk, source) = fetcher.chunk(file, index, end).await?;
    Ok((view_chunk(fetcher, file, plain, index, chunk)?, source))
}

/// What a response adds to its body stream: shaping, metering, and the
/// takedown check.
#[derive(Default)]
pub struct Hooks {
    /// The tenant whose bandwidth cap shapes the body, if it has one.
    pub shaper: Option<Arc<Tenant>>,
    /// The response's usage meter and the chunks that were cold when it arrived.
    pub meter: Option<(ResponseMeter, ColdSet)>,
    pub live: Option<Liveness>,
    /// Decrypt to plaintext (an encrypted file read by a cleared tenant).
    pub plain: Option<Arc<PlainView>>,
}

/// A body that streams verified chunks of `file` for `pieces`.
pub fn chunked(
    fetcher: Arc<Fetcher>,
    file: Arc<FileSpec>,
    pieces: Vec<Piece>,
    primed: Primed,
    metrics: Arc<Metrics>,
    hooks: Hooks,
) -> Body {
    let Hooks { shaper, meter, live, plain } = hooks;
    let end_chunk = pieces
        .iter()
        .filter_map(|p| match p {
            Piece::Range(r) => Some(covering(&file, plain.as_deref(), r.clone()).end),
            Piece::Literal(_) => None,
        })
        .max()
        .unwrap_or(0);
    let (pace, _) = tokio::sync::watch::channel(0);
    let state = ChunkedState {
        fetcher,
        file,
        pieces: pieces.into(),
        pace,
        readahead: None,
        end_chunk,
        primed,
        shaper,
        metrics,
        meter,
        live,
        plain,
    };
    BodyExt::boxed(StreamBody::new(stream(state)))
}

fn stream(state: ChunkedState) -> impl Stream<Item = Result<Frame<Bytes>, BodyError>> + Send {
    futures_util::stream::unfold(Some(state), |state| async move {
        let mut st = state?;
        // hyper asks for the next frame only once it has taken the last one.
        if let Some((m, _)) = &mut st.meter {
            m.polled();
        }
        let piece = st.pieces.pop_front()?;
        match piece {
            Piece::Literal(b) => {
                if let Some(t) = &st.shaper {
                    t.shape(b.len() as u64).await;
                }
                if let Some((m, _)) = &mut st.meter {
                    m.handed(b.len() as u64, usage::Source::Hot);
                }
                Some((Ok(Frame::data(b)), Some(st)))
            }
            Piece::Range(r) => {
                if let Some(e) = st.gone() {
                    // Taken down, its key revoked, or the reader's clearance withdrawn: not one more byte leaves.
                    // Even before the first frame (the handler checked just before answering): then the
                    // client sees the connection dropped with no status, never a byte it may not have.
                    return Some((Err(e), None));
                }
                if st.meter.as_ref().is_some_and(|(m, _)| m.quota_spent()) {
                    // Parallel responses spent the monthly quota: this one stops here.
                    st.metrics.aborted.get_or_create(&ReasonLabel { reason: "quota" }).inc();
                    return Some((Err(BodyError("the tenant's monthly quota is spent".into())), None));
                }
                let cs = st.unit();
                let index = r.start / cs;
                let chunk_start = index * cs;
                // Publish the chunk wanted next *before* waiting for it: a
                // paced read-ahead may be holding exactly that chunk back.
                st.pace.send_replace(index);
                // A miss fetches at most up to the end of this range, never the
                // gap before the next range of a multipart request.
                let range_end = st.covering(r.clone()).end.min(st.end_chunk);
                // A primed chunk is already as the representation holds it.
                let got = match st.primed.take() {
                    Some((i, b, s)) if i == index => Ok((b, s)),
                    _ => view(&st.fetcher, &st.file, st.plain.as_deref(), index, range_end).await,
                };
                let (chunk, source) = match got {
                    Ok(c) => c,
                    Err(e) => {
                        // Labelled by the real cause: bad bytes or undecryptable ones
                        // (integrity), or no bytes (origin). Never the bytes sent.
                        let reason = match &e {
                            ViewError::Fetch(f) => crate::error::Classify::class(f).label(),
                            ViewError::Decrypt(_) => "integrity",
                        };
                        st.metrics.aborted.get_or_create(&ReasonLabel { reason }).inc();
                        if let Some((m, _)) = &mut st.meter {
                            m.failed();
                        }
                        tracing::warn!(error = %e, "aborting response mid-body");
                        return Some((Err(BodyError(e.to_string())), None));
                    }
                };
                if st.readahead.as_ref().is_none_or(|r| r.is_done()) {
                    st.readahead = st.fetcher.prefetch(&st.file, index + 1, range_end, &st.pace.subscribe());
                }
                let from = (r.start - chunk_start) as usize;
                let to = ((r.end.min(chunk_start + chunk.len() as u64)) - chunk_start) as usize;
                if to <= from || to > chunk.len() {
                    st.metrics.aborted.get_or_create(&ReasonLabel { reason: "integrity" }).inc();
                    if let Some((m, _)) = &mut st.meter {
                        m.failed();
                    }
                    return Some((Err(BodyError(format!("chunk {index} is shorter than the manifest says"))), None));
                }
                let slice = chunk.slice(from..to);
                let consumed = chunk_start + to as u64;
                if consumed < r.end {
                    st.pieces.push_front(Piece::Range(consumed..r.end));
                }
                if let Some(t) = &st.shaper {
                    t.shape(slice.len() as u64).await;
                }
                // Again after the waits (the chunk's fetch, the tenant's
                // bandwidth): a takedown that landed meanwhile stops it here.
                if let Some(e) = st.gone() {
                    return Some((Err(e), None));
                }
                let source = match &st.meter {
                    Some((_, cold)) if cold.contains(index) => Source::Origin,
                    Some(_) => Source::Hot,
                    None => source,
                };
                let label = SourceLabel { source: if source == Source::Hot { "hot" } else { "origin" } };
                st.metrics.served_bytes.get_or_create(&label).inc_by(slice.len() as u64);
                if let Some((m, _)) = &mut st.meter {
                    let s = if source == Source::Hot { usage::Source::Hot } else { usage::Source::Origin };
                    m.handed(slice.len() as u64, s);
                }

                Some((Ok(Frame::data(slice)), Some(st)))
            }
        }
    })
}
