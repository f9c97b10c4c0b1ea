//! The registry's checks, shared by the SQL functions (sources.rs, launch.rs, schedule.rs,
//! check.rs): source names, modes, a source that exists, a schema as new as the library, a
//! source that is busy. Each raises a PostgreSQL ERROR with a SQLSTATE and a hint.

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::run::Requested;
use crate::store::{self, Busy};

/// Raises an ERROR with a SQLSTATE, a message and a hint, PostGIS-style.
pub(crate) fn raise(code: PgSqlErrorCode, msg: String, hint: Option<&str>) -> ! {
    raise_with_detail(code, msg, None, hint)
}

pub(crate) fn raise_with_detail(code: PgSqlErrorCode, msg: String, detail: Option<&str>, hint: Option<&str>) -> ! {
    crate::error::raise(code, msg, detail, hint)
}

/// Refuses a start (or a removal) of a busy source: an ERROR of the calling statement, no run
/// recorded, so the next run's mode and the alerts are as if nothing had happened.
pub(crate) fn refuse_busy(source: &str, busy: Busy) -> ! {
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

pub(crate) fn spi<T>(r: Result<T, pgrx::spi::Error>) -> T {
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

pub(crate) fn source_exists(name: &str) -> bool {
    spi(Spi::get_one_with_args::<bool>("SELECT EXISTS (SELECT 1 FROM gn2pg.source WHERE name = $1)", &[name.into()]))
        .unwrap_or(false)
}

/// After a package upgrade the library is new but the database objects are not, until
/// ALTER EXTENSION: say so rather than fail on a missing function.
pub(crate) fn require_current_schema() {
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

pub(crate) fn parse_mode(mode: &str) -> Requested {
    Requested::parse(mode).unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("gn2pg: invalid mode {mode:?}"),
            Some("mode is 'auto' (full the first time, then incremental), 'full' or 'incremental'."),
        )
    })
}
