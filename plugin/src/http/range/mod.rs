//! RFC 9110 byte-range and conditional-request arithmetic, with no I/O.
//!
//! This module owns everything a range gateway must get exactly right about
//! the `Range`, `If-Range` and `If-None-Match` header values, and the framing
//! of a `multipart/byteranges` body (RFC 9110 §14, §13.1.2, §13.1.5, §14.6):
//!
//! - [`parse_range`] turns a `Range` value into what to serve (200 full, 206
//!   single part, 206 multipart, 416) for a representation of a given length,
//!   dropping unsatisfiable ranges and coalescing overlapping or adjacent ones;
//! - [`content_range`] / [`unsatisfied_content_range`] render `Content-Range`;
//! - [`if_range_matches`] / [`if_none_match_matches`] compare entity-tags
//!   (strong and weak comparison);
//! - [`MultipartPlan`] lays out a `multipart/byteranges` body (part heads,
//!   closing delimiter, exact `Content-Length`) for the caller to stream.
//!
//! Everything here is pure and cheap: the parser runs once per request,
//! allocates nothing for the common single-range case, and never stores more
//! than `max_ranges` ranges however long the header is.

use std::fmt::Write as _;
use std::ops::Range;

use bytes::{BufMut as _, Bytes, BytesMut};

/// A satisfiable byte range, half-open `[start, end)` with `start < end <= len`.
pub type ByteRange = Range<u64>;

/// What to answer to a `Range` header, for a representation of known length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// No Range header, or one that must be ignored (syntactically invalid,
    /// or not a `bytes` unit): serve 200 full.
    Full,
    /// One satisfiable range: serve 206 with Content-Range, never multipart.
    Single(ByteRange),
    /// Two or more satisfiable ranges after dropping unsatisfiable ones and
    /// coalescing overlapping or adjacent ones; ascending, disjoint and
    /// non-adjacent. Serve 206 `multipart/byteranges`.
    Multi(Vec<ByteRange>),
    /// Syntactically valid `bytes=` set but no range is satisfiable: 416 with
    /// `Content-Range: bytes */LEN`.
    Unsatisfiable,
}

/// A `Range` header the gateway refuses to evaluate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RangeError {
    #[error("Range header lists {count} ranges, more than the {max} allowed")]
    TooMany { count: usize, max: usize },
}

/// Parse a `Range` header value against a representation of `len` bytes.
///
/// Follows RFC 9110 §14.1–14.2: the unit `bytes` is matched
/// case-insensitively (any other unit is ignored: `Full`); the range set is a
/// comma-separated list with optional whitespace around the commas and empty
/// elements tolerated; a malformed header (bad digits, a number beyond
/// `u64`, `last < first`, no `=`, an empty set) is ignored: `Full`.
///
/// `max_ranges` bounds the number of range-specs the header may list
/// (counted before coalescing); above it the answer is
/// [`RangeError::TooMany`]. A header that is both malformed and too long is
/// ignored (`Full`), as any malformed header is.
///
/// For `len == 0` every range is unsatisfiable (a suffix range would select
/// zero bytes, which no `Content-Range` can describe).
pub fn parse_range(header: &[u8], len: u64, max_ranges: usize) -> Result<RangeRequest, RangeError> {
    let header = trim_ows(header);
    let Some(eq) = header.iter().position(|&b| b == b'=') else {
        return Ok(RangeRequest::Full);
    };
    let (unit, set) = (&header[..eq], &header[eq + 1..]);
    if !unit.eq_ignore_ascii_case(b"bytes") {
        return Ok(RangeRequest::Full);
    }

    let mut selected = Coalescer::default();
    let mut count = 0usize;
    for element in set.split(|&b| b == b',') {
        let element = trim_ows(element);
        if element.is_empty() {
            continue; // #rule: empty list elements are ignored
        }
        let Some(spec) = Spec::parse(element) else {
            return Ok(RangeRequest::Full);
        };
        count += 1;
        // Past the limit, keep validating the syntax but store nothing.
        if count <= max_ranges
            && let Some(range) = spec.resolve(len)
        {
            selected.push(range);
        }
    }
    if count == 0 {
        return Ok(RangeRequest::Full); // `bytes=` or `bytes=,,`: 1#range-spec needs one
    }
    if count > max_ranges {
        return Err(RangeError::TooMany { count, max: max_ranges });
    }
    Ok(selected.finish())
}

