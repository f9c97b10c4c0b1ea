//! The dashboard in a real browser: Debian's headless Chromium, driven by playwright-core
//! (dashboard/e2e/scenarios.mjs), against the dashboard served in this process, the test
//! cluster (scripts/test-cluster.sh) and the fixture GeoNature source.
//!
//! Each test builds its own world (a database cloned from the gn2pg template, login roles with
//! passwords, a fixture server, a dashboard on 127.0.0.1:0), runs one scenario in a fresh
//! browser, then checks in PostgreSQL what the scenario did. Browsers run one at a time: the
//! machine has two cores. Screenshots go to $GN2PG_TEST_DIR.logs/screenshots (or
//! target/screenshots).

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gn2pg_pg_test::db::{connect, TestDb};
use gn2pg_pg_test::fixture::{Faults, FixtureConfig, FixtureServer};

const CHROMIUM: &str = "/usr/bin/chromium";

fn unique(prefix: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}_{}_{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst))
}

fn pg_port() -> String {
    std::env::var("GN2PG_TEST_PGPORT").unwrap_or_else(|_| "55432".into())
}

/// Login roles of one test (all with a password, checked over TCP: gn2pg_password_auth),
/// dropped at the end.
struct Roles {
    names: Vec<String>,
    db: String,
}

impl Roles {
    fn create(&mut self, name: &str, password: &str, extra: &str) {
        let mut admin = connect("postgres");
        admin
            .batch_execute(&format!(
                "CREATE ROLE {name} LOGIN PASSWORD '{password}' {extra} IN ROLE gn2pg_password_auth"
            ))
            .unwrap();
        self.names.push(name.to_string());
    }
}

impl Drop for Roles {
    fn drop(&mut self) {
        let mut admin = connect("postgres");
        let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db));
        for n in self.names.iter().rev() {
            let _ = admin.batch_execute(&format!("DROP ROLE IF EXISTS {n}"));
        }
    }
}

/// Everything one scenario runs against.
struct World {
    // Dropped in this order: the dashboard, then the database and the roles.
    runtime: Option<tokio::runtime::Runtime>,
    url: String,
    env: Vec<(String, String)>,
    fixture: FixtureServer,
    db: TestDb,
    _roles: Roles,
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

struct Options {
    fixture_rows: u64,
    /// Delay of each export page, so that a run lasts long enough to be watched.
    slow_ms: u64,
    account_failures: usize,
    address_failures: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { fixture_rows: 2000, slow_ms: 0, account_failures: 5, address_failures: 20 }
    }
}

