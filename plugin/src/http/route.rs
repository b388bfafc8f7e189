//! Request paths to routes: a pure function, fuzzed, so a hostile path can
//! only ever produce a route or a 4xx, never a panic or a path outside a
//! release.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use crate::release::manifest::{Blake3, check_path};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    Healthz,
    Readyz,
    Metrics,
    ListDatasets,
    Dataset {
        name: &'a str,
    },
    Manifest {
        name: &'a str,
        version: &'a str,
    },
    /// The release's `placement.json` (BLAKE3 to CID), when the gateway has it.
    Placement {
        name: &'a str,
        version: &'a str,
    },
    /// `path` is percent-decoded and has passed `check_path`.
    File {
        name: &'a str,
        version: &'a str,
        path: String,
    },
    Blob {
        hash: Blake3,
    },
    /// The finance dashboard page (`asset` empty) or one of its assets.
    Dashboard {
        asset: &'a str,
    },
    /// `GET /v1/reports/summary`, the dashboard's data.
    ReportSummary,
    NotFound,
}

impl Route<'_> {
    /// Routes that serve release bytes (GET and HEAD only).
    pub fn label(&self) -> &'static str {
        match self {
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Metrics => "metrics",
            Route::ListDatasets | Route::Dataset { .. } => "list",
            Route::Manifest { .. } | Route::Placement { .. } => "manifest",
            Route::File { .. } => "file",
            Route::Blob { .. } => "blob",
            Route::Dashboard { .. } => "dashboard",
            Route::ReportSummary => "report",
            Route::NotFound => "other",
        }
    }
}

/// What a release path keeps unescaped in a URL: RFC 3986 unreserved
/// characters and `/`.
const PATH_KEEP: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b'/');

/// Percent-encodes a release path for a URL (keeping `/`).
pub fn encode_path(path: &str) -> String {
    utf8_percent_encode(path, PATH_KEEP).to_string()
}

/// Why a path is refused with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("path is not valid percent-encoded UTF-8")]
    Encoding,
    #[error("{0}")]
    BadPath(String),
    #[error("{0:?} is not a BLAKE3 hash (64 lowercase hex digits)")]
    BadHash(String),
}

/// Parses the path of a request URI (without the query).
pub fn parse_route(path: &str) -> Result<Route<'_>, RouteError> {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let mut segs = trimmed.split('/');
    let first = segs.next().unwrap_or("");
    let route = match first {
        "healthz" if segs.next().is_none() => Route::Healthz,
        "readyz" if segs.next().is_none() => Route::Readyz,
        "metrics" if segs.next().is_none() => Route::Metrics,
        "dashboard" => match (segs.next(), segs.next()) {
            (None | Some(""), None) => Route::Dashboard { asset: "" },
            (Some(asset), None) => Route::Dashboard { asset },
            _ => Route::NotFound,
        },
        "v1" => v1(segs)?,
        _ => Route::NotFound,
    };
    Ok(route)
}

fn v1<'a>(mut segs: std::str::Split<'a, char>) -> Result<Route<'a>, RouteError> {
    match segs.next() {
        Some("datasets") => {}
        Some("reports") => {
            return Ok(match (segs.next(), segs.next()) {
                (Some("summary"), None) => Route::ReportSummary,
                _ => Route::NotFound,
            });
        }
        Some("blobs") => {
            let (Some(hash), None) = (segs.next(), segs.next()) else { return Ok(Route::NotFound) };
            return hash
                .parse()
                .map(|hash| Route::Blob { hash })
                .map_err(|_| RouteError::BadHash(hash.chars().take(80).collect()));
        }
        _ => return Ok(Route::NotFound),
    }
    let Some(name) = segs.next().filter(|n| !n.is_empty()) else { return Ok(Route::ListDatasets) };
    let Some(version) = segs.next() else { return Ok(Route::Dataset { name }) };
    match segs.next() {
        Some("manifest") if segs.clone().next().is_none() => Ok(Route::Manifest { name, version }),
        Some("placement") if segs.clone().next().is_none() => Ok(Route::Placement { name, version }),
        Some("files") => {
            let mut path = String::new();
            for (i, seg) in segs.enumerate() {
                if i > 0 {
                    path.push('/');
                }
                path.push_str(&percent_decode(seg).ok_or(RouteError::Encoding)?);
            }
            if path.is_empty() {
                return Ok(Route::NotFound);
            }
            check_path(&path).map_err(RouteError::BadPath)?;
            Ok(Route::File { name, version, path })
        }
        None if version.is_empty() => Ok(Route::Dataset { name }),
        _ => Ok(Route::NotFound),
    }
}

