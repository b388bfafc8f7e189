//! The audit trail: an append-only log of lifecycle events (register, tag,
//! deprecate, takedown, key envelope changes, repairs), each entry naming its
//! actor, the release and the time, and hash-chained to the entry before it.
//!
//! An entry's `hash` is BLAKE3 over a domain string and the entry's canonical
//! compact JSON without `hash` (which includes `prev`, the hash before it), so
//! changing, removing, reordering or inserting any entry breaks the chain at
//! that entry. The log lives in the gateway's registry store (redb), is
//! written in the same transaction as the change it records, and is exported
//! as JSON lines; [`verify`] checks an export offline.

use std::io::BufRead;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::release::manifest::canonical_json;

tokio::task_local! {
    /// Who is making the admin change in this task (set by the admin API from its token).
    pub static ACTOR: String;
}

/// The actor of the current task: the admin token's id, or `local` for in-process callers.
pub fn actor() -> String {
    ACTOR.try_with(|a| a.clone()).unwrap_or_else(|_| "local".to_string())
}

/// The id an admin token is named by in the audit trail: the first 16 hex
/// digits of its BLAKE3, which is how `grpc.admin_tokens` lists it.
pub fn token_actor(token: &str) -> String {
    format!("admin-token:{}", &blake3::hash(token.as_bytes()).to_hex()[..16])
}

/// The `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const DOMAIN: &[u8] = b"shardgate.audit/v1\n";

/// What is appended; the store gives it a sequence number, time and chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Who: `admin-token:<16 hex of the token's BLAKE3>`, `gateway` (its own tasks), `local` (in-process callers).
    pub actor: String,
    /// `register`, `tag`, `deprecate`, `takedown`, `key_envelope_put`, `key_envelope_delete`, `repair`, ...
    pub event: String,
    /// `name@version`, when the event is about one release.
    pub release: Option<String>,
    /// BLAKE3 of the release's manifest.json.
    pub release_id: Option<String>,
    /// What else the event says (tag name, reason, node, blob ...).
    pub detail: Map<String, Value>,
}

impl Event {
    pub fn new(actor: &str, event: &str) -> Self {
        Self { actor: actor.to_string(), event: event.to_string(), release: None, release_id: None, detail: Map::new() }
    }

    pub fn release(mut self, name: &str, version: &semver::Version, id: Option<String>) -> Self {
        self.release = Some(format!("{name}@{version}"));
        self.release_id = id;
        self
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.detail.insert(key.to_string(), value.into());
        self
    }
}

/// One entry of the log, as stored and exported (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub seq: u64,
    pub at: jiff::Timestamp,
    pub actor: String,
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_id: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub detail: Map<String, Value>,
    /// The hash of the entry before (GENESIS for the first).
    pub prev: String,
    pub hash: String,
}

impl Entry {
    /// Chains `event` after the entry `seq - 1` whose hash is `prev`.
    pub fn chain(seq: u64, prev: &str, at: jiff::Timestamp, event: Event) -> Self {
        let mut e = Entry {
            seq,
            at,
            actor: event.actor,
            event: event.event,
            release: event.release,
            release_id: event.release_id,
            detail: event.detail,
            prev: prev.to_string(),
            hash: String::new(),
        };
        e.hash = e.computed_hash();
        e
    }

    /// BLAKE3 over the domain and the canonical JSON of every field but `hash`.
    pub fn computed_hash(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.remove("hash");
        }
        let mut h = blake3::Hasher::new();
        h.update(DOMAIN);
        h.update(&canonical_json(&v, false));
        h.finalize().to_hex().to_string()
    }

    /// The entry as one line of the export (canonical compact JSON, no newline).
    pub fn to_line(&self) -> Vec<u8> {
        canonical_json(&serde_json::to_value(self).unwrap_or(Value::Null), false)
    }
}

/// Where and why a log does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}{}: {why}", seq.map(|s| format!(" (entry {s})")).unwrap_or_default())]
pub struct Break {
    /// 1-based line of the export.
    pub line: u64,
    pub seq: Option<u64>,
    pub why: String,
}

/// What a verified log holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub entries: u64,
    /// The sequence number of the first entry (0 for a whole log), None when empty.
    pub first: Option<u64>,
    /// The hash of the last entry (the chain's head), GENESIS when empty.
    pub head: String,
}

/// Where an export must start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At the genesis: entry 0, chained from [`GENESIS`]. A log whose first
    /// entries were cut off does not verify.
    Genesis,
    /// Anywhere (`audit export --after N`): the first entry's `prev` is taken
    /// as given, so only the rest of the chain is proven.
    Tail,
}

