//! Login roles and sessions as those roles, for tests of permissions and attacks.
//!
//! Roles belong to the whole cluster, unlike test databases: every test uses role names of its
//! own (`unique`) and drops them at the end, even when it fails. The test cluster trusts every
//! connection from 127.0.0.1, so login roles need no password.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};

use crate::db::connect;

/// A name unique in the cluster (source names become pg_cron job names, shared by databases).
pub fn unique(prefix: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}_{}_{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst))
}

fn conn_string(db: &str, user: &str) -> String {
    let host = std::env::var("GN2PG_TEST_PGHOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("GN2PG_TEST_PGPORT").unwrap_or_else(|_| "55432".into());
    format!("host={host} port={port} user={user} dbname={db} connect_timeout=10")
}

/// A session as another role, keeping every NOTICE and WARNING it receives ("SEVERITY: message").
pub fn connect_as(db: &str, user: &str) -> (Client, Arc<Mutex<Vec<String>>>) {
    let notices = Arc::new(Mutex::new(Vec::new()));
    let sink = notices.clone();
    let mut cfg: postgres::Config = conn_string(db, user).parse().unwrap();
    cfg.notice_callback(move |n| sink.lock().unwrap().push(format!("{}: {}", n.severity(), n.message())));
    let client = cfg.connect(NoTls).unwrap_or_else(|e| panic!("connect as {user}: {e}"));
    (client, notices)
}

/// Login roles of one test, dropped at the end (declare it before the TestDb: it must be
/// dropped after the database, which holds their privileges).
#[derive(Default)]
pub struct Roles(Vec<String>);

impl Roles {
    /// Creates login role `<unique>_<what>`, member of `member_of` (a gn2pg role, or none).
    pub fn create(&mut self, what: &str, member_of: Option<&str>) -> String {
        let name = unique(&format!("r{what}"));
        let mut admin = connect("postgres");
        admin.batch_execute(&format!("CREATE ROLE {name} LOGIN")).unwrap();
        if let Some(m) = member_of {
            admin.batch_execute(&format!("GRANT {m} TO {name}")).unwrap();
        }
        self.0.push(name.clone());
        name
    }
}

impl Drop for Roles {
    fn drop(&mut self) {
        let mut admin = connect("postgres");
        for r in &self.0 {
            // Objects a role created in a database that is already gone no longer hold it.
            let _ = admin.batch_execute(&format!("DROP ROLE IF EXISTS {r}"));
        }
    }
}

/// `gn2pg.allowed_hosts` for the tests: 127.0.0.1 and localhost only, on any port (test servers
/// listen on ephemeral ports). Cluster-wide, the same value for every test, so setting it again
/// is harmless.
pub fn allow_loopback_hosts() {
    const WANT: &str = "127.0.0.1:*, localhost:*";
    let mut admin = connect("postgres");
    // PostgreSQL 15 accepts ALTER SYSTEM only for settings it knows: load the library first.
    admin.batch_execute("LOAD 'gn2pg'").unwrap();
    admin.batch_execute(&format!("ALTER SYSTEM SET gn2pg.allowed_hosts = '{WANT}'")).unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut fresh = connect("postgres");
        fresh.batch_execute("LOAD 'gn2pg'").unwrap();
        let seen: String = fresh.query_one("SHOW gn2pg.allowed_hosts", &[]).unwrap().get(0);
        if seen == WANT {
            return;
        }
        assert!(Instant::now() < deadline, "gn2pg.allowed_hosts not reloaded: {seen:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
