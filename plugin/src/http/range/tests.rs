use proptest::prelude::*;

use super::*;
use RangeRequest::{Full, Multi, Single, Unsatisfiable};

fn parse(header: &str, len: u64) -> RangeRequest {
    parse_range(header.as_bytes(), len, 16).expect("within the range limit")
}

// ---- parse_range: single ranges ------------------------------------------

#[test]
fn first_byte_only() {
    assert_eq!(parse("bytes=0-0", 100), Single(0..1));
}

#[test]
fn last_byte_by_suffix() {
    assert_eq!(parse("bytes=-1", 100), Single(99..100));
}

#[test]
fn zero_suffix_is_unsatisfiable() {
    assert_eq!(parse("bytes=-0", 100), Unsatisfiable);
}

#[test]
fn suffix_longer_than_file_is_whole_file() {
    assert_eq!(parse("bytes=-500", 100), Single(0..100));
    assert_eq!(parse("bytes=-100", 100), Single(0..100));
    assert_eq!(parse("bytes=-99", 100), Single(1..100));
}

#[test]
fn last_pos_past_end_is_clamped() {
    assert_eq!(parse("bytes=10-1000", 100), Single(10..100));
    assert_eq!(parse("bytes=10-99", 100), Single(10..100));
    assert_eq!(parse("bytes=99-18446744073709551615", 100), Single(99..100));
}

#[test]
fn open_ended() {
    assert_eq!(parse("bytes=0-", 100), Single(0..100));
    assert_eq!(parse("bytes=99-", 100), Single(99..100));
    assert_eq!(parse("bytes=100-", 100), Unsatisfiable);
}

#[test]
fn first_pos_at_len_is_unsatisfiable() {
    assert_eq!(parse("bytes=100-200", 100), Unsatisfiable);
    assert_eq!(parse("bytes=100-100", 100), Unsatisfiable);
    assert_eq!(parse("bytes=18446744073709551615-18446744073709551615", 100), Unsatisfiable);
}

#[test]
fn empty_representation_is_never_satisfiable() {
    for h in ["bytes=0-", "bytes=0-0", "bytes=-1", "bytes=-0", "bytes=0-5,-3"] {
        assert_eq!(parse(h, 0), Unsatisfiable, "{h}");
    }
}

#[test]
fn unit_is_case_insensitive() {
    assert_eq!(parse("BYTES=0-1", 10), Single(0..2));
    assert_eq!(parse("Bytes=0-1", 10), Single(0..2));
}

#[test]
fn leading_zeros_are_fine() {
    assert_eq!(parse("bytes=0000000000000000000000000001-002", 10), Single(1..3));
}

// ---- parse_range: ignored headers -----------------------------------------

#[test]
fn malformed_headers_are_ignored() {
    for h in [
        "",
        "bytes",
        "bytes=",
        "bytes=,",
        "bytes= , ,",
        "bytes=-",
        "bytes=1-0",
        "bytes=5-3",
        "bytes=abc",
        "bytes=a-1",
        "bytes=1-b",
        "bytes=0x1-2",
        "bytes=+1-2",
        "bytes=1--2",
        "bytes=--1",
        "bytes=1-2-3",
        "bytes=1",
        "bytes=0-1,abc",
        "bytes=0-1,5-3",
        "bytes=0 -1",
        "bytes=0- 1",
        "bytes =0-1",
        "bytes0-1",
        "bytes:0-1",
        "items=0-1",
        "byte=0-1",
        "bytesx=0-1",
        "bytes=0-1;q",
        "bytes=\u{663}-1", // a non-ASCII digit
    ] {
        assert_eq!(parse(h, 100), Full, "{h:?}");
    }
}

