//! HTTP side of a source: one `reqwest` blocking client per run, login with a cookie jar,
//! Export module discovery, page fetches with retries, and the deletion log.
//!
//! Backend rules this file follows (docs/pgrx-notes.md §4): the client is built with every signal
//! blocked so that reqwest's runtime threads never run PostgreSQL's handlers; bodies are read in
//! chunks with a cancellation check between chunks; retry waits go through the host, which
//! sleeps on the backend latch. Nothing here may call PostgreSQL: reqwest threads must not,
//! and this module is unit-tested without a database.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use reqwest::blocking::{Client, Response};
use reqwest::cookie::{CookieStore, Jar};
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE, DATE, LOCATION, RETRY_AFTER};
use serde::Deserialize;
use url::Url;

use super::config::{Auth, SourceConfig};
use super::error::{redact_url, Scrubber, SourceError};
use super::page::{item_keys, PageLimits};

/// Answers that are not pages (login, module list) are far smaller than this.
const CONTROL_ANSWER_BYTES: usize = 1 << 20;
/// Error bodies are parsed for their message only up to this size; beyond, an excerpt is shown.
const ERROR_BODY_BYTES: usize = 64 << 10;
/// One answer must have ended within this many times the timeout of one wait (`timeout_ms`), so
/// that a source trickling bytes forever cannot hold a worker.
const ANSWER_TIMEOUTS: u32 = 10;
/// Deleted keys one incremental run takes from `/synthese/log` (80 MB of keys): more in one
/// window is a configuration problem, and a full run reconciles deletions anyway.
const MAX_DELETIONS: usize = 10_000_000;

/// What only the caller (a backend or a test) can do.
pub trait Host {
    /// Returns `Err(Cancelled)` when the run must stop now.
    fn check_interrupts(&self) -> Result<(), SourceError>;
    /// Waits, waking early (with `Err(Cancelled)`) if the run is cancelled.
    fn sleep(&self, d: Duration) -> Result<(), SourceError>;
}

/// Transport limits, from GUCs overridden by source options.
#[derive(Debug, Clone)]
pub struct Limits {
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub max_retries: u32,
    pub max_page_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
            max_retries: 5,
            max_page_bytes: 64 << 20,
        }
    }
}

/// Transport counters, copied into `gn2pg.run_log`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub requests: u64,
    pub retries: u64,
    pub bytes: u64,
}

pub const USER_AGENT: &str = concat!("gn2pg/", env!("CARGO_PKG_VERSION"), " (PostgreSQL extension)");

/// Runs `f` with every signal blocked in the calling thread, so threads spawned inside inherit
/// a full mask and PostgreSQL's handlers keep running on the backend thread only.
pub fn with_signals_blocked<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: plain POSIX calls on local sigset_t values; the old mask is always restored.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let r = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r
    }
}

/// Cheap to clone: clones share the connection pool and the session cookies, each keeps its
/// own counters (parallel streams sum them).
#[derive(Clone)]
pub struct SourceClient {
    cfg: SourceConfig,
    limits: Limits,
    http: Client,
    /// The session cookies (shared by clones): their values are secrets too.
    jar: Arc<Jar>,
    module_path: Option<String>,
    logged_in: bool,
    pub stats: Stats,
    /// HTTP `Date` of the latest answer (the source's clock, UTC; `source::clock`).
    pub last_date: Option<String>,
    jitter_state: u64,
}

#[derive(Deserialize)]
struct ModuleRow {
    module_code: Option<String>,
    module_path: Option<String>,
}