/// `bytes START-END/LEN` (END inclusive) for a satisfiable range of a
/// representation of `len` bytes: the value of a 206's `Content-Range`.
pub fn content_range(r: &ByteRange, len: u64) -> String {
    debug_assert!(r.start < r.end && r.end <= len, "unsatisfiable range {r:?} of {len}");
    format!("bytes {}-{}/{}", r.start, r.end.saturating_sub(1), len)
}

/// `bytes */LEN`: the value of a 416's `Content-Range`.
pub fn unsatisfied_content_range(len: u64) -> String {
    format!("bytes */{len}")
}

/// Strong comparison for `If-Range` (RFC 9110 §13.1.5).
///
/// `etag` is our strong ETag with its quotes, e.g. `"b3-<hex>"`. True iff the
/// header value is exactly a strong entity-tag equal to it: a weak tag never
/// matches, and neither does an HTTP-date (we send no `Last-Modified`).
pub fn if_range_matches(header: &[u8], etag: &str) -> bool {
    let etag = etag.as_bytes();
    is_opaque_tag(etag) && trim_ows(header) == etag
}

/// `If-None-Match` (RFC 9110 §13.1.2): true iff the header is `*` or lists an
/// entity-tag that weakly matches `etag` (`W/"x"` matches `"x"`).
///
/// A malformed value is ignored (no match), so the request is served as if
/// the header were absent.
pub fn if_none_match_matches(header: &[u8], etag: &str) -> bool {
    let header = trim_ows(header);
    if header == b"*" {
        return true;
    }
    let ours = etag.as_bytes();
    let ours = ours.strip_prefix(b"W/").unwrap_or(ours);
    if !is_opaque_tag(ours) {
        return false;
    }

    let mut rest = header;
    let mut matched = false;
    loop {
        // `*( "," OWS )` before, and `OWS "," [ OWS element ]` between, elements.
        rest = skip_while(rest, |b| b == b',' || is_ows(b));
        if rest.is_empty() {
            return matched;
        }
        let Some((opaque, after)) = split_entity_tag(rest) else {
            return false;
        };
        matched |= opaque == ours;
        rest = skip_while(after, is_ows);
        match rest.first() {
            None => return matched,
            Some(b',') => {}
            Some(_) => return false,
        }
    }
}

/// Layout of a `multipart/byteranges` body (RFC 9110 §14.6, RFC 2046 §5.1).
///
/// The body is, in order: for each part its `head` then the bytes of its
/// `range`; then [`tail`](Self::tail). Every head starts with CRLF (an empty
/// preamble before the first delimiter, as Apache and nginx send), so all
/// parts are framed the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultipartPlan {
    pub boundary: String,
    pub parts: Vec<PartPlan>,
    /// Exact body length: all heads, all range bytes and the tail.
    pub content_length: u64,
}

/// One body part: its delimiter and header fields, then the range's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartPlan {
    /// `\r\n--BOUNDARY\r\nContent-Type: T\r\nContent-Range: bytes a-b/LEN\r\n\r\n`
    /// (the `Content-Type` line is left out when the type is empty).
    pub head: Bytes,
    pub range: ByteRange,
}

