//! Settings: built-in defaults, then the configuration file (`/etc/gn2pg/dashboard.toml`, or
//! `--config` / `GN2PG_DASHBOARD_CONFIG`), then `GN2PG_DASHBOARD_*` environment variables, then
//! command-line flags; each layer overrides the one before.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub const DEFAULT_CONFIG: &str = "/etc/gn2pg/dashboard.toml";

pub const USAGE: &str = "usage: gn2pg-dashboard [--config FILE] [--database URL] [--listen ADDR:PORT]

Settings (file keys; environment variables GN2PG_DASHBOARD_<KEY in capitals>):
  database              connection of the dashboard's login role, e.g.
                        postgresql://gn2pg_dashboard@127.0.0.1:5432/sinp (required)
  database_password_file  file holding that role's password (instead of one in the URL)
  listen                address to listen on (default 127.0.0.1:8089)
  secure_cookies        auto (Secure when the request came over TLS: X-Forwarded-Proto from a
                        trusted proxy), always, never (default auto)
  trusted_proxies       comma-separated addresses of reverse proxies whose X-Forwarded-For and
                        X-Forwarded-Proto are believed (default none)
  idle_timeout_minutes  sign-out after this long without a request (default 30)
  session_hours         sign-out this long after sign-in, whatever happens (default 12)
  max_failures_per_account, max_failures_per_address, failure_window_minutes
                        sign-in throttling (defaults 5, 20, 15)
  geonature_sign_in     auto (when the database has UsersHub's utilisateurs.t_roles), off (default auto)
  statement_timeout_ms  limit of each page's queries (default 15000)
  pool_size             connections of the dashboard's login role (default 8)";

#[derive(Debug, Clone)]
pub struct Config {
    pub database: String,
    pub database_password_file: Option<PathBuf>,
    pub listen: SocketAddr,
    pub secure_cookies: SecureCookies,
    pub trusted_proxies: Vec<IpAddr>,
    pub idle_timeout: Duration,
    pub session_lifetime: Duration,
    pub max_failures_per_account: usize,
    pub max_failures_per_address: usize,
    pub failure_window: Duration,
    pub geonature_sign_in: bool,
    pub statement_timeout_ms: u64,
    pub pool_size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecureCookies {
    Auto,
    Always,
    Never,
}

/// The file's keys, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    database: Option<String>,
    database_password_file: Option<PathBuf>,
    listen: Option<String>,
    secure_cookies: Option<String>,
    trusted_proxies: Option<Vec<String>>,
    idle_timeout_minutes: Option<u64>,
    session_hours: Option<u64>,
    max_failures_per_account: Option<usize>,
    max_failures_per_address: Option<usize>,
    failure_window_minutes: Option<u64>,
    geonature_sign_in: Option<String>,
    statement_timeout_ms: Option<u64>,
    pool_size: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            database: String::new(),
            database_password_file: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8089)),
            secure_cookies: SecureCookies::Auto,
            trusted_proxies: Vec::new(),
            idle_timeout: Duration::from_secs(30 * 60),
            session_lifetime: Duration::from_secs(12 * 3600),
            max_failures_per_account: 5,
            max_failures_per_address: 20,
            failure_window: Duration::from_secs(15 * 60),
            geonature_sign_in: true,
            statement_timeout_ms: 15_000,
            pool_size: 8,
        }
    }
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| format!("listen: {s:?} is not an address:port such as 127.0.0.1:8089"))
}

fn parse_proxies<'a>(items: impl Iterator<Item = &'a str>) -> Result<Vec<IpAddr>, String> {
    items
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("trusted_proxies: {s:?} is not an IP address")))
        .collect()
}

fn parse_secure(s: &str) -> Result<SecureCookies, String> {
    match s.trim() {
        "auto" => Ok(SecureCookies::Auto),
        "always" => Ok(SecureCookies::Always),
        "never" => Ok(SecureCookies::Never),
        other => Err(format!("secure_cookies must be auto, always or never, not {other:?}")),
    }
}