#[test]
fn overflowing_numbers_are_ignored() {
    assert_eq!(parse("bytes=99999999999999999999999-", 100), Full);
    assert_eq!(parse("bytes=0-99999999999999999999999", 100), Full);
    assert_eq!(parse("bytes=-99999999999999999999999", 100), Full);
    // u64::MAX + 1
    assert_eq!(parse("bytes=18446744073709551616-", 100), Full);
    // u64::MAX itself is a number, just not satisfiable.
    assert_eq!(parse("bytes=18446744073709551615-", 100), Unsatisfiable);
    assert_eq!(parse("bytes=-18446744073709551615", 100), Single(0..100));
}

#[test]
fn malformed_wins_over_satisfiable() {
    // One bad spec poisons the whole header, even after good ones.
    assert_eq!(parse("bytes=0-1,2-3,x", 100), Full);
}

// ---- parse_range: lists ----------------------------------------------------

#[test]
fn list_whitespace_and_empty_elements_are_tolerated() {
    assert_eq!(parse("bytes=0-1,,4-5", 100), Multi(vec![0..2, 4..6]));
    assert_eq!(parse("bytes=0-1 , 4-5", 100), Multi(vec![0..2, 4..6]));
    assert_eq!(parse("bytes=0-1,\t4-5", 100), Multi(vec![0..2, 4..6]));
    assert_eq!(parse("bytes=,0-1,", 100), Single(0..2));
    assert_eq!(parse("  bytes=0-1  ", 100), Single(0..2));
    assert_eq!(parse("bytes= 0-1", 100), Single(0..2));
}

#[test]
fn overlapping_ranges_coalesce() {
    assert_eq!(parse("bytes=0-10,5-20", 100), Single(0..21));
    assert_eq!(parse("bytes=5-20,0-10", 100), Single(0..21));
    assert_eq!(parse("bytes=0-50,10-20", 100), Single(0..51));
    assert_eq!(parse("bytes=0-,-10", 100), Single(0..100));
}

#[test]
fn adjacent_ranges_coalesce() {
    assert_eq!(parse("bytes=0-9,10-19", 100), Single(0..20));
    assert_eq!(parse("bytes=10-19,0-9", 100), Single(0..20));
    assert_eq!(parse("bytes=0-9,10-19,30-39,40-", 100), Multi(vec![0..20, 30..100]));
}

#[test]
fn gaps_stay_separate_and_sorted() {
    assert_eq!(parse("bytes=0-9,11-19", 100), Multi(vec![0..10, 11..20]));
    assert_eq!(parse("bytes=50-59,0-9,20-29", 100), Multi(vec![0..10, 20..30, 50..60]));
    // Out of order, then a late range bridging two earlier ones.
    assert_eq!(parse("bytes=40-49,0-9,20-29,10-39", 100), Single(0..50));
    assert_eq!(parse("bytes=-10,0-0", 100), Multi(vec![0..1, 90..100]));
}

#[test]
fn unsatisfiable_ones_are_dropped() {
    assert_eq!(parse("bytes=0-1,200-300", 100), Single(0..2));
    assert_eq!(parse("bytes=200-300,-0,5-", 100), Single(5..100));
    assert_eq!(parse("bytes=200-300,-0,100-", 100), Unsatisfiable);
}

#[test]
fn too_many_ranges() {
    let h = b"bytes=0-0,2-2,4-4,6-6";
    assert_eq!(parse_range(h, 100, 4), Ok(Multi(vec![0..1, 2..3, 4..5, 6..7])));
    assert_eq!(parse_range(h, 100, 3), Err(RangeError::TooMany { count: 4, max: 3 }));
    // Counted before coalescing, and including unsatisfiable ones.
    assert_eq!(parse_range(b"bytes=0-1,0-1,0-1,500-", 100, 2), Err(RangeError::TooMany { count: 4, max: 2 }));
    // Empty elements are not ranges.
    assert_eq!(parse_range(b"bytes=0-1,,,,", 100, 1), Ok(Single(0..2)));
    assert_eq!(parse_range(b"bytes=0-1", 100, 0), Err(RangeError::TooMany { count: 1, max: 0 }));
    // A malformed header is ignored however long it is.
    assert_eq!(parse_range(b"bytes=0-1,0-1,0-1,zz", 100, 2), Ok(Full));
    let long = format!("bytes={}", vec!["1-2"; 10_000].join(","));
    assert_eq!(parse_range(long.as_bytes(), 100, 100), Err(RangeError::TooMany { count: 10_000, max: 100 }));
    assert_eq!(
        RangeError::TooMany { count: 4, max: 3 }.to_string(),
        "Range header lists 4 ranges, more than the 3 allowed"
    );
}

