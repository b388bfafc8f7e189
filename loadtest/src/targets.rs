//! The files to read: from a shardgate release's manifest, or from a list.

use std::sync::Arc;

use anyhow::Context;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub size: u64,
}

/// Files in popularity order: the first is the hottest under a Zipf law.
#[derive(Debug, Clone)]
pub struct Targets {
    pub files: Arc<Vec<Target>>,
}

/// RFC 3986 unreserved characters and `/` stay as they are in a file's URL.
const PATH_KEEP: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b'/');

fn encode(path: &str) -> String {
    utf8_percent_encode(path, PATH_KEEP).to_string()
}

fn auth(r: reqwest::RequestBuilder, key: Option<&str>) -> reqwest::RequestBuilder {
    match key {
        Some(k) => r.bearer_auth(k),
        None => r,
    }
}

impl Targets {
    /// The non-empty files of NAME@VERSION, as listed by the gateway's manifest.
    pub async fn from_release(
        client: &reqwest::Client,
        base: &str,
        release: &str,
        key: Option<&str>,
    ) -> anyhow::Result<Self> {
        let (name, version) =
            release.rsplit_once('@').with_context(|| format!("--release {release:?} is not NAME@VERSION"))?;
        let url = format!("{base}/v1/datasets/{name}/{version}/manifest");
        let resp = auth(client.get(&url), key).send().await.with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        if !status.is_success() {
            anyhow::bail!("GET {url}: HTTP {status}");
        }
        let m: serde_json::Value =
            serde_json::from_slice(&resp.bytes().await?).with_context(|| format!("{url}: not JSON"))?;
        let files: Vec<Target> = m["files"]
            .as_array()
            .with_context(|| format!("{url}: no files in the manifest"))?
            .iter()
            .filter_map(|f| {
                let size = f["size"].as_u64()?;
                let path = f["path"].as_str()?;
                (size > 0).then(|| Target {
                    url: format!("{base}/v1/datasets/{name}/{version}/files/{}", encode(path)),
                    size,
                })
            })
            .collect();
        if files.is_empty() {
            anyhow::bail!("{release} has no non-empty files");
        }
        Ok(Self { files: Arc::new(files) })
    }

    /// Paths under `base`, one per line, each optionally followed by its size
    /// (otherwise a HEAD asks for it).
    pub async fn from_list(
        client: &reqwest::Client,
        base: &str,
        list: &std::path::Path,
        key: Option<&str>,
    ) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(list).with_context(|| format!("--urls {}", list.display()))?;
        let mut files = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let mut parts = line.split_whitespace();
            let Some(path) = parts.next() else { continue };
            let url = format!("{base}/{}", path.trim_start_matches('/'));
            let size = match parts.next() {
                Some(s) => {
                    s.parse().with_context(|| format!("{}:{}: size {s:?} is not a number", list.display(), n + 1))?
                }
                None => {
                    let r = auth(client.head(&url), key).send().await.with_context(|| format!("HEAD {url}"))?;
                    if !r.status().is_success() {
                        anyhow::bail!("HEAD {url}: HTTP {}", r.status());
                    }
                    r.headers()
                        .get(reqwest::header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok()?.parse().ok())
                        .with_context(|| format!("HEAD {url}: no Content-Length"))?
                }
            };
            if size > 0 {
                files.push(Target { url, size });
            }
        }
        if files.is_empty() {
            anyhow::bail!("{}: no non-empty files listed", list.display());
        }
        Ok(Self { files: Arc::new(files) })
    }
}
