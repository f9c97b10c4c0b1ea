//! The streams of a run, on the backend side: how many requests it may have in flight against
//! its source's host, and what the source's latency was.
//!
//! `streams => 'auto'` (the default) paces the run to the source (`source::pacing`) within a
//! per-host budget, `gn2pg.max_streams_per_host`, shared by the runs of this database:
//! - the budget is a set of slots, session-level locks on `(database, hashtext('gn2pg.host <host>'),
//!   slot)` (the host name of the source URL, without its port): a run holds one slot per request
//!   it may have in flight, so the runs of one host never hold more than the maximum together, and
//!   a worker that dies frees its slots with its session. The locks are advisory locks of a kind
//!   no SQL function can take (`HOST_SLOT_TAG`): a role that may call `pg_advisory_lock` cannot
//!   hold a slot and starve the harvests (issue 9). A run takes its first slot before its first request, waiting if other runs hold
//!   them all (they give way, below), and keeps at least one to its end;
//! - each run claims at most its share, the maximum divided by the runs of the host running now
//!   (at least one): a run above its share gives slots back as its requests end.
//!
//! A fixed `streams => n` (or `workers > 1`) is taken as given, outside the budget.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgrx::prelude::*;

use crate::bgw::tx;
use crate::error::{spi_err, Error};
use crate::guc;
use crate::run::plan::Stop;
use crate::source::client::Host;
use crate::source::config::{SourceConfig, Streams};
use crate::source::pacing::{Gate, Pacer, Recorder};

type SpiResult<T> = Result<T, pgrx::spi::Error>;

/// How long a run waits for its first slot before it gives up.
const FIRST_SLOT_WAIT: Duration = Duration::from_secs(600);
/// How often the runs of the host are counted again for the shares.
const SHARE_EVERY: Duration = Duration::from_secs(2);

/// What the producer threads share: the gate holding them to the streams in use, and the
/// record of every request.
#[derive(Clone)]
pub struct Lanes {
    pub gate: Arc<Gate>,
    pub recorder: Arc<Recorder>,
}

pub struct Pace {
    pub lanes: Lanes,
    auto: Option<Auto>,
    fixed: u32,
}

struct Auto {
    pacer: Pacer,
    max: u32,
    host: String,
    key: i32,
    held: Vec<i32>,
    share: u32,
    share_at: Instant,
    started: Instant,
}

/// The host of a source URL, as the budget groups runs: the machine, whatever the port (two
/// GeoNature instances of one server share its cores).
const HOST_OF_URL_SQL: &str =
    "pg_catalog.lower(pg_catalog.substring(s.url, '^[a-zA-Z][a-zA-Z0-9+.-]*://(\\[[^]]*\\]|[^/?#:]+)'))";

impl Pace {
    /// A fixed number of streams, outside the budget.
    pub fn fixed(n: u32) -> Pace {
        let n = n.max(1);
        Pace {
            lanes: Lanes { gate: Arc::new(Gate::new(n)), recorder: Arc::new(Recorder::default()) },
            auto: None,
            fixed: n,
        }
    }

    /// Before the run's first request: fixed streams, or the first slot of the host's budget.
    pub fn start(cfg: &SourceConfig, host: &dyn Host) -> Result<Pace, Stop> {
        if cfg.options.workers > 1 {
            return Ok(Pace::fixed(1));
        }
        if let Streams::Fixed(n) = cfg.options.streams {
            return Ok(Pace::fixed(n));
        }
        let max = guc::max_streams_per_host();
        let host_name = tx(|| host_of(&cfg.name).map_err(spi_err)).map_err(Stop::Failed)?.unwrap_or_default();
        let key = tx(|| slot_key(&host_name).map_err(spi_err)).map_err(Stop::Failed)?;
        let waited = Instant::now();
        let first = loop {
            if let Some(slot) = tx(|| take_slot(key, max, &[]).map_err(spi_err)).map_err(Stop::Failed)? {
                break slot;
            }
            if waited.elapsed() > FIRST_SLOT_WAIT {
                return Err(Stop::Failed(Error::limit(format!(
                    "the {max} streams allowed against host {host_name} (gn2pg.max_streams_per_host) have been in use by \
                     other runs for {} minutes",
                    FIRST_SLOT_WAIT.as_secs() / 60
                ))));
            }
            host.sleep(Duration::from_millis(500))?;
        };
        let now = Instant::now();
        Ok(Pace {
            lanes: Lanes { gate: Arc::new(Gate::new(1)), recorder: Arc::new(Recorder::default()) },
            auto: Some(Auto {
                pacer: Pacer::new(max, now),
                max,
                host: host_name,
                key,
                held: vec![first],
                share: max,
                share_at: now - SHARE_EVERY,
                started: now,
            }),
            fixed: 1,
        })
    }

    /// Producer threads worth starting for `ranges` key ranges.
    pub fn producers(&self, ranges: usize) -> usize {
        let most = self.auto.as_ref().map_or(self.fixed, |a| a.max) as usize;
        ranges.clamp(1, most.max(1))
    }

    /// The per-host maximum of an auto run.
    pub fn max(&self) -> u32 {
        self.auto.as_ref().map_or(self.fixed, |a| a.max)
    }

    /// A new kind of request (counts, then pages): their rates are not comparable.
    pub fn new_phase(&mut self) {
        if let Some(a) = self.auto.as_mut() {
            let now = Instant::now();
            a.pacer = a.pacer.restarted(now);
            a.started = now;
        }
    }

