//! Side-by-side benchmark (issue 3): prints rows/s for
//!   (1) COPY of the same rows into a table of the same layout and indexes (PostgreSQL's limit),
//!   (2) gn2pg_harvest, full, of N fixture rows (FeatureCollection, 1000 per page),
//!   (3) gn2pg-client (GN2PG, from PyPI) with 4 threads on a smaller slice of the same source,
//! their ratios, the worker's memory, and an incremental run after 1 % of changes.
//! With `--destination`, also (4) the same full harvest into a GeoNature-shaped database with the
//! GeoNature destination enabled, (5) GeoNature's own cost of taking those rows (INSERT of the
//! same synthese rows, 1000 per statement, its triggers and checks included), and the
//! destination's cost of the incremental run.
//! Figures, not assertions: machines are noisy, so everything runs in one go and is compared.
//!
//! Usage (see bench/run.sh): gn2pg-bench [--rows 1000000] [--peer-rows 20000] [--workers 2] [--gn2pg-cli PATH]
//!                                       [--destination]

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gn2pg_pg_test::db::{connect, TestDb};
use gn2pg_pg_test::fixture::{FixtureConfig, FixtureServer, Mutation};
use gn2pg_pg_test::geonature;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

/// Memory of the harvest worker, sampled from /proc while it runs (kB).
#[derive(Default, Debug, Clone, Copy)]
struct Memory {
    first_anon_kb: u64,
    peak_anon_kb: u64,
    peak_hwm_kb: u64,
}

fn proc_kb(pid: i32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok())
}

