//! `gn2pg-fixture-source`: runs the fixture GeoNature source for pg_regress, scripts and manual
//! tests, or (`--bench`) measures how many pages per second it serves over HTTP.

use gn2pg_pg_test::fixture::{Faults, FixtureConfig, FixtureServer};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Instant;

const USAGE: &str = "usage: gn2pg-fixture-source [--listen 127.0.0.1:8765] [--rows 100000] [--seed 42] \
[--null-geometry-every N] [--cost-us-per-row US] [--cost-cpu] [--max-concurrent N] [--queue-timeout-ms MS] \
[--overload-status 503] [--slow-ms N] [--bench]";

struct Args {
    listen: String,
    rows: Option<u64>,
    seed: u64,
    null_geometry_every: u64,
    cost_us_per_row: f64,
    cost_cpu: bool,
    max_concurrent: u32,
    queue_timeout_ms: u64,
    overload_status: u16,
    /// Delay before each data page (a source slow enough to replace the library mid-run).
    slow_ms: u64,
    bench: bool,
}

fn parse_args() -> Result<Args, String> {
    let d = FixtureConfig::default();
    let mut a = Args {
        listen: "127.0.0.1:8765".into(),
        rows: None,
        seed: 42,
        null_geometry_every: 0,
        cost_us_per_row: d.cost_us_per_row,
        cost_cpu: d.cost_cpu,
        max_concurrent: d.max_concurrent,
        queue_timeout_ms: d.queue_timeout_ms,
        overload_status: d.overload_status,
        slow_ms: 0,
        bench: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        let number = |name: &str, v: String| v.parse::<u64>().map_err(|_| format!("{name}: not a number: {v}"));
        match flag.as_str() {
            "--listen" => a.listen = value("--listen")?,
            "--rows" => a.rows = Some(number("--rows", value("--rows")?)?),
            "--seed" => a.seed = number("--seed", value("--seed")?)?,
            "--null-geometry-every" => {
                a.null_geometry_every = number("--null-geometry-every", value("--null-geometry-every")?)?
            }
            "--cost-us-per-row" => {
                let v = value("--cost-us-per-row")?;
                a.cost_us_per_row = v
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .ok_or(format!("--cost-us-per-row: not a number: {v}"))?
            }
            "--cost-cpu" => a.cost_cpu = true,
            "--max-concurrent" => {
                a.max_concurrent = number("--max-concurrent", value("--max-concurrent")?)?.min(u32::MAX as u64) as u32
            }
            "--queue-timeout-ms" => a.queue_timeout_ms = number("--queue-timeout-ms", value("--queue-timeout-ms")?)?,
            "--overload-status" => {
                a.overload_status = number("--overload-status", value("--overload-status")?)?.min(599) as u16
            }
            "--slow-ms" => a.slow_ms = number("--slow-ms", value("--slow-ms")?)?,
            "--bench" => a.bench = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument: {other}")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("gn2pg-fixture-source: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let cfg = FixtureConfig {
        rows: args.rows.unwrap_or(if args.bench { 1_000_000 } else { 100_000 }),
        seed: args.seed,
        null_geometry_every: args.null_geometry_every,
        cost_us_per_row: args.cost_us_per_row,
        cost_cpu: args.cost_cpu,
        max_concurrent: args.max_concurrent,
        queue_timeout_ms: args.queue_timeout_ms,
        overload_status: args.overload_status,
        ..Default::default()
    };
    let rows = cfg.rows;
    let listen = if args.bench { "127.0.0.1:0".to_string() } else { args.listen };
    let server = match FixtureServer::start_on(&listen, cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gn2pg-fixture-source: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.slow_ms > 0 {
        server.faults(Faults { slow_ms: args.slow_ms, ..Default::default() });
    }
    if args.bench {
        return match bench(&server) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gn2pg-fixture-source: bench failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    println!("gn2pg-fixture-source listening on {} (rows={rows})", server.base_url());
    let _ = std::io::stdout().flush();
    loop {
        std::thread::park();
    }
}

/// Minimal keep-alive client: enough to time the server, not a general HTTP client.
struct Conn {
    r: BufReader<TcpStream>,
    cookie: String,
}

impl Conn {
    fn new(port: u16) -> std::io::Result<Conn> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        Ok(Conn { r: BufReader::new(s), cookie: String::new() })
    }

    fn request(&mut self, method: &str, path: &str, body: &str) -> Result<(u16, Vec<String>, Vec<u8>), String> {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\nContent-Type: application/json\r\nCookie: {}\r\nContent-Length: {}\r\n\r\n{body}",
            self.cookie,
            body.len()
        );
        self.r.get_mut().write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.r.read_line(&mut line).map_err(|e| e.to_string())?;
        let status: u16 = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("bad status line")?;
        let mut headers = Vec::new();
        let mut len = 0usize;
        loop {
            line.clear();
            self.r.read_line(&mut line).map_err(|e| e.to_string())?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().map_err(|_| "bad content-length")?;
                }
                headers.push(l.to_string());
            }
        }
        let mut body = vec![0; len];
        self.r.read_exact(&mut body).map_err(|e| e.to_string())?;
        Ok((status, headers, body))
    }
}

