//! gn2pg's errors: one type for every failure the extension reports, with its SQLSTATE, its
//! message, DETAIL and HINT, and a machine-readable reason (README, "Errors").
//!
//! Wording: the *reason* is one stable word for the kind of failure (`gn2pg.run_log.reason`),
//! what alerting and the SQL side test instead of message text; the *SQLSTATE* is what the
//! caller of a SQL function gets (and `gn2pg.run_log.sqlstate`). Messages follow one
//! convention: `gn2pg: ` first when raised, then `source "<name>": ` when the error concerns a
//! source, then the cause in lowercase. Stored texts (`run_log.error`) leave out `gn2pg: `.
//!
//! [`Reason`] and [`SqlState`] are plain data, so the source layer (`crate::source`, free of
//! PostgreSQL) classifies its own errors. Every ERROR and WARNING of gn2pg goes through one
//! function (`report`): [`Error::raise`], [`raise`] for the SQL functions' own checks, [`warn`].

use std::fmt;

use pgrx::pg_sys::panic::{CaughtError, ErrorReport};
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// The kind of a failure, as recorded in `gn2pg.run_log.reason` and documented in README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The source refused the credentials or the access (login refused, 401, 403, no
    /// permission on the Export module).
    Auth,
    /// The source could not be reached, answered an HTTP error, or broke the connection.
    Http,
    /// The source did not answer (or did not finish an answer) in time.
    Timeout,
    /// The source answered something that is not a valid export answer (HTML, malformed or cut
    /// JSON, paging it breaks).
    Protocol,
    /// An answer or a run exceeded a limit of gn2pg (`max_page_bytes` and what follows from it,
    /// pages per run, worker slots).
    Limit,
    /// The source's registration or the database is not as a run needs it (options, URL,
    /// allowed hosts, unknown export, an extension not updated, a disabled source).
    Config,
    /// Another run or transaction has the source.
    Busy,
    /// Stopped on request (gn2pg_cancel, the caller's cancel, shutdown).
    Cancelled,
    /// PostgreSQL refused a statement of the run (its own SQLSTATE is kept).
    Database,
    /// Something gn2pg does not expect (a worker that ended without a word).
    Internal,
}

impl Reason {
    pub const ALL: [Reason; 10] = [
        Reason::Auth,
        Reason::Http,
        Reason::Timeout,
        Reason::Protocol,
        Reason::Limit,
        Reason::Config,
        Reason::Busy,
        Reason::Cancelled,
        Reason::Database,
        Reason::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Auth => "auth",
            Reason::Http => "http",
            Reason::Timeout => "timeout",
            Reason::Protocol => "protocol",
            Reason::Limit => "limit",
            Reason::Config => "config",
            Reason::Busy => "busy",
            Reason::Cancelled => "cancelled",
            Reason::Database => "database",
            Reason::Internal => "internal",
        }
    }

    pub fn parse(word: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == word)
    }

    /// What to do about it, a full sentence for the HINT of a failed run.
    pub fn advice(self, source: &str) -> String {
        match self {
            Reason::Auth => format!(
                "Check the credentials of source \"{source}\" and its rights on the Export module; SELECT gn2pg_check_source('{source}') shows what the source answers."
            ),
            Reason::Http | Reason::Timeout => format!(
                "The source may be down or overloaded: SELECT gn2pg_check_source('{source}') shows what it answers now; the options timeout_ms and max_retries set how long gn2pg waits."
            ),
            Reason::Protocol => {
                "The source answered something that is not an export page: check its URL and export, or a proxy in front of it.".to_string()
            }
            Reason::Limit => {
                "See \"Limits on what a source may send\" in gn2pg's README; max_page_bytes (option or setting) raises the limits that follow from it.".to_string()
            }
            Reason::Config => format!(
                "The message says what to correct: the registration of source \"{source}\" (gn2pg_add_source), a setting, or this database."
            ),
            Reason::Busy => "Wait for the other run to end.".to_string(),
            Reason::Cancelled => "Rows loaded before the cancel are kept; the next run resumes from them.".to_string(),
            Reason::Database | Reason::Internal => "See the server log.".to_string(),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A SQLSTATE: five characters among 0-9 and A-Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlState([u8; 5]);

impl SqlState {
    pub const INVALID_AUTHORIZATION: SqlState = SqlState(*b"28000");
    pub const CONNECTION_EXCEPTION: SqlState = SqlState(*b"08000");
    pub const CANNOT_CONNECT: SqlState = SqlState(*b"08001");
    pub const CONNECTION_FAILURE: SqlState = SqlState(*b"08006");
    pub const DATA_EXCEPTION: SqlState = SqlState(*b"22000");
    pub const INVALID_PARAMETER_VALUE: SqlState = SqlState(*b"22023");
    pub const UNDEFINED_OBJECT: SqlState = SqlState(*b"42704");
    pub const DUPLICATE_OBJECT: SqlState = SqlState(*b"42710");
    pub const EXTERNAL_ROUTINE_EXCEPTION: SqlState = SqlState(*b"38000");
    pub const CONFIGURATION_LIMIT_EXCEEDED: SqlState = SqlState(*b"53400");
    pub const PROGRAM_LIMIT_EXCEEDED: SqlState = SqlState(*b"54000");
    pub const NOT_IN_PREREQUISITE_STATE: SqlState = SqlState(*b"55000");
    pub const QUERY_CANCELED: SqlState = SqlState(*b"57014");
    pub const WARNING: SqlState = SqlState(*b"01000");
    pub const INTERNAL_ERROR: SqlState = SqlState(*b"XX000");

    /// A SQLSTATE read back from `run_log.sqlstate`; None unless it has the form of one.
    pub fn parse(text: &str) -> Option<SqlState> {
        let b: [u8; 5] = text.as_bytes().try_into().ok()?;
        b.iter().all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()).then_some(SqlState(b))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits and capitals are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("XX000")
    }

    /// PostgreSQL's packed form (`MAKE_SQLSTATE`): six bits per character.
    fn packed(self) -> i32 {
        self.0.iter().enumerate().map(|(i, c)| (i32::from(*c - b'0') & 0x3F) << (6 * i)).sum()
    }

    pub fn code(self) -> PgSqlErrorCode {
        PgSqlErrorCode::from(self.packed())
    }

    /// The SQLSTATE of an error PostgreSQL raised (`PGUNSIXBIT`).
    pub fn of(code: PgSqlErrorCode) -> SqlState {
        let packed = code as i32;
        let mut b = [0u8; 5];
        for (i, c) in b.iter_mut().enumerate() {
            *c = ((packed >> (6 * i)) & 0x3F) as u8 + b'0';
        }
        SqlState(b)
    }
}

impl fmt::Display for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure of gn2pg, ready to be raised, warned about or recorded in the run log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub reason: Reason,
    pub sqlstate: SqlState,
    /// Short, lowercase: `source "<name>": <cause>` as stored in the run log, `gn2pg: …` when
    /// raised.
    pub message: String,
    /// Facts.
    pub detail: Option<String>,
    /// What to do, a full sentence.
    pub hint: Option<String>,
}

