//! `gn2pg_check_source`: one probe of a source from the database, with the rules of a harvest
//! (allowed hosts, the `gn2pg.*` timeouts and the source's own, TLS, the three access modes),
//! reporting what the source answered (src/source/probe.rs). It stores nothing.
//!
//! It checks a registered source as saved (operators), a registered source with some fields
//! replaced, as an edit form would save it, or a source described only by the arguments
//! (admins: both make the server contact a URL nobody registered, possibly with stored
//! credentials). Credentials are never part of the report.
//!
//! The probe runs on a helper thread, as a harvest's HTTP does; the backend waits in short
//! slices and stops it when the statement is cancelled.

use std::time::Duration;

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};

use crate::access::{self, ADMIN, OPERATOR};
use crate::source::client::{Host, Pipeline, SourceClient};
use crate::source::config::{api_root, auth_from_parts, SourceConfig, SourceOptions};
use crate::source::error::redact_url;
use crate::source::probe::{probe, Report};
use crate::source::SourceError;
use crate::store;

fn raise(code: PgSqlErrorCode, msg: String, hint: Option<&str>) -> ! {
    crate::error::raise(code, msg, None, hint)
}

fn invalid(msg: String) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, msg, None)
}

/// A probe answers in seconds or says why not: no retries (the first failure is what the
/// person needs to see), smaller answers than a harvest accepts.
const PROBE_MAX_BYTES: usize = 8 << 20;

/// What the caller asked to check.
pub struct Request<'a> {
    pub name: Option<&'a str>,
    pub url: Option<&'a str>,
    pub export_id: Option<i32>,
    pub auth: Option<&'a str>,
    pub login: Option<&'a str>,
    pub password: Option<&'a str>,
    pub token: Option<&'a str>,
    pub options: Option<serde_json::Value>,
}

impl Request<'_> {
    /// Nothing but a name: the registered source exactly as saved.
    fn as_saved(&self) -> bool {
        self.url.is_none()
            && self.export_id.is_none()
            && self.auth.is_none()
            && self.login.is_none()
            && self.password.is_none()
            && self.token.is_none()
            && self.options.is_none()
    }
}

/// Cancellation of a regular backend: a statement cancel or termination is pending.
struct BackendHost;

impl Host for BackendHost {
    fn check_interrupts(&self) -> Result<(), SourceError> {
        // SAFETY: reads sig_atomic_t flags set by this process's signal handlers.
        let pending = unsafe { pg_sys::QueryCancelPending != 0 || pg_sys::ProcDiePending != 0 };
        if pending {
            Err(SourceError::Cancelled("statement cancelled".into()))
        } else {
            Ok(())
        }
    }

    fn sleep(&self, d: Duration) -> Result<(), SourceError> {
        std::thread::sleep(d.min(Duration::from_millis(100)));
        self.check_interrupts()
    }
}

/// The configuration to probe: the registered source (when named) with the arguments given
/// replacing its fields. Credentials not given are kept when the access mode stays the same.
fn resolve(req: &Request) -> SourceConfig {
    let saved = req.name.map(|name| {
        crate::registry::require_source(name);
        access::as_owner(|| store::load_source(name))
            .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("gn2pg: SPI failed: {e}"), None))
            .unwrap_or_else(|| invalid(format!("gn2pg: source \"{name}\" does not exist")))
    });
    let label = req.name.map_or("the source".to_string(), |n| format!("source \"{n}\""));
    let url = req.url.map(str::to_string).or_else(|| saved.as_ref().map(|s| s.url.clone())).unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "gn2pg_check_source: give the name of a registered source, or url and export_id".into(),
            Some("SELECT gn2pg_check_source('pne'); or SELECT gn2pg_check_source(url => 'https://geonature.example.org', export_id => 3);"),
        )
    });
    let export_id = req
        .export_id
        .or_else(|| saved.as_ref().map(|s| s.export_id))
        .unwrap_or_else(|| invalid("gn2pg_check_source: export_id is required with url".into()));
    if export_id <= 0 {
        invalid(format!("gn2pg: {label}: export_id must be positive, not {export_id}"));
    }
    let api = api_root(&url).unwrap_or_else(|e| invalid(format!("gn2pg: {label}: {e}")));
    let given_credentials = req.login.is_some() || req.password.is_some() || req.token.is_some();
    // Without auth, the stored mode stays; else the credentials given say which mode is meant.
    let kind = req.auth.map(str::to_string).unwrap_or_else(|| match &saved {
        Some(s) if !given_credentials => s.auth.clone(),
        _ if req.token.is_some() => "token".into(),
        _ if req.login.is_some() || req.password.is_some() => "login".into(),
        Some(s) => s.auth.clone(),
        None => "public".into(),
    });
    let keep = saved.as_ref().filter(|s| s.auth == kind);
    let pick = |given: Option<&str>, stored: Option<&Option<String>>| {
        given.map(str::to_string).or_else(|| stored.and_then(|s| s.clone())).filter(|s| !s.is_empty())
    };
    let login = pick(req.login, keep.map(|s| &s.login));
    let password = pick(req.password, keep.map(|s| &s.password));
    let token = pick(req.token, keep.map(|s| &s.token));
    let auth = auth_from_parts(&kind, login.as_deref(), password.as_deref(), token.as_deref())
        .unwrap_or_else(|e| invalid(format!("gn2pg: {label}: {e}")));
    let options = req.options.clone().or_else(|| saved.as_ref().map(|s| s.options.clone())).unwrap_or_default();
    let options = if options.is_null() { serde_json::json!({}) } else { options };
    let options = SourceOptions::from_json(&options).unwrap_or_else(|e| invalid(format!("gn2pg: {label}: {e}")));
    if req.url.is_some() || saved.is_none() {
        access::check_host(&api, "source URL");
    }
    SourceConfig { name: req.name.unwrap_or("unsaved").to_string(), api_root: api, export_id, auth, options }
}