// ---- Content-Range ---------------------------------------------------------

#[test]
fn content_range_values() {
    assert_eq!(content_range(&(0..1), 100), "bytes 0-0/100");
    assert_eq!(content_range(&(10..100), 100), "bytes 10-99/100");
    assert_eq!(content_range(&(0..u64::MAX), u64::MAX), format!("bytes 0-{}/{}", u64::MAX - 1, u64::MAX));
    assert_eq!(unsatisfied_content_range(0), "bytes */0");
    assert_eq!(unsatisfied_content_range(1234), "bytes */1234");
}

// ---- conditionals ----------------------------------------------------------

const ETAG: &str = "\"b3-00ff\"";

#[test]
fn if_range_is_strong_and_exact() {
    assert!(if_range_matches(b"\"b3-00ff\"", ETAG));
    assert!(if_range_matches(b" \"b3-00ff\"\t", ETAG));
    assert!(!if_range_matches(b"W/\"b3-00ff\"", ETAG));
    assert!(!if_range_matches(b"\"b3-00FF\"", ETAG));
    assert!(!if_range_matches(b"\"b3-00f\"", ETAG));
    assert!(!if_range_matches(b"b3-00ff", ETAG));
    assert!(!if_range_matches(b"\"b3-00ff\", \"b3-00ff\"", ETAG));
    assert!(!if_range_matches(b"*", ETAG));
    assert!(!if_range_matches(b"", ETAG));
    assert!(!if_range_matches(b"Sun, 06 Nov 1994 08:49:37 GMT", ETAG));
    // A weak ETag of ours could never match strongly.
    assert!(!if_range_matches(b"W/\"x\"", "W/\"x\""));
}

#[test]
fn if_none_match_is_weak() {
    assert!(if_none_match_matches(b"*", ETAG));
    assert!(if_none_match_matches(b" * ", ETAG));
    assert!(if_none_match_matches(b"\"b3-00ff\"", ETAG));
    assert!(if_none_match_matches(b"W/\"b3-00ff\"", ETAG));
    assert!(if_none_match_matches(b"\"a\", W/\"b3-00ff\"", ETAG));
    assert!(if_none_match_matches(b"\"a\",\"b3-00ff\" , \"c\"", ETAG));
    assert!(if_none_match_matches(b", ,\"b3-00ff\",,", ETAG));
    assert!(if_none_match_matches(b"\"a,b\", \"b3-00ff\"", ETAG));
    // Our tag given weak still compares weakly.
    assert!(if_none_match_matches(b"\"b3-00ff\"", "W/\"b3-00ff\""));

    assert!(!if_none_match_matches(b"", ETAG));
    assert!(!if_none_match_matches(b"\"\"", ETAG));
    assert!(!if_none_match_matches(b"W/\"\"", ETAG));
    assert!(!if_none_match_matches(b",", ETAG));
    assert!(!if_none_match_matches(b"\"a\", \"b\"", ETAG));
    assert!(!if_none_match_matches(b"\"b3-00FF\"", ETAG));
    assert!(!if_none_match_matches(b"w/\"b3-00ff\"", ETAG));
    assert!(!if_none_match_matches(b"b3-00ff", ETAG));
    assert!(!if_none_match_matches(b"\"b3-00ff", ETAG));
    // A comma inside a tag does not split it.
    assert!(!if_none_match_matches(b"\"x,\"b3-00ff\"\"", ETAG));
    // Malformed lists are ignored as a whole.
    assert!(!if_none_match_matches(b"\"b3-00ff\" junk", ETAG));
    assert!(!if_none_match_matches(b"\"b3-00ff\", junk", ETAG));
    assert!(!if_none_match_matches(b"*, \"b3-00ff\"", ETAG));
    assert!(!if_none_match_matches(b"\"b3 00ff\"", "\"b3 00ff\""));
}

