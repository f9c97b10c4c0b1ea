//! Request plumbing shared by every page: the application state, the signed-in person
//! (session cookie), the client's address and whether the request came over TLS (believed from
//! X-Forwarded-* only when sent by a trusted proxy), CSRF checks, security headers, and how an
//! error becomes a page.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use crate::config::{Config, SecureCookies};
use crate::db::{Db, DbError};
use crate::session::{cookie_value, same_secret, Session, Sessions, COOKIE};
use crate::throttle::Throttle;

pub struct App {
    pub cfg: Config,
    pub db: Db,
    pub sessions: Sessions,
    pub throttle: Throttle,
    /// GeoNature accounts may sign in (UsersHub present and the function granted).
    pub geonature: bool,
}

pub type State = Arc<App>;

/// Header the page script sends with automatic refreshes: they do not count as activity.
pub const REFRESH_HEADER: &str = "x-gn2pg-refresh";

/// The address of the person's browser: the peer, or, when the peer is a trusted proxy, the
/// last address of X-Forwarded-For that is not a trusted proxy.
pub fn client_addr(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer.ip()) {
        return peer.ip();
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    forwarded.into_iter().rev().find(|a| !trusted.contains(a)).unwrap_or(peer.ip())
}

/// Whether cookies must be Secure: configured, or (auto) the trusted proxy says it received
/// the request over https.
pub fn is_secure(cfg: &Config, peer: SocketAddr, headers: &HeaderMap) -> bool {
    match cfg.secure_cookies {
        SecureCookies::Always => true,
        SecureCookies::Never => false,
        SecureCookies::Auto => {
            cfg.trusted_proxies.contains(&peer.ip())
                && headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).is_some_and(|p| p.trim() == "https")
        }
    }
}

pub fn peer(parts: &Parts) -> SocketAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// The signed-in person of a request.
pub struct User {
    pub session: Session,
    pub secure: bool,
}

impl User {
    /// Refuses a state change whose form does not carry this session's CSRF token.
    pub fn check_csrf(&self, token: &str) -> Result<(), AppError> {
        if same_secret(token, &self.session.csrf) {
            Ok(())
        } else {
            Err(AppError::Forbidden(
                "this form has expired or was not sent by this dashboard (CSRF token mismatch): reload the page and try again"
                    .into(),
            ))
        }
    }
}

impl FromRequestParts<State> for User {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &State) -> Result<User, Response> {
        let automatic = parts.headers.contains_key(REFRESH_HEADER);
        let session = parts
            .headers
            .get(header::COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|c| cookie_value(c, COOKIE))
            .and_then(|id| app.sessions.get(id, !automatic));
        let secure = is_secure(&app.cfg, peer(parts), &parts.headers);
        match session {
            Some(session) => Ok(User { session, secure }),
            None if parts.method == Method::GET && !automatic => {
                let next = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
                let next: String = url_encode(next);
                Err(Redirect::to(&format!("/sign-in?next={next}")).into_response())
            }
            None => Err((StatusCode::UNAUTHORIZED, "signed out: sign in again").into_response()),
        }
    }
}

/// Percent-encodes a query parameter value.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A `next` target after sign-in: a path of this site only.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_string(),
        _ => "/flows".to_string(),
    }
}

/// Every response: no framing, no sniffing, scripts and styles from this site only, no
/// caching of pages that show data.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// State changes must come from this site: a cross-site Origin is refused before anything else
/// (SameSite=Strict cookies and CSRF tokens are the other two locks).
pub async fn same_origin(req: Request, next: Next) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let origin = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok());
        let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok());
        if let (Some(origin), Some(host)) = (origin, host) {
            let origin_host = origin.split("://").nth(1).unwrap_or("");
            if origin == "null" || origin_host != host {
                return AppError::Forbidden("cross-site request refused".into()).into_response();
            }
        }
    }
    next.run(req).await
}

#[derive(Debug)]
pub enum AppError {
    Db(DbError),
    Forbidden(String),
    NotFound(String),
    BadRequest(String),
}

impl From<DbError> for AppError {
    fn from(e: DbError) -> AppError {
        AppError::Db(e)
    }
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::Db(DbError::NoAccess(_)) => StatusCode::FORBIDDEN,
            AppError::Db(DbError::Refused { code, .. }) if code == "42501" => StatusCode::FORBIDDEN,
            AppError::Db(DbError::Refused { .. }) => StatusCode::BAD_REQUEST,
            AppError::Db(DbError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// What the person reads: PostgreSQL's own words for what it refused.
    pub fn lines(&self) -> Vec<String> {
        match self {
            AppError::Db(DbError::Refused { message, detail, hint, .. }) => {
                let mut v = vec![message.clone()];
                v.extend(detail.iter().map(|d| format!("Detail: {d}")));
                v.extend(hint.iter().map(|h| format!("Hint: {h}")));
                v
            }
            AppError::Db(DbError::NoAccess(m)) => vec![format!("{m}. Sign in again.")],
            AppError::Db(DbError::Unavailable(m)) => {
                eprintln!("gn2pg-dashboard: database unavailable: {m}");
                vec!["the database cannot be reached right now; try again in a moment".into()]
            }
            AppError::Forbidden(m) | AppError::NotFound(m) | AppError::BadRequest(m) => vec![m.clone()],
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = html! {
            (maud::DOCTYPE)
            html lang="en" {
                head { meta charset="utf-8"; title { "gn2pg: " (status.as_u16()) } link rel="stylesheet" href="/static/app.css"; }
                body {
                    main class="narrow" {
                        h1 { "Not done" }
                        div class="error" id="error" { @for l in self.lines() { p { (l) } } }
                        p { a href="/flows" { "Back to the flows" } }
                    }
                }
            }
        };
        (status, body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_address_behind_trusted_proxies_only() {
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.7, 203.0.113.9"));
        let from_proxy = SocketAddr::new(proxy, 4000);
        assert_eq!(client_addr(from_proxy, &h, &[proxy]), "203.0.113.9".parse::<IpAddr>().unwrap());
        assert_eq!(client_addr(from_proxy, &h, &[]), proxy, "headers of an untrusted peer are ignored");
        let direct: SocketAddr = "192.0.2.3:5000".parse().unwrap();
        assert_eq!(client_addr(direct, &h, &[proxy]), direct.ip());
    }

    #[test]
    fn secure_cookies_follow_the_trusted_proxy() {
        let mut cfg = Config { trusted_proxies: vec!["127.0.0.1".parse().unwrap()], ..Default::default() };
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let proxy: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let other: SocketAddr = "192.0.2.1:1".parse().unwrap();
        assert!(is_secure(&cfg, proxy, &h));
        assert!(!is_secure(&cfg, other, &h));
        assert!(!is_secure(&cfg, proxy, &HeaderMap::new()));
        cfg.secure_cookies = SecureCookies::Always;
        assert!(is_secure(&cfg, other, &HeaderMap::new()));
    }

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(safe_next(Some("/sources/pne?x=1")), "/sources/pne?x=1");
        for bad in ["//evil.example/x", "https://evil.example", "/\\evil", ""] {
            assert_eq!(safe_next(Some(bad)), "/flows", "{bad}");
        }
        assert_eq!(safe_next(None), "/flows");
    }
}
