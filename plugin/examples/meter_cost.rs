//! The per-response work metering adds, in isolation, for
//! `loadtest/bench/metering.sh` to count with callgrind: for each simulated
//! 1 MiB range response, the response meter's life (four 256 KiB frames
//! confirmed one by one, then the record under the meter's lock when it ends).
//!
//! The hot-tier snapshot a metered response takes is not counted here: it
//! replaces the scan the `X-Shardgate-Cache` header does without metering.
//!
//! `cargo run --release -p shardgate --example meter_cost -- N`

use std::sync::Arc;

use shardgate::usage::{Meter, ReleaseTag, ResponseMeter, Source};

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let meter = Arc::new(Meter::default());
    let tenant: Arc<str> = Arc::from("team-a");
    let release = ReleaseTag { dataset: Arc::from("imagenet-mini"), version: Arc::from("1.4.2") };
    for _ in 0..n {
        let mut m = ResponseMeter::new(meter.clone(), tenant.clone(), release.clone(), 1 << 20);
        for _ in 0..4 {
            m.polled();
            m.handed(256 * 1024, Source::Hot);
        }
    }
    let drained = meter.drain_all();
    let bytes: u64 = drained.deltas.values().map(|c| c.bytes).sum();
    assert_eq!(bytes, n << 20, "every response is billed in full");
    println!("{n} responses metered, {bytes} bytes");
}
