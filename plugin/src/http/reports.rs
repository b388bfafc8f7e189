//! `/dashboard` (a page and its assets, built into the binary, so it works
//! with no network beyond the gateway) and `GET /v1/reports/summary`, the
//! JSON the page renders, behind finance or admin tokens.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use super::body::{self, Body};
use super::service::{error, json};
use crate::gateway::Gateway;
use crate::reports::summary::{self, MAX_DAYS};
use crate::tenant::TokenRefusal;

const INDEX: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");

/// Scripts, styles and data come from the gateway only; nothing inline.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The dashboard page (`asset` empty) or one of its assets.
pub fn asset(asset: &str) -> Option<Response<Body>> {
    let (text, content_type) = match asset {
        "" | "index.html" => (INDEX, "text/html; charset=utf-8"),
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut r = Response::new(body::full(text));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    Some(r)
}

fn unauthorized(why: &str) -> Response<Body> {
    let mut r = error(StatusCode::UNAUTHORIZED, why);
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"shardgate reports\""));
    r
}

/// Checks `Authorization: Bearer <token>` against `reports.finance_tokens`
/// and `grpc.admin_tokens` (parsed once, at start and on reload).
fn authorized<B>(gw: &Gateway, req: &Request<B>) -> Result<(), &'static str> {
    match gw.report_tokens().check(req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes())) {
        Ok(()) => Ok(()),
        Err(TokenRefusal::Missing) => Err("a finance or admin token is required (Authorization: Bearer <token>)"),
        Err(TokenRefusal::Malformed) => Err("Authorization must be `Bearer <token>`"),
        Err(TokenRefusal::Unknown) => Err("the finance or admin token is not valid"),
    }
}

/// `days` from the query: 1 to [`MAX_DAYS`], default 30.
fn days(query: Option<&str>) -> Result<u32, String> {
    let mut days = 30;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if k == "days" {
            days = match v.parse::<u32>() {
                Ok(n) if (1..=MAX_DAYS).contains(&n) => n,
                _ => return Err(format!("days={v:?} must be a whole number from 1 to {MAX_DAYS}")),
            };
        }
    }
    Ok(days)
}

/// `scope` from the query: `fleet` (the default: with `reports.peers`, the
/// peers' summaries merged in) or `member` (this gateway alone, which is
/// what peers ask each other for).
fn fleet_scope(query: Option<&str>) -> Result<bool, String> {
    let mut fleet = true;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if k == "scope" {
            fleet = match &*v {
                "fleet" => true,
                "member" => false,
                _ => return Err(format!("scope={v:?} must be fleet or member")),
            };
        }
    }
    Ok(fleet)
}

/// `GET /v1/reports/summary?days=N`.
pub async fn summary<B>(gw: &Arc<Gateway>, req: &Request<B>) -> Response<Body> {
    if req.method() != Method::GET {
        let mut r = error(StatusCode::METHOD_NOT_ALLOWED, format!("{} is not allowed here", req.method()));
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    if let Err(why) = authorized(gw, req) {
        return unauthorized(why);
    }
    let (days, fleet) = match (days(req.uri().query()), fleet_scope(req.uri().query())) {
        (Ok(d), Ok(f)) => (d, f),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, e),
    };
    let peers = gw.peers().filter(|_| fleet);
    let (local, theirs) = tokio::join!(summary::for_gateway(gw, days), async {
        match &peers {
            Some(p) => Some(p.fetch_all(days).await),
            None => None,
        }
    });
    let merged = local.map(|s| match theirs {
        Some(theirs) => crate::reports::fleet::merge(s, theirs),
        None => s,
    });
    match merged {
        Ok(s) => match serde_json::to_value(&s) {
            Ok(v) => {
                let mut r = json(StatusCode::OK, &v);
                r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                r
            }
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        },
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn days_are_checked() {
        assert_eq!(super::days(None), Ok(30));
        assert_eq!(super::days(Some("days=90")), Ok(90));
        assert_eq!(super::days(Some("x=1&days=7")), Ok(7));
        for bad in ["days=0", "days=367", "days=-1", "days=ten", "days="] {
            let e = super::days(Some(bad)).unwrap_err();
            assert!(e.contains("days="), "{bad}: {e}");
        }
    }

    #[test]
    fn scope_is_checked() {
        assert_eq!(super::fleet_scope(None), Ok(true));
        assert_eq!(super::fleet_scope(Some("days=3&scope=member")), Ok(false));
        assert_eq!(super::fleet_scope(Some("scope=fleet")), Ok(true));
        let e = super::fleet_scope(Some("scope=all")).unwrap_err();
        assert!(e.contains("scope=\"all\""), "{e}");
    }
}
