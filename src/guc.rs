//! Server settings (`gn2pg.*`). All are SUSET: a superuser sets them in postgresql.conf or with
//! ALTER SYSTEM / ALTER DATABASE, and background workers (which do not inherit the caller's
//! session settings) pick them up. Per-source options override the transport ones.

use std::time::Duration;

use std::ffi::CString;

use pgrx::{pg_sys, GucContext, GucFlags, GucRegistry, GucSetting};

use crate::source::client::Limits;
use crate::source::config::SourceOptions;

static HTTP_CONNECT_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
static HTTP_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(60_000);
static MAX_RETRIES: GucSetting<i32> = GucSetting::<i32>::new(5);
static MAX_PAGE_BYTES: GucSetting<i32> = GucSetting::<i32>::new(64 << 20);
static INCREMENTAL_OVERLAP_S: GucSetting<i32> = GucSetting::<i32>::new(3600);
/// Geometries built in Rust on the versions the encoder was verified with; off: always PostGIS.
static FAST_GEOMETRY: GucSetting<bool> = GucSetting::<bool>::new(true);
/// Requests in flight at once against one host by the runs with `streams => 'auto'`.
static MAX_STREAMS_PER_HOST: GucSetting<i32> = GucSetting::<i32>::new(4);
/// Hosts that non-superusers may register (sources, webhooks). Empty: none.
static ALLOWED_HOSTS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
/// Webhook of sources without their own (`alert_webhook` of gn2pg_add_source). Empty: none.
static ALERT_WEBHOOK: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
static ALERT_WEBHOOK_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(5_000);
static ALERT_WEBHOOK_RETRIES: GucSetting<i32> = GucSetting::<i32>::new(2);
/// Minutes without a successful run after which a source is late. 0: never.
static STALE_AFTER_MIN: GucSetting<i32> = GucSetting::<i32>::new(2 * 24 * 60);
/// Harvest and part workers running at once in the cluster; -1: half of max_worker_processes.
static MAX_HARVEST_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(-1);