fn parse_switch(key: &str, s: &str) -> Result<bool, String> {
    match s.trim() {
        "auto" | "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("{key} must be auto or off, not {other:?}")),
    }
}

fn number<T: std::str::FromStr>(key: &str, s: &str) -> Result<T, String> {
    s.trim().parse().map_err(|_| format!("{key}: {s:?} is not a number"))
}

impl Config {
    fn apply_file(&mut self, f: FileConfig) -> Result<(), String> {
        if let Some(v) = f.database {
            self.database = v;
        }
        if let Some(v) = f.database_password_file {
            self.database_password_file = Some(v);
        }
        if let Some(v) = f.listen {
            self.listen = parse_listen(&v)?;
        }
        if let Some(v) = f.secure_cookies {
            self.secure_cookies = parse_secure(&v)?;
        }
        if let Some(v) = f.trusted_proxies {
            self.trusted_proxies = parse_proxies(v.iter().map(String::as_str))?;
        }
        if let Some(v) = f.idle_timeout_minutes {
            self.idle_timeout = Duration::from_secs(v * 60);
        }
        if let Some(v) = f.session_hours {
            self.session_lifetime = Duration::from_secs(v * 3600);
        }
        if let Some(v) = f.max_failures_per_account {
            self.max_failures_per_account = v;
        }
        if let Some(v) = f.max_failures_per_address {
            self.max_failures_per_address = v;
        }
        if let Some(v) = f.failure_window_minutes {
            self.failure_window = Duration::from_secs(v * 60);
        }
        if let Some(v) = f.geonature_sign_in {
            self.geonature_sign_in = parse_switch("geonature_sign_in", &v)?;
        }
        if let Some(v) = f.statement_timeout_ms {
            self.statement_timeout_ms = v;
        }
        if let Some(v) = f.pool_size {
            self.pool_size = v;
        }
        Ok(())
    }

    fn apply(&mut self, key: &str, v: &str) -> Result<(), String> {
        match key {
            "database" => self.database = v.to_string(),
            "database_password_file" => self.database_password_file = Some(PathBuf::from(v)),
            "listen" => self.listen = parse_listen(v)?,
            "secure_cookies" => self.secure_cookies = parse_secure(v)?,
            "trusted_proxies" => self.trusted_proxies = parse_proxies(v.split(','))?,
            "idle_timeout_minutes" => self.idle_timeout = Duration::from_secs(number::<u64>(key, v)? * 60),
            "session_hours" => self.session_lifetime = Duration::from_secs(number::<u64>(key, v)? * 3600),
            "max_failures_per_account" => self.max_failures_per_account = number(key, v)?,
            "max_failures_per_address" => self.max_failures_per_address = number(key, v)?,
            "failure_window_minutes" => self.failure_window = Duration::from_secs(number::<u64>(key, v)? * 60),
            "geonature_sign_in" => self.geonature_sign_in = parse_switch(key, v)?,
            "statement_timeout_ms" => self.statement_timeout_ms = number(key, v)?,
            "pool_size" => self.pool_size = number(key, v)?,
            _ => return Err(format!("unknown setting {key}")),
        }
        Ok(())
    }

