//! Outlier ejection, as nginx's `max_fails`/`fail_timeout` and Envoy's
//! outlier detection do it: an origin that fails `consecutive_failures`
//! times in a row (an error, or bytes that fail verification), or once with
//! a timeout or stall (which every request meeting it pays in full), is
//! ejected for a time that doubles with each ejection in a
//! row, up to a most. While ejected it is tried only after every other
//! origin. When its time is up, one request at a time probes it in its
//! configured place; an answer that verifies restores it, a failure ejects it
//! again for longer.
//!
//! State is kept by origin name, so a reload that keeps an origin keeps what
//! is known about it. Must not: judge bytes (the fetcher reports outcomes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::config::OutlierConfig;
use crate::metrics::OriginLabel;

/// An origin's standing, as the `shardgate_origin_state` metric shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Tried in its configured place.
    Healthy = 0,
    /// Skipped until its ejection ends; tried only when every other origin failed.
    Ejected = 1,
    /// Its ejection ended; one request at a time tries it.
    Probing = 2,
}

#[derive(Debug)]
struct State {
    consecutive: u32,
    /// Ejections in a row without a success between them.
    ejections: u32,
    until: Option<Instant>,
    probe_in_flight: bool,
}

/// The ejection state of every origin, by name.
#[derive(Debug)]
pub struct Outliers {
    cfg: Mutex<OutlierConfig>,
    by_name: Mutex<HashMap<String, Arc<Mutex<State>>>>,
    state_gauge: Family<OriginLabel, Gauge>,
    ejections: Family<OriginLabel, Counter>,
}

/// Where an origin goes in this request's order, and whether this request
/// holds its probe (and must report back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    InPlace,
    Probe,
    Last,
}

impl Outliers {
    pub fn new(
        cfg: OutlierConfig,
        state_gauge: Family<OriginLabel, Gauge>,
        ejections: Family<OriginLabel, Counter>,
    ) -> Self {
        Self { cfg: Mutex::new(cfg), by_name: Mutex::default(), state_gauge, ejections }
    }

    pub fn set_config(&self, cfg: OutlierConfig) {
        *self.cfg.lock().unwrap_or_else(PoisonError::into_inner) = cfg;
    }

    fn state(&self, origin: &str) -> Arc<Mutex<State>> {
        let mut map = self.by_name.lock().unwrap_or_else(PoisonError::into_inner);
        // Looked up per fetch: no allocation once the origin is known.
        if let Some(st) = map.get(origin) {
            return st.clone();
        }
        map.entry(origin.to_string())
            .or_insert_with(|| {
                self.set_gauge(origin, Standing::Healthy);
                Arc::new(Mutex::new(State { consecutive: 0, ejections: 0, until: None, probe_in_flight: false }))
            })
            .clone()
    }

    fn set_gauge(&self, origin: &str, s: Standing) {
        self.state_gauge.get_or_create(&OriginLabel { origin: origin.to_string() }).set(s as i64);
    }

    /// This request's turn for `origin`.
    pub fn turn(&self, origin: &str) -> Turn {
        if !self.cfg.lock().unwrap_or_else(PoisonError::into_inner).enabled() {
            return Turn::InPlace;
        }
        let st = self.state(origin);
        let mut s = st.lock().unwrap_or_else(PoisonError::into_inner);
        match s.until {
            None => Turn::InPlace,
            Some(t) if Instant::now() < t => Turn::Last,
            Some(_) if s.probe_in_flight => Turn::Last,
            Some(_) => {
                s.probe_in_flight = true;
                self.set_gauge(origin, Standing::Probing);
                Turn::Probe
            }
        }
    }

