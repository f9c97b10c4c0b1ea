//! PostgreSQL access. The dashboard connects as its own login role (the *authenticator*,
//! NOINHERIT: it holds no privilege itself). Every request runs in one transaction that starts
//! with `SET LOCAL ROLE <signed-in role>`, so PostgreSQL's own privileges decide what the person
//! may see and do, and the role ends with the transaction: a pooled connection never carries a
//! role from one request to the next. A transaction dropped without COMMIT or ROLLBACK (a
//! handler that failed half-way) takes its connection out of the pool for good.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use crate::config::Config;
use crate::session::{random_token, Account};

pub struct Db {
    pool: Pool,
    pg: tokio_postgres::Config,
    statement_timeout_ms: u64,
}

/// What the role in effect may do, by gn2pg role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Level {
    pub reader: bool,
    pub operator: bool,
    pub admin: bool,
}

/// Why a request's transaction could not start or a query failed.
#[derive(Debug)]
pub enum DbError {
    /// The account may no longer use the dashboard (role or mapping removed, account disabled).
    NoAccess(String),
    /// PostgreSQL refused a statement: its message is for the person (permission denied, an
    /// invalid argument of a gn2pg function...).
    Refused { message: String, detail: Option<String>, hint: Option<String>, code: String },
    /// The database cannot be reached or the pool is exhausted.
    Unavailable(String),
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> DbError {
        match e.as_db_error() {
            Some(d) => DbError::Refused {
                message: d.message().to_string(),
                detail: d.detail().map(str::to_string),
                hint: d.hint().map(str::to_string),
                code: d.code().code().to_string(),
            },
            None => DbError::Unavailable(e.to_string()),
        }
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> DbError {
        DbError::Unavailable(e.to_string())
    }
}

/// A client error with PostgreSQL's own message ("db error" alone says nothing).
pub fn pg_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => match d.hint() {
            Some(h) => format!("{} (hint: {h})", d.message()),
            None => d.message().to_string(),
        },
        None => e.to_string(),
    }
}

/// `"name"` with inner quotes doubled: an identifier in SQL text.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Outcome of checking a password against the server.
#[derive(Debug, PartialEq, Eq)]
pub enum PasswordCheck {
    Accepted,
    Refused,
}