// ---- multipart -------------------------------------------------------------

#[test]
fn multipart_exact_bytes() {
    let plan = MultipartPlan::new(&[0..2, 5..10], 10, "text/plain", "B0UND".to_string());
    let data = b"0123456789";
    let body = materialize(&plan, data);
    let expected: &[u8] = b"\r\n--B0UND\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-1/10\r\n\r\n01\
\r\n--B0UND\r\nContent-Type: text/plain\r\nContent-Range: bytes 5-9/10\r\n\r\n56789\
\r\n--B0UND--\r\n";
    assert_eq!(body, expected, "{}", String::from_utf8_lossy(&body));
    assert_eq!(plan.content_length, expected.len() as u64);
    assert_eq!(&plan.tail()[..], b"\r\n--B0UND--\r\n");
    assert_eq!(plan.content_type(), "multipart/byteranges; boundary=B0UND");
}

#[test]
fn multipart_without_content_type_omits_the_line() {
    let plan = MultipartPlan::new(std::slice::from_ref(&(3..4)), 10, "", "b".to_string());
    assert_eq!(&plan.parts[0].head[..], b"\r\n--b\r\nContent-Range: bytes 3-3/10\r\n\r\n");
    assert_eq!(plan.content_length, plan.parts[0].head.len() as u64 + 1 + plan.tail().len() as u64);
}

#[test]
fn multipart_boundary_quoting() {
    let plan = MultipartPlan::new(std::slice::from_ref(&(0..1)), 1, "a/b", "sg:a=b".to_string());
    assert_eq!(plan.content_type(), "multipart/byteranges; boundary=\"sg:a=b\"");
    let plan = MultipartPlan::new(std::slice::from_ref(&(0..1)), 1, "a/b", "sg-'+_.".to_string());
    assert_eq!(plan.content_type(), "multipart/byteranges; boundary=sg-'+_.");
}

#[test]
fn boundary_validity() {
    assert!(is_valid_boundary("a"));
    assert!(is_valid_boundary("sg-0123456789abcdef"));
    assert!(is_valid_boundary("a b'()+_,-./:=?Z"));
    assert!(is_valid_boundary(&"x".repeat(70)));
    assert!(!is_valid_boundary(&"x".repeat(71)));
    assert!(!is_valid_boundary(""));
    assert!(!is_valid_boundary("ends in space "));
    assert!(!is_valid_boundary("semi;colon"));
    assert!(!is_valid_boundary("quote\""));
    assert!(!is_valid_boundary("crlf\r\n"));
    assert!(!is_valid_boundary("é"));
}

/// The body as the server would send it.
fn materialize(plan: &MultipartPlan, data: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for part in &plan.parts {
        body.extend_from_slice(&part.head);
        body.extend_from_slice(&data[part.range.start as usize..part.range.end as usize]);
    }
    body.extend_from_slice(&plan.tail());
    body
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack[from..].windows(needle.len()).position(|w| w == needle).map(|i| i + from)
}

/// A parsed body part: its Content-Type (if any), Content-Range and bytes.
#[derive(Debug, PartialEq, Eq)]
struct ParsedPart {
    content_type: Option<String>,
    content_range: (u64, u64, u64),
    bytes: Vec<u8>,
}