impl SourceClient {
    pub fn new(cfg: SourceConfig, limits: Limits) -> Result<SourceClient, SourceError> {
        let jar = Arc::new(Jar::default());
        // Trusted: webpki's roots, the system's CA store, and the source's own CA if it has one
        // (checked at registration). Certificates are always verified.
        let extra_roots = match &cfg.options.ca_certificate {
            Some(pem) => reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| SourceError::Config(format!("option ca_certificate: {e}")))?,
            None => vec![],
        };
        let http = with_signals_blocked(|| {
            extra_roots
                .into_iter()
                .fold(Client::builder(), |b, cert| b.add_root_certificate(cert))
                .connect_timeout(limits.connect_timeout)
                .timeout(limits.timeout)
                .cookie_provider(jar.clone())
                // A 302 to the front-end login page must be seen, not followed into HTML.
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .user_agent(USER_AGENT)
                .build()
        })
        .map_err(|e| SourceError::Config(format!("cannot build the HTTP client: {e}")))?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64);
        Ok(SourceClient {
            module_path: cfg.options.module_path.clone(),
            cfg,
            limits,
            http,
            jar,
            logged_in: false,
            stats: Stats::default(),
            last_date: None,
            jitter_state: seed | 1,
        })
    }

    /// Masks this source's password or token and the values of its session cookies, for any
    /// text about the source that gn2pg stores or sends (the server may echo them).
    pub fn scrubber(&self) -> Scrubber {
        let mut secrets: Vec<String> = match &self.cfg.auth {
            Auth::Login { password, .. } => vec![password.clone()],
            Auth::Token(t) => vec![t.clone()],
            Auth::Public => vec![],
        };
        if let Some(cookies) = self.jar.cookies(&self.cfg.api_root) {
            let cookies = cookies.to_str().unwrap_or_default();
            secrets.extend(cookies.split(';').filter_map(|c| c.split_once('=')).map(|(_, v)| v.trim().to_string()));
        }
        Scrubber::new(secrets.iter().map(String::as_str))
    }

    /// What a page of this source may hold (from `max_page_bytes`).
    pub fn page_limits(&self) -> PageLimits {
        PageLimits::new(self.limits.max_page_bytes)
    }

    /// Logs in (login sources) and finds the Export module prefix.
    pub fn prepare(&mut self, host: &dyn Host) -> Result<(), SourceError> {
        if matches!(self.cfg.auth, Auth::Login { .. }) {
            self.login(host)?;
        }
        if self.module_path.is_none() {
            let p = self.discover_module_path(host)?;
            self.module_path = Some(p);
        }
        Ok(())
    }

    pub fn login(&mut self, host: &dyn Host) -> Result<(), SourceError> {
        let Auth::Login { login, password } = self.cfg.auth.clone() else {
            return Ok(());
        };
        let url = self.cfg.endpoint("auth/login");
        let mut body = serde_json::json!({ "login": login, "password": password });
        if let Some(app) = self.cfg.options.id_application {
            body["id_application"] = app.into();
        }
        let body = body.to_string();
        self.with_retries(host, |c| {
            c.stats.requests += 1;
            let resp = c
                .http
                .post(url.clone())
                .header(ACCEPT, "application/json")
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
                .map_err(|e| transport_error(&url, e))?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            c.note_date(&headers);
            let text = c.read_body(&url, resp, host, c.control_bytes())?;
            match status {
                200 => Ok(()),
                429 | 500..=599 => Err(SourceError::Http {
                    url: redact_url(url.as_str()),
                    status,
                    detail: error_detail(&headers, &text),
                    retry_after: retry_after(&headers),
                }),
                404 => Err(SourceError::NotFound {
                    url: redact_url(url.as_str()),
                    detail: "no login endpoint here: is the URL the GeoNature root?".into(),
                }),
                _ => Err(SourceError::LoginRefused {
                    url: redact_url(url.as_str()),
                    status,
                    detail: error_detail(&headers, &text),
                }),
            }
        })?;
        self.logged_in = true;
        Ok(())
    }

    fn discover_module_path(&mut self, host: &dyn Host) -> Result<String, SourceError> {
        if self.logged_in {
            let url = self.cfg.endpoint("gn_commons/modules");
            let cap = self.control_bytes();
            let text = self.with_retries(host, |c| c.attempt_get(&url, host, cap))?;
            let rows: Vec<ModuleRow> = serde_json::from_str(&text).map_err(|e| SourceError::BadAnswer {
                url: redact_url(url.as_str()),
                cause: format!("module list is not a JSON array of modules: {e}"),
            })?;
            return rows
                .into_iter()
                .find(|m| m.module_code.as_deref() == Some("EXPORTS"))
                .and_then(|m| m.module_path)
                .map(|p| p.trim_matches('/').to_string())
                .filter(|p| !p.is_empty())
                .ok_or(SourceError::NoExportModule { url: redact_url(url.as_str()) });
        }
        // Token and public exports cannot list modules; the module row is public, and every
        // GeoNature since 2.11 mounts the module at /exports anyway.
        let url = self.cfg.endpoint("gn_commons/module/EXPORTS");
        let cap = self.control_bytes();
        match self.with_retries(host, |c| c.attempt_get(&url, host, cap)) {
            Ok(text) => Ok(serde_json::from_str::<ModuleRow>(&text)
                .ok()
                .and_then(|m| m.module_path)
                .map(|p| p.trim_matches('/').to_string())
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "exports".to_string())),
            Err(e @ (SourceError::Connect { .. } | SourceError::Timeout { .. } | SourceError::Cancelled(_))) => Err(e),
            Err(_) => Ok("exports".to_string()),
        }
    }

    /// GET of another path of the API (`gn_commons/config`, ...) with this client's session,
    /// limits and retries; the JSON body as received. Used by `probe`.
    pub fn get_api(&mut self, path: &str, host: &dyn Host) -> Result<String, SourceError> {
        let url = self.cfg.endpoint(path);
        self.get_json(&url, host)
    }

    /// The Export module prefix, once `prepare` found it.
    pub fn module_path(&self) -> Option<&str> {
        self.module_path.as_deref()
    }

    fn note_date(&mut self, headers: &HeaderMap) {
        self.last_date = headers.get(DATE).and_then(|v| v.to_str().ok()).map(str::to_string);
    }

    /// The source's clock (its HTTP `Date`), from the module row: a request that costs the
    /// source nothing, for runs whose setup made none. None when the server sends no `Date`.
    pub fn server_date(&mut self, host: &dyn Host) -> Result<Option<String>, SourceError> {
        let url = self.cfg.endpoint("gn_commons/module/EXPORTS");
        match self.get_json(&url, host) {
            Ok(_) => Ok(self.last_date.clone()),
            Err(e @ (SourceError::Connect { .. } | SourceError::Timeout { .. } | SourceError::Cancelled(_))) => Err(e),
            // Any answer is dated, even an error page.
            Err(_) => Ok(self.last_date.clone()),
        }
    }

    /// URL of the data API with `params` (credentials included, so never log it unredacted).
    pub fn export_url(&self, params: &[(String, String)]) -> Url {
        let path = self.module_path.as_deref().unwrap_or("exports");
        let mut url = self.cfg.endpoint(&format!("{path}/api/{}", self.cfg.export_id));
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in self.cfg.options.query.iter() {
                q.append_pair(k, v);
            }
            for (k, v) in params {
                q.append_pair(k, v);
            }
            if let Auth::Token(t) = &self.cfg.auth {
                q.append_pair("token", t);
            }
        }
        url
    }

    /// Fetches one page of the export; the body is returned as received, unparsed.
    pub fn fetch_export_page(&mut self, params: &[(String, String)], host: &dyn Host) -> Result<String, SourceError> {
        let url = self.export_url(params);
        match self.get_json(&url, host) {
            // A session that expired mid-run: log in again once, then give up.
            Err(SourceError::AuthRequired { .. }) if matches!(self.cfg.auth, Auth::Login { .. }) => {
                self.login(host)?;
                self.get_json(&url, host)
            }
            other => other,
        }
    }

    /// URL of another export of the same instance (the metadata export): same module and
    /// credentials, but without the data filters of `options.query`.
    pub fn other_export_url(&self, export_id: i32, params: &[(String, String)]) -> Url {
        let path = self.module_path.as_deref().unwrap_or("exports");
        let mut url = self.cfg.endpoint(&format!("{path}/api/{export_id}"));
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in params {
                q.append_pair(k, v);
            }
            if let Auth::Token(t) = &self.cfg.auth {
                q.append_pair("token", t);
            }
        }
        url
    }

    /// Fetches one page of another export of the same instance, like [`Self::fetch_export_page`].
    pub fn fetch_other_export_page(
        &mut self,
        export_id: i32,
        params: &[(String, String)],
        host: &dyn Host,
    ) -> Result<String, SourceError> {
        let url = self.other_export_url(export_id, params);
        match self.get_json(&url, host) {
            Err(SourceError::AuthRequired { .. }) if matches!(self.cfg.auth, Auth::Login { .. }) => {
                self.login(host)?;
                self.get_json(&url, host)
            }
            other => other,
        }
    }

    /// Ids deleted at the source since `since` (`/synthese/log`, login sources, GN >= 2.12).
    pub fn fetch_deletions(&mut self, since: &str, host: &dyn Host) -> Result<Vec<i64>, SourceError> {
        const LIMIT: usize = 1000;
        let mut ids = Vec::new();
        // Bounded: a log with more than 10 M deletions in one window is a configuration problem.
        for page in 1..=10_000u32 {
            let mut url = self.cfg.endpoint("synthese/log");
            url.query_pairs_mut()
                .append_pair("last_action", "D")
                .append_pair("meta_last_action_date", &format!("gte:{since}"))
                .append_pair("sort", "meta_last_action_date")
                .append_pair("limit", &LIMIT.to_string())
                .append_pair("page", &page.to_string());
            let text = match self.get_json(&url, host) {
                Err(SourceError::AuthRequired { .. }) => {
                    self.login(host)?;
                    self.get_json(&url, host)?
                }
                other => other?,
            };
            // Read like an export page: counted and bounded before anything is built.
            let (_, keys) = item_keys(&text, "id_synthese", &self.page_limits()).map_err(|cause| {
                SourceError::BadAnswer { url: redact_url(url.as_str()), cause: format!("deletion log: {cause}") }
            })?;
            let n = keys.len();
            if ids.len() + n > MAX_DELETIONS {
                return Err(SourceError::Paging(format!(
                    "the deletion log lists more than {MAX_DELETIONS} deletions since {since}: run a full harvest"
                )));
            }
            ids.try_reserve(n).map_err(|_| SourceError::Paging("out of memory for the deletion log".into()))?;
            ids.extend(keys.into_iter().flatten());
            if n < LIMIT {
                return Ok(ids);
            }
        }
        Err(SourceError::Paging("deletion log longer than 10,000 pages".into()))
    }

    /// GET with retries; returns a body known to be JSON-typed (parsing is the caller's job).
    fn get_json(&mut self, url: &Url, host: &dyn Host) -> Result<String, SourceError> {
        let max = self.limits.max_page_bytes;
        self.with_retries(host, |c| c.attempt_get(url, host, max))
    }

    /// The most a login or module list answer may hold.
    fn control_bytes(&self) -> usize {
        CONTROL_ANSWER_BYTES.min(self.limits.max_page_bytes)
    }

    fn attempt_get(&mut self, url: &Url, host: &dyn Host, max: usize) -> Result<String, SourceError> {
        host.check_interrupts()?;
        self.stats.requests += 1;
        let shown = redact_url(url.as_str());
        let resp = self
            .http
            .get(url.clone())
            .header(ACCEPT, "application/json")
            .send()
            .map_err(|e| transport_error(url, e))?;
        host.check_interrupts()?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        self.note_date(&headers);
        let text = self.read_body(url, resp, host, max)?;
        match status {
            200..=299 => {
                let ct = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                let looks_json = text.trim_start().starts_with(['{', '[']);
                if ct.contains("json") || (ct.is_empty() && looks_json) {
                    Ok(text)
                } else {
                    Err(SourceError::NotJson { url: shown, content_type: ct, snippet: text_snippet(&text) })
                }
            }
            301 | 302 | 303 | 307 | 308 => {
                let to = headers.get(LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("");
                if to.contains("login") {
                    Err(SourceError::AuthRequired { url: shown, status, detail: "redirected to the login page".into() })
                } else {
                    Err(SourceError::Http {
                        url: shown,
                        status,
                        detail: format!("unexpected redirect to {}", redact_url(to)),
                        retry_after: None,
                    })
                }
            }
            401 | 490 => Err(SourceError::AuthRequired { url: shown, status, detail: error_detail(&headers, &text) }),
            403 => Err(SourceError::Forbidden { url: shown, detail: error_detail(&headers, &text) }),
            404 => Err(SourceError::NotFound { url: shown, detail: error_detail(&headers, &text) }),
            _ => Err(SourceError::Http {
                url: shown,
                status,
                detail: error_detail(&headers, &text),
                retry_after: retry_after(&headers),
            }),
        }
    }

    /// The body, at most `max` bytes, in memory asked for fallibly and never more than `max`:
    /// a source announcing or sending more is refused at once. The whole answer must arrive
    /// within [`ANSWER_TIMEOUTS`] times the timeout of one wait.
    fn read_body(&mut self, url: &Url, mut resp: Response, host: &dyn Host, max: usize) -> Result<String, SourceError> {
        let too_large = |url: &Url| {
            if max == self.limits.max_page_bytes {
                SourceError::TooLarge { url: redact_url(url.as_str()), max }
            } else {
                SourceError::BadAnswer {
                    url: redact_url(url.as_str()),
                    cause: format!("the answer exceeds {max} bytes, far more than a login or module list answer"),
                }
            }
        };
        let out_of_memory = |url: &Url, n: usize| SourceError::BadAnswer {
            url: redact_url(url.as_str()),
            cause: format!("out of memory for an answer of {n} bytes"),
        };
        let announced = resp.content_length().unwrap_or(0);
        if announced > max as u64 {
            return Err(too_large(url));
        }
        let wait = self.limits.timeout;
        let deadline = std::time::Instant::now() + wait.saturating_mul(ANSWER_TIMEOUTS);
        let mut buf: Vec<u8> = Vec::new();
        buf.try_reserve_exact(announced as usize).map_err(|_| out_of_memory(url, announced as usize))?;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = match resp.read(&mut chunk) {
                Ok(n) => n,
                Err(e) => {
                    let cause = io_cause(&e);
                    self.stats.bytes += buf.len() as u64;
                    return Err(if e.kind() == std::io::ErrorKind::TimedOut || cause.contains("timed out") {
                        SourceError::Timeout { url: redact_url(url.as_str()), cause }
                    } else {
                        SourceError::Truncated {
                            url: redact_url(url.as_str()),
                            cause: format!("{cause} after {} bytes", buf.len()),
                        }
                    });
                }
            };
            if n == 0 {
                break;
            }
            if buf.len() + n > max {
                self.stats.bytes += buf.len() as u64;
                return Err(too_large(url));
            }
            if buf.capacity() - buf.len() < n {
                // Doubling, but never past `max`.
                let want = (2 * buf.capacity()).max(buf.len() + n).min(max);
                buf.try_reserve_exact(want - buf.len()).map_err(|_| out_of_memory(url, want))?;
            }
            buf.extend_from_slice(&chunk[..n]);
            host.check_interrupts()?;
            if std::time::Instant::now() > deadline {
                self.stats.bytes += buf.len() as u64;
                return Err(SourceError::Timeout {
                    url: redact_url(url.as_str()),
                    cause: format!(
                        "the answer did not end within {} s ({ANSWER_TIMEOUTS} times the timeout), {} bytes received",
                        wait.saturating_mul(ANSWER_TIMEOUTS).as_secs(),
                        buf.len()
                    ),
                });
            }
        }
        self.stats.bytes += buf.len() as u64;
        String::from_utf8(buf).map_err(|e| SourceError::BadAnswer {
            url: redact_url(url.as_str()),
            cause: format!("body is not UTF-8: {}", e.utf8_error()),
        })
    }

    /// Exponential backoff with jitter: 0.5 s, 1 s, 2 s... capped at 30 s, or Retry-After.
    fn with_retries<T>(
        &mut self,
        host: &dyn Host,
        mut attempt: impl FnMut(&mut Self) -> Result<T, SourceError>,
    ) -> Result<T, SourceError> {
        let mut tries = 0u32;
        loop {
            match attempt(self) {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && tries < self.limits.max_retries => {
                    tries += 1;
                    self.stats.retries += 1;
                    let base = Duration::from_millis(500u64.saturating_mul(1 << (tries - 1).min(10)));
                    let wait = e.retry_after().unwrap_or(base).min(Duration::from_secs(30));
                    host.sleep(self.jitter(wait))?;
                }
                Err(e) if tries > 0 => {
                    return Err(annotate_retries(e, tries));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn jitter(&mut self, d: Duration) -> Duration {
        // xorshift64: enough to de-synchronise many sources hitting one server.
        let mut x = self.jitter_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter_state = x;
        let factor = 0.5 + (x % 1000) as f64 / 1000.0; // 0.5 .. 1.5
        d.mul_f64(factor)
    }
}

/// Cancellation as seen from a helper thread: a flag that the backend thread raises.
#[derive(Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn raise(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Host for CancelFlag {
    fn check_interrupts(&self) -> Result<(), SourceError> {
        if self.0.load(Ordering::SeqCst) {
            Err(SourceError::Cancelled("run stopped".into()))
        } else {
            Ok(())
        }
    }

    fn sleep(&self, d: Duration) -> Result<(), SourceError> {
        let slice = Duration::from_millis(50);
        let mut left = d;
        while !left.is_zero() {
            self.check_interrupts()?;
            let s = left.min(slice);
            std::thread::sleep(s);
            left -= s;
        }
        self.check_interrupts()
    }
}

/// HTTP work on helper threads. The backend thread never blocks in a socket: it waits on a
/// channel in short slices and checks for cancellation in between, so a cancel takes effect
/// within a fraction of a second even while a source takes minutes to send its headers.
/// Helper threads get a fully blocked signal mask and never call PostgreSQL.
///
/// Each producer sends its results in order and may run ahead of the backend by the queue's
/// capacity: a stream fetches (and prepares) page N+1 while page N loads, even though the
/// request for N+1 needs what page N says (keyset paging). A single protocol step is a
/// producer that sends one result.
pub struct Pipeline<T> {
    tx: Option<SyncSender<T>>,
    rx: Receiver<T>,
    cancel: CancelFlag,
}

impl<T: Send + 'static> Pipeline<T> {
    /// Room for `capacity` finished items in total.
    pub fn new(capacity: usize) -> Pipeline<T> {
        let (tx, rx) = mpsc::sync_channel(capacity);
        Pipeline { tx: Some(tx), rx, cancel: CancelFlag::default() }
    }

    /// Starts a producer. It calls `emit` for each item, which blocks while the queue is full and
    /// returns false once the backend is gone (the producer should then stop).
    pub fn spawn(
        &mut self,
        producer: impl FnOnce(&CancelFlag, &dyn Fn(T) -> bool) + Send + 'static,
    ) -> Result<(), SourceError> {
        let tx = self.tx.clone().ok_or_else(|| SourceError::Config("the pipeline is closed".into()))?;
        let cancel = self.cancel.clone();
        with_signals_blocked(|| {
            std::thread::Builder::new().name("gn2pg-http".into()).spawn(move || {
                let emit = |item: T| tx.send(item).is_ok();
                producer(&cancel, &emit);
            })
        })
        .map_err(|e| SourceError::Config(format!("cannot start an HTTP thread: {e}")))?;
        Ok(())
    }

    /// The next item of any producer; None once every producer has ended. A cancellation seen
    /// through `host` stops the producers and returns at once.
    pub fn next(&mut self, host: &dyn Host) -> Result<Option<T>, SourceError> {
        // Only producers hold senders now: the channel disconnects when the last one ends.
        self.tx = None;
        loop {
            if let Err(e) = host.check_interrupts() {
                self.cancel.raise();
                return Err(e);
            }
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(v) => return Ok(Some(v)),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
            }
        }
    }
}

