//! gn2pg-dashboard: a web dashboard of gn2pg's data flows. People sign in with their PostgreSQL
//! role (or, in a GeoNature database, their GeoNature account mapped to a gn2pg role) and every
//! query runs as that role, so gn2pg_reader, gn2pg_operator and gn2pg_admin decide what each
//! person sees and may do.
//!
//! - `config`: settings (file, environment, command line).
//! - `db`: the pool of the dashboard's login role; one transaction per request, as the person.
//! - `auth`: checking a sign-in against PostgreSQL or UsersHub's hashes.
//! - `session`, `throttle`: sessions and CSRF tokens; sign-in throttling.
//! - `web`: request plumbing (who is signed in, client address, security headers, errors).
//! - `layout`: the page shell and shared renderers; `pages`: one module per screen.

mod auth;
pub mod config;
mod db;
mod layout;
mod pages;
mod session;
mod throttle;
mod web;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;

use crate::config::Config;
use crate::pages::{admin, alerts, flows, signin, source};
use crate::web::App;

const APP_JS: &str = include_str!("../static/app.js");
const APP_CSS: &str = include_str!("../static/app.css");

fn static_file(body: &'static str, kind: &'static str) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "max-age=300")], body)
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(|| async { axum::response::Redirect::to("/flows") }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/static/app.js", get(|| async { static_file(APP_JS, "text/javascript; charset=utf-8") }))
        .route("/static/app.css", get(|| async { static_file(APP_CSS, "text/css; charset=utf-8") }))
        .route("/sign-in", get(signin::show).post(signin::submit))
        .route("/sign-out", post(signin::sign_out))
        .route("/flows", get(flows::page))
        .route("/flows/table", get(flows::fragment))
        .route("/sources/{name}", get(source::page))
        .route("/sources/{name}/progress", get(source::progress))
        .route("/sources/{name}/harvest", post(source::harvest))
        .route("/sources/{name}/cancel", post(source::cancel))
        .route("/sources/{name}/schedule", post(source::schedule))
        .route("/sources/{name}/unschedule", post(source::unschedule))
        .route("/sources/{name}/runs/{id}", get(source::run))
        .route("/alerts", get(alerts::page))
        .route("/alerts/{id}/acknowledge", post(alerts::acknowledge))
        .route("/admin/sources", get(admin::list).post(admin::save))
        .route("/admin/sources/new", get(admin::new_form))
        .route("/admin/sources/test", post(admin::test))
        .route("/admin/sources/{name}/edit", get(admin::edit_form))
        .route("/admin/sources/{name}/remove", post(admin::remove))
        .route("/admin/accounts/map", post(admin::map_account))
        .route("/admin/accounts/unmap", post(admin::unmap_account))
        .layer(axum::middleware::from_fn(web::same_origin))
        .layer(axum::middleware::from_fn(web::security_headers))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(app)
}

/// Serves the dashboard on `listener` until `shutdown` completes. Checks first that the
/// dashboard's own role can connect and is not trusted without a password.
pub async fn serve(
    cfg: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let db = db::Db::new(&cfg)?;
    // The dashboard's own role must be able to connect, and must not be trusted blindly by
    // pg_hba.conf: then the server would accept any password for the people signing in too.
    drop(db.own().await.map_err(|e| format!("cannot connect as {}: {e:?}", db.authenticator()))?);
    if db.accepts_any_password(db.authenticator()).await? {
        return Err(format!(
            "the server accepts any password for {} (a trust line in pg_hba.conf): the dashboard could not verify \
             anyone's password. Require scram-sha-256 for the connections it makes.",
            db.authenticator()
        ));
    }
    let (geonature, why) = if cfg.geonature_sign_in { auth::geonature_available(&db).await? } else { (false, None) };
    if let Some(w) = why {
        eprintln!("gn2pg-dashboard: {w}");
    }
    let app = Arc::new(App {
        sessions: session::Sessions::new(cfg.idle_timeout, cfg.session_lifetime),
        throttle: throttle::Throttle::new(
            cfg.max_failures_per_account,
            cfg.max_failures_per_address,
            cfg.failure_window,
        ),
        geonature,
        db,
        cfg: cfg.clone(),
    });
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!(
        "gn2pg-dashboard listening on http://{addr} (database role {}, GeoNature sign-in {})",
        app.db.authenticator(),
        if geonature { "on" } else { "off" }
    );
    axum::serve(listener, router(app).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| e.to_string())
}
