//! The SQL API (sql-api.md). Functions are created in `public` so that `SELECT
//! gn2pg_harvest('pne')` works with the default search_path; tables stay in schema gn2pg.
//! Each function validates its arguments, then hands over to the engine or the registry.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{function_name, JsonB, PgLogLevel, PgSqlErrorCode};

use crate::run::Requested;
use crate::source::config::{api_root, auth_from_parts, SourceOptions};
use crate::worker;

/// Raises an ERROR with a SQLSTATE, a message and a hint, PostGIS-style.
fn raise(code: PgSqlErrorCode, msg: String, hint: Option<&str>) -> ! {
    let mut r = ErrorReport::new(code, msg, function_name!());
    if let Some(h) = hint {
        r = r.set_hint(h);
    }
    r.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

fn spi<T>(r: Result<T, pgrx::spi::Error>) -> T {
    r.unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("gn2pg: SPI failed: {e}"), None))
}

fn check_name(name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !ok {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("gn2pg: invalid source name {name:?}"),
            Some("A source name has 1 to 63 characters among a-z, 0-9, _ and -."),
        );
    }
}

fn source_exists(name: &str) -> bool {
    spi(Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM gn2pg.source WHERE name = $1)",
        &[name.into()],
    ))
    .unwrap_or(false)
}

fn require_source(name: &str) {
    check_name(name);
    if !source_exists(name) {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("gn2pg: source \"{name}\" does not exist"),
            Some("Register it with gn2pg_add_source(); SELECT name FROM gn2pg.source lists the sources."),
        );
    }
}

#[allow(clippy::too_many_arguments)]
pub fn add_source(
    name: &str,
    url: &str,
    export_id: i32,
    auth: Option<&str>,
    login: Option<&str>,
    password: Option<&str>,
    token: Option<&str>,
    options: Option<JsonB>,
) -> i32 {
    check_name(name);
    let bad = |m: String, hint: Option<&str>| -> ! { raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, m, hint) };
    let api = api_root(url).unwrap_or_else(|e| bad(format!("gn2pg: source \"{name}\": {e}"), Some("Give the GeoNature URL, e.g. https://geonature.example.org (with or without /api).")));
    if export_id <= 0 {
        bad(format!("gn2pg: source \"{name}\": export_id must be positive, not {export_id}"), None);
    }
    // Without an explicit auth, the credentials given say which mode is meant.
    let kind = auth.unwrap_or(if token.is_some() {
        "token"
    } else if login.is_some() || password.is_some() {
        "login"
    } else {
        "public"
    });
    let auth = auth_from_parts(kind, login, password, token).unwrap_or_else(|e| bad(format!("gn2pg: source \"{name}\": {e}"), None));
    let options = options.map(|j| j.0).unwrap_or_else(|| serde_json::json!({}));
    SourceOptions::from_json(&options).unwrap_or_else(|e| bad(format!("gn2pg: source \"{name}\": {e}"), None));
    let id = spi(Spi::get_one_with_args::<i32>(
        "INSERT INTO gn2pg.source (name, url, export_id, auth, options)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (name) DO UPDATE
            SET url = EXCLUDED.url, export_id = EXCLUDED.export_id, auth = EXCLUDED.auth,
                options = EXCLUDED.options, updated_at = now()
         RETURNING id",
        &[name.into(), api.as_str().into(), export_id.into(), auth.kind().into(), JsonB(options).into()],
    ))
    .unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "gn2pg: source row not returned".into(), None));
    spi(Spi::run_with_args(
        "INSERT INTO gn2pg.source_secret (source_id, login, password, token) VALUES ($1, $2, $3, $4)
         ON CONFLICT (source_id) DO UPDATE
            SET login = EXCLUDED.login, password = EXCLUDED.password, token = EXCLUDED.token",
        &[id.into(), login.into(), password.into(), token.into()],
    ));
    id
}

/// A run is active if its row says so and its worker is still alive.
fn active_run(name: &str) -> Option<i64> {
    spi(Spi::get_one_with_args::<i64>(
        "SELECT max(r.id) FROM gn2pg.run_log r
          WHERE r.source = $1 AND r.status = 'running'
            AND EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a
                         WHERE a.pid = r.worker_pid AND a.backend_type = 'gn2pg harvest')",
        &[name.into()],
    ))
}

pub fn remove_source(name: &str, drop_data: bool) -> bool {
    check_name(name);
    if !source_exists(name) {
        pgrx::notice!("gn2pg: source \"{name}\" does not exist, nothing removed");
        return false;
    }
    if let Some(run) = active_run(name) {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            format!("gn2pg: source \"{name}\" is being harvested by run {run}"),
            Some(&format!("Stop it with SELECT gn2pg_cancel({run}); or wait for it to end.")),
        );
    }
    if drop_data {
        spi(Spi::run_with_args("DELETE FROM gn2pg.observation WHERE source = $1", &[name.into()]));
        spi(Spi::run_with_args("DELETE FROM gn2pg.metadata WHERE source = $1", &[name.into()]));
    }
    spi(Spi::run_with_args("DELETE FROM gn2pg.source WHERE name = $1", &[name.into()]));
    true
}

