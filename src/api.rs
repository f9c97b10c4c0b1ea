//! The SQL API (docs/sql-api.md). Functions are created in `public` so that `SELECT
//! gn2pg_harvest('pne')` works with the default search_path; tables stay in schema gn2pg.
//! Each function validates its arguments, then hands over to the engine or the registry.
//!
//! Permissions (access.rs): each function checks the caller's role, then works as the
//! extension owner: the tables are read-only for the gn2pg roles, and these functions are the
//! only way to change them.

use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};

use crate::access::{self, ADMIN, OPERATOR};
use crate::error::Error;
use crate::run::Requested;
use crate::source::config::{api_root, auth_from_parts, SourceConfig, SourceOptions};
use crate::store::{self, Busy};
use crate::worker;

/// Raises an ERROR with a SQLSTATE, a message and a hint, PostGIS-style.
fn raise(code: PgSqlErrorCode, msg: String, hint: Option<&str>) -> ! {
    raise_with_detail(code, msg, None, hint)
}

fn raise_with_detail(code: PgSqlErrorCode, msg: String, detail: Option<&str>, hint: Option<&str>) -> ! {
    crate::error::raise(code, msg, detail, hint)
}

/// Refuses a start (or a removal) of a busy source: an ERROR of the calling statement, no run
/// recorded, so the next run's mode and the alerts are as if nothing had happened.
fn refuse_busy(source: &str, busy: Busy) -> ! {
    match busy {
        Busy::Run { id, status, pid, since } => {
            let pid = pid.map_or("?".to_string(), |p| p.to_string());
            let detail = if status == "pending" {
                format!(
                    "Run {id} is pending since {since} (worker process {pid}): it starts when the transaction that launched it commits."
                )
            } else {
                format!("Run {id} is running in worker process {pid} since {since}.")
            };
            raise_with_detail(
                PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
                format!("gn2pg: source \"{source}\" is being harvested by run {id}"),
                Some(&detail),
                Some(&format!("Wait for it to end, or stop it with SELECT gn2pg_cancel({id});")),
            )
        }
        Busy::Locked => raise(
            PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
            format!("gn2pg: source \"{source}\" is being started, changed or removed by another transaction"),
            Some("Try again when that transaction has ended."),
        ),
        Busy::Missing => raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("gn2pg: source \"{source}\" does not exist"),
            Some("Register it with gn2pg_add_source(); SELECT name FROM gn2pg.source lists the sources."),
        ),
    }
}

fn spi<T>(r: Result<T, pgrx::spi::Error>) -> T {
    r.unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("gn2pg: SPI failed: {e}"), None))
}

pub(crate) fn check_name(name: &str) {
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
    spi(Spi::get_one_with_args::<bool>("SELECT EXISTS (SELECT 1 FROM gn2pg.source WHERE name = $1)", &[name.into()]))
        .unwrap_or(false)
}

/// After a package upgrade the library is new but the database objects are not, until
/// ALTER EXTENSION: say so rather than fail on a missing function.
fn require_current_schema() {
    let installed = spi(store::extension_version()).unwrap_or_default();
    if installed != env!("CARGO_PKG_VERSION") {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "gn2pg: the gn2pg library is version {} but this database has gn2pg {installed}: run ALTER EXTENSION gn2pg UPDATE",
                env!("CARGO_PKG_VERSION")
            ),
            Some("ALTER EXTENSION gn2pg UPDATE; brings this database's gn2pg objects to the library's version."),
        );
    }
}