/// A minimal RFC 2046 reader: splits the body on the delimiter, the way a
/// client does, and reads each part's header fields.
fn parse_multipart(body: &[u8], boundary: &str) -> Result<Vec<ParsedPart>, String> {
    let delim = format!("\r\n--{boundary}");
    let delim = delim.as_bytes();
    // Our body has an empty preamble: it starts with the first delimiter.
    let mut at = find(body, delim, 0).ok_or("no delimiter")?;
    if at != 0 {
        return Err(format!("preamble of {at} bytes"));
    }
    let mut parts = Vec::new();
    loop {
        let after = at + delim.len();
        let rest = &body[after..];
        if rest.starts_with(b"--") {
            // Close delimiter, then CRLF and nothing else (no epilogue).
            return if &rest[2..] == b"\r\n" { Ok(parts) } else { Err("bad close delimiter".into()) };
        }
        if !rest.starts_with(b"\r\n") {
            return Err("delimiter not followed by CRLF".into());
        }
        let headers_start = after + 2;
        let headers_end = find(body, b"\r\n\r\n", headers_start).ok_or("unterminated part headers")?;
        let content_start = headers_end + 4;
        let next = find(body, delim, headers_end + 2).ok_or("no delimiter after part")?;
        if next < content_start {
            return Err("delimiter inside part headers".into());
        }
        let headers = std::str::from_utf8(&body[headers_start..headers_end]).map_err(|e| e.to_string())?;
        let mut content_type = None;
        let mut content_range = None;
        for line in headers.split("\r\n") {
            let (name, value) = line.split_once(':').ok_or("header line without colon")?;
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-type") {
                content_type = Some(value.to_string());
            } else if name.eq_ignore_ascii_case("content-range") {
                let spec = value.strip_prefix("bytes ").ok_or("content-range unit")?;
                let (span, len) = spec.split_once('/').ok_or("content-range slash")?;
                let (a, b) = span.split_once('-').ok_or("content-range dash")?;
                let num = |s: &str| s.parse::<u64>().map_err(|e| e.to_string());
                content_range = Some((num(a)?, num(b)?, num(len)?));
            } else {
                return Err(format!("unexpected header {name}"));
            }
        }
        parts.push(ParsedPart {
            content_type,
            content_range: content_range.ok_or("part without content-range")?,
            bytes: body[content_start..next].to_vec(),
        });
        at = next;
    }
}

#[test]
fn multipart_parses_back() {
    let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let plan = MultipartPlan::new(&[0..10, 500..1000], 1000, "application/octet-stream", "sg-x".into());
    let parts = parse_multipart(&materialize(&plan, &data), "sg-x").expect("parses");
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[1].content_range, (500, 999, 1000));
    assert_eq!(parts[1].bytes, &data[500..]);
    assert_eq!(parts[1].content_type.as_deref(), Some("application/octet-stream"));
}

// ---- property tests ----------------------------------------------------------

/// A range-spec as a client might write it; `FromTo` may be invalid (last < first).
#[derive(Debug, Clone)]
enum RefSpec {
    FromTo(u64, u64),
    From(u64),
    Suffix(u64),
}

impl RefSpec {
    fn render(&self) -> String {
        match self {
            RefSpec::FromTo(a, b) => format!("{a}-{b}"),
            RefSpec::From(a) => format!("{a}-"),
            RefSpec::Suffix(n) => format!("-{n}"),
        }
    }

    fn valid(&self) -> bool {
        !matches!(self, RefSpec::FromTo(a, b) if b < a)
    }

    /// Marks, one by one, the positions this spec selects.
    fn mark(&self, mask: &mut [bool]) {
        let len = mask.len() as u64;
        for (pos, selected) in (0u64..).zip(mask.iter_mut()) {
            let hit = match *self {
                RefSpec::FromTo(a, b) => a <= pos && pos <= b,
                RefSpec::From(a) => a <= pos,
                RefSpec::Suffix(n) => pos + n >= len && n > 0,
            };
            *selected |= hit;
        }
    }
}