impl MultipartPlan {
    /// Plan a body for `ranges` (each satisfiable: `start < end <= len`) of a
    /// representation of `len` bytes and type `content_type`.
    ///
    /// `boundary` must be a valid RFC 2046 boundary (see [`is_valid_boundary`])
    /// that does not occur in the content, and `content_type` must not
    /// contain CR or LF; both are checked in debug builds.
    pub fn new(ranges: &[ByteRange], len: u64, content_type: &str, boundary: String) -> Self {
        debug_assert!(is_valid_boundary(&boundary), "invalid boundary {boundary:?}");
        debug_assert!(
            !content_type.bytes().any(|b| b == b'\r' || b == b'\n'),
            "content type {content_type:?} would break the framing"
        );
        // All heads go in one buffer, then are split off as shared slices.
        let per_part = 2 + 2 + boundary.len() + 2 + 16 + content_type.len() + 2 + 15 + 3 * 20 + 6;
        let mut buf = BytesMut::with_capacity(per_part * ranges.len());
        let mut parts = Vec::with_capacity(ranges.len());
        let mut content_length = 0u64;
        for range in ranges {
            debug_assert!(range.start < range.end && range.end <= len, "unsatisfiable range {range:?} of {len}");
            buf.put_slice(b"\r\n--");
            buf.put_slice(boundary.as_bytes());
            buf.put_slice(b"\r\n");
            if !content_type.is_empty() {
                buf.put_slice(b"Content-Type: ");
                buf.put_slice(content_type.as_bytes());
                buf.put_slice(b"\r\n");
            }
            // Writing to a BytesMut cannot fail.
            let _ = write!(buf, "Content-Range: bytes {}-{}/{}\r\n\r\n", range.start, range.end.saturating_sub(1), len);
            let head = buf.split().freeze();
            content_length =
                content_length.saturating_add(head.len() as u64).saturating_add(range.end.saturating_sub(range.start));
            parts.push(PartPlan { head, range: range.clone() });
        }
        content_length = content_length.saturating_add(tail_len(&boundary));
        Self { boundary, parts, content_length }
    }

    /// The closing delimiter `\r\n--BOUNDARY--\r\n`.
    pub fn tail(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(tail_len(&self.boundary) as usize);
        buf.put_slice(b"\r\n--");
        buf.put_slice(self.boundary.as_bytes());
        buf.put_slice(b"--\r\n");
        buf.freeze()
    }

    /// `multipart/byteranges; boundary=BOUNDARY`, the boundary quoted when it
    /// holds characters a bare token may not (RFC 2046 allows some).
    pub fn content_type(&self) -> String {
        if self.boundary.bytes().all(is_tchar) {
            format!("multipart/byteranges; boundary={}", self.boundary)
        } else {
            format!("multipart/byteranges; boundary=\"{}\"", self.boundary)
        }
    }
}

/// RFC 2046 §5.1.1: 1 to 70 `bchars`, not ending in a space.
pub fn is_valid_boundary(boundary: &str) -> bool {
    let b = boundary.as_bytes();
    (1..=70).contains(&b.len()) && b.iter().all(|&c| c == b' ' || is_bcharnospace(c)) && b.last() != Some(&b' ')
}

fn tail_len(boundary: &str) -> u64 {
    (2 + 2 + boundary.len() + 2 + 2) as u64
}

/// One syntactically valid `range-spec` of the `bytes` unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    /// `first-last`, with `first <= last`.
    FromTo(u64, u64),
    /// `first-`
    From(u64),
    /// `-suffix`
    Suffix(u64),
}

impl Spec {
    fn parse(element: &[u8]) -> Option<Self> {
        let dash = element.iter().position(|&b| b == b'-')?;
        let (first, last) = (&element[..dash], &element[dash + 1..]);
        if first.is_empty() {
            return parse_u64(last).map(Spec::Suffix);
        }
        let first = parse_u64(first)?;
        if last.is_empty() {
            return Some(Spec::From(first));
        }
        let last = parse_u64(last)?;
        (first <= last).then_some(Spec::FromTo(first, last))
    }

