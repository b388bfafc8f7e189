//! Distinct client addresses per tenant, a minute at a time, for the
//! `shardgate_tenant_clients` gauge: how many machines read as each tenant
//! (behind a balancer, as forwarded by `server.trusted_proxies`).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::usage::unix_now;

/// Addresses kept per tenant and minute; past it the count reads as at least this.
const CAP: usize = 65_536;

#[derive(Debug, Default)]
pub struct ClientTally {
    inner: Mutex<Tally>,
}

#[derive(Debug, Default)]
struct Tally {
    minute: i64,
    current: HashMap<Arc<str>, HashSet<IpAddr>>,
    last: HashMap<Arc<str>, HashSet<IpAddr>>,
}

impl Tally {
    fn roll(&mut self, minute: i64) {
        if minute == self.minute {
            return;
        }
        self.last = if minute == self.minute + 1 {
            std::mem::take(&mut self.current)
        } else {
            // A quiet minute in between: nobody was seen in the last full minute.
            let zeros = self.current.keys().map(|t| (t.clone(), HashSet::new())).collect();
            self.current.clear();
            zeros
        };
        self.minute = minute;
    }
}

impl ClientTally {
    /// `ip` made a request admitted as `tenant`.
    pub fn seen(&self, tenant: &Arc<str>, ip: IpAddr) {
        self.seen_at(tenant, ip, unix_now() / 60);
    }

    fn seen_at(&self, tenant: &Arc<str>, ip: IpAddr, minute: i64) {
        let Ok(mut t) = self.inner.lock() else { return };
        t.roll(minute);
        let set = t.current.entry(tenant.clone()).or_default();
        if set.len() < CAP {
            set.insert(ip);
        }
    }

    /// Distinct addresses per tenant in the last full minute.
    pub fn last_minute(&self) -> Vec<(Arc<str>, usize)> {
        self.last_minute_at(unix_now() / 60)
    }

    fn last_minute_at(&self, minute: i64) -> Vec<(Arc<str>, usize)> {
        let Ok(mut t) = self.inner.lock() else { return Vec::new() };
        t.roll(minute);
        t.last.iter().map(|(k, v)| (k.clone(), v.len())).collect()
    }

    /// The addresses seen per tenant in this minute and the last.
    pub fn recent(&self) -> Vec<(Arc<str>, Vec<IpAddr>)> {
        let Ok(mut t) = self.inner.lock() else { return Vec::new() };
        t.roll(unix_now() / 60);
        let mut out: HashMap<Arc<str>, HashSet<IpAddr>> = t.last.clone();
        for (k, v) in &t.current {
            out.entry(k.clone()).or_default().extend(v.iter().copied());
        }
        out.into_iter().map(|(k, v)| (k, v.into_iter().collect())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_addresses_are_counted_per_tenant_and_minute() {
        let t = ClientTally::default();
        let (a, b): (Arc<str>, Arc<str>) = ("vision".into(), "text".into());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        t.seen_at(&a, ip("10.0.0.1"), 100);
        t.seen_at(&a, ip("10.0.0.1"), 100);
        t.seen_at(&a, ip("10.0.0.2"), 100);
        t.seen_at(&b, ip("10.0.0.1"), 100);
        // Still minute 100: nothing complete yet.
        assert!(t.last_minute_at(100).is_empty());
        let mut last = t.last_minute_at(101);
        last.sort();
        assert_eq!(last, vec![(b.clone(), 1), (a.clone(), 2)]);
        // A minute with nobody: zero, not the old count.
        t.seen_at(&a, ip("10.0.0.3"), 101);
        assert_eq!(t.last_minute_at(103), vec![(a.clone(), 0)]);
    }
}
