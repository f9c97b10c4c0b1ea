//! Alerts: the webhook side. Recording is SQL (sql/operations.sql): a trigger on
//! `gn2pg.run_log` raises an alert when a run ends `failed` or `abandoned` and resolves the
//! source's alerts when a run succeeds; `gn2pg._check_stale()` raises `stale` alerts. Each
//! raise or resolve is an *event* (`gn2pg.alert_event`), sent with `NOTIFY gn2pg_alert` at
//! commit and queued for the webhook when one is configured.
//!
//! Here: delivering queued events, after the transaction that recorded them has committed, from
//! a short-lived background worker (`gn2pg alerts`): a JSON POST per event, with a timeout and
//! retries, redirects not followed. Webhook URLs often carry a secret in their path, so they
//! are read from `gn2pg.source_secret` or the superuser-only `gn2pg.alert_webhook` at send
//! time and never written anywhere; errors name the host only.

use std::time::Duration;

use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys;
use pgrx::prelude::*;
use reqwest::blocking::Client;
use reqwest::header::CONTENT_TYPE;

use crate::bgw::tx;
use crate::guc;
use crate::source::client::error_chain;

/// Events claimed per transaction.
const BATCH: i64 = 50;

struct Pending {
    id: i64,
    payload: String,
    url: Option<String>,
    /// The source's own webhook was registered by a role that is not a superuser: it must
    /// still be allowed by gn2pg.allowed_hosts when it is used.
    restricted: bool,
}

/// Claims up to BATCH events waiting for their webhook (or stuck in `sending` for ten minutes:
/// the worker that claimed them died), with the source's own webhook if it has one.
fn claim() -> Result<Vec<Pending>, String> {
    Spi::connect_mut(|c| {
        let t = c.update(
            "WITH c AS (
                 SELECT e.id FROM gn2pg.alert_event e
                  WHERE e.webhook_state = 'pending'
                     OR (e.webhook_state = 'sending' AND e.webhook_at < now() - interval '10 minutes')
                  ORDER BY e.id LIMIT $1 FOR UPDATE SKIP LOCKED)
             UPDATE gn2pg.alert_event e SET webhook_state = 'sending', webhook_at = now()
               FROM c LEFT JOIN LATERAL (
                        SELECT nullif(k.alert_webhook, '') AS url, s.restricted
                          FROM gn2pg.alert_event x
                          JOIN gn2pg.alert a ON a.id = x.alert_id
                          JOIN gn2pg.source s ON s.name = a.source
                          JOIN gn2pg.source_secret k ON k.source_id = s.id
                         WHERE x.id = c.id) w ON true
              WHERE e.id = c.id
             RETURNING e.id, e.payload::text, w.url, coalesce(w.restricted, false)",
            None,
            &[BATCH.into()],
        )?;
        let mut out = Vec::new();
        for r in t {
            out.push(Pending {
                id: r.get::<i64>(1)?.unwrap_or_default(),
                payload: r.get::<String>(2)?.unwrap_or_default(),
                url: r.get::<String>(3)?,
                restricted: r.get::<bool>(4)?.unwrap_or(false),
            });
        }
        out.sort_by_key(|p| p.id);
        Ok::<_, pgrx::spi::Error>(out)
    })
    .map_err(|e| format!("internal SPI error: {e}"))
}

fn record(id: i64, state: &str, attempts: i32, error: Option<&str>) -> Result<(), String> {
    Spi::run_with_args(
        "UPDATE gn2pg.alert_event
            SET webhook_state = $2, webhook_attempts = webhook_attempts + $3, webhook_error = $4, webhook_at = now()
          WHERE id = $1",
        &[id.into(), state.into(), attempts.into(), error.into()],
    )
    .map_err(|e| format!("internal SPI error: {e}"))
}

/// Builds the HTTP client with every signal blocked, so that reqwest's runtime thread never
/// runs PostgreSQL's signal handlers (docs/pgrx-notes.md §4).
fn client(timeout: Duration) -> Result<Client, String> {
    crate::source::client::with_signals_blocked(|| {
        Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(crate::source::client::USER_AGENT)
            .build()
    })
    .map_err(|e| format!("cannot build the HTTP client: {}", e.without_url()))
}

/// `scheme://host[:port]` of a webhook URL: what messages may show of it.
pub fn url_origin(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("?");
            match u.port() {
                Some(p) => format!("{}://{host}:{p}", u.scheme()),
                None => format!("{}://{host}", u.scheme()),
            }
        }
        Err(_) => "<invalid url>".into(),
    }
}

fn stopping() -> bool {
    // SAFETY: reading a sig_atomic_t flag set by the signal handler of this process.
    unsafe { pg_sys::ShutdownRequestPending != 0 }
}

/// POSTs one payload: retries after connection errors, timeouts, 429 and 5xx. Returns the
/// final state, the attempts made and the last error.
fn post(http: &Client, url: &str, body: &str) -> (&'static str, i32, Option<String>) {
    let retries = guc::alert_webhook_retries();
    let mut last = String::new();
    let mut attempts = 0;
    for attempt in 0..=retries {
        attempts += 1;
        let sent = http.post(url).header(CONTENT_TYPE, "application/json").body(body.to_string()).send();
        match sent {
            Ok(r) if r.status().is_success() => return ("sent", attempts, None),
            Ok(r) => {
                let s = r.status();
                last = format!("HTTP {}", s.as_u16());
                if !(s.is_server_error() || s.as_u16() == 429) {
                    return ("failed", attempts, Some(format!("{} answered {last}", url_origin(url))));
                }
            }
            Err(e) => last = error_chain(&e.without_url()),
        }
        if attempt < retries {
            let wait = Duration::from_millis(1000u64 << attempt.min(5));
            if !BackgroundWorker::wait_latch(Some(wait)) || stopping() {
                break;
            }
        }
    }
    ("failed", attempts, Some(format!("{}: {last} (after {attempts} attempts)", url_origin(url))))
}

