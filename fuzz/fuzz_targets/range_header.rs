//! `Range` / `If-Range` / `If-None-Match` parsing must never panic, and every
//! range it hands back must be servable as is.
//!
//! Input layout: byte 0 = `max_ranges`, bytes 1..9 = `len` (u64 little
//! endian), the rest = the header value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardgate::http::range::{
    MultipartPlan, RangeError, RangeRequest, content_range, if_none_match_matches, if_range_matches, parse_range,
};

const ETAG: &str = "\"b3-0123456789abcdef\"";

fuzz_target!(|data: &[u8]| {
    let Some((&max, rest)) = data.split_first() else { return };
    let Some((len, header)) = rest.split_first_chunk::<8>() else { return };
    let max_ranges = usize::from(max);
    let len = u64::from_le_bytes(*len);

    match parse_range(header, len, max_ranges) {
        Ok(RangeRequest::Full | RangeRequest::Unsatisfiable) => {}
        Ok(RangeRequest::Single(r)) => {
            assert!(max_ranges >= 1, "Single with max_ranges 0");
            check_range(&r, len);
        }
        Ok(RangeRequest::Multi(v)) => {
            assert!(v.len() >= 2, "Multi with {} ranges", v.len());
            assert!(v.len() <= max_ranges, "{} ranges > max {max_ranges}", v.len());
            for r in &v {
                check_range(r, len);
            }
            for w in v.windows(2) {
                // Ascending, disjoint and non-adjacent: a gap of at least one byte.
                assert!(w[0].end < w[1].start, "ranges {:?} and {:?} overlap, touch or are out of order", w[0], w[1]);
            }
            let plan = MultipartPlan::new(&v, len, "application/octet-stream", "SG_BOUNDARY".into());
            // Exact body length; the plan saturates at u64::MAX (len near 2^64).
            let heads: u128 = plan.parts.iter().map(|p| p.head.len() as u128).sum();
            let bytes: u128 = v.iter().map(|r| u128::from(r.end - r.start)).sum();
            let exact = heads + bytes + plan.tail().len() as u128;
            assert_eq!(u128::from(plan.content_length), exact.min(u128::from(u64::MAX)));
        }
        Err(RangeError::TooMany { count, max }) => {
            assert_eq!(max, max_ranges);
            assert!(count > max_ranges, "TooMany with {count} <= {max_ranges}");
        }
    }

    let ir = if_range_matches(header, ETAG);
    let inm = if_none_match_matches(header, ETAG);
    // A header that is exactly our strong tag is also a matching If-None-Match list.
    assert!(!ir || inm, "If-Range matched but If-None-Match did not");
    // The weak form of our tag never satisfies If-Range (strong comparison).
    assert!(!if_range_matches(header, "W/\"b3-0123456789abcdef\""));
});

fn check_range(r: &std::ops::Range<u64>, len: u64) {
    assert!(r.start < r.end, "empty range {r:?}");
    assert!(r.end <= len, "range {r:?} beyond len {len}");
    assert_eq!(content_range(r, len), format!("bytes {}-{}/{}", r.start, r.end - 1, len));
}