fn world(o: Options) -> World {
    let fixture = FixtureServer::start(FixtureConfig { rows: o.fixture_rows, ..Default::default() }).unwrap();
    if o.slow_ms > 0 {
        fixture.faults(Faults { slow_ms: o.slow_ms, ..Default::default() });
    }
    let mut db = TestDb::new("dash");
    let mut roles = Roles { names: Vec::new(), db: db.name.clone() };
    let tag = unique("d");
    let (reader, operator, admin, auth) =
        (format!("{tag}_reader"), format!("{tag}_operator"), format!("{tag}_admin"), format!("{tag}_auth"));
    roles.create(&reader, "reader-pw", "");
    roles.create(&operator, "operator-pw", "");
    roles.create(&admin, "admin-pw", "");
    roles.create(&auth, "auth-pw", "NOINHERIT");
    let mut su = connect("postgres");
    su.batch_execute(&format!(
        "GRANT gn2pg_reader TO {reader}; GRANT gn2pg_operator TO {operator}; GRANT gn2pg_admin TO {admin};
         GRANT {reader}, {operator}, {admin} TO {auth};
         GRANT gn2pg_reader, gn2pg_operator, gn2pg_admin TO {auth};"
    ))
    .unwrap();
    let base = fixture.base_url();
    // Admins who are not superusers may only register hosts the superuser allowed.
    su.batch_execute(&format!("ALTER DATABASE {} SET gn2pg.allowed_hosts = '127.0.0.1:*'", db.name)).unwrap();
    db.client
        .batch_execute(&format!(
            "SELECT gn2pg_add_source('pne', '{base}', 1, 'login', 'harvester', 'secret',
                                     options => '{{\"organism\": \"Parc national des Écrins\", \"organism_id\": \"1234\", \"page_size\": 200}}');
             SELECT gn2pg_add_source('down', 'http://127.0.0.1:9/geonature', 3,
                                     options => '{{\"organism\": \"Association 3\", \"max_retries\": 0, \"connect_timeout_ms\": 2000}}');
             GRANT USAGE ON SCHEMA gn2pg TO {auth};
             GRANT EXECUTE ON FUNCTION gn2pg._geonature_sign_in(text) TO {auth};
             -- A minimal UsersHub: what GeoNature sign-in reads.
             CREATE SCHEMA utilisateurs;
             CREATE TABLE utilisateurs.t_roles (
                 groupe boolean NOT NULL DEFAULT false, id_role serial PRIMARY KEY, identifiant varchar(100),
                 nom_role varchar(50), prenom_role varchar(50), pass varchar(100), pass_plus text, active boolean DEFAULT true);"
        ))
        .unwrap();
    // pass_plus as UsersHub writes it (bcrypt, "$2b$").
    let hash = |pw: &str| bcrypt::hash_with_result(pw, 4).unwrap().format_for_version(bcrypt::Version::TwoB);
    for (login, pw, active) in [("jdupont", "gn-secret", true), ("mmartin", "gn-other", true), ("old", "gn-old", false)]
    {
        db.client
            .execute(
                "INSERT INTO utilisateurs.t_roles (identifiant, nom_role, pass_plus, active) VALUES ($1, $1, $2, $3)",
                &[&login, &hash(pw), &active],
            )
            .unwrap();
    }
    db.client
        .batch_execute(
            "SELECT gn2pg_map_geonature_account('jdupont', 'gn2pg_operator');
             SELECT gn2pg_map_geonature_account('old', 'gn2pg_admin');",
        )
        .unwrap();

    let cfg = gn2pg_dashboard::config::Config {
        database: format!("postgresql://{auth}:auth-pw@127.0.0.1:{}/{}", pg_port(), db.name),
        listen: "127.0.0.1:0".parse().unwrap(),
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        max_failures_per_account: o.account_failures,
        max_failures_per_address: o.address_failures,
        ..Default::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let r = gn2pg_dashboard::serve(cfg, listener, std::future::pending()).await;
        let _ = tx.send(r);
    });
    // The server answers once its start-up checks passed.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = rx.try_recv() {
            panic!("the dashboard stopped: {r:?}");
        }
        if std::net::TcpStream::connect(url.trim_start_matches("http://")).is_ok() && healthy(&url) {
            break;
        }
        assert!(Instant::now() < deadline, "the dashboard did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let env = vec![
        ("DASH_URL".into(), url.clone()),
        ("READER".into(), reader),
        ("OPERATOR".into(), operator),
        ("ADMIN".into(), admin),
        ("FIXTURE_URL".into(), base),
    ];
    World { runtime: Some(runtime), url, env, fixture, db, _roles: roles }
}

