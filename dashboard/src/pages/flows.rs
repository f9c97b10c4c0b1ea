//! Flows: every source with its organism, health, schedule and next run, last run and open
//! alerts, filtered; the table refreshes itself (the page script fetches `/flows/table`).

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use serde::Deserialize;

use crate::db::UserTx;
use crate::layout::{self, badge, count, dash, duration};
use crate::web::{url_encode, AppError, State as AppState, User};

#[derive(Deserialize, Default, Clone)]
pub struct Filter {
    #[serde(default)]
    health: String,
    #[serde(default)]
    q: String,
    #[serde(default)]
    alerts: String,
}

impl Filter {
    fn query_string(&self) -> String {
        format!("health={}&q={}&alerts={}", url_encode(&self.health), url_encode(&self.q), url_encode(&self.alerts))
    }
}

struct Flow {
    source: String,
    organism: Option<String>,
    organism_id: Option<String>,
    enabled: bool,
    health: String,
    schedule: Option<String>,
    schedule_mode: Option<String>,
    next_run: Option<String>,
    running: Option<(i64, i32, i64)>,
    last_status: Option<String>,
    last_mode: Option<String>,
    last_rows: Option<i64>,
    last_duration: Option<f64>,
    last_finished: Option<String>,
    last_error: Option<String>,
    /// Why the last run failed (`gn2pg.run_log.reason`).
    last_reason: Option<String>,
    /// Rows rejected by the latest run that rejected any (until a clean run), and that run.
    rejected: Option<(i64, i64)>,
    open_alerts: i32,
    alert_kinds: Vec<String>,
    local_rows: i64,
}

const FLOWS_SQL: &str = "
SELECT f.source, f.organism, f.organism_id, f.enabled, f.health, f.schedule, f.schedule_mode,
       to_char(f.next_run_at, 'YYYY-MM-DD HH24:MI'), f.running_run_id, r.pages_done, r.rows_received,
       f.last_run_status, f.last_run_mode, f.last_run_rows,
       extract(epoch FROM f.last_run_duration)::float8, to_char(f.last_run_finished_at, 'YYYY-MM-DD HH24:MI'),
       f.last_run_error, f.open_alerts, coalesce(f.open_alert_kinds, '{}'), f.local_rows,
       f.last_run_reason, f.last_rows_rejected, f.last_rejected_run_id
  FROM gn2pg.flow_status f
  LEFT JOIN gn2pg.run_log r ON r.id = f.running_run_id
 WHERE ($1 = '' OR f.health = $1 OR ($1 = 'running' AND f.running_run_id IS NOT NULL))
   AND ($2 = '' OR f.source ILIKE '%' || $2 || '%' OR f.organism ILIKE '%' || $2 || '%' OR f.organism_id = $2)
   AND ($3 = '' OR f.open_alerts > 0)
 ORDER BY f.health = 'failing' DESC, f.health = 'late' DESC, f.source";

async fn load(tx: &UserTx, f: &Filter) -> Result<Vec<Flow>, AppError> {
    let rows = tx.query(FLOWS_SQL, &[&f.health, &f.q.trim(), &f.alerts]).await?;
    Ok(rows
        .iter()
        .map(|r| Flow {
            source: r.get(0),
            organism: r.get(1),
            organism_id: r.get(2),
            enabled: r.get(3),
            health: r.get(4),
            schedule: r.get(5),
            schedule_mode: r.get(6),
            next_run: r.get(7),
            running: r
                .get::<_, Option<i64>>(8)
                .map(|id| (id, r.get::<_, Option<i32>>(9).unwrap_or(0), r.get::<_, Option<i64>>(10).unwrap_or(0))),
            last_status: r.get(11),
            last_mode: r.get(12),
            last_rows: r.get(13),
            last_duration: r.get(14),
            last_finished: r.get(15),
            last_error: r.get(16),
            open_alerts: r.get(17),
            alert_kinds: r.get(18),
            local_rows: r.get(19),
            last_reason: r.get(20),
            rejected: r.get::<_, Option<i64>>(22).map(|run| (r.get(21), run)),
        })
        .collect())
}

