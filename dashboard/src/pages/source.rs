//! Source: the current run's live progress (the page script polls `/sources/<name>/progress`),
//! a chart and the table of past runs, a run's rejected rows, Harvest now / Cancel (operators),
//! schedule editing (admins), the CA/JDD received and where each lands, and the GeoNature
//! destination's status when that feature is installed.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Json};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::json;

use crate::db::{Level, UserTx};
use crate::layout::{self, badge, bar_chart, count, csrf, dash, duration, flash, pre};
use crate::session::Account;
use crate::web::{AppError, State as AppState, User};

const RUNS_PER_PAGE: i64 = 30;
const CHART_RUNS: i64 = 60;
const ERRORS_PER_PAGE: i64 = 20;

fn valid_name(name: &str) -> Result<(), AppError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(AppError::NotFound("no such source".into()))
    }
}

/// The current (or latest) run of a source, with what the progress display needs.
const PROGRESS_SQL: &str = "
SELECT r.id, r.status, r.mode, r.pages_done, r.rows_received, r.rows_upserted, r.rows_failed,
       extract(epoch FROM coalesce(r.finished_at, now()) - r.started_at)::float8,
       r.error, to_char(r.started_at, 'YYYY-MM-DD HH24:MI:SS'),
       f.running_run_id = r.id,
       (SELECT l.rows_received FROM gn2pg.run_log l
         WHERE l.source = r.source AND l.mode = 'full' AND l.status = 'success' ORDER BY l.id DESC LIMIT 1),
       0
  FROM gn2pg.flow_status f
  JOIN gn2pg.run_log r ON r.id = coalesce($2, (SELECT max(x.id) FROM gn2pg.run_log x WHERE x.source = f.source))
                      AND r.source = f.source
 WHERE f.source = $1";

/// The progress of run `run` (a run just started: its row appears once its worker runs), or of
/// the source's latest run.
async fn progress_json(tx: &UserTx, name: &str, run: Option<i64>) -> Result<serde_json::Value, AppError> {
    let Some(r) = tx.opt(PROGRESS_SQL, &[&name, &run]).await? else {
        return Ok(match run {
            Some(id) => json!({"run_id": id, "status": "starting", "running": true, "rows_text": "0", "pages": 0}),
            None => json!({"run_id": null}),
        });
    };
    let status: String = r.get(1);
    let alive: bool = r.get::<_, Option<bool>>(10).unwrap_or(false);
    let running = status == "running" && alive;
    let rows: i64 = r.get(4);
    let elapsed: f64 = r.get(7);
    let rate = if elapsed > 0.5 { rows as f64 / elapsed } else { 0.0 };
    let mode: String = r.get(2);
    // A full run receives about as many rows as the last successful full run did; the first
    // one's size is unknown (local rows grow with it, so they tell nothing).
    let expected = if mode == "full" { r.get::<_, Option<i64>>(11).unwrap_or(0) } else { 0 };
    let eta = (running && expected > rows && rate > 0.0).then(|| (expected - rows) as f64 / rate);
    Ok(json!({
        "run_id": r.get::<_, i64>(0),
        "status": if status == "running" && !alive { "running (worker gone)".to_string() } else { status },
        "running": running,
        "mode": mode,
        "pages": r.get::<_, i32>(3),
        "rows": rows,
        "rows_text": count(rows),
        "rows_upserted": r.get::<_, i64>(5),
        "rows_failed": r.get::<_, i64>(6),
        "elapsed": duration(elapsed),
        "rate": if rate > 0.0 { format!("{} rows/s", count(rate.round() as i64)) } else { "—".to_string() },
        "expected": if expected > 0 { Some(count(expected)) } else { None },
        "percent": if running && expected > 0 { Some((rows as f64 * 100.0 / expected as f64).min(99.0).floor()) } else { None },
        "eta": eta.map(duration),
        "error": r.get::<_, Option<String>>(8),
        "started": r.get::<_, String>(9),
    }))
}

#[derive(Deserialize, Default)]
pub struct RunQuery {
    run: Option<i64>,
}

pub async fn progress(
    State(app): State<AppState>,
    user: User,
    Path(name): Path<String>,
    Query(q): Query<RunQuery>,
) -> Result<Response, AppError> {
    valid_name(&name)?;
    let (tx, _) = app.db.begin(&user.session.account, false).await?;
    let p = progress_json(&tx, &name, q.run).await?;
    tx.rollback().await;
    Ok(Json(p).into_response())
}

