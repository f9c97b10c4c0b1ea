//! Registering and removing sources (`gn2pg_add_source`, `gn2pg_remove_source`): checks the
//! caller's role and the arguments, then writes the registry as the extension owner.

use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};

use crate::access::{self, ADMIN};
use crate::registry::{check_name, raise, refuse_busy, require_current_schema, source_exists, spi};
use crate::source::config::{api_root, auth_from_parts, SourceConfig, SourceOptions};
use crate::store::{self, Busy};

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
        if crate::cron_jobs::cron_available() {
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