pub(crate) fn require_source(name: &str) {
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
    alert_webhook: Option<&str>,
) -> i32 {
    access::require(ADMIN, "gn2pg_add_source()");
    access::pinned(require_current_schema);
    check_name(name);
    let bad = |m: String, hint: Option<&str>| -> ! { raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, m, hint) };
    let api = api_root(url).unwrap_or_else(|e| {
        bad(
            format!("gn2pg: source \"{name}\": {e}"),
            Some("Give the GeoNature URL, e.g. https://geonature.example.org (with or without /api)."),
        )
    });
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
    let auth = auth_from_parts(kind, login, password, token)
        .unwrap_or_else(|e| bad(format!("gn2pg: source \"{name}\": {e}"), None));
    let options = options.map(|j| j.0).unwrap_or_else(|| serde_json::json!({}));
    let parsed =
        SourceOptions::from_json(&options).unwrap_or_else(|e| bad(format!("gn2pg: source \"{name}\": {e}"), None));
    if parsed.destination.is_some() && !destination_installed() {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("gn2pg: source \"{name}\": this database's gn2pg objects predate the GeoNature destination"),
            Some("Run ALTER EXTENSION gn2pg UPDATE first."),
        );
    }
    let cfg = SourceConfig { name: name.into(), api_root: api.clone(), export_id, auth: auth.clone(), options: parsed };
    cfg.check_transport().unwrap_or_else(|e| {
        bad(
            format!("gn2pg: source \"{name}\": {e}"),
            Some(
                "Credentials over plain http can be read by anyone on the way. Prefer the https:// URL of the source.",
            ),
        )
    });
    // Only a superuser, or a host gn2pg.allowed_hosts lists, may make the server send requests;
    // the list is checked again before every run of a source a non-superuser registered.
    access::check_host(&api, "source URL");
    let restricted = !access::is_superuser();
    let webhook = alert_webhook.map(str::trim).filter(|s| !s.is_empty());
    if let Some(w) = webhook {
        let u = url::Url::parse(w)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty()))
            .unwrap_or_else(|| bad(format!("gn2pg: source \"{name}\": alert_webhook is not an http(s) URL"), None));
        access::check_host(&u, "alert_webhook");
    }
    access::as_owner(|| {
        store_source(name, &api, export_id, auth.kind(), options, login, password, token, webhook, restricted)
    })
}

#[allow(clippy::too_many_arguments)]
fn store_source(
    name: &str,
    api: &url::Url,
    export_id: i32,
    kind: &str,
    options: serde_json::Value,
    login: Option<&str>,
    password: Option<&str>,
    token: Option<&str>,
    webhook: Option<&str>,
    restricted: bool,
) -> i32 {
    // A gn2pg_harvest call keeps the source's row locked while its run goes on: say so rather
    // than wait for it to end.
    if spi(store::row_taken(name)) {
        refuse_busy(name, spi(store::active_run(name, None)).unwrap_or(Busy::Locked));
    }
    let id = spi(Spi::get_one_with_args::<i32>(
        "INSERT INTO gn2pg.source (name, url, export_id, auth, options, restricted)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (name) DO UPDATE
            SET url = EXCLUDED.url, export_id = EXCLUDED.export_id, auth = EXCLUDED.auth,
                options = EXCLUDED.options, restricted = EXCLUDED.restricted, updated_at = now()
         RETURNING id",
        &[name.into(), api.as_str().into(), export_id.into(), kind.into(), JsonB(options).into(), restricted.into()],
    ))
    .unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "gn2pg: source row not returned".into(), None));
    spi(Spi::run_with_args(
        "INSERT INTO gn2pg.source_secret (source_id, login, password, token, alert_webhook) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (source_id) DO UPDATE
            SET login = EXCLUDED.login, password = EXCLUDED.password, token = EXCLUDED.token,
                alert_webhook = EXCLUDED.alert_webhook",
        &[id.into(), login.into(), password.into(), token.into(), webhook.into()],
    ));
    // A GeoNature destination is checked and set up (or refused) in the same transaction.
    if destination_installed() {
        spi(Spi::run_with_args("SELECT gn2pg._destination_configure($1)", &[name.into()]));
    }
    id
}