/// Checks an exported log: every line an entry, sequence numbers from the
/// first one on without a gap, each `prev` the hash before it and each
/// `hash` what the entry hashes to; with [`Start::Genesis`], the first entry
/// must be entry 0, chained from the genesis.
pub fn verify(reader: impl BufRead, start: Start) -> Result<Verified, Break> {
    let mut prev: Option<(u64, String)> = None;
    let mut first = None;
    let mut entries = 0;
    for (i, line) in reader.lines().enumerate() {
        let line_no = i as u64 + 1;
        let brk = |seq: Option<u64>, why: String| Break { line: line_no, seq, why };
        let text = line.map_err(|e| brk(None, format!("unreadable: {e}")))?;
        if text.trim().is_empty() {
            return Err(brk(None, "empty line".into()));
        }
        let e: Entry = serde_json::from_str(&text).map_err(|e| brk(None, format!("not an audit entry: {e}")))?;
        match &prev {
            None if e.seq == 0 && e.prev != GENESIS => {
                return Err(brk(Some(e.seq), "the first entry does not start from the genesis".into()));
            }
            None if e.seq != 0 && start == Start::Genesis => {
                return Err(brk(
                    Some(e.seq),
                    format!(
                        "the log starts at entry {}, not at the genesis: entries before it are missing \
                         (verify an `export --after` file with --tail)",
                        e.seq
                    ),
                ));
            }
            None => first = Some(e.seq),
            Some((seq, hash)) => {
                if seq.checked_add(1) != Some(e.seq) {
                    return Err(brk(
                        Some(e.seq),
                        format!("entry {} follows entry {seq}: entries are missing or out of order", e.seq),
                    ));
                }
                if &e.prev != hash {
                    return Err(brk(Some(e.seq), format!("prev {} is not the hash of entry {seq} ({hash})", e.prev)));
                }
            }
        }
        let computed = e.computed_hash();
        if computed != e.hash {
            return Err(brk(Some(e.seq), format!("the entry was changed: it hashes to {computed}, not {}", e.hash)));
        }
        prev = Some((e.seq, e.hash));
        entries += 1;
    }
    Ok(Verified { entries, first, head: prev.map(|(_, h)| h).unwrap_or_else(|| GENESIS.to_string()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(n: u64) -> Vec<Entry> {
        let mut out: Vec<Entry> = Vec::new();
        for seq in 0..n {
            let prev = out.last().map(|e| e.hash.clone()).unwrap_or_else(|| GENESIS.to_string());
            let ev = Event::new("admin-token:0123456789abcdef", "tag")
                .release("ds", &semver::Version::new(1, 0, seq), Some("ab".repeat(32)))
                .with("tag", "stable");
            out.push(Entry::chain(seq, &prev, jiff::Timestamp::from_second(1_700_000_000 + seq as i64).unwrap(), ev));
        }
        out
    }

    fn export(entries: &[Entry]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in entries {
            out.extend_from_slice(&e.to_line());
            out.push(b'\n');
        }
        out
    }

    #[test]
    fn an_untouched_log_verifies_and_an_edit_breaks_it_there() {
        let entries = log(5);
        let v = verify(&export(&entries)[..], Start::Genesis).unwrap();
        assert_eq!((v.entries, v.first, v.head.as_str()), (5, Some(0), entries[4].hash.as_str()));

        let mut edited = entries.clone();
        edited[2].actor = "someone-else".into();
        let b = verify(&export(&edited)[..], Start::Genesis).unwrap_err();
        assert_eq!((b.line, b.seq), (3, Some(2)), "{b}");
        assert!(b.why.contains("changed"), "{b}");

        // Re-hashing the edited entry moves the break to the next one.
        edited[2].hash = edited[2].computed_hash();
        let b = verify(&export(&edited)[..], Start::Genesis).unwrap_err();
        assert_eq!((b.line, b.seq), (4, Some(3)), "{b}");

        let mut dropped = entries.clone();
        dropped.remove(1);
        let b = verify(&export(&dropped)[..], Start::Genesis).unwrap_err();
        assert_eq!(b.seq, Some(2), "{b}");
        assert!(b.why.contains("missing or out of order"), "{b}");

        let text = String::from_utf8(export(&entries)).unwrap().replacen("\"tag\":\"stable\"", "\"tag\":\"latest\"", 1);
        let b = verify(text.as_bytes(), Start::Genesis).unwrap_err();
        assert_eq!(b.seq, Some(0), "{b}");
    }

    #[test]
    fn a_tail_export_verifies_from_where_it_starts_only_when_asked() {
        let entries = log(6);
        let v = verify(&export(&entries[3..])[..], Start::Tail).unwrap();
        assert_eq!((v.entries, v.first), (3, Some(3)));
        // Without --tail, a log whose head was cut off is refused, naming where it starts.
        let b = verify(&export(&entries[3..])[..], Start::Genesis).unwrap_err();
        assert_eq!((b.line, b.seq), (1, Some(3)), "{b}");
        assert!(b.why.contains("not at the genesis"), "{b}");
        assert_eq!(verify(&b""[..], Start::Genesis).unwrap().head, GENESIS);
        assert!(verify(&b"{\"seq\":0}\n"[..], Start::Genesis).unwrap_err().why.contains("not an audit entry"));
    }

    #[test]
    fn a_sequence_number_at_the_end_of_the_range_is_a_break_not_an_overflow() {
        let mut entries = log(2);
        entries[0].seq = u64::MAX;
        entries[0].hash = entries[0].computed_hash();
        entries[1].prev = entries[0].hash.clone();
        entries[1].hash = entries[1].computed_hash();
        let b = verify(&export(&entries)[..], Start::Tail).unwrap_err();
        assert_eq!(b.line, 2, "{b}");
        assert!(b.why.contains("missing or out of order"), "{b}");
    }
}