pub fn check_source(req: Request) -> JsonB {
    if req.name.is_some() && req.as_saved() {
        access::require(OPERATOR, "gn2pg_check_source()");
    } else {
        access::require(ADMIN, "gn2pg_check_source() with a URL, credentials or options");
    }
    let cfg = resolve(&req);
    let mut limits = crate::guc::limits(&cfg.options);
    limits.max_retries = 0;
    limits.max_page_bytes = limits.max_page_bytes.min(PROBE_MAX_BYTES);
    let started = std::time::Instant::now();
    let report = match SourceClient::new(cfg.clone(), limits) {
        Err(e) => Report { failed_step: Some("config"), error: Some(e.to_string()), ..Default::default() },
        Ok(client) => run_on_helper(client, cfg.clone()),
    };
    let mut out = report.to_json();
    out["source"] = req.name.map_or(serde_json::Value::Null, |n| n.into());
    out["url"] = redact_url(cfg.api_root.as_str()).into();
    out["export_id"] = cfg.export_id.into();
    out["auth"] = cfg.auth.kind().into();
    out["elapsed_ms"] = (started.elapsed().as_millis() as u64).into();
    JsonB(out)
}

/// Runs the probe on a helper thread (signals blocked, no PostgreSQL calls) and waits for it,
/// stopping it if this statement is cancelled.
fn run_on_helper(mut client: SourceClient, cfg: SourceConfig) -> Report {
    let mut step: Pipeline<Report> = Pipeline::new(1);
    let spawned = step.spawn(move |flag, emit| {
        emit(probe(&mut client, &cfg, flag));
    });
    if let Err(e) = spawned {
        raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("gn2pg: {e}"), None);
    }
    match step.next(&BackendHost) {
        Ok(Some(r)) => r,
        Ok(None) => {
            raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "gn2pg: the probe thread ended without a report".into(), None)
        }
        Err(_) => {
            drop(step);
            // Raises the usual "canceling statement due to user request" (or ends the session).
            pg_sys::check_for_interrupts!();
            raise(PgSqlErrorCode::ERRCODE_QUERY_CANCELED, "gn2pg: source check cancelled".into(), None)
        }
    }
}

#[pg_schema]
mod public {
    use pgrx::prelude::*;
    use pgrx::JsonB;

    /// Sends the first requests of a harvest to a source and reports what it answered
    /// (reachable, authenticated, export found, item shape, row count, versions) or why it
    /// failed. Stores nothing.
    #[allow(clippy::too_many_arguments)]
    #[pg_extern(volatile)]
    fn gn2pg_check_source(
        name: default!(Option<&str>, "NULL"),
        url: default!(Option<&str>, "NULL"),
        export_id: default!(Option<i32>, "NULL"),
        auth: default!(Option<&str>, "NULL"),
        login: default!(Option<&str>, "NULL"),
        password: default!(Option<&str>, "NULL"),
        token: default!(Option<&str>, "NULL"),
        options: default!(Option<JsonB>, "NULL"),
    ) -> JsonB {
        crate::check::check_source(crate::check::Request {
            name,
            url,
            export_id,
            auth,
            login,
            password,
            token,
            options: options.map(|j| j.0),
        })
    }
}