fn sample_memory(db: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Memory> {
    std::thread::spawn(move || {
        let mut c = connect(&db);
        let mut m = Memory::default();
        // Bounded by the run: the caller raises `stop` when the harvest returns.
        while !stop.load(Ordering::SeqCst) {
            let pid: Option<i32> = c
                .query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'gn2pg harvest' LIMIT 1", &[])
                .ok()
                .flatten()
                .map(|r| r.get(0));
            if let Some(pid) = pid {
                if let Some(anon) = proc_kb(pid, "RssAnon:") {
                    if m.first_anon_kb == 0 {
                        m.first_anon_kb = anon;
                    }
                    m.peak_anon_kb = m.peak_anon_kb.max(anon);
                }
                if let Some(h) = proc_kb(pid, "VmHWM:") {
                    m.peak_hwm_kb = m.peak_hwm_kb.max(h);
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        m
    })
}

/// Every timed phase starts from a clean checkpoint, so that none pays for the dirty buffers
/// and the WAL of the phase before it.
fn checkpoint(db: &mut postgres::Client) {
    db.batch_execute("CHECKPOINT").unwrap();
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Runs a harvest and returns its run_log row and how long the call took.
fn timed_harvest(db: &mut postgres::Client, source: &str, mode: &str) -> (serde_json::Value, Duration) {
    checkpoint(db);
    let t = Instant::now();
    let run: String = db.query_one("SELECT gn2pg_harvest($1, $2)::text", &[&source, &mode]).unwrap().get(0);
    (serde_json::from_str(&run).unwrap(), t.elapsed())
}

/// The GeoNature destination's figures: a full harvest into a GeoNature-shaped database, its
/// incremental run, and GeoNature's own cost of taking the same rows.
struct DestinationBench {
    db: TestDb,
    full: Duration,
    rows: i64,
    incremental: Option<(serde_json::Value, Duration)>,
    floor: Option<Duration>,
}

impl DestinationBench {
    /// (4): the full harvest with the destination, every row written (policy default, so that
    /// no row is left pending and skipped).
    fn full(fx: &FixtureServer, token: &str, out: &dyn Fn(String)) -> DestinationBench {
        let mut db = TestDb::new("bench_dest");
        geonature::load(&mut db.client, geonature::LAMBERT_93);
        db.client
            .execute(
                "SELECT gn2pg_add_source('bench', $1, 2, token => $2,
                                         options => '{\"destination\": \"geonature\", \"nomenclature_unknown\": \"default\"}')",
                &[&fx.base_url(), &token],
            )
            .unwrap();
        let (run, full) = timed_harvest(&mut db.client, "bench", "full");
        let rows = run["synthese_inserted"].as_i64().unwrap_or(0);
        out(format!(
            "(4) gn2pg_harvest full, GeoNature destination: {} rows ({rows} into the synthese) in {:.1} s = {:.0} rows/s (load {} ms)",
            run["rows_upserted"],
            secs(full),
            rows as f64 / secs(full),
            run["load_ms"]
        ));
        DestinationBench { db, full, rows, incremental: None, floor: None }
    }

    /// The incremental run after the source changed, with the destination.
    fn incremental(&mut self, out: &dyn Fn(String)) {
        let (run, took) = timed_harvest(&mut self.db.client, "bench", "auto");
        out(format!(
            "incremental with the GeoNature destination: {} rows fetched, {} synthese rows updated, {} inserted, in {:.2} s",
            run["rows_received"],
            run["synthese_updated"],
            run["synthese_inserted"],
            secs(took)
        ));
        self.incremental = Some((run, took));
    }

    /// (5): GeoNature's own cost: the synthese rows written by (4), with the sensitivity the
    /// source sent (as gn2pg writes them), inserted again into the emptied synthese, 1000 rows
    /// per statement and transaction, as gn2pg's pages are.
    fn floor(&mut self, out: &dyn Fn(String)) {
        let c = &mut self.db.client;
        c.batch_execute(
            "CREATE TABLE public.floor_rows AS SELECT * FROM gn_synthese.synthese;
             UPDATE public.floor_rows f SET id_nomenclature_sensitivity = n.id_nomenclature
               FROM gn2pg.observation o, ref_nomenclatures.t_nomenclatures n, ref_nomenclatures.bib_nomenclatures_types t
              WHERE o.source = 'bench' AND o.id_data::text = f.entity_source_pk_value AND t.mnemonique = 'SENSIBILITE'
                AND n.id_type = t.id_type AND n.cd_nomenclature = o.item ->> 'niveau_sensibilite';
             CREATE INDEX ON public.floor_rows (id_synthese);
             TRUNCATE gn_synthese.synthese CASCADE;",
        )
        .unwrap();
        let (lo, hi): (i32, i32) = c
            .query_one("SELECT min(id_synthese), max(id_synthese) FROM public.floor_rows", &[])
            .map(|r| (r.get(0), r.get(1)))
            .unwrap();
        checkpoint(c);
        let t = Instant::now();
        let mut from = lo;
        // Bounded by the id range, 1000 ids per statement.
        while from <= hi {
            c.execute(
                "INSERT INTO gn_synthese.synthese SELECT * FROM public.floor_rows WHERE id_synthese BETWEEN $1 AND $2",
                &[&from, &(from + 999)],
            )
            .unwrap();
            from += 1000;
        }
        let took = t.elapsed();
        out(format!(
            "(5) GeoNature's own INSERT of the same {} synthese rows, 1000 per statement: {:.1} s = {:.0} rows/s",
            self.rows,
            secs(took),
            self.rows as f64 / secs(took)
        ));
        self.floor = Some(took);
    }
}

fn main() {
    let rows: u64 = arg("--rows").and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let peer_rows: u64 = arg("--peer-rows").and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let cli = arg("--gn2pg-cli");
    let out = |s: String| {
        println!("{s}");
        let _ = std::io::stdout().flush();
    };
    out(format!("gn2pg benchmark: {rows} rows, peer slice {peer_rows} rows"));

    let fx = FixtureServer::start(FixtureConfig { rows, ..Default::default() }).expect("fixture");
    let mut db = TestDb::new("bench");
    let token = FixtureConfig::default().token;
    db.client.execute("SELECT gn2pg_add_source('bench', $1, 2, token => $2)", &[&fx.base_url(), &token]).unwrap();

    // (2) gn2pg full harvest, FeatureCollection export, 1000 rows per page.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_memory(db.name.clone(), stop.clone());
    checkpoint(&mut db.client);
    let t = Instant::now();
    let run: String = db.client.query_one("SELECT gn2pg_harvest('bench', 'full')::text", &[]).unwrap().get(0);
    let full = t.elapsed();
    stop.store(true, Ordering::SeqCst);
    let mem = sampler.join().unwrap();
    let run: serde_json::Value = serde_json::from_str(&run).unwrap();
    let loaded = run["rows_upserted"].as_i64().unwrap_or(0);
    let gn2pg_rate = loaded as f64 / secs(full);
    out(format!(
        "(2) gn2pg_harvest full: {loaded} rows in {:.1} s = {gn2pg_rate:.0} rows/s (load {} ms, waiting for the source {} ms)",
        secs(full),
        run["load_ms"],
        run["source_wait_ms"]
    ));

    // (2b) the same full harvest loaded by several workers, into an emptied table.
    let workers: i32 = arg("--workers").and_then(|v| v.parse().ok()).unwrap_or(2);
    db.client.batch_execute("TRUNCATE gn2pg.observation").unwrap();
    db.client
        .execute(
            "SELECT gn2pg_add_source('bench', $1, 2, token => $2, options => jsonb_build_object('workers', $3::int))",
            &[&fx.base_url(), &token, &workers],
        )
        .unwrap();
    checkpoint(&mut db.client);
    let t = Instant::now();
    let prun: String = db.client.query_one("SELECT gn2pg_harvest('bench', 'full')::text", &[]).unwrap().get(0);
    let pfull = t.elapsed();
    let prun: serde_json::Value = serde_json::from_str(&prun).unwrap();
    let ploaded = prun["rows_upserted"].as_i64().unwrap_or(0);
    let par_rate = ploaded as f64 / secs(pfull);
    out(format!(
        "(2b) gn2pg_harvest full, workers => {workers}: {ploaded} rows in {:.1} s = {par_rate:.0} rows/s",
        secs(pfull)
    ));

    // (1) COPY of the same rows into the same layout.
    let file = format!("/tmp/gn2pg-bench-{}.copy", std::process::id());
    db.client.batch_execute(&format!("COPY (SELECT * FROM gn2pg.observation) TO '{file}'")).unwrap();
    db.client.batch_execute("CREATE TABLE public.copy_target (LIKE gn2pg.observation INCLUDING ALL)").unwrap();
    checkpoint(&mut db.client);
    let t = Instant::now();
    db.client.batch_execute(&format!("COPY public.copy_target FROM '{file}'")).unwrap();
    let copy = t.elapsed();
    let _ = std::fs::remove_file(&file);
    let copy_rate = loaded as f64 / secs(copy);
    out(format!("(1) COPY into the same layout: {loaded} rows in {:.1} s = {copy_rate:.0} rows/s", secs(copy)));

    // (4) The same full harvest with the GeoNature destination (before the source changes).
    let mut dest = std::env::args().any(|a| a == "--destination").then(|| DestinationBench::full(&fx, &token, &out));

    // Incremental run after 1 % of the rows changed at the source.
    let changed = (rows / 100).max(1);
    fx.mutate(Mutation { update: changed, ..Default::default() });
    checkpoint(&mut db.client);
    let t = Instant::now();
    let inc: String = db.client.query_one("SELECT gn2pg_harvest('bench', 'auto')::text", &[]).unwrap().get(0);
    let inc_time = t.elapsed();
    let inc: serde_json::Value = serde_json::from_str(&inc).unwrap();
    out(format!(
        "incremental after {changed} changed rows: mode {}, {} rows fetched, {} upserted, in {:.2} s",
        inc["mode"],
        inc["rows_received"],
        inc["rows_upserted"],
        secs(inc_time)
    ));
    if let Some(d) = dest.as_mut() {
        d.incremental(&out);
        d.floor(&out);
    }

    // (3) GN2PG on a slice of the same kind of source.
    let mut peer_rate = None;
    if let Some(cli) = cli {
        let pfx = FixtureServer::start(FixtureConfig { rows: peer_rows, ..Default::default() }).expect("fixture");
        let mut peer = TestDb::new("peer");
        let home = std::env::temp_dir().join(format!("gn2pg-peer-{}", std::process::id()));
        std::fs::create_dir_all(&home).unwrap();
        let cfg = home.join("peer.toml");
        let port = std::env::var("GN2PG_TEST_PGPORT").unwrap_or_else(|_| "55432".into());
        let d = FixtureConfig::default();
        std::fs::write(
            &cfg,
            format!(
                "[db]\ndb_host = \"127.0.0.1\"\ndb_port = {port}\ndb_user = \"postgres\"\ndb_password = \"unused\"\n\
                 db_name = \"{}\"\ndb_schema_import = \"gn2pg_import\"\n    [db.db_querystring]\n    sslmode = \"disable\"\n\n\
                 [[source]]\nname = \"bench\"\nuser_name = \"{}\"\nuser_password = \"{}\"\nurl = \"{}/\"\n\
                 data_export_id = 1\ndata_type = \"synthese_with_cd_nomenclature\"\n    [source.query_strings]\n    orderby = \"id_synthese\"\n\n\
                 [tuning]\nmax_page_length = 1000\nmax_retry = 2\nretry_delay = 1\nnb_threads = 4\n",
                peer.name,
                d.login,
                d.password,
                pfx.base_url()
            ),
        )
        .unwrap();
        let run_cli = |args: &[&str]| {
            std::process::Command::new(&cli).args(args).arg(&cfg).env("HOME", &home).output().expect("gn2pg_cli runs")
        };
        let init = run_cli(&["db", "--json-tables-create"]);
        if !init.status.success() {
            out(format!("(3) gn2pg_cli db init failed: {}", String::from_utf8_lossy(&init.stderr)));
        }
        checkpoint(&mut peer.client);
        let t = Instant::now();
        let dl = run_cli(&["-q", "download", "--full"]);
        let took = t.elapsed();
        let mut pc = connect(&peer.name);
        let n: i64 = pc.query_one("SELECT count(*) FROM gn2pg_import.data_json", &[]).map(|r| r.get(0)).unwrap_or(0);
        if n == 0 {
            out(format!(
                "(3) gn2pg_cli loaded nothing (exit {:?}): {}",
                dl.status.code(),
                String::from_utf8_lossy(&dl.stderr).lines().last().unwrap_or("")
            ));
        } else {
            let r = n as f64 / secs(took);
            peer_rate = Some(r);
            out(format!("(3) gn2pg-client, 4 threads: {n} rows in {:.1} s = {r:.0} rows/s", secs(took)));
        }
        let _ = std::fs::remove_dir_all(&home);
    } else {
        out("(3) skipped: pass --gn2pg-cli PATH (bench/run.sh installs gn2pg-client 1.10.1)".into());
    }

    out(String::new());
    out("| figure | value | target |".into());
    out("|---|---|---|".into());
    out(format!("| (2) / (1): gn2pg (one worker) vs COPY | {:.2} | >= 0.8 |", gn2pg_rate / copy_rate));
    out(format!("| (2b) / (1): gn2pg ({workers} workers) vs COPY | {:.2} | >= 0.8 |", par_rate / copy_rate));
    match peer_rate {
        Some(p) => {
            out(format!("| (2) / (3): gn2pg (one worker) vs GN2PG 4 threads | {:.1} | >= 30 |", gn2pg_rate / p));
            out(format!("| (2b) / (3): gn2pg ({workers} workers) vs GN2PG 4 threads | {:.1} | >= 30 |", par_rate / p));
        }
        None => out("| (2) / (3): gn2pg vs GN2PG 4 threads | n/a | >= 30 |".into()),
    }
    let growth_mb = mem.peak_anon_kb.saturating_sub(mem.first_anon_kb) as f64 / 1024.0;
    out(format!(
        "| worker private memory growth over the run | {growth_mb:.0} MB (first {:.0} MB, peak {:.0} MB; VmHWM {:.0} MB incl. shared buffers) | < 150 MB |",
        mem.first_anon_kb as f64 / 1024.0,
        mem.peak_anon_kb as f64 / 1024.0,
        mem.peak_hwm_kb as f64 / 1024.0
    ));
    out(format!(
        "| full / incremental (1 % changed) | {:.0}x ({:.1} s / {:.2} s) | >= 20x |",
        secs(full) / secs(inc_time),
        secs(full),
        secs(inc_time)
    ));
    if let Some(d) = dest {
        let dest_rate = d.rows as f64 / secs(d.full);
        out(format!(
            "| (4) / (2): gn2pg with the GeoNature destination vs without | {:.2} | >= 0.5 |",
            dest_rate / gn2pg_rate
        ));
        if let Some(floor) = d.floor {
            // A loader that cost nothing would still pay GeoNature's own INSERT: (4)/(2) cannot
            // exceed this.
            out(format!(
                "| (5) / (2): GeoNature's own INSERT alone vs gn2pg without the destination (the most (4) / (2) can be) | {:.2} | |",
                d.rows as f64 / secs(floor) / gn2pg_rate
            ));
            // What the destination adds to a full run, and how much of it is GeoNature's own.
            let added = secs(d.full) - secs(full);
            out(format!(
                "| destination time of the full run: GeoNature's own (5) / all | {:.0} % ({:.1} s of {:.1} s) | |",
                100.0 * secs(floor) / added,
                secs(floor),
                added
            ));
        }
        if let Some((inc, took)) = &d.incremental {
            let changed =
                inc["synthese_updated"].as_i64().unwrap_or(0) + inc["synthese_inserted"].as_i64().unwrap_or(0);
            let per_row_full = (secs(d.full) - secs(full)) / d.rows.max(1) as f64;
            let per_row_inc = (secs(*took) - secs(inc_time)) / changed.max(1) as f64;
            out(format!(
                "| destination cost per synthese row written: incremental / full | {:.2} ({:.2} s for {changed} rows / {:.1} s for {} rows) | ~1 (proportional) |",
                per_row_inc / per_row_full,
                secs(*took) - secs(inc_time),
                secs(d.full) - secs(full),
                d.rows
            ));
        }
    }
}