impl Db {
    pub fn new(cfg: &Config) -> Result<Db, String> {
        let mut pg: tokio_postgres::Config =
            cfg.database.parse().map_err(|e| format!("database: not a connection URL or string: {e}"))?;
        if let Some(path) = &cfg.database_password_file {
            let pw = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            pg.password(pw.trim_end_matches(['\n', '\r']));
        }
        if pg.get_user().is_none() {
            return Err("database: the URL names no user (the dashboard's login role, e.g. gn2pg_dashboard)".into());
        }
        pg.application_name("gn2pg-dashboard");
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Duration::from_secs(10));
        }
        let mgr = Manager::from_config(pg.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(mgr)
            .max_size(cfg.pool_size)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| format!("connection pool: {e}"))?;
        Ok(Db { pool, pg, statement_timeout_ms: cfg.statement_timeout_ms })
    }

    /// A connection of the dashboard's own role, outside any signed-in person's role.
    pub async fn own(&self) -> Result<Object, DbError> {
        Ok(self.pool.get().await?)
    }

    /// The login role the dashboard connects as.
    pub fn authenticator(&self) -> &str {
        self.pg.get_user().unwrap_or("")
    }

    /// Checks a login and password with a short connection of its own, made like the
    /// dashboard's (same server, database and transport), then closed.
    pub async fn check_password(&self, user: &str, password: &str) -> Result<PasswordCheck, String> {
        let mut c = self.pg.clone();
        c.user(user);
        c.password(password);
        c.application_name("gn2pg-dashboard sign-in");
        match c.connect(NoTls).await {
            Ok((client, conn)) => {
                drop(client);
                // Sends Terminate and ends once the server closed the connection.
                let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                Ok(PasswordCheck::Accepted)
            }
            Err(e) => match e.code() {
                Some(c) if *c == SqlState::INVALID_PASSWORD || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
                    Ok(PasswordCheck::Refused)
                }
                _ => Err(pg_text(&e)),
            },
        }
    }

    /// Whether the server would accept any password for `user` (a `trust` line in pg_hba.conf):
    /// such an account cannot be verified, so it cannot sign in.
    pub async fn accepts_any_password(&self, user: &str) -> Result<bool, String> {
        Ok(self.check_password(user, &random_token()).await? == PasswordCheck::Accepted)
    }

    /// Starts the transaction of one request, acting as the signed-in account. `write`: the
    /// request may change something (else the transaction is READ ONLY).
    pub async fn begin(&self, account: &Account, write: bool) -> Result<(UserTx, Level), DbError> {
        let client = self.pool.get().await?;
        let mut tx = UserTx { client: Some(client), open: true };
        tx.batch(if write { "BEGIN" } else { "BEGIN READ ONLY" }).await?;
        match account {
            Account::Postgres { role } => {
                tx.batch(&format!("SET LOCAL ROLE {}", quote_ident(role))).await.map_err(|e| match e {
                    DbError::Refused { message, .. } => DbError::NoAccess(format!(
                        "{message}: the dashboard's role {} may no longer act as {role}",
                        self.authenticator()
                    )),
                    other => other,
                })?;
            }
            Account::GeoNature { login } => {
                let row = tx.opt("SELECT role, active FROM gn2pg._geonature_sign_in($1)", &[login]).await?;
                let role: String = match row {
                    Some(r) if r.get::<_, bool>(1) => r.get(0),
                    Some(_) => return Err(DbError::NoAccess("this GeoNature account is disabled".into())),
                    None => {
                        return Err(DbError::NoAccess("this GeoNature account no longer has dashboard access".into()))
                    }
                };
                tx.batch(&format!("SET LOCAL ROLE {}", quote_ident(&role))).await?;
                tx.opt("SELECT pg_catalog.set_config('gn2pg_dashboard.account', $1, true)", &[login]).await?;
            }
        }
        tx.batch(&format!("SET LOCAL statement_timeout = {}", self.statement_timeout_ms)).await?;
        let r = tx
            .one(
                "SELECT pg_catalog.pg_has_role('gn2pg_reader', 'USAGE'), pg_catalog.pg_has_role('gn2pg_operator', 'USAGE'),
                        pg_catalog.pg_has_role('gn2pg_admin', 'USAGE')",
                &[],
            )
            .await?;
        let level = Level { reader: r.get(0), operator: r.get(1), admin: r.get(2) };
        if !level.reader {
            tx.rollback().await;
            return Err(DbError::NoAccess("this account no longer has the role gn2pg_reader".into()));
        }
        Ok((tx, level))
    }
}

/// One request's transaction, as the signed-in account.
pub struct UserTx {
    client: Option<Object>,
    open: bool,
}

impl UserTx {
    fn client(&self) -> &Object {
        self.client.as_ref().expect("the client is held until the transaction ends")
    }

    async fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        Ok(self.client().batch_execute(sql).await?)
    }

    pub async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, DbError> {
        let st = self.client().prepare_cached(sql).await?;
        Ok(self.client().query(&st, params).await?)
    }

    pub async fn one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, DbError> {
        let st = self.client().prepare_cached(sql).await?;
        Ok(self.client().query_one(&st, params).await?)
    }

    pub async fn opt(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, DbError> {
        let st = self.client().prepare_cached(sql).await?;
        Ok(self.client().query_opt(&st, params).await?)
    }

    pub async fn commit(mut self) -> Result<(), DbError> {
        let r = self.batch("COMMIT").await;
        self.open = r.is_err();
        r
    }

    pub async fn rollback(mut self) {
        self.open = self.batch("ROLLBACK").await.is_err();
    }
}

impl Drop for UserTx {
    fn drop(&mut self) {
        if self.open {
            if let Some(c) = self.client.take() {
                // Never hand a connection in an unknown transaction state back to the pool.
                drop(Object::take(c));
            }
        }
    }
}
