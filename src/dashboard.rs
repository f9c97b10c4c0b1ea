//! SQL functions the web dashboard (dashboard/) calls besides the harvest API: acknowledging an
//! alert, and the GeoNature accounts allowed to sign in. Tables and views are in
//! sql/dashboard.sql. Like the rest of the API, each function checks the caller's role, then
//! writes as the extension owner (the tables are read-only for the gn2pg roles).

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::access::{self, ADMIN, OPERATOR};

fn raise(code: PgSqlErrorCode, msg: String, hint: Option<&str>) -> ! {
    crate::error::raise(code, msg, None, hint)
}

fn spi<T>(r: Result<T, pgrx::spi::Error>) -> T {
    r.unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("gn2pg: SPI failed: {e}"), None))
}

/// Who is calling, as recorded with an acknowledgement or a mapping: the current role, and the
/// GeoNature account the dashboard acts for when it runs as a gn2pg group role.
fn caller() -> String {
    spi(Spi::get_one::<String>(
        "SELECT current_user::text
                || coalesce(' (GeoNature account ' || nullif(pg_catalog.current_setting('gn2pg_dashboard.account', true), '') || ')', '')",
    ))
    .unwrap_or_default()
}

pub fn acknowledge_alert(alert_id: i64, note: Option<&str>) -> bool {
    access::require(OPERATOR, "gn2pg_acknowledge_alert()");
    let note = note.map(str::trim).filter(|s| !s.is_empty());
    if note.is_some_and(|n| n.chars().count() > 1000) {
        raise(
            PgSqlErrorCode::ERRCODE_STRING_DATA_RIGHT_TRUNCATION,
            "gn2pg_acknowledge_alert: note is longer than 1000 characters".into(),
            None,
        );
    }
    let by = caller();
    let done = access::as_owner(|| {
        spi(Spi::get_one_with_args::<bool>(
            "WITH a AS (UPDATE gn2pg.alert SET acknowledged_at = now(), acknowledged_by = $2, acknowledgement = $3
                         WHERE id = $1 AND resolved_at IS NULL RETURNING 1)
             SELECT EXISTS (SELECT 1 FROM a)",
            &[alert_id.into(), by.as_str().into(), note.into()],
        ))
        .unwrap_or(false)
    });
    if !done {
        pgrx::notice!("gn2pg: alert {alert_id} is not open, nothing acknowledged");
    }
    done
}

fn check_role(role: &str) {
    if !matches!(role, "gn2pg_reader" | "gn2pg_operator" | "gn2pg_admin") {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("gn2pg_map_geonature_account: role {role:?} is not a gn2pg role"),
            Some("Give 'gn2pg_reader', 'gn2pg_operator' or 'gn2pg_admin'."),
        );
    }
}

/// The id_role of a GeoNature user account (not a group) with this identifiant.
fn geonature_role_id(login: &str) -> i32 {
    let has_usershub =
        spi(Spi::get_one::<bool>("SELECT pg_catalog.to_regclass('utilisateurs.t_roles') IS NOT NULL")).unwrap_or(false);
    if !has_usershub {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            "gn2pg: this database has no GeoNature accounts (utilisateurs.t_roles does not exist)".into(),
            Some("GeoNature sign-in works when gn2pg is installed in the GeoNature database; otherwise people sign in with PostgreSQL roles."),
        );
    }
    let ids: Vec<i32> = spi(Spi::connect(|c| {
        c.select(
            "SELECT r.id_role FROM utilisateurs.t_roles r WHERE r.identifiant = $1 AND NOT coalesce(r.groupe, false)",
            Some(3),
            &[login.into()],
        )?
        .map(|row| row.get::<i32>(1).map(Option::unwrap_or_default))
        .collect::<Result<Vec<_>, _>>()
    }));
    match ids.as_slice() {
        [id] => *id,
        [] => raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("gn2pg: no GeoNature user account with identifiant {login:?}"),
            Some("SELECT id_role, identifiant FROM utilisateurs.t_roles WHERE NOT groupe lists them."),
        ),
        _ => raise(
            PgSqlErrorCode::ERRCODE_CARDINALITY_VIOLATION,
            format!("gn2pg: several GeoNature accounts have identifiant {login:?}"),
            Some("Make identifiants unique in UsersHub: the dashboard cannot tell these accounts apart."),
        ),
    }
}

pub fn map_geonature_account(login: &str, role: &str) -> i32 {
    access::require(ADMIN, "gn2pg_map_geonature_account()");
    check_role(role);
    let by = caller();
    access::as_owner(|| {
        let id = geonature_role_id(login);
        spi(Spi::run_with_args(
            "INSERT INTO gn2pg.geonature_account (id_role, login, role, mapped_by) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id_role) DO UPDATE
                SET login = EXCLUDED.login, role = EXCLUDED.role, mapped_by = EXCLUDED.mapped_by, mapped_at = now()",
            &[id.into(), login.into(), role.into(), by.as_str().into()],
        ));
        id
    })
}

pub fn unmap_geonature_account(login: &str) -> bool {
    access::require(ADMIN, "gn2pg_unmap_geonature_account()");
    let removed = access::as_owner(|| {
        spi(Spi::get_one_with_args::<bool>(
            "WITH d AS (DELETE FROM gn2pg.geonature_account WHERE login = $1 RETURNING 1) SELECT EXISTS (SELECT 1 FROM d)",
            &[login.into()],
        ))
        .unwrap_or(false)
    });
    if !removed {
        pgrx::notice!("gn2pg: GeoNature account {login:?} had no dashboard access, nothing removed");
    }
    removed
}

#[pg_schema]
mod public {
    use pgrx::prelude::*;

    /// Marks an open alert as acknowledged (someone is on it), with an optional note.
    #[pg_extern]
    fn gn2pg_acknowledge_alert(alert_id: i64, note: default!(Option<&str>, "NULL")) -> bool {
        crate::dashboard::acknowledge_alert(alert_id, note)
    }

    /// Lets a GeoNature account sign in to the dashboard as one gn2pg role; returns its id_role.
    #[pg_extern]
    fn gn2pg_map_geonature_account(login: &str, role: &str) -> i32 {
        crate::dashboard::map_geonature_account(login, role)
    }

    /// Removes the dashboard access of a GeoNature account.
    #[pg_extern]
    fn gn2pg_unmap_geonature_account(login: &str) -> bool {
        crate::dashboard::unmap_geonature_account(login)
    }
}