    /// After each answer: the controller's decision, within the host's budget. Called on the
    /// backend thread (slots are session locks of its backend).
    pub fn tick(&mut self, run_id: i64) -> Result<(), Error> {
        let Some(a) = self.auto.as_mut() else { return Ok(()) };
        let now = Instant::now();
        if now.duration_since(a.share_at) >= SHARE_EVERY {
            let others = tx(|| other_runs_of_host(&a.host, run_id).map_err(spi_err))?;
            a.share = (a.max / (others + 1)).max(1);
            a.share_at = now;
        }
        let samples = self.lanes.recorder.since(a.started);
        let want = a.pacer.decide(now, &samples, a.share.min(a.max));
        while (a.held.len() as u32) < want {
            match tx(|| take_slot(a.key, a.max, &a.held).map_err(spi_err))? {
                Some(slot) => a.held.push(slot),
                None => break,
            }
        }
        let target = want.min(a.held.len() as u32);
        a.pacer.limit(target, now);
        self.lanes.gate.set_target(target);
        // A slot goes back only once the requests beyond the target have ended.
        while a.held.len() as u32 > target && self.lanes.gate.in_flight() < a.held.len() as u32 {
            if let Some(slot) = a.held.pop() {
                tx(|| release_slot(a.key, slot).map_err(spi_err))?;
            }
        }
        Ok(())
    }

    /// Requests in flight at once at most, and the source's latency, into the run log.
    pub fn record(&self, run_id: i64) {
        let peak = self.lanes.gate.most().max(1);
        let (p50, p95) = self.lanes.recorder.percentiles().map_or((None, None), |(a, b)| (Some(a), Some(b)));
        let recorded = tx(|| {
            Spi::run_with_args(
                "UPDATE gn2pg.run_log SET streams = $2, latency_p50_ms = $3, latency_p95_ms = $4 WHERE id = $1",
                &[
                    run_id.into(),
                    (peak as i32).into(),
                    p50.map(|v| v.min(i32::MAX as u32) as i32).into(),
                    p95.map(|v| v.min(i32::MAX as u32) as i32).into(),
                ],
            )
            .map_err(spi_err)
        });
        if let Err(e) = recorded {
            pgrx::warning!("gn2pg: could not record the streams of run {run_id}: {e}");
        }
    }
}

/// The host a source's URL names (lower case, without the port).
fn host_of(source: &str) -> SpiResult<Option<String>> {
    Spi::get_one_with_args::<String>(
        &format!("SELECT {HOST_OF_URL_SQL} FROM gn2pg.source s WHERE s.name = $1"),
        &[source.into()],
    )
}

fn slot_key(host: &str) -> SpiResult<i32> {
    Ok(Spi::get_one_with_args::<i32>("SELECT pg_catalog.hashtext('gn2pg.host ' || $1)", &[host.into()])?.unwrap_or(0))
}

/// `locktag_field4` of the slot locks. pg_advisory_lock and its kin only make 1 (one bigint
/// key) and 2 (two integer keys), so no SQL caller can take or release a slot.
const HOST_SLOT_TAG: u16 = 0x676e;

/// The lock of one slot of a host's budget in this database.
fn slot_tag(key: i32, slot: i32) -> pg_sys::LOCKTAG {
    pg_sys::LOCKTAG {
        // SAFETY: MyDatabaseId is set once the worker is connected, before any run starts.
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: key as u32,
        locktag_field3: slot as u32,
        locktag_field4: HOST_SLOT_TAG,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    }
}

/// Takes a free slot of the host's budget (a session lock, see `HOST_SLOT_TAG`); None when all
/// are held.
fn take_slot(key: i32, max: u32, held: &[i32]) -> SpiResult<Option<i32>> {
    for slot in 0..max as i32 {
        if held.contains(&slot) {
            continue;
        }
        let tag = slot_tag(key, slot);
        // SAFETY: called on the backend thread; a session lock outlives the transaction and is
        // released by release_slot or when the worker exits.
        let got = unsafe { pg_sys::LockAcquire(&tag, pg_sys::ExclusiveLock as pg_sys::LOCKMODE, true, true) };
        if got != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL {
            return Ok(Some(slot));
        }
    }
    Ok(None)
}

fn release_slot(key: i32, slot: i32) -> SpiResult<()> {
    let tag = slot_tag(key, slot);
    // SAFETY: on the backend thread; releases a session lock take_slot took.
    unsafe { pg_sys::LockRelease(&tag, pg_sys::ExclusiveLock as pg_sys::LOCKMODE, true) };
    Ok(())
}

/// Other runs of sources on the same host whose worker is alive.
fn other_runs_of_host(host: &str, run_id: i64) -> SpiResult<u32> {
    let n = Spi::get_one_with_args::<i64>(
        &format!(
            "SELECT count(*) FROM gn2pg.run_log r JOIN gn2pg.source s ON s.name = r.source
              WHERE r.status = 'running' AND r.id <> $2 AND {HOST_OF_URL_SQL} = $1
                AND EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a
                             WHERE a.pid = r.worker_pid AND a.backend_type = 'gn2pg harvest')"
        ),
        &[host.into(), run_id.into()],
    )?;
    Ok(n.unwrap_or(0).clamp(0, 1000) as u32)
}