/// The GeoNature destination's functions exist (a database not yet updated from 0.2.0 has none).
fn destination_installed() -> bool {
    spi(Spi::get_one::<bool>("SELECT to_regprocedure('gn2pg._destination_configure(text)') IS NOT NULL"))
        .unwrap_or(false)
}

pub fn remove_source(name: &str, drop_data: bool) -> bool {
    access::require(ADMIN, "gn2pg_remove_source()");
    check_name(name);
    access::as_owner(|| remove_source_owned(name, drop_data))
}

fn remove_source_owned(name: &str, drop_data: bool) -> bool {
    if !source_exists(name) {
        pgrx::notice!("gn2pg: source \"{name}\" does not exist, nothing removed");
        return false;
    }
    // Its registry row stays locked until the end of this transaction: no run can start.
    require_current_schema();
    if let Err(busy) = spi(store::claim_source(name)) {
        refuse_busy(name, busy);
    }
    // Its synthese rows need an explicit decision first (gn2pg_disable_destination).
    if destination_installed() {
        spi(Spi::run_with_args("SELECT gn2pg._destination_before_remove($1)", &[name.into()]));
    }
    // Its pg_cron job would fire for a source that is gone.
    let scheduled = spi(Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM gn2pg.schedule WHERE source = $1)",
        &[name.into()],
    ))
    .unwrap_or(false);
    if scheduled {
        if crate::schedule::cron_available() {
            crate::schedule::unschedule_unchecked(name);
        } else {
            pgrx::warning!(
                "gn2pg: pg_cron is not loaded: remove job gn2pg:{name} from cron.job yourself if it still exists"
            );
        }
    }
    if drop_data {
        spi(Spi::run_with_args("DELETE FROM gn2pg.observation WHERE source = $1", &[name.into()]));
        spi(Spi::run_with_args("DELETE FROM gn2pg.metadata WHERE source = $1", &[name.into()]));
    }
    spi(Spi::run_with_args("DELETE FROM gn2pg.source WHERE name = $1", &[name.into()]));
    true
}

pub(crate) fn parse_mode(mode: &str) -> Requested {
    Requested::parse(mode).unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("gn2pg: invalid mode {mode:?}"),
            Some("mode is 'auto' (full the first time, then incremental), 'full' or 'incremental'."),
        )
    })
}

fn next_run_id() -> i64 {
    spi(Spi::get_one::<i64>("SELECT pg_catalog.nextval('gn2pg.run_log_id_seq')")).unwrap_or(0)
}

fn start_worker(
    run_id: i64,
    source: &str,
    mode: &str,
    wait_for_commit: bool,
) -> pgrx::bgworkers::DynamicBackgroundWorker {
    worker::launch(run_id, source, mode, wait_for_commit).unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
            format!("gn2pg: cannot start the harvest of \"{source}\": {e}"),
            None,
        )
    })
}

pub fn harvest(source: &str, mode: &str) -> JsonB {
    access::require(OPERATOR, "gn2pg_harvest()");
    access::as_owner(|| harvest_owned(source, mode))
}

fn harvest_owned(source: &str, mode: &str) -> JsonB {
    require_current_schema();
    require_source(source);
    parse_mode(mode);
    // The source's registry row stays locked by this transaction until the run ends (the
    // worker cannot see an uncommitted pending row, and must not wait for this transaction).
    if let Err(busy) = spi(store::claim_source(source)) {
        refuse_busy(source, busy);
    }
    let run_id = next_run_id();
    let w = start_worker(run_id, source, mode, false);
    if let Err(e) = worker::wait(w) {
        raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("gn2pg: run {run_id} of \"{source}\": {e}"), None);
    }
    let row = spi(Spi::get_one_with_args::<JsonB>(
        "SELECT (SELECT pg_catalog.to_jsonb(r) FROM gn2pg.run_log r WHERE r.id = $1)",
        &[run_id.into()],
    ));
    let Some(row) = row else {
        // The worker records nothing when another run took the source first.
        if let Some(busy) = spi(store::active_run(source, None)) {
            refuse_busy(source, busy);
        }
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("gn2pg: run {run_id} of \"{source}\" left no trace in gn2pg.run_log"),
            Some("Its worker crashed (see the server log), or this transaction is REPEATABLE READ or SERIALIZABLE and cannot see it; use gn2pg_harvest_async() there."),
        );
    };
    ended(source, run_id, &row.0);
    row
}