impl Error {
    pub fn new(reason: Reason, sqlstate: SqlState, message: impl Into<String>) -> Error {
        Error { reason, sqlstate, message: message.into(), detail: None, hint: None }
    }

    /// A statement of the engine that failed without a PostgreSQL error of its own.
    pub fn database(message: impl Into<String>) -> Error {
        Error::new(Reason::Database, SqlState::INTERNAL_ERROR, message)
    }

    pub fn limit(message: impl Into<String>) -> Error {
        Error::new(Reason::Limit, SqlState::PROGRAM_LIMIT_EXCEEDED, message)
    }

    pub fn internal(message: impl Into<String>) -> Error {
        Error::new(Reason::Internal, SqlState::INTERNAL_ERROR, message)
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Error {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Error {
        self.hint = Some(hint.into());
        self
    }

    /// The same error, its message preceded by where it happened (`page 3 could not be loaded`).
    pub fn context(mut self, what: impl fmt::Display) -> Error {
        self.message = format!("{what}: {}", self.message);
        self
    }

    /// An ERROR PostgreSQL raised inside a transaction of the engine, caught: its SQLSTATE is
    /// kept, its detail joins the message (the run log has one text column).
    pub fn caught(e: &CaughtError) -> Error {
        use CaughtError::*;
        let (PostgresError(r) | ErrorReport(r) | RustPanic { ereport: r, .. }) = e;
        let message = match r.detail() {
            Some(d) if !d.is_empty() => format!("{} ({d})", r.message()),
            _ => r.message().to_string(),
        };
        Error::new(Reason::Database, SqlState::of(r.sql_error_code()), message)
    }

    /// Raises this error as an ERROR of the current statement.
    pub fn raise(&self) -> ! {
        report(PgLogLevel::ERROR, self.sqlstate, &self.message, self.detail.as_deref(), self.hint.as_deref());
        unreachable!("ERROR does not return")
    }
}

/// The one place gn2pg reports to PostgreSQL (ERROR, WARNING).
fn report(level: PgLogLevel, sqlstate: SqlState, message: &str, detail: Option<&str>, hint: Option<&str>) {
    let mut r = ErrorReport::new(sqlstate.code(), message.to_string(), "gn2pg");
    if let Some(d) = detail {
        r = r.set_detail(d);
    }
    if let Some(h) = hint {
        r = r.set_hint(h);
    }
    r.report(level);
}

/// Raises an ERROR: what the SQL functions' own checks call (argument errors, refusals).
pub fn raise(code: PgSqlErrorCode, message: String, detail: Option<&str>, hint: Option<&str>) -> ! {
    report(PgLogLevel::ERROR, SqlState::of(code), &message, detail, hint);
    unreachable!("ERROR does not return")
}

/// Sends a WARNING (SQLSTATE 01000) to the client and the server log, and goes on.
pub fn warn(message: &str, detail: Option<&str>, hint: Option<&str>) {
    report(PgLogLevel::WARNING, SqlState::WARNING, message, detail, hint);
}

/// An SPI call of the engine that failed (its PostgreSQL errors come as [`Error::caught`]).
pub fn spi_err(e: pgrx::spi::Error) -> Error {
    Error::database(format!("internal SPI error: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_pack_as_postgresql_does() {
        for (s, code) in [
            (SqlState::INVALID_AUTHORIZATION, PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
            (SqlState::CANNOT_CONNECT, PgSqlErrorCode::ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION),
            (SqlState::CONNECTION_FAILURE, PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE),
            (SqlState::PROGRAM_LIMIT_EXCEEDED, PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED),
            (SqlState::QUERY_CANCELED, PgSqlErrorCode::ERRCODE_QUERY_CANCELED),
            (SqlState::INTERNAL_ERROR, PgSqlErrorCode::ERRCODE_INTERNAL_ERROR),
        ] {
            assert_eq!(s.code(), code, "{s}");
            assert_eq!(SqlState::of(code), s);
        }
        let busy = SqlState::parse("55P03").unwrap();
        assert_eq!((busy.code(), busy.as_str()), (PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE, "55P03"));
        assert_eq!(SqlState::parse("55p03"), None);
        assert_eq!(SqlState::parse("5500"), None);
    }

    #[test]
    fn reasons_read_back_from_their_words() {
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
        }
        assert_eq!(Reason::parse("oops"), None);
    }
}