    /// Orders `names` for one request: healthy and probing origins in their
    /// configured order, then ejected ones. Each entry is (index, turn).
    pub fn order<'a>(&self, names: impl Iterator<Item = &'a str>) -> Vec<(usize, Turn)> {
        let mut turns: Vec<(usize, Turn)> = names.enumerate().map(|(i, n)| (i, self.turn(n))).collect();
        // Stable: configured order within each group.
        turns.sort_by_key(|&(_, t)| t == Turn::Last);
        turns
    }

    /// The origin answered bytes that verified.
    pub fn success(&self, origin: &str) {
        let st = self.state(origin);
        let mut s = st.lock().unwrap_or_else(PoisonError::into_inner);
        let was_out = s.until.is_some();
        *s = State { consecutive: 0, ejections: 0, until: None, probe_in_flight: false };
        if was_out {
            tracing::info!(origin, "origin answered well; restored");
            self.set_gauge(origin, Standing::Healthy);
        }
    }

    /// The origin failed (error, bad bytes; `costly`: a timeout or stall,
    /// which ejects at once since every request meeting it waits the whole
    /// timer). `probe`: this attempt held the origin's probe. While an origin
    /// is out, only its probe's verdict counts: the other requests that were
    /// already under way against it (or tried it as a last resort) say
    /// nothing new, so one stall does not run the ejection up to its most.
    pub fn failure(&self, origin: &str, costly: bool, probe: bool) {
        let cfg = *self.cfg.lock().unwrap_or_else(PoisonError::into_inner);
        if !cfg.enabled() {
            return;
        }
        let st = self.state(origin);
        let mut s = st.lock().unwrap_or_else(PoisonError::into_inner);
        if s.until.is_some() && !probe {
            return;
        }
        s.consecutive = s.consecutive.saturating_add(1);
        if probe {
            s.probe_in_flight = false;
        }
        if probe || costly || s.consecutive >= cfg.consecutive_failures {
            s.ejections = s.ejections.saturating_add(1);
            let factor = 1u32.checked_shl(s.ejections.saturating_sub(1).min(16)).unwrap_or(u32::MAX);
            let time = cfg.base_ejection.saturating_mul(factor).min(cfg.max_ejection);
            s.until = Some(Instant::now() + time);
            s.consecutive = 0;
            self.ejections.get_or_create(&OriginLabel { origin: origin.to_string() }).inc();
            self.set_gauge(origin, Standing::Ejected);
            tracing::warn!(origin, ejected_for = ?time, in_a_row = s.ejections, "origin ejected after failures");
        }
    }

    /// The probe this request held ended without a verdict (the reader left).
    pub fn probe_abandoned(&self, origin: &str) {
        let st = self.state(origin);
        st.lock().unwrap_or_else(PoisonError::into_inner).probe_in_flight = false;
    }

    /// The standing of `origin` now.
    pub fn standing(&self, origin: &str) -> Standing {
        let st = self.state(origin);
        let s = st.lock().unwrap_or_else(PoisonError::into_inner);
        match s.until {
            None => Standing::Healthy,
            Some(t) if Instant::now() < t => Standing::Ejected,
            Some(_) => Standing::Probing,
        }
    }
}

impl OutlierConfig {
    fn enabled(&self) -> bool {
        self.consecutive_failures > 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn outliers(after: u32) -> Outliers {
        let cfg = OutlierConfig {
            consecutive_failures: after,
            base_ejection: Duration::from_millis(50),
            max_ejection: Duration::from_millis(150),
        };
        Outliers::new(cfg, Family::default(), Family::default())
    }

    #[test]
    fn failures_in_a_row_eject_and_a_good_answer_restores() {
        let o = outliers(2);
        o.failure("a", false, false);
        assert_eq!(o.turn("a"), Turn::InPlace, "one failure is not enough");
        o.success("a");
        o.failure("a", false, false);
        assert_eq!(o.turn("a"), Turn::InPlace, "a success in between resets the count");
        o.failure("a", false, false);
        assert_eq!(o.standing("a"), Standing::Ejected);
        assert_eq!(o.order(["a", "b"].into_iter()), vec![(1, Turn::InPlace), (0, Turn::Last)]);
        std::thread::sleep(Duration::from_millis(60));
        // Time is up: one probe at a time, in its place.
        assert_eq!(o.order(["a", "b"].into_iter()), vec![(0, Turn::Probe), (1, Turn::InPlace)]);
        assert_eq!(o.turn("a"), Turn::Last, "a second probe waits for the first");
        o.success("a");
        assert_eq!(o.standing("a"), Standing::Healthy);
        assert_eq!(o.turn("a"), Turn::InPlace);
    }

    #[test]
    fn a_failed_probe_ejects_again_for_longer_up_to_the_most() {
        let o = outliers(1);
        o.failure("a", false, false);
        for want in [100u64, 150, 150] {
            std::thread::sleep(Duration::from_millis(160));
            assert_eq!(o.turn("a"), Turn::Probe);
            o.failure("a", false, true);
            let s = o.state("a");
            let until = s.lock().unwrap().until.unwrap();
            let left = until.saturating_duration_since(Instant::now());
            assert!(
                left <= Duration::from_millis(want) && left + Duration::from_millis(30) >= Duration::from_millis(want),
                "{left:?} vs {want}"
            );
        }
    }

    #[test]
    fn failures_of_requests_already_under_way_do_not_lengthen_an_ejection() {
        let o = outliers(1);
        o.failure("a", true, false);
        let until = |o: &Outliers| o.state("a").lock().unwrap().until.unwrap();
        let first = until(&o);
        for _ in 0..5 {
            o.failure("a", true, false);
        }
        assert_eq!(until(&o), first, "stalls of spans already in flight doubled the ejection");
    }

    #[test]
    fn zero_turns_ejection_off() {
        let o = outliers(0);
        for _ in 0..10 {
            o.failure("a", false, false);
        }
        assert_eq!(o.turn("a"), Turn::InPlace);
    }
}