/// What the caller of gn2pg_harvest learns of a run that ended: a WARNING when it rejected rows,
/// an ERROR with the run's SQLSTATE when it did not succeed.
fn ended(source: &str, run_id: i64, run: &serde_json::Value) {
    let text = |k: &str| run.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let count = |k: &str| run.get(k).and_then(|v| v.as_i64()).unwrap_or(0);
    let status = text("status").unwrap_or_default();
    let look = format!(
        "SELECT * FROM gn2pg.run_log WHERE id = {run_id}; SELECT * FROM gn2pg.run_error WHERE run_id = {run_id};"
    );
    let rejected = count("rows_failed");
    if rejected > 0 {
        crate::error::warn(
            &format!(
                "gn2pg: source \"{source}\": run {run_id} rejected {rejected} of the {} rows received",
                count("rows_received")
            ),
            Some(&format!(
                "The run ended {status}; rejected rows are not stored, each is in gn2pg.run_error with the reason."
            )),
            Some(&format!("See them with SELECT id_data, uuid, error FROM gn2pg.run_error WHERE run_id = {run_id};")),
        );
    }
    if status == "running" {
        Error::internal(format!("gn2pg: run {run_id} of source \"{source}\" ended without recording its end"))
            .with_hint(format!(
                "See the server log. The next run of the source or gn2pg_check_flows() marks it abandoned. {look}"
            ))
            .raise();
    }
    if status != "success" {
        let failed = crate::store::recorded_error(
            text("error").unwrap_or_else(|| format!("source \"{source}\": no error recorded")),
            text("sqlstate"),
            text("reason"),
        );
        let reason = failed.reason;
        Error { message: format!("gn2pg: {}", failed.message), ..failed }
            .with_detail(format!("Run {run_id} ended {status} (reason {reason}) after {} pages.", count("pages_done")))
            .with_hint(format!("{} {look}", reason.advice(source)))
            .raise();
    }
}

/// Launches a run that starts when this transaction commits: claims the source, closes its
/// runs whose worker is gone, starts the worker and records the run as pending. Err: what keeps
/// the source busy (nothing launched).
fn launch_pending(source: &str, mode: &str) -> Result<i64, Busy> {
    require_current_schema();
    let source_id = spi(store::claim_source(source))?;
    spi(store::abandon_dead_runs(Some(source), None));
    let run_id = next_run_id();
    let w = start_worker(run_id, source, mode, true);
    let pid = worker::wait_until_connected(&w).unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("gn2pg: cannot start the harvest of \"{source}\": {e}"),
            None,
        )
    });
    spi(store::insert_pending(run_id, source, source_id, parse_mode(mode).label(), pid));
    Ok(run_id)
}

pub fn harvest_async(source: &str, mode: &str) -> i64 {
    access::require(OPERATOR, "gn2pg_harvest_async()");
    access::as_owner(|| {
        require_source(source);
        parse_mode(mode);
        launch_pending(source, mode).unwrap_or_else(|busy| refuse_busy(source, busy))
    })
}