/// Range specs with values below `max`.
fn spec_below(max: u64) -> impl Strategy<Value = RefSpec> {
    let small = max.min(40);
    prop_oneof![
        4 => (0..max, 0..max).prop_map(|(a, b)| RefSpec::FromTo(a.min(b), a.max(b))),
        1 => (0..max, 0..max).prop_map(|(a, b)| RefSpec::FromTo(a, b)),
        2 => (0..max).prop_map(RefSpec::From),
        2 => (0..max).prop_map(RefSpec::Suffix),
        // Small values, so ranges touch and overlap often.
        2 => (0..small, 0..small).prop_map(|(a, b)| RefSpec::FromTo(a.min(b), a.max(b))),
        1 => (0..small).prop_map(RefSpec::Suffix),
    ]
}

fn spec() -> impl Strategy<Value = RefSpec> {
    spec_below(6000)
}

/// Ranges that tile a stretch exactly (each starts where the previous one
/// ends) with some pieces left out, in order or shuffled: the adjacency cases.
fn tiles() -> impl Strategy<Value = Vec<(RefSpec, &'static str)>> {
    let pieces = (prop::collection::btree_set(0u64..70, 2..10), prop::collection::vec(prop::bool::weighted(0.7), 9))
        .prop_map(|(cuts, keep)| {
            let cuts: Vec<u64> = cuts.into_iter().collect();
            let mut pieces: Vec<RefSpec> =
                cuts.windows(2).zip(&keep).filter(|&(_, &k)| k).map(|(w, _)| RefSpec::FromTo(w[0], w[1] - 1)).collect();
            if pieces.is_empty() {
                pieces.push(RefSpec::FromTo(cuts[0], cuts[1] - 1));
            }
            pieces
        });
    let pieces = prop_oneof![pieces.clone(), pieces.prop_shuffle()];
    (pieces, prop::collection::vec(separator(), 9)).prop_map(|(pieces, seps)| pieces.into_iter().zip(seps).collect())
}

fn separator() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![",", ",", ", ", " ,", ",\t", ",,", " , , ", "\t,"])
}

fn unit() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["bytes", "BYTES", "Bytes", "bYtEs"])
}

/// Maximal runs of selected positions: the only sorted, disjoint,
/// non-adjacent ranges whose union is the mask.
fn runs(mask: &[bool]) -> Vec<ByteRange> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, &m) in mask.iter().chain(std::iter::once(&false)).enumerate() {
        match (m, start) {
            (true, None) => start = Some(i as u64),
            (false, Some(s)) => {
                out.push(s..i as u64);
                start = None;
            }
            _ => {}
        }
    }
    out
}

