//! Discovery: `GET /v1/datasets` with its filters, and
//! `GET /v1/datasets/{name}`. Lists only what the asker may read, never a
//! taken-down release.

use http::{Response, StatusCode};

use super::body::Body;
use super::service::{error, json};
use crate::gateway::Gateway;
use crate::tenant::{Tenant, Tenants};

/// Discovery filters of `GET /v1/datasets`, all optional, all must match.
#[derive(Debug, Default)]
pub(super) struct Discovery {
    modality: Option<String>,
    license: Option<String>,
    language: Option<String>,
    compliance: Option<String>,
    label_type: Option<String>,
    updated_since: Option<jiff::Timestamp>,
    /// Free text, lower-cased: matched against the name and every envelope value.
    q: Option<String>,
}

impl Discovery {
    pub(super) fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut d = Discovery::default();
        let Some(query) = query.filter(|q| !q.is_empty()) else { return Ok(d) };
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let v = v.trim().to_string();
            if v.is_empty() {
                continue;
            }
            match &*k {
                "modality" => d.modality = Some(v.to_lowercase()),
                "license" => d.license = Some(v.to_lowercase()),
                "language" => d.language = Some(v.to_lowercase()),
                "compliance" => d.compliance = Some(v.to_lowercase()),
                "label_type" => d.label_type = Some(v.to_lowercase()),
                "q" => d.q = Some(v.to_lowercase()),
                "updated_since" => {
                    let t = v
                        .parse::<jiff::Timestamp>()
                        .or_else(|_| {
                            v.parse::<jiff::civil::Date>()
                                .and_then(|day| day.to_zoned(jiff::tz::TimeZone::UTC).map(|z| z.timestamp()))
                        })
                        .map_err(|_| format!("updated_since {v:?} is not a date (2026-11-01) or an RFC 3339 time"))?;
                    d.updated_since = Some(t);
                }
                other => {
                    return Err(format!(
                        "unknown filter {other:?}; filters are modality, license, language, compliance, \
                         label_type, updated_since, q"
                    ));
                }
            }
        }
        Ok(d)
    }

    fn matches(&self, r: &crate::registry::Release) -> bool {
        let m = &r.signed.manifest;
        let e = &m.envelope;
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_ref().is_none_or(|w| have.is_some_and(|h| h.to_lowercase() == *w))
        };
        let any = |want: &Option<String>, have: Option<&Vec<String>>| {
            want.as_ref().is_none_or(|w| have.is_some_and(|hs| hs.iter().any(|h| h.to_lowercase() == *w)))
        };
        let text = || {
            let envelope = serde_json::to_string(e).unwrap_or_default().to_lowercase();
            format!("{} {envelope}", m.name.to_lowercase())
        };
        any(&self.modality, e.modality.as_ref())
            && eq(&self.license, e.license.as_deref())
            && any(&self.language, e.languages.as_ref())
            && eq(&self.compliance, e.compliance_class.as_deref())
            && eq(&self.label_type, e.label_taxonomy.as_ref().and_then(|l| l.kind.as_deref()))
            && self.updated_since.is_none_or(|t| m.created_at >= t)
            && self.q.as_ref().is_none_or(|q| text().contains(q.as_str()))
    }
}

pub(super) fn list_datasets(gw: &Gateway, tenants: &Tenants, tenant: &Tenant, q: &Discovery) -> Response<Body> {
    let catalog = gw.registry().snapshot();
    let datasets: Vec<serde_json::Value> = catalog
        .names()
        .filter(|(name, _)| tenants.can_see(tenant, name))
        .filter_map(|(name, versions)| {
            // Taken-down releases are never discovered.
            let found: Vec<_> = versions
                .values()
                .filter(|r| {
                    catalog.state(name, r.version()).taken_down.is_none()
                        && q.matches(r)
                        && crate::door::discoverable(gw, &catalog, tenant, r)
                })
                .collect();
            let latest = found.last()?;
            let m = &latest.signed.manifest;
            Some(serde_json::json!({
                "name": name,
                "versions": found.iter().map(|r| r.version().to_string()).collect::<Vec<_>>(),
                "latest": m.version.to_string(),
                "state": catalog.state(name, &m.version).label(),
                "tags": catalog.lifecycle().tags.get(name.as_str()).map(|t| t.keys().cloned().collect::<Vec<_>>()).unwrap_or_default(),
                "license": m.envelope.license,
                "modality": m.envelope.modality,
                "languages": m.envelope.languages,
                "compliance_class": m.envelope.compliance_class,
                "label_type": m.envelope.label_taxonomy.as_ref().and_then(|l| l.kind.clone()),
                "updated_at": m.created_at.to_string(),
                "total_bytes": m.total_bytes,
            }))
        })
        .collect();
    // Configured releases this gateway could not load, so a reader missing
    // one knows why (and whether it is being retried).
    let not_loaded: Vec<serde_json::Value> =
        gw.unloaded().iter().map(|u| serde_json::json!({ "error": u.error, "retrying": u.retry })).collect();
    json(StatusCode::OK, &serde_json::json!({ "datasets": datasets, "not_loaded": not_loaded }))
}

pub(super) fn describe_dataset(gw: &Gateway, name: &str, tenant: &Tenant) -> Response<Body> {
    let catalog = gw.registry().snapshot();
    let Some(versions) = catalog.versions(name) else {
        return error(StatusCode::NOT_FOUND, format!("no dataset named {name:?} is served"));
    };
    let shown: Vec<_> = versions.values().filter(|r| crate::door::discoverable(gw, &catalog, tenant, r)).collect();
    if shown.is_empty() {
        // Nothing the asker may see: the same answer as no such dataset.
        return error(StatusCode::NOT_FOUND, format!("no dataset named {name:?} is served"));
    }
    let visible: std::collections::HashSet<&semver::Version> = shown.iter().map(|r| r.version()).collect();
    let versions: Vec<serde_json::Value> = shown
        .iter()
        .map(|r| {
            let m = &r.signed.manifest;
            let state = catalog.state(name, &m.version);
            let deprecation = state.deprecated.as_ref().map(|d| {
                serde_json::json!({
                    "reason": d.reason,
                    "successor": d.successor.as_ref().map(ToString::to_string),
                    "sunset": d.sunset.and_then(|t| jiff::Timestamp::from_second(t).ok()).map(|t| t.to_string()),
                })
            });
            let takedown = state.taken_down.as_ref().map(|t| serde_json::json!({ "reason": t.reason }));
            serde_json::json!({
                "version": m.version.to_string(),
                "state": state.label(),
                "tags": catalog.lifecycle().tags_of(name, &m.version),
                "deprecation": deprecation,
                "takedown": takedown,
                "release_id": r.signed.id.to_hex(),
                "signer": r.signed.signer.to_string(),
                "created_at": m.created_at.to_string(),
                "files": m.files.len(),
                "total_bytes": m.total_bytes,
                "records": m.records,
                "manifest_url": format!("/v1/datasets/{}/{}/manifest", m.name, m.version),
                "envelope": m.envelope,
            })
        })
        .collect();
    let tags: serde_json::Map<String, serde_json::Value> = catalog
        .lifecycle()
        .tags
        .get(name)
        .map(|t| {
            t.iter()
                .filter(|(_, v)| visible.contains(v))
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    json(StatusCode::OK, &serde_json::json!({ "name": name, "tags": tags, "versions": versions }))
}