fn live_panel(p: &serde_json::Value, name: &str, run: Option<i64>, user: &User, level: Level) -> Markup {
    let s = |k: &str| p.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
    let running = p.get("running").and_then(|v| v.as_bool()).unwrap_or(false);
    html! {
        section class="panel live" id="live" data-running=(running)
                data-progress=(match run { Some(id) => format!("/sources/{name}/progress?run={id}"), None => format!("/sources/{name}/progress") }) {
            h2 { "Current run" }
            p id="run-none" hidden[!p.get("run_id").is_some_and(|v| v.is_null())] { "This source has never been harvested." }
            dl class="facts" {
                dt { "Run" } dd id="run-id" { (p.get("run_id").map(|v| v.to_string()).unwrap_or_default()) " " small id="run-mode" { (s("mode")) } }
                dt { "Status" } dd id="run-status" class="status" { (s("status")) }
                dt { "Pages" } dd id="run-pages" { (p.get("pages").map(|v| v.to_string()).unwrap_or_default()) }
                dt { "Rows" } dd id="run-rows" { (s("rows_text")) }
                dt { "Rate" } dd id="run-rate" { (s("rate")) }
                dt { "Elapsed" } dd id="run-elapsed" { (s("elapsed")) }
                dt { "Estimated end" } dd id="run-eta" { @if let Some(e) = p.get("eta").and_then(|v| v.as_str()) { "in " (e) } @else { (dash()) } }
            }
            // Without an expected size the bar is indeterminate (no value).
            progress id="run-progress" max="100" value=[p.get("percent").and_then(|v| v.as_f64())] hidden[!running] {}
            div id="run-error" class="error" hidden[s("error").is_empty()] { (s("error")) }
            @if level.operator {
                div class="actions" {
                    form method="post" action=(format!("/sources/{name}/harvest")) id="harvest-form" {
                        (csrf(user))
                        "Harvest now: "
                        button type="submit" name="mode" value="auto" id="harvest-auto" { "auto" }
                        button type="submit" name="mode" value="incremental" id="harvest-incremental" { "incremental" }
                        button type="submit" name="mode" value="full" id="harvest-full" { "full" }
                    }
                    form method="post" action=(format!("/sources/{name}/cancel")) id="cancel-form" hidden[!running] {
                        (csrf(user))
                        input type="hidden" name="run_id" value=(p.get("run_id").map(|v| v.to_string()).unwrap_or_default());
                        button type="submit" class="danger" id="cancel" { "Cancel the run" }
                    }
                }
            }
        }
    }
}

#[derive(Deserialize, Default)]
pub struct SourceQuery {
    before: Option<i64>,
    done: Option<String>,
    /// The run the live panel follows (one just started from this page).
    run: Option<i64>,
}

struct Header {
    organism: Option<String>,
    organism_id: Option<String>,
    url: String,
    export_id: i32,
    access_mode: String,
    health: String,
    schedule: Option<String>,
    schedule_mode: Option<String>,
    next_run: Option<String>,
    local_rows: i64,
    open_alerts: i32,
    enabled: bool,
    destination: bool,
}