impl<T> Drop for Pipeline<T> {
    fn drop(&mut self) {
        // Producers stop at their next check; a blocked one is released when `rx` goes.
        self.cancel.raise();
    }
}

fn annotate_retries(e: SourceError, tries: u32) -> SourceError {
    match e {
        SourceError::Http { url, status, detail, retry_after } => {
            SourceError::Http { url, status, detail: format!("{detail} (after {tries} retries)"), retry_after }
        }
        SourceError::Connect { url, cause } => {
            SourceError::Connect { url, cause: format!("{cause} (after {tries} retries)") }
        }
        SourceError::Timeout { url, cause } => {
            SourceError::Timeout { url, cause: format!("{cause} (after {tries} retries)") }
        }
        SourceError::Truncated { url, cause } => {
            SourceError::Truncated { url, cause: format!("{cause} (after {tries} retries)") }
        }
        other => other,
    }
}

fn transport_error(url: &Url, e: reqwest::Error) -> SourceError {
    let shown = redact_url(url.as_str());
    let (timeout, connect, body) = (e.is_timeout(), e.is_connect(), e.is_body() || e.is_decode());
    let cause = error_chain(&e.without_url());
    if timeout {
        SourceError::Timeout { url: shown, cause }
    } else if connect {
        SourceError::Connect { url: shown, cause }
    } else if body {
        SourceError::Truncated { url: shown, cause }
    } else {
        SourceError::Connect { url: shown, cause }
    }
}

