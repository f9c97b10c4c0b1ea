//! Test databases on the throw-away cluster started by `scripts/test-cluster.sh`.
//!
//! Every test gets its own database cloned from a template that already has PostGIS and gn2pg,
//! so tests run in parallel without seeing each other's sources, runs or rows, and everything
//! they do is committed for real (background workers only see committed data).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use postgres::error::DbError;
pub use postgres::{Client, NoTls, Row};

const TEMPLATE: &str = "gn2pg_template";

fn conn_string(db: &str) -> String {
    let host = std::env::var("GN2PG_TEST_PGHOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("GN2PG_TEST_PGPORT").unwrap_or_else(|_| "55432".into());
    format!("host={host} port={port} user=postgres dbname={db} connect_timeout=10")
}

/// A session on `db` that keeps every NOTICE and WARNING it receives, with SQLSTATE, DETAIL and
/// HINT.
pub fn connect_with_notices(db: &str) -> (Client, Arc<Mutex<Vec<DbError>>>) {
    let notices = Arc::new(Mutex::new(Vec::new()));
    let sink = notices.clone();
    let mut cfg: postgres::Config = conn_string(db).parse().unwrap();
    cfg.notice_callback(move |n| sink.lock().unwrap().push(n));
    let client = cfg.connect(NoTls).unwrap_or_else(|e| panic!("cannot connect to {}: {e}", conn_string(db)));
    (client, notices)
}

/// Connects to a database of the test cluster, with a clear message when it is not running.
pub fn connect(db: &str) -> Client {
    Client::connect(&conn_string(db), NoTls).unwrap_or_else(|e| {
        panic!(
            "cannot connect to the test cluster ({}): {e}\n\
             Start it with scripts/test-cluster.sh start, or run the whole suite with scripts/test.sh",
            conn_string(db)
        )
    })
}

/// Builds the template database once (CREATE EXTENSION there also creates the gn2pg roles, which
/// a test granting them before its first TestDb needs).
pub fn ensure_template() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let mut admin = connect("postgres");
        // Advisory lock: several test binaries may race to build the template.
        admin.execute("SELECT pg_advisory_lock(4242)", &[]).unwrap();
        let exists: bool = admin
            .query_one("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", &[&TEMPLATE])
            .unwrap()
            .get(0);
        if !exists {
            admin.batch_execute(&format!("CREATE DATABASE {TEMPLATE}")).unwrap();
            let mut t = connect(TEMPLATE);
            t.batch_execute("CREATE EXTENSION gn2pg CASCADE").unwrap();
            drop(t);
        }
        admin.execute("SELECT pg_advisory_unlock(4242)", &[]).unwrap();
    });
}

/// A database of its own, dropped at the end of the test.
pub struct TestDb {
    pub name: String,
    pub client: Client,
}

impl TestDb {
    pub fn new(prefix: &str) -> TestDb {
        ensure_template();
        Self::create(prefix, &format!("TEMPLATE {TEMPLATE}"))
    }

    /// A database without gn2pg (`options`: extra CREATE DATABASE options, e.g. an encoding).
    pub fn empty(prefix: &str, options: &str) -> TestDb {
        Self::create(prefix, options)
    }

    fn create(prefix: &str, options: &str) -> TestDb {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t_{}_{}_{}",
            prefix.to_ascii_lowercase().replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let mut admin = connect("postgres");
        // CREATE DATABASE ... TEMPLATE fails while another session is connected to the template.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match admin.batch_execute(&format!("CREATE DATABASE {name} {options}")) {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline && e.to_string().contains("being accessed") => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => panic!("CREATE DATABASE {name}: {e}"),
            }
        }
        let client = connect(&name);
        TestDb { name, client }
    }

    /// Another session on the same database.
    pub fn session(&self) -> Client {
        connect(&self.name)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::env::var_os("GN2PG_KEEP_TEST_DB").is_some() {
            eprintln!("keeping test database {}", self.name);
            return;
        }
        let mut admin = connect("postgres");
        let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

/// The full text of a PostgreSQL error (message, detail, hint), for assertions on messages.
pub fn error_text(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!(
            "{}{}{}",
            d.message(),
            d.detail().map(|s| format!("\nDETAIL: {s}")).unwrap_or_default(),
            d.hint().map(|s| format!("\nHINT: {s}")).unwrap_or_default()
        ),
        None => e.to_string(),
    }
}