fn last_id(body: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(body).ok()?;
    let at = s.rfind("\"id_synthese\":")? + 14;
    s[at..].chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse().ok()
}

fn bench(server: &FixtureServer) -> Result<(), String> {
    let cfg = server.config().clone();
    let mut c = Conn::new(server.port()).map_err(|e| e.to_string())?;
    let login = format!("{{\"login\":\"{}\",\"password\":\"{}\"}}", cfg.login, cfg.password);
    let (status, headers, _) = c.request("POST", "/geonature/api/auth/login", &login)?;
    if status != 200 {
        return Err(format!("login answered {status}"));
    }
    c.cookie = headers
        .iter()
        .filter_map(|h| h.strip_prefix("Set-Cookie: "))
        .filter_map(|v| v.split(';').next())
        .collect::<Vec<_>>()
        .join("; ");
    println!("fixture bench: {} rows, 1000 rows per page, one client connection", cfg.rows);
    let pages = 200u64.min(cfg.rows / 1000).max(1);
    let scenarios: [(&str, u32, &str); 5] = [
        ("export 1 array  cd_nomenclature (login)", 1, ""),
        ("export 2 FC     cd_nomenclature (token)", 2, &cfg.token),
        ("export 3 array  with_metadata   (public)", 3, ""),
        ("export 5 FC     with_metadata   (public)", 5, ""),
        ("export 4 array  metadata_only   (public)", 4, ""),
    ];
    for (label, id, token) in scenarios {
        let tok = if token.is_empty() { String::new() } else { format!("&token={token}") };
        let base = format!("/geonature/api/{}/api/{id}", cfg.module_path);
        let modes: &[&str] = if id == 4 { &["offset"] } else { &["keyset", "offset"] };
        for mode in modes {
            let t = Instant::now();
            let mut bytes = 0usize;
            let mut next = 0i64;
            let n = if id == 4 { 200 } else { pages };
            for k in 0..n {
                let path = if *mode == "keyset" {
                    format!("{base}?limit=1000&offset=0&orderby=id_synthese&filter_n_up_id_synthese={next}{tok}")
                } else {
                    // Deep pages: offset paging must not get slower towards the end.
                    let (page, key) = if id == 4 { (0, "id_ca") } else { (cfg.rows / 1000 - n + k, "id_synthese") };
                    format!("{base}?limit=1000&offset={page}&orderby={key}{tok}")
                };
                let (status, _, body) = c.request("GET", &path, "")?;
                if status != 200 {
                    return Err(format!("{path} answered {status}"));
                }
                bytes += body.len();
                if *mode == "keyset" {
                    next = last_id(&body).ok_or("page without id_synthese")? + 1;
                }
            }
            let secs = t.elapsed().as_secs_f64();
            println!(
                "{label} {mode:>6}: {:>7.1} pages/s  {:>7.1} MB/s  ({n} pages, {:.1} KB/page)",
                n as f64 / secs,
                bytes as f64 / secs / 1e6,
                bytes as f64 / n as f64 / 1e3
            );
        }
    }
    Ok(())
}