/// reqwest's top-level message is vague ("error sending request"); the cause is in the chain.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let m = s.to_string();
        if !parts.iter().any(|p| p.contains(&m)) {
            parts.push(m);
        }
        cur = s.source();
    }
    parts.join(": ")
}

fn io_cause(e: &std::io::Error) -> String {
    error_chain(e)
}

fn retry_after(h: &HeaderMap) -> Option<Duration> {
    h.get(RETRY_AFTER)?.to_str().ok()?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// GeoNature error bodies: werkzeug `{code,name,description}`, pypnusershub `{type,msg}`,
/// old export module `{message}`; anything else is shown as a short text excerpt.
fn error_detail(h: &HeaderMap, body: &str) -> String {
    // A serde_json::Value takes many times its text: only small bodies are parsed.
    let parsed = (body.len() <= ERROR_BODY_BYTES).then(|| serde_json::from_str::<serde_json::Value>(body).ok());
    if let Some(v) = parsed.flatten() {
        for k in ["description", "msg", "message", "name"] {
            if let Some(s) = v.get(k).and_then(|x| x.as_str()) {
                return s.to_string();
            }
        }
        if let Some(s) = v.as_str() {
            return s.to_string();
        }
    }
    let ct = h.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if ct.contains("html") || body.trim_start().starts_with('<') {
        return format!("HTML page: {}", text_snippet(body));
    }
    text_snippet(body)
}

/// A readable excerpt: the <title> of an HTML page, else the first 200 characters.
fn text_snippet(body: &str) -> String {
    let head = &body.as_bytes()[..body.len().min(ERROR_BODY_BYTES)];
    let lower = head.to_ascii_lowercase();
    let find = |pat: &[u8]| lower.windows(pat.len()).position(|w| w == pat);
    if let (Some(a), Some(b)) = (find(b"<title>"), find(b"</title>")) {
        if b > a + 7 {
            return String::from_utf8_lossy(&head[a + 7..b]).trim().to_string();
        }
    }
    let t: String = body.chars().filter(|c| !c.is_control() || *c == ' ').take(200).collect();
    if t.is_empty() {
        "(empty body)".into()
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::config::{api_root, SourceOptions};
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    /// A one-shot server answering each connection with the next canned response.
    fn serve(responses: Vec<String>) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}/geonature", l.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for r in responses {
                let (mut s, _) = l.accept().unwrap();
                let mut rd = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                rd.read_line(&mut line).unwrap();
                seen.push(line.trim().to_string());
                let mut len = 0usize;
                loop {
                    let mut h = String::new();
                    rd.read_line(&mut h).unwrap();
                    if h.to_ascii_lowercase().starts_with("content-length:") {
                        len = h[15..].trim().parse().unwrap();
                    }
                    if h == "\r\n" || h.is_empty() {
                        break;
                    }
                }
                let mut b = vec![0; len];
                std::io::Read::read_exact(&mut rd, &mut b).unwrap();
                s.write_all(r.as_bytes()).unwrap();
            }
            seen
        });
        (addr, h)
    }

    fn resp(status: &str, ct: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn client(url: &str, auth: Auth, retries: u32) -> SourceClient {
        let cfg = SourceConfig {
            name: "t".into(),
            api_root: api_root(url).unwrap(),
            export_id: 7,
            auth,
            options: SourceOptions { module_path: Some("exports".into()), ..Default::default() },
        };
        let limits = Limits {
            max_retries: retries,
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
            ..Default::default()
        };
        SourceClient::new(cfg, limits).unwrap()
    }

    struct NoSleep;
    impl Host for NoSleep {
        fn check_interrupts(&self) -> Result<(), SourceError> {
            Ok(())
        }
        fn sleep(&self, _: Duration) -> Result<(), SourceError> {
            Ok(())
        }
    }

    #[test]
    fn token_goes_in_query_and_never_in_errors() {
        let (url, h) = serve(vec![resp(
            "403 FORBIDDEN",
            "application/json",
            r#"{"code":403,"name":"Forbidden","description":"bad token"}"#,
        )]);
        let mut c = client(&url, Auth::Token("s3cr3t".into()), 0);
        let err = c.fetch_export_page(&[("limit".into(), "10".into())], &NoSleep).unwrap_err();
        let seen = h.join().unwrap();
        assert!(seen[0].starts_with("GET /geonature/api/exports/api/7?limit=10&token=s3cr3t "), "{seen:?}");
        let msg = err.to_string();
        assert!(msg.contains("bad token") && msg.contains("403"), "{msg}");
        assert!(!msg.contains("s3cr3t"), "{msg}");
    }

    #[test]
    fn retries_5xx_then_succeeds() {
        let ok = r#"{"items":[],"limit":10,"total":0,"total_filtered":0}"#;
        let (url, h) = serve(vec![
            resp("502 Bad Gateway", "text/html", "<html><title>502 Bad Gateway</title></html>"),
            resp("503 Service Unavailable", "text/html", "<html></html>"),
            resp("200 OK", "application/json", ok),
        ]);
        let mut c = client(&url, Auth::Public, 3);
        assert_eq!(c.fetch_export_page(&[], &NoSleep).unwrap(), ok);
        assert_eq!(c.stats.retries, 2);
        assert_eq!(c.stats.requests, 3);
        h.join().unwrap();
    }

    #[test]
    fn gives_up_after_max_retries_with_clear_error() {
        let page = resp("502 Bad Gateway", "text/html", "<html><title>502 Bad Gateway</title></html>");
        let (url, h) = serve(vec![page.clone(), page]);
        let mut c = client(&url, Auth::Public, 1);
        let msg = c.fetch_export_page(&[], &NoSleep).unwrap_err().to_string();
        assert!(
            msg.contains("HTTP 502") && msg.contains("502 Bad Gateway") && msg.contains("after 1 retries"),
            "{msg}"
        );
        h.join().unwrap();
    }

    #[test]
    fn html_200_is_an_error_not_data() {
        let (url, h) = serve(vec![resp("200 OK", "text/html", "<html><title>Connexion</title></html>")]);
        let mut c = client(&url, Auth::Public, 3);
        let err = c.fetch_export_page(&[], &NoSleep).unwrap_err();
        assert!(matches!(err, SourceError::NotJson { .. }), "{err}");
        assert!(err.to_string().contains("Connexion"));
        h.join().unwrap();
    }

    #[test]
    fn login_redirect_means_auth_required() {
        let r = "HTTP/1.1 302 FOUND\r\nLocation: http://h/geonature/#/login?next=x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string();
        let (url, h) = serve(vec![r]);
        let mut c = client(&url, Auth::Public, 3);
        let err = c.fetch_export_page(&[], &NoSleep).unwrap_err();
        assert!(matches!(err, SourceError::AuthRequired { .. }), "{err}");
        h.join().unwrap();
    }

    #[test]
    fn unreachable_host_is_a_connect_error() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut c = client(&format!("http://127.0.0.1:{port}/gn"), Auth::Public, 0);
        let err = c.fetch_export_page(&[], &NoSleep).unwrap_err();
        assert!(matches!(err, SourceError::Connect { .. }), "{err}");
        assert!(err.to_string().contains(&format!("127.0.0.1:{port}")));
    }

    #[test]
    fn bad_login_is_refused_without_echoing_the_password() {
        let (url, h) = serve(vec![resp(
            "401 UNAUTHORIZED",
            "application/json",
            r#"{"code":401,"name":"Unauthorized","description":"Invalid password"}"#,
        )]);
        let mut c = client(&url, Auth::Login { login: "u".into(), password: "pw-xyz".into() }, 3);
        let err = c.login(&NoSleep).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, SourceError::LoginRefused { status: 401, .. }), "{msg}");
        assert!(msg.contains("Invalid password") && !msg.contains("pw-xyz"), "{msg}");
        h.join().unwrap();
    }

    #[test]
    fn the_scrubber_masks_the_password_and_the_session_cookie_the_server_echoes() {
        let login = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nSet-Cookie: token=jwt-abc.def; Path=/\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".to_string();
        let echo = resp(
            "500 INTERNAL SERVER ERROR",
            "application/json",
            r#"{"description":"bad session jwt-abc.def for harvester/pw-xyz-123"}"#,
        );
        let (url, h) = serve(vec![login, echo]);
        let mut c = client(&url, Auth::Login { login: "harvester".into(), password: "pw-xyz-123".into() }, 0);
        c.login(&NoSleep).unwrap();
        let msg = c.fetch_export_page(&[], &NoSleep).unwrap_err().to_string();
        assert!(msg.contains("jwt-abc.def") && msg.contains("pw-xyz-123"), "the server echoed them: {msg}");
        let shown = c.scrubber().scrub(&msg);
        assert!(!shown.contains("jwt-abc.def") && !shown.contains("pw-xyz-123"), "{shown}");
        assert!(shown.contains("bad session"), "{shown}");
        h.join().unwrap();
    }

    #[test]
    fn pipelines_run_ahead_by_their_capacity_and_end_with_their_producers() {
        use std::sync::atomic::AtomicUsize;
        let made = Arc::new(AtomicUsize::new(0));
        let mut p: Pipeline<(usize, u32)> = Pipeline::new(2);
        for stream in 0..2 {
            let made = made.clone();
            p.spawn(move |_, emit| {
                // Bounded: three items per producer.
                for k in 0..3 {
                    made.fetch_add(1, Ordering::SeqCst);
                    if !emit((stream, k)) {
                        return;
                    }
                }
            })
            .unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        // Two queued, and one more per producer made but blocked in emit.
        assert!(made.load(Ordering::SeqCst) <= 4, "producers ran ahead by more than the capacity");
        let mut got = Vec::new();
        while let Some(item) = p.next(&NoSleep).unwrap() {
            got.push(item);
        }
        got.sort();
        assert_eq!(got, vec![(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]);
    }

    #[test]
    fn a_dropped_pipeline_releases_its_producers() {
        let (done_tx, done_rx) = mpsc::channel();
        {
            let mut p: Pipeline<u32> = Pipeline::new(1);
            p.spawn(move |flag, emit| {
                // Bounded: stops when emit fails or the flag is raised.
                for k in 0..1000 {
                    if flag.check_interrupts().is_err() || !emit(k) {
                        break;
                    }
                }
                let _ = done_tx.send(());
            })
            .unwrap();
            assert_eq!(p.next(&NoSleep).unwrap(), Some(0));
        }
        assert!(done_rx.recv_timeout(Duration::from_secs(5)).is_ok(), "the producer ended");
    }

    #[test]
    fn pipelines_return_results_and_stop_on_cancel() {
        let mut jobs: Pipeline<u32> = Pipeline::new(3);
        for i in 0..3 {
            jobs.spawn(move |_, emit| {
                emit(i * 10);
            })
            .unwrap();
        }
        let mut got: Vec<u32> = (0..3).map(|_| jobs.next(&NoSleep).unwrap().unwrap()).collect();
        got.sort();
        assert_eq!(got, vec![0, 10, 20]);
        assert_eq!(jobs.next(&NoSleep).unwrap(), None, "no producer left");

        // A producer stuck in a long wait is abandoned as soon as the host reports a cancel.
        struct Cancelled;
        impl Host for Cancelled {
            fn check_interrupts(&self) -> Result<(), SourceError> {
                Err(SourceError::Cancelled("test".into()))
            }
            fn sleep(&self, _: Duration) -> Result<(), SourceError> {
                Ok(())
            }
        }
        let mut jobs: Pipeline<u32> = Pipeline::new(1);
        let (seen_tx, seen_rx) = mpsc::channel();
        jobs.spawn(move |flag, emit| {
            let r = flag.sleep(Duration::from_secs(30));
            let _ = seen_tx.send(r.is_err());
            emit(0);
        })
        .unwrap();
        let t = std::time::Instant::now();
        assert!(matches!(jobs.next(&Cancelled), Err(SourceError::Cancelled(_))));
        assert!(seen_rx.recv_timeout(Duration::from_secs(2)).unwrap(), "the producer saw the cancel");
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn extra_query_and_reserved_order() {
        let mut c = client("http://127.0.0.1:1/gn", Auth::Public, 0);
        c.cfg.options.query.insert("cd_nom".into(), "4001".into());
        let u = c.export_url(&[("limit".into(), "5".into())]);
        assert_eq!(u.as_str(), "http://127.0.0.1:1/gn/api/exports/api/7?cd_nom=4001&limit=5");
    }
}