/// What a pg_cron job runs: like gn2pg_harvest_async, but a source that is disabled or still
/// being harvested (by the previous scheduled run, or by hand) is skipped quietly (NULL), so
/// scheduled runs never overlap and a long run is not reported as a failure.
pub fn harvest_scheduled(source: &str, mode: &str) -> Option<i64> {
    access::require(OPERATOR, "gn2pg_harvest_scheduled()");
    access::as_owner(|| {
        require_source(source);
        parse_mode(mode);
        let enabled = spi(Spi::get_one_with_args::<bool>(
            "SELECT (SELECT enabled FROM gn2pg.source WHERE name = $1)",
            &[source.into()],
        ))
        .unwrap_or(false);
        if !enabled {
            pgrx::log!("gn2pg: scheduled harvest of \"{source}\" skipped: the source is disabled");
            return None;
        }
        match launch_pending(source, mode) {
            Ok(run_id) => Some(run_id),
            Err(busy) => {
                pgrx::log!("gn2pg: scheduled harvest of \"{source}\" skipped: it is busy ({busy:?})");
                None
            }
        }
    })
}

pub fn cancel(run_id: i64) -> bool {
    access::require(OPERATOR, "gn2pg_cancel()");
    access::as_owner(|| cancel_owned(run_id))
}

fn cancel_owned(run_id: i64) -> bool {
    spi(Spi::run("SELECT pg_catalog.pg_stat_clear_snapshot()"));
    let pid = spi(Spi::get_one_with_args::<i32>(
        "SELECT (SELECT r.worker_pid FROM gn2pg.run_log r
                  WHERE r.id = $1 AND r.status IN ('pending', 'running')
                    AND gn2pg._run_alive(r.worker_pid, r.started_at))",
        &[run_id.into()],
    ));
    match pid {
        Some(pid) => {
            // A pending run never gets to record its end: record it here.
            spi(Spi::run_with_args(
                "UPDATE gn2pg.run_log
                    SET status = 'cancelled', finished_at = now(), sqlstate = '57014', reason = 'cancelled',
                        error = pg_catalog.format('source \"%s\": cancelled before it started', source)
                  WHERE id = $1 AND status = 'pending'",
                &[run_id.into()],
            ));
            spi(Spi::get_one_with_args::<bool>("SELECT pg_catalog.pg_terminate_backend($1)", &[pid.into()]))
                .unwrap_or(false)
        }
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
        alert_webhook: default!(Option<&str>, "NULL"),
    ) -> i32 {
        crate::api::add_source(name, url, export_id, auth, login, password, token, options, alert_webhook)
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

    /// What the pg_cron job of a source runs: starts a harvest like gn2pg_harvest_async, or
    /// returns NULL without a run when the source is disabled or still being harvested.
    #[pg_extern]
    fn gn2pg_harvest_scheduled(source: &str, mode: default!(&str, "'auto'")) -> Option<i64> {
        crate::api::harvest_scheduled(source, mode)
    }

    /// Creates or replaces the pg_cron job gn2pg:<source> (UTC cron format); returns its job id.
    #[pg_extern]
    fn gn2pg_schedule(source: &str, schedule: &str, mode: default!(&str, "'auto'")) -> i64 {
        crate::schedule::schedule(source, schedule, mode)
    }

    /// Removes the pg_cron job of a source. Returns false if it had none.
    #[pg_extern]
    fn gn2pg_unschedule(source: &str) -> bool {
        crate::schedule::unschedule(source)
    }

    /// Creates or replaces the pg_cron job gn2pg:check-flows:<database>, which runs
    /// gn2pg_check_flows(); returns its job id.
    #[pg_extern]
    fn gn2pg_schedule_check_flows(schedule: default!(&str, "'*/15 * * * *'")) -> i64 {
        crate::schedule::schedule_check_flows(schedule)
    }

    /// Removes the job created by gn2pg_schedule_check_flows(); false if there was none.
    #[pg_extern]
    fn gn2pg_unschedule_check_flows() -> bool {
        crate::schedule::unschedule_check_flows()
    }

    /// Raises 'stale' alerts for sources without a recent successful run (schedule it with
    /// pg_cron); returns the number of alerts raised.
    #[pg_extern]
    fn gn2pg_check_flows() -> i32 {
        crate::alert::check_flows()
    }
}
