//! Listing a bucket: the keys of every release a reader may see, in S3's
//! order (UTF-8 bytes), without building the key space. A bucket's keys are
//! `<version or tag>/<path>`; each root (`1.0.0/`, `latest/`) holds a
//! release's files, which the manifest keeps sorted by path. So a page is a
//! binary search to its first key, then a walk; a common prefix is skipped
//! with one more binary search. A page of 1,000 over a release of any size
//! costs about 1,000 steps plus a few `log n` searches.

use std::cmp::Ordering;
use std::sync::Arc;

use crate::registry::Release;
use crate::release::manifest::FileEntry;

/// One root of a bucket: `prefix` is `<version or tag>/`.
#[derive(Debug, Clone)]
pub struct Root {
    pub prefix: String,
    pub release: Arc<Release>,
}

/// What a page asks for.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    pub prefix: &'a str,
    pub delimiter: Option<&'a str>,
    /// Only keys (and common prefixes) after this one.
    pub after: &'a str,
    pub max: usize,
}

#[derive(Debug)]
pub enum Item<'a> {
    Object { key: String, root: &'a Root, file: &'a FileEntry, index: usize },
    Prefix(String),
}

impl Item<'_> {
    pub fn key(&self) -> &str {
        match self {
            Item::Object { key, .. } | Item::Prefix(key) => key,
        }
    }
}

#[derive(Debug)]
pub struct Page<'a> {
    pub items: Vec<Item<'a>>,
    /// Another item follows the last one.
    pub truncated: bool,
}

/// Compares `a + b` with `other` without concatenating.
fn cmp_concat(a: &str, b: &str, other: &str) -> Ordering {
    let (a, b, o) = (a.as_bytes(), b.as_bytes(), other.as_bytes());
    let n = a.len().min(o.len());
    match a[..n].cmp(&o[..n]) {
        Ordering::Equal => {}
        x => return x,
    }
    if o.len() < a.len() {
        return Ordering::Greater;
    }
    b.cmp(&o[a.len()..])
}

/// Whether `a + b` starts with `p`.
fn concat_starts_with(a: &str, b: &str, p: &str) -> bool {
    if p.len() <= a.len() { a.starts_with(p) } else { p.starts_with(a) && b.starts_with(&p[a.len()..]) }
}

/// Sorts roots into key order (by their `prefix`).
pub fn sort_roots(roots: &mut [Root]) {
    roots.sort_by(|a, b| a.prefix.cmp(&b.prefix));
}

/// One page of a bucket whose roots are sorted by [`sort_roots`].
pub fn list<'a>(roots: &'a [Root], q: Query<'_>) -> Page<'a> {
    let mut items = Vec::new();
    if q.max == 0 {
        // An empty page that is not truncated: there is no last key to continue from.
        return Page { items, truncated: false };
    }
    let mut truncated = false;
    'roots: for root in roots {
        let rp = root.prefix.as_str();
        if !(q.prefix.starts_with(rp) || rp.starts_with(q.prefix)) {
            continue;
        }
        let files = &root.release.signed.manifest.files;
        // The first key after `after` and not before `prefix` (both "small key" tests: monotone).
        let mut i = files.partition_point(|f| {
            cmp_concat(rp, &f.path, q.after) != Ordering::Greater || cmp_concat(rp, &f.path, q.prefix) == Ordering::Less
        });
        while let Some(f) = files.get(i) {
            if !concat_starts_with(rp, &f.path, q.prefix) {
                break;
            }
            let key_len = rp.len() + f.path.len();
            let common = q.delimiter.filter(|d| !d.is_empty()).and_then(|d| {
                let key = format!("{rp}{}", f.path);
                key[q.prefix.len()..].find(d).map(|pos| key[..q.prefix.len() + pos + d.len()].to_string())
            });
            match common {
                Some(cp) => {
                    // Equal to the last item when an earlier root rolled into the same prefix.
                    let repeat = items.last().is_some_and(|l: &Item<'_>| l.key() == cp);
                    if cp.as_str() > q.after && !repeat {
                        if items.len() >= q.max {
                            truncated = true;
                            break 'roots;
                        }
                        items.push(Item::Prefix(cp.clone()));
                    }
                    // Every key under the common prefix is rolled into it: skip them.
                    i += files[i..].partition_point(|g| concat_starts_with(rp, &g.path, &cp));
                    if cp.len() <= rp.len() {
                        // The whole root rolled up (its version segment is the common prefix).
                        continue 'roots;
                    }
                }
                None => {
                    if items.len() >= q.max {
                        truncated = true;
                        break 'roots;
                    }
                    let mut key = String::with_capacity(key_len);
                    key.push_str(rp);
                    key.push_str(&f.path);
                    items.push(Item::Object { key, root, file: f, index: i });
                    i += 1;
                }
            }
        }
    }
    Page { items, truncated }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenated_comparisons_match_the_real_strings() {
        let cases = ["", "a", "a/", "a/b", "a/bc", "ab", "b", "a/b/c", "1.0.0/", "1.0.0/x", "1.0.0-rc/"];
        for a in ["", "a", "a/", "1.0.0/"] {
            for b in ["", "b", "b/c", "x"] {
                let whole = format!("{a}{b}");
                for o in cases {
                    assert_eq!(cmp_concat(a, b, o), whole.as_str().cmp(o), "{a}+{b} vs {o}");
                    assert_eq!(concat_starts_with(a, b, o), whole.starts_with(o), "{a}+{b} starts {o}");
                }
            }
        }
    }
}