    /// The bytes this spec selects from `len`, if it is satisfiable.
    fn resolve(self, len: u64) -> Option<ByteRange> {
        match self {
            Spec::FromTo(first, last) => (first < len).then(|| first..last.min(len - 1) + 1),
            Spec::From(first) => (first < len).then_some(first..len),
            Spec::Suffix(n) => (n > 0 && len > 0).then(|| len.saturating_sub(n)..len),
        }
    }
}

/// Collects satisfiable ranges into a sorted, disjoint, non-adjacent set.
/// The first range is kept inline, so a single range allocates nothing; ranges
/// that arrive in ascending order (the usual case) are merged as they come.
#[derive(Default)]
struct Coalescer {
    first: Option<ByteRange>,
    /// Used once two ranges did not merge; then `first` is `None`.
    many: Vec<ByteRange>,
    /// `many` is out of order (and so maybe not coalesced) when set.
    unsorted: bool,
}

impl Coalescer {
    fn push(&mut self, r: ByteRange) {
        if let Some(last) = self.many.last_mut() {
            if r.start >= last.start && r.start <= last.end {
                last.end = last.end.max(r.end);
            } else {
                self.unsorted |= r.start < last.start;
                self.many.push(r);
            }
            return;
        }
        match self.first.take() {
            None => self.first = Some(r),
            Some(f) if r.start <= f.end && f.start <= r.end => {
                self.first = Some(f.start.min(r.start)..f.end.max(r.end));
            }
            Some(f) => {
                self.many = if f.start < r.start { vec![f, r] } else { vec![r, f] };
            }
        }
    }

    fn finish(self) -> RangeRequest {
        let mut v = self.many;
        if v.is_empty() {
            return self.first.map_or(RangeRequest::Unsatisfiable, RangeRequest::Single);
        }
        if self.unsorted {
            v.sort_unstable_by_key(|r| r.start);
            let mut w = 0;
            for i in 1..v.len() {
                if v[i].start <= v[w].end {
                    v[w].end = v[w].end.max(v[i].end);
                } else {
                    w += 1;
                    v[w] = v[i].clone();
                }
            }
            v.truncate(w + 1);
        }
        if v.len() == 1 {
            v.pop().map_or(RangeRequest::Unsatisfiable, RangeRequest::Single)
        } else {
            RangeRequest::Multi(v)
        }
    }
}

/// `1*DIGIT` as a `u64`; `None` if empty, not all digits, or too large.
fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// Splits a leading `entity-tag` off `s`: its `opaque-tag` (with quotes,
/// without any `W/`) and what follows.
fn split_entity_tag(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let s = s.strip_prefix(b"W/").unwrap_or(s);
    if s.first() != Some(&b'"') {
        return None;
    }
    let close = 1 + s[1..].iter().position(|&b| b == b'"')?;
    let (opaque, after) = s.split_at(close + 1);
    is_opaque_tag(opaque).then_some((opaque, after))
}

/// `opaque-tag = DQUOTE *etagc DQUOTE`, `etagc = %x21 / %x23-7E / obs-text`.
fn is_opaque_tag(s: &[u8]) -> bool {
    s.len() >= 2
        && s[0] == b'"'
        && s[s.len() - 1] == b'"'
        && s[1..s.len() - 1].iter().all(|&b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80)
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| !is_ows(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|&b| !is_ows(b)).map_or(start, |i| i + 1);
    &s[start..end]
}

fn skip_while(s: &[u8], pred: impl Fn(u8) -> bool) -> &[u8] {
    let n = s.iter().position(|&b| !pred(b)).unwrap_or(s.len());
    &s[n..]
}

/// RFC 9110 `tchar`: what a parameter value may hold unquoted.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 2046 `bcharsnospace`.
fn is_bcharnospace(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"'()+_,-./:=?".contains(&b)
}

#[cfg(test)]
mod tests;