/// Percent-decodes one path segment; `None` if malformed or not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    // The decoder passes a malformed escape through as it is; here it is refused.
    let b = s.as_bytes();
    let well_formed = b
        .iter()
        .enumerate()
        .filter(|&(_, &c)| c == b'%')
        .all(|(i, _)| b.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)));
    if !well_formed {
        return None;
    }
    percent_decode_str(s).decode_utf8().ok().map(std::borrow::Cow::into_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(parse_route("/healthz"), Ok(Route::Healthz));
        assert_eq!(parse_route("/v1/datasets"), Ok(Route::ListDatasets));
        assert_eq!(parse_route("/v1/datasets/"), Ok(Route::ListDatasets));
        assert_eq!(parse_route("/v1/datasets/x"), Ok(Route::Dataset { name: "x" }));
        assert_eq!(parse_route("/v1/datasets/x/1.0.0/manifest"), Ok(Route::Manifest { name: "x", version: "1.0.0" }));
        assert_eq!(parse_route("/v1/datasets/x/1.0.0/placement"), Ok(Route::Placement { name: "x", version: "1.0.0" }));
        assert_eq!(parse_route("/v1/datasets/x/1.0.0/placement/x"), Ok(Route::NotFound));
        assert_eq!(
            parse_route("/v1/datasets/x/1.0.0/files/a/b%20c.tar"),
            Ok(Route::File { name: "x", version: "1.0.0", path: "a/b c.tar".into() })
        );
        assert_eq!(parse_route("/nope"), Ok(Route::NotFound));
        assert_eq!(parse_route("/dashboard"), Ok(Route::Dashboard { asset: "" }));
        assert_eq!(parse_route("/dashboard/"), Ok(Route::Dashboard { asset: "" }));
        assert_eq!(parse_route("/dashboard/app.js"), Ok(Route::Dashboard { asset: "app.js" }));
        assert_eq!(parse_route("/dashboard/a/b"), Ok(Route::NotFound));
        assert_eq!(parse_route("/v1/reports/summary"), Ok(Route::ReportSummary));
        assert_eq!(parse_route("/v1/reports/other"), Ok(Route::NotFound));
        assert_eq!(parse_route("/v1/datasets/x/1.0.0/files/"), Ok(Route::NotFound));
    }

    #[test]
    fn hostile_paths_are_refused() {
        for p in [
            "/v1/datasets/x/1.0.0/files/../../etc/passwd",
            "/v1/datasets/x/1.0.0/files/a/%2e%2e/b",
            "/v1/datasets/x/1.0.0/files/a%2f..%2fb",
            "/v1/datasets/x/1.0.0/files/a//b",
            "/v1/datasets/x/1.0.0/files/%00",
            "/v1/datasets/x/1.0.0/files/a%5cb",
        ] {
            assert!(matches!(parse_route(p), Err(RouteError::BadPath(_))), "{p}: {:?}", parse_route(p));
        }
        assert_eq!(parse_route("/v1/datasets/x/1.0.0/files/%zz"), Err(RouteError::Encoding));
        assert_eq!(parse_route("/v1/datasets/x/1.0.0/files/%ff"), Err(RouteError::Encoding));
        assert!(matches!(parse_route("/v1/blobs/xyz"), Err(RouteError::BadHash(_))));
    }
}