fn parse_mode(mode: &str) -> Requested {
    Requested::parse(mode).unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("gn2pg: invalid mode {mode:?}"),
            Some("mode is 'auto' (full the first time, then incremental), 'full' or 'incremental'."),
        )
    })
}

fn next_run_id() -> i64 {
    spi(Spi::get_one::<i64>("SELECT nextval('gn2pg.run_log_id_seq')")).unwrap_or(0)
}

fn start_worker(run_id: i64, source: &str, mode: &str, wait_for_commit: bool) -> pgrx::bgworkers::DynamicBackgroundWorker {
    worker::launch(run_id, source, mode, wait_for_commit).unwrap_or_else(|e| {
        raise(PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED, format!("gn2pg: cannot start the harvest of \"{source}\": {e}"), None)
    })
}

pub fn harvest(source: &str, mode: &str) -> JsonB {
    require_source(source);
    let requested = parse_mode(mode);
    let run_id = next_run_id();
    let w = start_worker(run_id, source, mode, false);
    if let Err(e) = worker::wait(w) {
        raise(PgSqlErrorCode::ERRCODE_EXTERNAL_ROUTINE_EXCEPTION, format!("gn2pg: run {run_id} of \"{source}\": {e}"), None);
    }
    let _ = requested;
    let row = spi(Spi::get_one_with_args::<JsonB>(
        "SELECT (SELECT to_jsonb(r) FROM gn2pg.run_log r WHERE r.id = $1)",
        &[run_id.into()],
    ));
    let Some(row) = row else {
        raise(
            PgSqlErrorCode::ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
            format!("gn2pg: run {run_id} of \"{source}\" left no trace in gn2pg.run_log"),
            Some("Its worker crashed (see the server log), or this transaction is REPEATABLE READ or SERIALIZABLE and cannot see it; use gn2pg_harvest_async() there."),
        );
    };
    let status = row.0.get("status").and_then(|s| s.as_str()).unwrap_or("").to_string();
    if status != "success" {
        let why = row.0.get("error").and_then(|s| s.as_str()).unwrap_or("no error recorded").to_string();
        let hint = format!("SELECT * FROM gn2pg.run_log WHERE id = {run_id}; SELECT * FROM gn2pg.run_error WHERE run_id = {run_id};");
        raise(
            PgSqlErrorCode::ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
            format!("gn2pg: harvest of source \"{source}\" {status} (run {run_id}): {why}"),
            Some(&hint),
        );
    }
    row
}

pub fn harvest_async(source: &str, mode: &str) -> i64 {
    require_source(source);
    parse_mode(mode);
    let run_id = next_run_id();
    start_worker(run_id, source, mode, true);
    run_id
}

pub fn cancel(run_id: i64) -> bool {
    let pid = spi(Spi::get_one_with_args::<i32>(
        "SELECT (SELECT r.worker_pid FROM gn2pg.run_log r
                  WHERE r.id = $1 AND r.status = 'running'
                    AND EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a
                                 WHERE a.pid = r.worker_pid AND a.backend_type = 'gn2pg harvest'))",
        &[run_id.into()],
    ));
    match pid {
        Some(pid) => spi(Spi::get_one_with_args::<bool>("SELECT pg_catalog.pg_terminate_backend($1)", &[pid.into()])).unwrap_or(false),
        None => {
            pgrx::notice!("gn2pg: run {run_id} is not running");
            false
        }
    }
}

#[pg_schema]
mod public {
    use pgrx::prelude::*;
    use pgrx::JsonB;

    /// Registers a source, or updates it when the name exists. Returns the source id.
    #[allow(clippy::too_many_arguments)]
    #[pg_extern]
    fn gn2pg_add_source(
        name: &str,
        url: &str,
        export_id: i32,
        auth: default!(Option<&str>, "NULL"),
        login: default!(Option<&str>, "NULL"),
        password: default!(Option<&str>, "NULL"),
        token: default!(Option<&str>, "NULL"),
        options: default!(Option<JsonB>, "'{}'"),
    ) -> i32 {
        crate::api::add_source(name, url, export_id, auth, login, password, token, options)
    }

    /// Removes a source (refused while it runs). Harvested rows are kept unless drop_data.
    #[pg_extern]
    fn gn2pg_remove_source(name: &str, drop_data: default!(bool, false)) -> bool {
        crate::api::remove_source(name, drop_data)
    }

    /// Harvests a source in a background worker and waits: returns the run_log row as jsonb,
    /// raises if the run did not succeed.
    #[pg_extern]
    fn gn2pg_harvest(source: &str, mode: default!(&str, "'auto'")) -> JsonB {
        crate::api::harvest(source, mode)
    }

    /// Starts a harvest in a background worker after this transaction commits; returns the run id.
    #[pg_extern]
    fn gn2pg_harvest_async(source: &str, mode: default!(&str, "'auto'")) -> i64 {
        crate::api::harvest_async(source, mode)
    }

    /// Stops a running harvest; pages already loaded stay. Returns false if it was not running.
    #[pg_extern]
    fn gn2pg_cancel(run_id: i64) -> bool {
        crate::api::cancel(run_id)
    }
}
