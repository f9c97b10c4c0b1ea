//! Alerts: open and resolved alerts, the delivery of each notification to the webhook
//! (`gn2pg.alert_event`), and acknowledging an open alert (operators).

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::html;
use serde::Deserialize;

use crate::layout::{self, badge, csrf, dash, flash};
use crate::web::{url_encode, AppError, State as AppState, User};

#[derive(Deserialize, Default)]
pub struct AlertQuery {
    #[serde(default)]
    state: String,
    #[serde(default)]
    source: String,
    done: Option<String>,
}

const ALERTS_SQL: &str = "
SELECT a.id, a.source, a.kind, a.message, a.run_id, to_char(a.raised_at, 'YYYY-MM-DD HH24:MI'),
       to_char(a.last_seen_at, 'YYYY-MM-DD HH24:MI'), a.occurrences, to_char(a.resolved_at, 'YYYY-MM-DD HH24:MI'),
       a.resolved_by_run, to_char(a.acknowledged_at, 'YYYY-MM-DD HH24:MI'), a.acknowledged_by, a.acknowledgement,
       coalesce((SELECT jsonb_agg(jsonb_build_object(
                    'event', e.event, 'at', to_char(e.created_at, 'YYYY-MM-DD HH24:MI:SS'), 'state', e.webhook_state,
                    'attempts', e.webhook_attempts, 'error', e.webhook_error) ORDER BY e.id)
                   FROM gn2pg.alert_event e WHERE e.alert_id = a.id), '[]')
  FROM gn2pg.alert a
 WHERE ($1 = 'all' OR ($1 = 'resolved') = (a.resolved_at IS NOT NULL))
   AND ($2 = '' OR a.source = $2)
 ORDER BY a.resolved_at IS NULL DESC, a.id DESC
 LIMIT 200";

pub async fn page(State(app): State<AppState>, user: User, Query(q): Query<AlertQuery>) -> Result<Response, AppError> {
    let state = match q.state.as_str() {
        "resolved" | "all" => q.state.clone(),
        _ => "open".to_string(),
    };
    let (tx, level) = app.db.begin(&user.session.account, false).await?;
    let alerts = tx.query(ALERTS_SQL, &[&state, &q.source]).await?;
    tx.rollback().await;
    let src = url_encode(&q.source);
    let body = html! {
        (flash(q.done.as_deref()))
        nav class="tabs" {
            @for s in ["open", "resolved", "all"] {
                a href=(format!("/alerts?state={s}&source={src}")) class=(if s == state { "current" } else { "" }) { (s) }
            }
            @if !q.source.is_empty() { " · source " strong { (q.source) } " " a href=(format!("/alerts?state={state}")) { "(all sources)" } }
        }
        @if alerts.is_empty() { p id="no-alerts" { "No " (state) " alert." } }
        @for a in &alerts {
            @let id: i64 = a.get(0);
            @let source: String = a.get(1);
            @let resolved: Option<String> = a.get(8);
            @let acked: Option<String> = a.get(10);
            article class="alert" id=(format!("alert-{id}")) data-source=(source) {
                h2 {
                    (badge(&a.get::<_, String>(2))) " "
                    a href=(format!("/sources/{source}")) { (source) }
                    " " small { "alert " (id) }
                    @if resolved.is_some() { " " span class="badge ok" { "resolved" } }
                    @if acked.is_some() { " " span class="badge" { "acknowledged" } }
                }
                div class="message" { (a.get::<_, String>(3)) }
                dl class="facts" {
                    dt { "Raised" } dd { (a.get::<_, String>(5)) }
                    dt { "Last seen" } dd { (a.get::<_, String>(6)) " (" (a.get::<_, i32>(7)) " times)" }
                    @if let Some(run) = a.get::<_, Option<i64>>(4) { dt { "Run" } dd { a href=(format!("/sources/{source}/runs/{run}")) { (run) } } }
                    @if let Some(r) = &resolved {
                        dt { "Resolved" } dd { (r) @if let Some(run) = a.get::<_, Option<i64>>(9) { " by run " (run) } }
                    }
                    @if let Some(t) = &acked {
                        dt { "Acknowledged" } dd class="ack" { (t) " by " (a.get::<_, Option<String>>(11).unwrap_or_default())
                            @if let Some(n) = a.get::<_, Option<String>>(12) { ": " (n) } }
                    }
                }
                @let events: serde_json::Value = a.get(13);
                @if let Some(list) = events.as_array() { @if !list.is_empty() {
                    table class="events" {
                        thead { tr { th { "Notification" } th { "At" } th { "Webhook" } th { "Attempts" } th { "Error" } } }
                        tbody { @for e in list {
                            @let s = |k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
                            tr {
                                td { (s("event")) }
                                td { (s("at")) }
                                td { @if s("state").is_empty() { "no webhook" } @else { (badge(&s("state"))) } }
                                td class="num" { (e.get("attempts").and_then(|v| v.as_i64()).unwrap_or(0)) }
                                td { @if s("error").is_empty() { (dash()) } @else { (s("error")) } }
                            }
                        } }
                    }
                } }
                @if level.operator && resolved.is_none() && acked.is_none() {
                    form method="post" action=(format!("/alerts/{id}/acknowledge")) class="ack-form" {
                        (csrf(&user))
                        input type="text" name="note" placeholder="note (optional)" maxlength="1000";
                        button type="submit" { "Acknowledge" }
                    }
                }
            }
        }
    };
    Ok(layout::page("Alerts", Some((&user, level)), body).into_response())
}

#[derive(Deserialize)]
pub struct AckForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    note: String,
}

pub async fn acknowledge(
    State(app): State<AppState>,
    user: User,
    Path(id): Path<i64>,
    Form(f): Form<AckForm>,
) -> Result<Response, AppError> {
    user.check_csrf(&f.csrf)?;
    let (tx, level) = app.db.begin(&user.session.account, true).await?;
    if !level.operator {
        tx.rollback().await;
        return Err(AppError::Forbidden("acknowledging an alert needs the role gn2pg_operator".into()));
    }
    let note = Some(f.note.trim()).filter(|n| !n.is_empty());
    let done: bool = tx.one("SELECT gn2pg_acknowledge_alert($1, $2)", &[&id, &note]).await?.get(0);
    tx.commit().await?;
    let msg = if done { format!("Alert+{id}+acknowledged") } else { format!("Alert+{id}+is+not+open") };
    Ok(Redirect::to(&format!("/alerts?done={msg}")).into_response())
}