pub fn init() {
    GucRegistry::define_int_guc(
        c"gn2pg.http_connect_timeout_ms",
        c"Timeout for connecting to a source.",
        c"Per-source override: options.connect_timeout_ms.",
        &HTTP_CONNECT_TIMEOUT_MS,
        100,
        3_600_000,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"gn2pg.http_timeout_ms",
        c"Timeout for each wait on a source (response headers, then each body read).",
        c"Bounds how long a cancel can take while a source is silent. Per-source override: options.timeout_ms.",
        &HTTP_TIMEOUT_MS,
        100,
        3_600_000,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"gn2pg.max_retries",
        c"Retries of a request after a connection error, a timeout, HTTP 429 or 5xx.",
        c"Waits grow exponentially from 0.5 s (with jitter, capped at 30 s). Per-source override: options.max_retries.",
        &MAX_RETRIES,
        0,
        100,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"gn2pg.max_page_bytes",
        c"Largest accepted answer of a source, in bytes.",
        c"Protects the server's memory from a runaway answer: a worker spends at most a small multiple of it on a page, \
and the counts a page may hold follow from it. At most 256MB. Per-source override: options.max_page_bytes.",
        &MAX_PAGE_BYTES,
        1024,
        crate::source::page::MAX_PAGE_BYTES_CAP as i32,
        GucContext::Suset,
        GucFlags::UNIT_BYTE,
    );
    GucRegistry::define_bool_guc(
        c"gn2pg.fast_geometry",
        c"Build geometries as EWKB in gn2pg rather than with PostGIS's parsers.",
        c"Only on the PostgreSQL and PostGIS versions the encoder was verified with (PostgreSQL 15, PostGIS 3.3); \
off: PostGIS converts every geometry. gn2pg._geometry_selftest compares both on this server.",
        &FAST_GEOMETRY,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"gn2pg.incremental_overlap",
        c"Overlap of incremental windows: seconds subtracted from the latest source timestamp seen.",
        c"Covers source transactions that commit late with an earlier timestamp. Per-source override: options.overlap_seconds.",
        &INCREMENTAL_OVERLAP_S,
        0,
        30 * 86_400,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"gn2pg.max_streams_per_host",
        c"Most requests in flight at once against one source host, over every run of this database with streams 'auto'.",
        c"Runs pace their streams to the source within this budget and share it (see the README).",
        &MAX_STREAMS_PER_HOST,
        1,
        64,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"gn2pg.allowed_hosts",
        c"Hosts that non-superusers may register as source or webhook URLs (comma-separated).",
        c"'*' allows any host, '*.example.org' any sub-domain, otherwise exact host names or IP addresses. \
Empty (the default): only superusers may register URLs. Set it in postgresql.conf or with ALTER SYSTEM.",
        &ALLOWED_HOSTS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"gn2pg.alert_webhook",
        c"URL that receives alerts (JSON POST) for sources without their own alert_webhook.",
        c"Empty: alerts are only recorded in gn2pg.alert and sent with NOTIFY gn2pg_alert. Hidden from non-superusers.",
        &ALERT_WEBHOOK,
        GucContext::Suset,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_int_guc(
        c"gn2pg.alert_webhook_timeout_ms",
        c"Timeout of each alert webhook request.",
        c"",
        &ALERT_WEBHOOK_TIMEOUT_MS,
        100,
        600_000,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"gn2pg.alert_webhook_retries",
        c"Retries of an alert webhook request after a connection error, a timeout, HTTP 429 or 5xx.",
        c"Waits double from 1 s between attempts.",
        &ALERT_WEBHOOK_RETRIES,
        0,
        10,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"gn2pg.stale_after",
        c"A source without a successful run for this long is late (health 'late', alert 'stale').",
        c"0 disables. Per-source override: options.stale_after_hours.",
        &STALE_AFTER_MIN,
        0,
        i32::MAX / 2,
        GucContext::Suset,
        GucFlags::UNIT_MIN,
    );
    GucRegistry::define_int_guc(
        c"gn2pg.max_harvest_workers",
        c"Most gn2pg harvest workers (runs and their parallel parts) running at once in the cluster.",
        c"-1 (the default): half of max_worker_processes, leaving the rest to parallel query, pg_cron and others. \
A start beyond it is refused with an error; a parallel run that would exceed it loads its key ranges in one worker.",
        &MAX_HARVEST_WORKERS,
        -1,
        10_000,
        GucContext::Suset,
        GucFlags::default(),
    );
}

fn text(s: &GucSetting<Option<CString>>) -> String {
    s.get().map(|c| c.to_string_lossy().trim().to_string()).unwrap_or_default()
}

pub fn allowed_hosts() -> String {
    text(&ALLOWED_HOSTS)
}

pub fn alert_webhook() -> Option<String> {
    Some(text(&ALERT_WEBHOOK)).filter(|s| !s.is_empty())
}

pub fn fast_geometry() -> bool {
    FAST_GEOMETRY.get()
}

pub fn alert_webhook_timeout() -> Duration {
    Duration::from_millis(ALERT_WEBHOOK_TIMEOUT_MS.get().max(100) as u64)
}

pub fn alert_webhook_retries() -> u32 {
    ALERT_WEBHOOK_RETRIES.get().max(0) as u32
}

/// `gn2pg.max_harvest_workers`, with -1 resolved to half of max_worker_processes (at least 1).
pub fn max_harvest_workers() -> i64 {
    match MAX_HARVEST_WORKERS.get() {
        // SAFETY: reads a postmaster-wide setting of this backend.
        n if n < 0 => (unsafe { pg_sys::max_worker_processes } / 2).max(1) as i64,
        n => n as i64,
    }
}

pub fn stale_after_minutes() -> i32 {
    STALE_AFTER_MIN.get().max(0)
}

/// Effective transport limits for a source: its options first, then these settings.
pub fn limits(o: &SourceOptions) -> Limits {
    let ms = |v: i32| Duration::from_millis(v.max(0) as u64);
    Limits {
        connect_timeout: o.connect_timeout.unwrap_or_else(|| ms(HTTP_CONNECT_TIMEOUT_MS.get())),
        timeout: o.timeout.unwrap_or_else(|| ms(HTTP_TIMEOUT_MS.get())),
        max_retries: o.max_retries.unwrap_or(MAX_RETRIES.get().max(0) as u32),
        max_page_bytes: o.max_page_bytes.unwrap_or(MAX_PAGE_BYTES.get().max(1024) as usize),
    }
}

pub fn incremental_overlap(o: &SourceOptions) -> Duration {
    o.overlap.unwrap_or(Duration::from_secs(INCREMENTAL_OVERLAP_S.get().max(0) as u64))
}

pub fn max_streams_per_host() -> u32 {
    MAX_STREAMS_PER_HOST.get().clamp(1, 64) as u32
}