    /// Reads every layer. `args` are the command-line arguments without the program name;
    /// `env` looks a variable up.
    pub fn load(args: &[String], env: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
        let mut cli: Vec<(String, String)> = Vec::new();
        let mut file = env("GN2PG_DASHBOARD_CONFIG").map(PathBuf::from);
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().cloned().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--config" => file = Some(PathBuf::from(value()?)),
                "--database" => cli.push(("database".into(), value()?)),
                "--listen" => cli.push(("listen".into(), value()?)),
                "-h" | "--help" => return Err(String::new()),
                other => return Err(format!("unknown argument {other}")),
            }
        }
        let mut c = Config::default();
        let explicit = file.is_some();
        let path = file.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let f: FileConfig = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
                c.apply_file(f).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            Err(e) if explicit || e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("cannot read {}: {e}", path.display()))
            }
            Err(_) => {}
        }
        for key in [
            "database",
            "database_password_file",
            "listen",
            "secure_cookies",
            "trusted_proxies",
            "idle_timeout_minutes",
            "session_hours",
            "max_failures_per_account",
            "max_failures_per_address",
            "failure_window_minutes",
            "geonature_sign_in",
            "statement_timeout_ms",
            "pool_size",
        ] {
            if let Some(v) = env(&format!("GN2PG_DASHBOARD_{}", key.to_ascii_uppercase())) {
                c.apply(key, &v).map_err(|e| format!("GN2PG_DASHBOARD_{}: {e}", key.to_ascii_uppercase()))?;
            }
        }
        for (k, v) in cli {
            c.apply(&k, &v).map_err(|e| format!("--{k}: {e}"))?;
        }
        if c.database.trim().is_empty() {
            return Err(
                "no database: give --database URL, GN2PG_DASHBOARD_DATABASE or database in the configuration file"
                    .into(),
            );
        }
        if c.pool_size == 0 || c.max_failures_per_account == 0 || c.max_failures_per_address == 0 {
            return Err("pool_size and max_failures_* must be at least 1".into());
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An environment whose configuration file is empty.
    fn no_file_env(extra: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let empty = std::env::temp_dir().join(format!("gn2pg-dash-empty-{}.toml", std::process::id()));
        std::fs::write(&empty, "").unwrap();
        let mut vars: Vec<(String, String)> =
            vec![("GN2PG_DASHBOARD_CONFIG".into(), empty.to_string_lossy().to_string())];
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        move |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn layers_override_in_order() {
        let dir = std::env::temp_dir().join(format!("gn2pg-dash-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("d.toml");
        std::fs::write(
            &file,
            "database = \"postgresql://a@127.0.0.1/x\"\nlisten = \"127.0.0.1:9000\"\ntrusted_proxies = [\"127.0.0.1\"]\nsecure_cookies = \"always\"\n",
        )
        .unwrap();
        let path = file.to_string_lossy().to_string();
        let env = |k: &str| match k {
            "GN2PG_DASHBOARD_LISTEN" => Some("127.0.0.1:9100".to_string()),
            "GN2PG_DASHBOARD_IDLE_TIMEOUT_MINUTES" => Some("5".to_string()),
            _ => None,
        };
        let c =
            Config::load(&["--config".into(), path.clone(), "--listen".into(), "127.0.0.1:9200".into()], env).unwrap();
        assert_eq!(c.database, "postgresql://a@127.0.0.1/x");
        assert_eq!(c.listen.port(), 9200, "the command line wins over the environment and the file");
        assert_eq!(c.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.secure_cookies, SecureCookies::Always);
        assert_eq!(c.trusted_proxies, vec!["127.0.0.1".parse::<IpAddr>().unwrap()]);
        let c = Config::load(&["--config".into(), path], |_| None).unwrap();
        assert_eq!(c.listen.port(), 9000);
        std::fs::write(&file, "databse = \"x\"\n").unwrap();
        let e = Config::load(&["--config".into(), file.to_string_lossy().to_string()], |_| None).unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        assert!(Config::load(&[], no_file_env(&[])).unwrap_err().contains("no database"));
        let e =
            Config::load(&["--database".into(), "x".into(), "--listen".into(), "localhost".into()], no_file_env(&[]))
                .unwrap_err();
        assert!(e.contains("listen"), "{e}");
        let e =
            Config::load(&["--database".into(), "x".into()], no_file_env(&[("GN2PG_DASHBOARD_SECURE_COOKIES", "yes")]))
                .unwrap_err();
        assert!(e.contains("secure_cookies"), "{e}");
        let e = Config::load(&["--config".into(), "/nonexistent/x.toml".into()], |_| None).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
        let c = Config::load(&["--database".into(), "x".into()], no_file_env(&[])).unwrap();
        assert_eq!(c.listen, SocketAddr::from(([127, 0, 0, 1], 8089)), "loopback by default");
    }
}