fn table(flows: &[Flow]) -> Markup {
    html! {
        table class="flows" id="flows-table" {
            thead { tr {
                th { "Source" } th { "Organism" } th { "Health" } th { "Schedule" } th { "Next run" }
                th { "Last run" } th { "Rows" } th { "Duration" } th { "Finished" } th { "Alerts" } th class="num" { "Local rows" }
            } }
            tbody {
                @if flows.is_empty() { tr { td colspan="11" class="empty" { "No source matches." } } }
                @for f in flows {
                    tr data-source=(f.source) class=(format!("health-{}", f.health)) {
                        td { a href=(format!("/sources/{}", f.source)) { (f.source) } @if !f.enabled { " " span class="badge" { "disabled" } } }
                        td {
                            @if let Some(o) = &f.organism { (o) } @else { (dash()) }
                            @if let Some(id) = &f.organism_id { br; small title="National organism id" { "id " (id) } }
                        }
                        td { (badge(&f.health)) }
                        td { @if let Some(s) = &f.schedule { code { (s) } " " small { (f.schedule_mode.as_deref().unwrap_or("")) } } @else { (dash()) } }
                        td { @if let Some(n) = &f.next_run { (n) } @else { (dash()) } }
                        td {
                            @if let Some((id, pages, rows)) = f.running {
                                (badge("running")) " " small { "run " (id) ": page " (pages) ", " (count(rows)) " rows" }
                            } @else if let Some(s) = &f.last_status {
                                (badge(s)) " " small {
                                    (f.last_mode.as_deref().unwrap_or(""))
                                    @if let Some(r) = &f.last_reason { " · " span class="reason" title="gn2pg.run_log.reason" { (r) } }
                                }
                                @if let Some(e) = &f.last_error { div class="err-line" title=(e) { (e) } }
                            } @else { (dash()) }
                            @if let Some((rows, run)) = f.rejected {
                                div class="rejected-line" {
                                    a href=(format!("/sources/{}/runs/{run}", f.source)) class="badge warn"
                                        title="Rows not stored: see the run's rejected rows" { (count(rows)) " rows rejected" }
                                }
                            }
                        }
                        td class="num" { @if let Some(n) = f.last_rows { (count(n)) } @else { (dash()) } }
                        td class="num" { @if let Some(d) = f.last_duration { (duration(d)) } @else { (dash()) } }
                        td { @if let Some(t) = &f.last_finished { (t) } @else { (dash()) } }
                        td {
                            @if f.open_alerts > 0 {
                                a href=(format!("/alerts?source={}", f.source)) class="badge bad" { (f.open_alerts) " open" }
                                " " small { (f.alert_kinds.join(", ")) }
                            } @else { (dash()) }
                        }
                        td class="num" { (count(f.local_rows)) }
                    }
                }
            }
        }
    }
}

pub async fn page(State(app): State<AppState>, user: User, Query(f): Query<Filter>) -> Result<Response, AppError> {
    let (tx, level) = app.db.begin(&user.session.account, false).await?;
    let flows = load(&tx, &f).await?;
    tx.rollback().await;
    let healths = ["", "ok", "late", "failing", "never_run", "running"];
    let body = html! {
        form class="filters" method="get" action="/flows" id="flows-filter" {
            label { "Health " select name="health" {
                @for h in healths { option value=(h) selected[f.health == h] { @if h.is_empty() { "all" } @else { (h) } } }
            } }
            label { "Source or organism " input type="search" name="q" value=(f.q); }
            label { input type="checkbox" name="alerts" value="1" checked[!f.alerts.is_empty()]; " with open alerts" }
            button type="submit" { "Filter" }
        }
        div id="flows" data-refresh=(format!("/flows/table?{}", f.query_string())) data-every="10" {
            (table(&flows))
        }
        p class="help" { "This table refreshes every 10 seconds. Times are the database server's." }
    };
    Ok(layout::page("Flows", Some((&user, level)), body).into_response())
}

/// The table alone, for the page's automatic refresh.
pub async fn fragment(
    State(app): State<AppState>,
    user: User,
    _headers: HeaderMap,
    Query(f): Query<Filter>,
) -> Result<Response, AppError> {
    let (tx, _) = app.db.begin(&user.session.account, false).await?;
    let flows = load(&tx, &f).await?;
    tx.rollback().await;
    Ok(table(&flows).into_response())
}