pub async fn page(
    State(app): State<AppState>,
    user: User,
    Path(name): Path<String>,
    Query(q): Query<SourceQuery>,
) -> Result<Response, AppError> {
    valid_name(&name)?;
    let (tx, level) = app.db.begin(&user.session.account, false).await?;
    let Some(h) = tx
        .opt(
            "SELECT f.organism, f.organism_id, f.url, f.export_id, f.access_mode, f.health, f.schedule, f.schedule_mode,
                    to_char(f.next_run_at, 'YYYY-MM-DD HH24:MI'), f.local_rows, f.open_alerts, f.enabled,
                    pg_catalog.to_regclass('gn2pg.destination_status') IS NOT NULL
               FROM gn2pg.flow_status f WHERE f.source = $1",
            &[&name],
        )
        .await?
    else {
        tx.rollback().await;
        return Err(AppError::NotFound(format!("source \"{name}\" does not exist")));
    };
    let h = Header {
        organism: h.get(0),
        organism_id: h.get(1),
        url: h.get(2),
        export_id: h.get(3),
        access_mode: h.get(4),
        health: h.get(5),
        schedule: h.get(6),
        schedule_mode: h.get(7),
        next_run: h.get(8),
        local_rows: h.get(9),
        open_alerts: h.get(10),
        enabled: h.get(11),
        destination: h.get(12),
    };
    let live = progress_json(&tx, &name, q.run).await?;
    let chart = tx
        .query(
            "SELECT to_char(started_at, 'YYYY-MM-DD HH24:MI') || ' ' || mode || ' ' || status, rows_received::float8,
                    extract(epoch FROM finished_at - started_at)::float8, status = 'success'
               FROM (SELECT * FROM gn2pg.run_log WHERE source = $1 AND status <> 'running'
                      ORDER BY id DESC LIMIT $2) r ORDER BY id",
            &[&name, &CHART_RUNS],
        )
        .await?;
    let runs = tx
        .query(
            "SELECT id, mode, status, to_char(started_at, 'YYYY-MM-DD HH24:MI:SS'),
                    extract(epoch FROM coalesce(finished_at, now()) - started_at)::float8,
                    rows_received, rows_upserted, rows_deleted, rows_failed, pages_done, error
               FROM gn2pg.run_log WHERE source = $1 AND ($2::bigint IS NULL OR id < $2)
              ORDER BY id DESC LIMIT $3",
            &[&name, &q.before, &RUNS_PER_PAGE],
        )
        .await?;
    let mapping = tx
        .query(
            "SELECT level, source_uuid::text, source_name, rows, mapped_by, target_ca_uuid::text, target_jdd_uuid::text,
                    target_name, remap_pending
               FROM gn2pg.metadata_mapping WHERE source = $1 ORDER BY level, source_name, source_uuid",
            &[&name],
        )
        .await?;
    let destination = if h.destination {
        tx.query("SELECT to_jsonb(d) FROM gn2pg.destination_status d WHERE to_jsonb(d) ->> 'source' = $1", &[&name])
            .await?
            .iter()
            .map(|r| r.get::<_, serde_json::Value>(0))
            .collect::<Vec<_>>()
    } else {
        Vec::new()
    };
    tx.rollback().await;

    let rows_points: Vec<(String, f64, bool)> = chart.iter().map(|r| (r.get(0), r.get(1), r.get(3))).collect();
    let time_points: Vec<(String, f64, bool)> =
        chart.iter().map(|r| (r.get(0), r.get::<_, Option<f64>>(2).unwrap_or(0.0), r.get(3))).collect();
    let last_id: Option<i64> = runs.last().map(|r| r.get(0));
    let geonature_session = matches!(user.session.account, Account::GeoNature { .. });
    let body = html! {
        (flash(q.done.as_deref()))
        section class="panel" id="source-facts" {
            dl class="facts" {
                dt { "Organism" } dd id="organism" { @if let Some(o) = &h.organism { (o) } @else { (dash()) } }
                dt { "National organism id" } dd id="organism-id" { @if let Some(o) = &h.organism_id { (o) } @else { (dash()) } }
                dt { "URL" } dd { code { (h.url) } }
                dt { "Export" } dd { (h.export_id) " (" (h.access_mode) ")" @if !h.enabled { " " span class="badge" { "disabled" } } }
                dt { "Health" } dd id="health" { (badge(&h.health)) }
                dt { "Schedule" } dd id="schedule" {
                    @if let Some(s) = &h.schedule { code { (s) } " UTC, " (h.schedule_mode.as_deref().unwrap_or("auto")) } @else { "not scheduled" }
                    @if let Some(n) = &h.next_run { ", next run " (n) }
                }
                dt { "Local rows" } dd id="local-rows" { (count(h.local_rows)) }
                dt { "Open alerts" } dd { @if h.open_alerts > 0 { a href=(format!("/alerts?source={name}")) class="badge bad" { (h.open_alerts) } } @else { "none" } }
            }
        }
        (live_panel(&live, &name, q.run, &user, level))
        section class="panel" id="charts" {
            h2 { "Past runs" }
            @if chart.is_empty() { p { "No finished run yet." } } @else {
                (bar_chart("Rows received per run", "rows", &rows_points))
                (bar_chart("Duration per run", "s", &time_points))
                p class="help" { "Oldest on the left; red bars are runs that did not succeed." }
            }
            table class="runs" id="runs-table" {
                thead { tr { th { "Run" } th { "Mode" } th { "Status" } th { "Started" } th { "Duration" } th class="num" { "Received" } th class="num" { "Written" } th class="num" { "Deleted" } th class="num" { "Rejected" } th { "Error" } } }
                tbody {
                    @for r in &runs {
                        @let id: i64 = r.get(0);
                        @let failed: i64 = r.get(8);
                        tr {
                            td { a href=(format!("/sources/{name}/runs/{id}")) { (id) } }
                            td { (r.get::<_, String>(1)) }
                            td { (badge(&r.get::<_, String>(2))) }
                            td { (r.get::<_, String>(3)) }
                            td class="num" { (duration(r.get(4))) }
                            td class="num" { (count(r.get(5))) }
                            td class="num" { (count(r.get(6))) }
                            td class="num" { (count(r.get(7))) }
                            td class="num" { @if failed > 0 { a href=(format!("/sources/{name}/runs/{id}")) { (count(failed)) } } @else { "0" } }
                            td class="err-cell" { @if let Some(e) = r.get::<_, Option<String>>(10) { span class="err-line" title=(e) { (e) } } }
                        }
                    }
                }
            }
            @if runs.len() as i64 == RUNS_PER_PAGE { @if let Some(b) = last_id { p { a href=(format!("/sources/{name}?before={b}")) { "Older runs" } } } }
        }
        @if level.admin {
            section class="panel" id="schedule-panel" {
                h2 { "Schedule" }
                @if geonature_session {
                    p class="help" { "Scheduled jobs run as a PostgreSQL login role: sign in with one to change the schedule." }
                } @else {
                    form method="post" action=(format!("/sources/{name}/schedule")) id="schedule-form" {
                        (csrf(&user))
                        label { "Cron expression (UTC) " input type="text" name="schedule" value=(h.schedule.clone().unwrap_or_default()) placeholder="0 3 * * *" required; }
                        label { " mode " select name="mode" {
                            @for m in ["auto", "incremental", "full"] { option value=(m) selected[h.schedule_mode.as_deref() == Some(m)] { (m) } }
                        } }
                        button type="submit" { "Save the schedule" }
                    }
                    @if h.schedule.is_some() {
                        form method="post" action=(format!("/sources/{name}/unschedule")) {
                            (csrf(&user))
                            button type="submit" class="danger" { "Remove the schedule" }
                        }
                    }
                }
            }
        }
        section class="panel" id="metadata" {
            h2 { "Acquisition frameworks and datasets received" }
            @if mapping.is_empty() { p { "Nothing received yet." } } @else {
                table class="mapping" {
                    thead { tr { th { "Level" } th { "Received as" } th class="num" { "Rows" } th { "Lands in" } th { "By" } } }
                    tbody {
                        @for m in &mapping {
                            tr {
                                td { (m.get::<_, String>(0).to_uppercase()) }
                                td { (m.get::<_, Option<String>>(2).unwrap_or_default()) br; small { code { (m.get::<_, String>(1)) } } }
                                td class="num" { (count(m.get(3))) }
                                td {
                                    @if let Some(t) = m.get::<_, Option<String>>(7) { (t) br; }
                                    small { code { (m.get::<_, Option<String>>(6).or(m.get::<_, Option<String>>(5)).unwrap_or_default()) } }
                                    @if m.get::<_, bool>(8) { " " span class="badge warn" { "remap pending" } }
                                }
                                td { @if let Some(b) = m.get::<_, Option<String>>(4) { (b) } @else { "kept as received" } }
                            }
                        }
                    }
                }
            }
        }
        @if h.destination {
            section class="panel" id="destination" {
                h2 { "GeoNature destination" }
                @if destination.is_empty() { p { "This source is not sent to a GeoNature destination." } }
                @for d in &destination {
                    dl class="facts" {
                        @if let Some(o) = d.as_object() {
                            @for (k, v) in o {
                                dt { (k) } dd { @match v { serde_json::Value::String(s) => (s), serde_json::Value::Null => (dash()), other => (other.to_string()) } }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page(&format!("Source {name}"), Some((&user, level)), body).into_response())
}

#[derive(Deserialize)]
pub struct HarvestForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    mode: String,
}

pub async fn harvest(
    State(app): State<AppState>,
    user: User,
    Path(name): Path<String>,
    Form(f): Form<HarvestForm>,
) -> Result<Response, AppError> {
    user.check_csrf(&f.csrf)?;
    valid_name(&name)?;
    if !matches!(f.mode.as_str(), "auto" | "full" | "incremental") {
        return Err(AppError::BadRequest("mode must be auto, full or incremental".into()));
    }
    let (tx, level) = app.db.begin(&user.session.account, true).await?;
    if !level.operator {
        tx.rollback().await;
        return Err(AppError::Forbidden("starting a harvest needs the role gn2pg_operator".into()));
    }
    let run: i64 = tx.one("SELECT gn2pg_harvest_async($1, $2)", &[&name, &f.mode]).await?.get(0);
    tx.commit().await?;
    Ok(Redirect::to(&format!("/sources/{name}?run={run}&done=Run+{run}+started+%28{}%29", f.mode)).into_response())
}

#[derive(Deserialize)]
pub struct CancelForm {
    #[serde(default)]
    csrf: String,
    run_id: i64,
}

pub async fn cancel(
    State(app): State<AppState>,
    user: User,
    Path(name): Path<String>,
    Form(f): Form<CancelForm>,
) -> Result<Response, AppError> {
    user.check_csrf(&f.csrf)?;
    valid_name(&name)?;
    let (tx, level) = app.db.begin(&user.session.account, true).await?;
    if !level.operator {
        tx.rollback().await;
        return Err(AppError::Forbidden("cancelling a harvest needs the role gn2pg_operator".into()));
    }
    let mine: bool = tx
        .one("SELECT EXISTS (SELECT 1 FROM gn2pg.run_log WHERE id = $1 AND source = $2)", &[&f.run_id, &name])
        .await?
        .get(0);
    if !mine {
        tx.rollback().await;
        return Err(AppError::NotFound(format!("run {} is not a run of {name}", f.run_id)));
    }
    let stopped: bool = tx.one("SELECT gn2pg_cancel($1)", &[&f.run_id]).await?.get(0);
    tx.commit().await?;
    let msg = if stopped {
        format!("Run+{}+is+being+cancelled", f.run_id)
    } else {
        format!("Run+{}+was+not+running", f.run_id)
    };
    Ok(Redirect::to(&format!("/sources/{name}?done={msg}")).into_response())
}

#[derive(Deserialize)]
pub struct ScheduleForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    schedule: String,
    #[serde(default)]
    mode: String,
}

pub async fn schedule(
    State(app): State<AppState>,
    user: User,
    Path(name): Path<String>,
    Form(f): Form<ScheduleForm>,
) -> Result<Response, AppError> {
    user.check_csrf(&f.csrf)?;
    valid_name(&name)?;
    let (tx, level) = app.db.begin(&user.session.account, true).await?;
    if !level.admin {
        tx.rollback().await;
        return Err(AppError::Forbidden("changing a schedule needs the role gn2pg_admin".into()));
    }
    if matches!(user.session.account, Account::GeoNature { .. }) {
        tx.rollback().await;
        return Err(AppError::Forbidden(
            "scheduled jobs run as a PostgreSQL login role: sign in with one to change the schedule".into(),
        ));
    }
    let mode = if f.mode.is_empty() { "auto".to_string() } else { f.mode };
    tx.one("SELECT gn2pg_schedule($1, $2, $3)", &[&name, &f.schedule.trim(), &mode]).await?;
    tx.commit().await?;
    Ok(Redirect::to(&format!("/sources/{name}?done=Schedule+saved")).into_response())
}

#[derive(Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

pub async fn unschedule(
    State(app): State<AppState>,
    user: User,
    Path(name): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Result<Response, AppError> {
    user.check_csrf(&f.csrf)?;
    valid_name(&name)?;
    let (tx, level) = app.db.begin(&user.session.account, true).await?;
    if !level.admin {
        tx.rollback().await;
        return Err(AppError::Forbidden("changing a schedule needs the role gn2pg_admin".into()));
    }
    tx.one("SELECT gn2pg_unschedule($1)", &[&name]).await?;
    tx.commit().await?;
    Ok(Redirect::to(&format!("/sources/{name}?done=Schedule+removed")).into_response())
}

#[derive(Deserialize, Default)]
pub struct ErrorsQuery {
    after: Option<i64>,
}

/// One run: its counters and its rejected rows, paged, each with the item as received.
pub async fn run(
    State(app): State<AppState>,
    user: User,
    Path((name, id)): Path<(String, i64)>,
    Query(q): Query<ErrorsQuery>,
) -> Result<Response, AppError> {
    valid_name(&name)?;
    let (tx, level) = app.db.begin(&user.session.account, false).await?;
    let Some(r) = tx
        .opt(
            "SELECT mode, status, to_char(started_at, 'YYYY-MM-DD HH24:MI:SS'), to_char(finished_at, 'YYYY-MM-DD HH24:MI:SS'),
                    extract(epoch FROM coalesce(finished_at, now()) - started_at)::float8, pages_done, rows_received,
                    rows_upserted, rows_unchanged, rows_deleted, rows_failed, http_requests, http_retries, bytes_received,
                    source_wait_ms, load_ms, error, paging, since, resumed_from
               FROM gn2pg.run_log WHERE id = $1 AND source = $2",
            &[&id, &name],
        )
        .await?
    else {
        tx.rollback().await;
        return Err(AppError::NotFound(format!("run {id} of {name} does not exist")));
    };
    let errors = tx
        .query(
            "SELECT id, id_data, uuid, error, jsonb_pretty(item) FROM gn2pg.run_error
              WHERE run_id = $1 AND id > coalesce($2::bigint, 0) ORDER BY id LIMIT $3",
            &[&id, &q.after, &ERRORS_PER_PAGE],
        )
        .await?;
    tx.rollback().await;
    let num = |i: usize| count(r.get::<_, i64>(i));
    let body = html! {
        p { a href=(format!("/sources/{name}")) { "← source " (name) } }
        section class="panel" {
            dl class="facts" {
                dt { "Mode" } dd { (r.get::<_, String>(0)) @if let Some(p) = r.get::<_, Option<String>>(17) { " (" (p) " paging)" } }
                dt { "Status" } dd id="status" { (badge(&r.get::<_, String>(1))) }
                dt { "Started" } dd { (r.get::<_, String>(2)) }
                dt { "Finished" } dd { (r.get::<_, Option<String>>(3).unwrap_or_default()) }
                dt { "Duration" } dd { (duration(r.get(4))) }
                dt { "Pages" } dd { (r.get::<_, i32>(5)) }
                dt { "Rows received" } dd { (num(6)) }
                dt { "Written / unchanged / deleted" } dd { (num(7)) " / " (num(8)) " / " (num(9)) }
                dt { "Rejected" } dd id="rejected" { (num(10)) }
                dt { "Requests (retries)" } dd { (r.get::<_, i32>(11)) " (" (r.get::<_, i32>(12)) ")" }
                dt { "Bytes" } dd { (num(13)) }
                dt { "Waiting for the source / loading" } dd { (duration(r.get::<_, i64>(14) as f64 / 1000.0)) " / " (duration(r.get::<_, i64>(15) as f64 / 1000.0)) }
                @if let Some(s) = r.get::<_, Option<String>>(18) { dt { "Window start" } dd { (s) } }
                @if let Some(p) = r.get::<_, Option<i64>>(19) { dt { "Resumed from run" } dd { (p) } }
            }
            @if let Some(e) = r.get::<_, Option<String>>(16) { div class="error" id="run-error" { (e) } }
        }
        section class="panel" id="rejected-rows" {
            h2 { "Rejected rows" }
            @if errors.is_empty() { p { @if q.after.is_some() { "No more rejected rows." } @else { "None." } } }
            @for e in &errors {
                article class="rejected" {
                    h3 { "Key " @if let Some(k) = e.get::<_, Option<i64>>(1) { (k) } @else { "(none)" } " " small { (e.get::<_, Option<String>>(2).unwrap_or_default()) } }
                    div class="error" { (e.get::<_, String>(3)) }
                    details { summary { "Item as received" } (pre(&e.get::<_, Option<String>>(4).unwrap_or_default())) }
                }
            }
            @if errors.len() as i64 == ERRORS_PER_PAGE { @if let Some(last) = errors.last() {
                p { a href=(format!("/sources/{name}/runs/{id}?after={}", last.get::<_, i64>(0))) id="more-errors" { "Next rejected rows" } }
            } }
        }
    };
    Ok(layout::page(&format!("Run {id} of {name}"), Some((&user, level)), body).into_response())
}