fn healthy(url: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(url.trim_start_matches("http://")) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

fn screenshots() -> PathBuf {
    let dir = match std::env::var("GN2PG_TEST_DIR") {
        Ok(d) => PathBuf::from(format!("{d}.logs/screenshots")),
        Err(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots"),
    };
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs one scenario of scenarios.mjs in a fresh headless Chromium; panics with its output if
/// it fails. One browser at a time.
fn browse(w: &World, scenario: &str) -> String {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    assert!(std::path::Path::new(CHROMIUM).exists(), "{CHROMIUM} is missing: scripts/setup.sh installs chromium");
    let e2e = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("e2e");
    assert!(e2e.join("node_modules/playwright-core").exists(), "run npm ci in dashboard/e2e (scripts/setup.sh does)");
    let started = Instant::now();
    let out = Command::new("node")
        .arg(e2e.join("scenarios.mjs"))
        .arg(scenario)
        .envs(w.env.iter().cloned())
        .env("SCREENSHOTS", screenshots())
        .env("CHROMIUM", CHROMIUM)
        .output()
        .expect("node runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("scenario {scenario} ({:.1} s):\n{text}", started.elapsed().as_secs_f64());
    assert!(out.status.success(), "scenario {scenario} failed:\n{text}");
    assert!(text.contains(&format!("scenario {scenario}: ok")), "{text}");
    text
}

fn runs_of(w: &mut World, source: &str) -> i64 {
    w.db.client.query_one("SELECT count(*) FROM gn2pg.run_log WHERE source = $1", &[&source]).unwrap().get(0)
}

#[test]
fn reader_sees_flows_but_cannot_harvest_even_with_a_forged_post() {
    let mut w = world(Options::default());
    let before = runs_of(&mut w, "pne");
    browse(&w, "reader");
    assert_eq!(runs_of(&mut w, "pne"), before, "the forged POST started no run");
}

#[test]
fn operator_harvests_now_and_watches_the_run_succeed() {
    let mut w = world(Options { fixture_rows: 6000, slow_ms: 250, ..Default::default() });
    // Some history: a chart of past runs, and the size the progress estimate starts from.
    w.db.client
        .batch_execute(
            "INSERT INTO gn2pg.run_log (id, source, mode, status, started_at, finished_at, pages_done, rows_received,
                                        rows_upserted, rows_unchanged, error)
             SELECT nextval('gn2pg.run_log_id_seq'), 'pne', CASE WHEN d % 4 = 0 THEN 'full' ELSE 'incremental' END,
                    CASE WHEN d = 9 THEN 'failed' ELSE 'success' END,
                    now() - make_interval(days => 13 - d), now() - make_interval(days => 13 - d, secs => -(5 + d * 3)),
                    d * 2, CASE WHEN d % 4 = 0 THEN 5800 ELSE 150 + 40 * d END, 40 * d, 0,
                    CASE WHEN d = 9 THEN 'source \"pne\": http://127.0.0.1/geonature/api/exports/api/1 answered HTTP 502: Bad Gateway' END
               FROM generate_series(1, 12) d ORDER BY d;
             SELECT gn2pg_harvest_async('down');",
        )
        .unwrap();
    browse(&w, "operator");
    let row =
        w.db.client
            .query_one(
                "SELECT status, rows_received, mode FROM gn2pg.run_log WHERE source = 'pne' ORDER BY id DESC LIMIT 1",
                &[],
            )
            .unwrap();
    assert_eq!((row.get::<_, String>(0).as_str(), row.get::<_, i64>(1)), ("success", 6000));
    assert_eq!(row.get::<_, String>(2), "full");
    let local: i64 =
        w.db.client.query_one("SELECT local_rows FROM gn2pg.flow_status WHERE source = 'pne'", &[]).unwrap().get(0);
    assert_eq!(local, 6000);
}

#[test]
fn a_failing_source_shows_its_alert_and_an_operator_acknowledges_it() {
    let mut w = world(Options::default());
    let r = w.db.client.query_one("SELECT gn2pg_harvest_async('down')", &[]).unwrap();
    let run: i64 = r.get(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while w
        .db
        .client
        .query_one("SELECT EXISTS (SELECT 1 FROM gn2pg.alert WHERE source = 'down' AND run_id = $1)", &[&run])
        .unwrap()
        .get::<_, bool>(0)
        .eq(&false)
    {
        assert!(Instant::now() < deadline, "the failed run raised no alert");
        std::thread::sleep(Duration::from_millis(200));
    }
    browse(&w, "failing");
    let by: Option<String> =
        w.db.client
            .query_one("SELECT acknowledged_by FROM gn2pg.alert WHERE source = 'down' AND resolved_at IS NULL", &[])
            .unwrap()
            .get(0);
    let operator = &w.env.iter().find(|(k, _)| k == "OPERATOR").unwrap().1;
    assert_eq!(by.as_deref(), Some(operator.as_str()), "acknowledged as the signed-in role");
}

#[test]
fn rows_a_run_rejected_show_on_the_flows_with_their_alert() {
    let mut w = world(Options::default());
    let base = w.fixture.base_url();
    // A second source of the same export: every uuid belongs to pne already.
    // One statement each: a run sees what committed before it.
    for sql in [
        "SELECT gn2pg_harvest('pne')".to_string(),
        format!("SELECT gn2pg_add_source('copy', '{base}', 1, 'login', 'harvester', 'secret', options => '{{\"page_size\": 500}}')"),
        "SELECT gn2pg_harvest('copy')".to_string(),
    ] {
        w.db.client.batch_execute(&sql).unwrap();
    }
    let rejected: i64 =
        w.db.client
            .query_one("SELECT last_rows_rejected FROM gn2pg.flow_status WHERE source = 'copy'", &[])
            .unwrap()
            .get(0);
    assert_eq!(rejected, 2000);
    browse(&w, "rejected");
}

#[test]
fn admin_tests_a_connection_with_a_wrong_password_then_saves_the_source() {
    let mut w = world(Options::default());
    browse(&w, "admin");
    let admin = w.env.iter().find(|(k, _)| k == "ADMIN").unwrap().1.clone();
    let s = w.db.client.query_one("SELECT schedule, mode, run_as FROM gn2pg.schedule WHERE source = 'partner'", &[]);
    // pg_cron jobs belong to the whole cluster: remove it before anything can fail.
    w.db.client.batch_execute("SELECT gn2pg_unschedule('partner')").unwrap();
    let s = s.unwrap();
    assert_eq!((s.get::<_, String>(0), s.get::<_, String>(1)), ("0 3 * * 1".to_string(), "full".to_string()));
    assert_eq!(s.get::<_, String>(2), admin, "the job runs as the signed-in role, not as the dashboard's");
    let r =
        w.db.client
            .query_one(
                "SELECT s.url, s.export_id, s.auth, s.options, k.login, k.password
               FROM gn2pg.source s JOIN gn2pg.source_secret k ON k.source_id = s.id WHERE s.name = 'partner'",
                &[],
            )
            .unwrap();
    assert_eq!(r.get::<_, String>(0), format!("{}/api", w.fixture.base_url()));
    assert_eq!((r.get::<_, i32>(1), r.get::<_, String>(2).as_str()), (1, "login"));
    let options: serde_json::Value = r.get(3);
    assert_eq!(options["organism"], "Association des naturalistes");
    assert_eq!(options["organism_id"], "98765");
    assert_eq!((r.get::<_, String>(4).as_str(), r.get::<_, String>(5).as_str()), ("harvester", "secret"));
    // The edit saved afterwards with an empty password field kept the password.
    assert_eq!(options["page_size"], 500);
}

#[test]
fn a_source_error_with_markup_is_shown_as_text() {
    let mut w = world(Options::default());
    w.db.client
        .batch_execute(
            "SELECT gn2pg_add_source('xss', 'http://127.0.0.1:9/geonature', 3,
                                     options => '{\"organism\": \"<b>Bold</b> & co\"}');
             INSERT INTO gn2pg.run_log (id, source, mode, status, finished_at, error)
             VALUES (nextval('gn2pg.run_log_id_seq'), 'xss', 'full', 'failed', now(),
                     'source \"xss\": answered <script>window.__xss = 1</script><img src=x onerror=\"window.__xss = 2\">');
             INSERT INTO gn2pg.run_error (run_id, source, id_data, uuid, item, error)
             SELECT currval('gn2pg.run_log_id_seq'), 'xss', k, NULL,
                    jsonb_build_object('id_synthese', k, 'nom_cite', '<script>window.__xss = 3</script>'),
                    'invalid timestamp in date_debut: \"<b>x</b>\"'
               FROM generate_series(1, 25) k;",
        )
        .unwrap();
    browse(&w, "xss");
}

#[test]
fn a_wrong_password_is_refused_then_throttled_per_account_and_per_address() {
    let w = world(Options { account_failures: 3, address_failures: 4, ..Default::default() });
    browse(&w, "signin");
}

#[test]
fn a_geonature_account_signs_in_with_its_usershub_password() {
    let w = world(Options::default());
    browse(&w, "geonature");
}

#[test]
fn sessions_are_strict_http_only_cookies_and_pages_carry_security_headers() {
    let w = world(Options::default());
    let out = browse(&w, "session");
    assert!(out.contains("csp default-src 'none'"), "{out}");
    assert!(w.url.starts_with("http://127.0.0.1:"), "servers in tests bind 127.0.0.1: {}", w.url);
}