fn reference(specs: &[RefSpec], len: u64, max: usize) -> Result<RangeRequest, RangeError> {
    if !specs.iter().all(RefSpec::valid) {
        return Ok(Full);
    }
    if specs.len() > max {
        return Err(RangeError::TooMany { count: specs.len(), max });
    }
    let mut mask = vec![false; len as usize];
    for s in specs {
        s.mark(&mut mask);
    }
    let mut runs = runs(&mask);
    Ok(match runs.len() {
        0 => Unsatisfiable,
        1 => Single(runs.remove(0)),
        _ => Multi(runs),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parse_range_matches_byte_model(
        (len, specs_and_seps) in prop_oneof![
            // As specified: len below 5000, values below 6000.
            (0u64..5000, prop::collection::vec((spec(), separator()), 1..8)),
            // Dense: tiny files and values, so ranges abut, overlap and
            // straddle the end all the time.
            (0u64..64, prop::collection::vec((spec_below(70), separator()), 1..8)),
            (Just(0u64), prop::collection::vec((spec_below(10), separator()), 1..4)),
            (0u64..64, tiles()),
        ],
        unit in unit(),
        max in 1usize..10,
        pad in prop::sample::select(vec!["", " ", "\t "]),
    ) {
        let mut header = format!("{pad}{unit}=");
        for (i, (s, sep)) in specs_and_seps.iter().enumerate() {
            if i > 0 {
                header.push_str(sep);
            }
            header.push_str(&s.render());
        }
        header.push_str(pad);
        let specs: Vec<RefSpec> = specs_and_seps.into_iter().map(|(s, _)| s).collect();

        let got = parse_range(header.as_bytes(), len, max);
        prop_assert_eq!(&got, &reference(&specs, len, max), "header {:?} len {}", header, len);

        // The shape invariants, stated directly as well.
        let ranges = match &got {
            Ok(Single(r)) => vec![r.clone()],
            Ok(Multi(v)) => {
                prop_assert!(v.len() >= 2);
                v.clone()
            }
            _ => vec![],
        };
        for r in &ranges {
            prop_assert!(r.start < r.end && r.end <= len);
        }
        for w in ranges.windows(2) {
            prop_assert!(w[0].end < w[1].start, "not sorted, disjoint and non-adjacent: {:?}", ranges);
        }
    }

    #[test]
    fn garbage_never_panics(header in prop::collection::vec(any::<u8>(), 0..64), len in any::<u64>()) {
        let _ = parse_range(&header, len, 8);
        let _ = if_range_matches(&header, ETAG);
        let _ = if_none_match_matches(&header, ETAG);
    }

    #[test]
    fn bytes_prefixed_garbage_never_panics(
        tail in "[0-9, \t,-]{0,40}",
        len in prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()],
    ) {
        let got = parse_range(format!("bytes={tail}").as_bytes(), len, 8);
        let ranges = match got {
            Ok(Single(r)) => vec![r],
            Ok(Multi(v)) => v,
            _ => vec![],
        };
        for r in &ranges {
            prop_assert!(r.start < r.end && r.end <= len);
        }
        for w in ranges.windows(2) {
            prop_assert!(w[0].end < w[1].start);
        }
    }

    #[test]
    fn multipart_round_trips(
        (data, ranges) in prop::collection::vec(any::<u8>(), 1..3000).prop_flat_map(|data| {
            let n = data.len() as u64;
            let range = (0..n, 0..n).prop_map(|(a, b)| a.min(b)..a.max(b) + 1);
            (Just(data), prop::collection::vec(range, 1..10))
        }),
        boundary in "[0-9A-Za-z'()+_,./:=?-]{0,40}[0-9A-Za-z]",
        content_type in prop::sample::select(vec!["", "application/octet-stream", "text/plain; charset=utf-8"]),
    ) {
        let len = data.len() as u64;
        let plan = MultipartPlan::new(&ranges, len, content_type, boundary.clone());
        let body = materialize(&plan, &data);
        prop_assert_eq!(plan.content_length, body.len() as u64);
        prop_assert!(is_valid_boundary(&plan.boundary));

        let parts = parse_multipart(&body, &boundary).map_err(TestCaseError::fail)?;
        prop_assert_eq!(parts.len(), ranges.len());
        for (part, r) in parts.iter().zip(&ranges) {
            let expected_type = (!content_type.is_empty()).then(|| content_type.to_string());
            prop_assert_eq!(&part.content_type, &expected_type);
            prop_assert_eq!(part.content_range, (r.start, r.end - 1, len));
            prop_assert_eq!(&part.bytes[..], &data[r.start as usize..r.end as usize]);
        }
    }

    #[test]
    fn multipart_of_parsed_ranges(
        len in 1u64..2000,
        specs in prop::collection::vec(spec(), 2..8),
    ) {
        let header = format!("bytes={}", specs.iter().map(RefSpec::render).collect::<Vec<_>>().join(","));
        if let Ok(Multi(ranges)) = parse_range(header.as_bytes(), len, 8) {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let plan = MultipartPlan::new(&ranges, len, "application/octet-stream", "sg-prop".into());
            let body = materialize(&plan, &data);
            prop_assert_eq!(plan.content_length, body.len() as u64);
            let parts = parse_multipart(&body, "sg-prop").map_err(TestCaseError::fail)?;
            let covered: usize = parts.iter().map(|p| p.bytes.len()).sum();
            prop_assert_eq!(covered as u64, ranges.iter().map(|r| r.end - r.start).sum::<u64>());
        }
    }
}
