//! Sign-in and sign-out. The sign-in form has its own CSRF token (double submit with a cookie),
//! since no session exists yet; attempts are throttled per account and per client address.

use std::time::Duration;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::header::{self, HeaderMap};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::html;
use serde::Deserialize;

use crate::auth::{self, Failure};
use crate::layout;
use crate::session::{clear_cookie, cookie_value, random_token, same_secret, set_cookie, COOKIE, PRE_COOKIE};
use crate::throttle::Refusal;
use crate::web::{client_addr, is_secure, safe_next, State as AppState, User};

#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

#[derive(Deserialize)]
pub struct SignInForm {
    login: String,
    password: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    csrf: String,
    next: Option<String>,
}

fn form(app: &AppState, token: &str, next: &str, login: &str, kind: &str, error: Option<&str>) -> maud::Markup {
    layout::page(
        "Sign in",
        None,
        html! {
            form class="narrow signin" method="post" action="/sign-in" {
                @if let Some(e) = error { div class="error" id="error" role="alert" { (e) } }
                input type="hidden" name="csrf" value=(token);
                input type="hidden" name="next" value=(next);
                @if app.geonature {
                    fieldset class="kind" {
                        legend { "Account" }
                        label { input type="radio" name="kind" value="postgres" checked[kind != "geonature"]; " PostgreSQL" }
                        label { input type="radio" name="kind" value="geonature" checked[kind == "geonature"]; " GeoNature" }
                    }
                }
                label { "Login" input type="text" name="login" id="login" value=(login) autocomplete="username" required autofocus; }
                label { "Password" input type="password" name="password" id="password" autocomplete="current-password" required; }
                button type="submit" id="sign-in" { "Sign in" }
                p class="help" {
                    @if app.geonature {
                        "Sign in with your PostgreSQL role, or with your GeoNature account if an administrator gave it access."
                    } @else {
                        "Sign in with your PostgreSQL role and password."
                    }
                }
            }
        },
    )
}

/// A sign-in page with a fresh form token, set as a cookie too.
fn fresh_form(app: &AppState, secure: bool, status: StatusCode, f: FormState) -> Response {
    let token = random_token();
    let body = form(app, &token, &f.next, &f.login, &f.kind, f.error.as_deref());
    let mut res = (status, body).into_response();
    if let Ok(v) = set_cookie(PRE_COOKIE, &token, secure).parse() {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    res
}

struct FormState {
    next: String,
    login: String,
    kind: String,
    error: Option<String>,
}

pub async fn show(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Response {
    let secure = is_secure(&app.cfg, peer, &headers);
    let next = safe_next(q.next.as_deref());
    fresh_form(&app, secure, StatusCode::OK, FormState { next, login: String::new(), kind: String::new(), error: None })
}

pub async fn submit(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<SignInForm>,
) -> Response {
    let secure = is_secure(&app.cfg, peer, &headers);
    let next = safe_next(f.next.as_deref());
    let again = |status, error: String| {
        fresh_form(
            &app,
            secure,
            status,
            FormState { next: next.clone(), login: f.login.clone(), kind: f.kind.clone(), error: Some(error) },
        )
    };
    let cookie = headers.get(header::COOKIE).and_then(|v| v.to_str().ok()).and_then(|c| cookie_value(c, PRE_COOKIE));
    if !cookie.is_some_and(|c| same_secret(c, &f.csrf)) {
        return again(StatusCode::FORBIDDEN, "the sign-in form expired: please sign in again".into());
    }
    let geonature = f.kind == "geonature";
    if geonature && !app.geonature {
        return again(StatusCode::BAD_REQUEST, "GeoNature accounts cannot sign in here".into());
    }
    let address = client_addr(peer, &headers, &app.cfg.trusted_proxies);
    let key = format!("{}:{}", if geonature { "gn" } else { "pg" }, f.login);
    if let Err(r) = app.throttle.check(&key, address) {
        let (who, wait) = match r {
            Refusal::Account(d) => ("this account", d),
            Refusal::Address(d) => ("your address", d),
        };
        let minutes = wait.as_secs().div_ceil(60).max(1);
        return again(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many failed sign-ins for {who}: try again in {minutes} min"),
        );
    }
    let outcome = if geonature {
        auth::geonature(&app.db, &f.login, &f.password).await
    } else {
        auth::postgres(&app.db, &f.login, &f.password).await
    };
    drop(f.password);
    match outcome {
        Ok(account) => {
            app.throttle.succeeded(&key);
            let session = app.sessions.create(account);
            let mut res = Redirect::to(&next).into_response();
            let h = res.headers_mut();
            if let Ok(v) = set_cookie(COOKIE, &session.id, secure).parse() {
                h.append(header::SET_COOKIE, v);
            }
            if let Ok(v) = clear_cookie(PRE_COOKIE, secure).parse() {
                h.append(header::SET_COOKIE, v);
            }
            res
        }
        Err(Failure::Wrong) => {
            app.throttle.failed(&key, address);
            // Slows guessing down a little more, whatever the throttle's state.
            tokio::time::sleep(Duration::from_millis(300)).await;
            again(StatusCode::UNAUTHORIZED, Failure::Wrong.message())
        }
        Err(e @ Failure::Refused(_)) => again(StatusCode::FORBIDDEN, e.message()),
        Err(e @ Failure::Unavailable(_)) => {
            eprintln!("gn2pg-dashboard: sign-in check failed: {}", e.message());
            again(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database cannot be reached right now; try again in a moment".into(),
            )
        }
    }
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub async fn sign_out(State(app): State<AppState>, user: User, Form(f): Form<CsrfForm>) -> Response {
    if let Err(e) = user.check_csrf(&f.csrf) {
        return e.into_response();
    }
    app.sessions.remove(&user.session.id);
    let mut res = Redirect::to("/sign-in").into_response();
    if let Ok(v) = clear_cookie(COOKIE, user.secure).parse() {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    res
}