/// Sends every queued event. Worker context, outside any transaction.
pub fn deliver_pending() {
    let timeout = guc::alert_webhook_timeout();
    let default_url = guc::alert_webhook();
    let mut http: Option<Client> = None;
    for _ in 0..100 {
        let batch = match tx(claim) {
            Ok(b) => b,
            Err(e) => {
                pgrx::warning!("gn2pg: cannot read queued alert events: {e}");
                return;
            }
        };
        if batch.is_empty() {
            return;
        }
        for p in batch {
            // The source's own webhook, checked against gn2pg.allowed_hosts as it is now; the
            // default one is a superuser's setting.
            let refused = match (&p.url, p.restricted) {
                (Some(u), true) => match url::Url::parse(u) {
                    Ok(u) => crate::access::host_refusal(&u, "alert_webhook"),
                    Err(_) => Some("alert_webhook is not a valid URL".to_string()),
                },
                _ => None,
            };
            let url = p.url.clone().or_else(|| default_url.clone());
            let (state, attempts, error) = match (&url, stopping()) {
                (_, true) => ("pending", 0, None),
                (None, _) => ("failed", 0, Some("no webhook configured any more".to_string())),
                (Some(_), _) if refused.is_some() => ("failed", 0, refused.clone()),
                (Some(url), _) => {
                    if http.is_none() {
                        http = Some(match client(timeout) {
                            Ok(c) => c,
                            Err(e) => {
                                let _ = tx(|| record(p.id, "failed", 0, Some(&e)));
                                continue;
                            }
                        });
                    }
                    post(http.as_ref().expect("client built above"), url, &p.payload)
                }
            };
            if let Some(e) = &error {
                pgrx::log!("gn2pg: alert event {} not delivered: {e}", p.id);
            }
            if let Err(e) = tx(|| record(p.id, state, attempts, error.as_deref())) {
                pgrx::warning!("gn2pg: cannot record the delivery of alert event {}: {e}", p.id);
            }
        }
        if stopping() {
            return;
        }
    }
}

/// Starts a `gn2pg alerts` worker that delivers queued events. With `after_commit` it first
/// waits for the caller's transaction and does nothing if it rolls back. The worker runs as the
/// current user, which callers make the extension owner.
pub fn launch_delivery(after_commit: bool) -> Result<(), String> {
    // SAFETY: reading backend globals.
    let (db, user) = unsafe { (pg_sys::MyDatabaseId, pg_sys::GetUserId()) };
    crate::bgw::launch_after_commit("gn2pg alerts", "gn2pg_alert_worker", db, user, after_commit)
}

/// Called by a harvest worker once its run is recorded (outside any transaction): hands the
/// queued webhooks to a delivery worker, so that `gn2pg_harvest` does not wait for them; if no
/// worker slot is free, delivers them itself.
pub fn after_run() {
    let pending = tx(|| {
        Spi::get_one::<bool>("SELECT EXISTS (SELECT 1 FROM gn2pg.alert_event WHERE webhook_state = 'pending')")
            .map_err(|e| e.to_string())
    });
    if let Ok(Some(true)) = pending {
        if launch_delivery(false).is_err() {
            deliver_pending();
        }
    }
}

/// `gn2pg_check_flows()`: closes runs whose worker is gone (`abandoned`), raises `stale`
/// alerts, then has their webhooks sent after commit.
/// Returns the number of alerts raised.
pub fn check_flows() -> i32 {
    crate::access::require(crate::access::OPERATOR, "gn2pg_check_flows()");
    crate::access::as_owner(|| {
        // Runs whose worker is gone (killed, or unable to record their end) are closed first:
        // each raises an 'abandoned' alert.
        if let Err(e) = crate::store::abandon_dead_runs(None, None) {
            pgrx::warning!("gn2pg: cannot close the runs whose worker is gone: {e}");
        }
        let raised = Spi::get_one::<i32>("SELECT gn2pg._check_stale()").ok().flatten().unwrap_or(0);
        let pending =
            Spi::get_one::<bool>("SELECT EXISTS (SELECT 1 FROM gn2pg.alert_event WHERE webhook_state = 'pending')")
                .ok()
                .flatten()
                .unwrap_or(false);
        if pending {
            if let Err(e) = launch_delivery(true) {
                pgrx::warning!("gn2pg: alert webhooks wait for the next run or check: {e}");
            }
        }
        raised
    })
}

/// Entry point of the delivery worker.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn gn2pg_alert_worker(_arg: pg_sys::Datum) {
    if crate::bgw::connect_after_commit() {
        deliver_pending();
    }
}

/// `gn2pg.stale_after` in minutes, for `gn2pg.flow_status` (calling into the library also makes
/// sure the setting is defined in the session that reads the view).
#[pg_extern(name = "_stale_after_minutes", stable, parallel_safe)]
fn stale_after_minutes() -> i32 {
    guc::stale_after_minutes()
}
