//! A hostile or broken GeoNature source, for the tests that prove a source cannot crash or
//! exhaust the database: its first data request gets one good row (so that a run has loaded
//! something before it meets the attack), every later one the attack. Bodies are generated
//! while they are written, so a 200 MB answer costs the test no memory. Binds 127.0.0.1 only;
//! every loop is bounded (requests served, bytes written, time).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the source sends once it has sent its good row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Attack {
    /// `{"items":[{},{},…]}`: `n` empty objects.
    EmptyObjects(u64),
    /// One item holding an array of `n` zeros.
    ArrayElements(u64),
    /// One item nested `n` arrays deep.
    Nesting(u64),
    /// One item holding a string of `n` bytes.
    LongString(u64),
    /// A page whose text is not UTF-8.
    InvalidUtf8,
    /// `NaN` where a number goes (not JSON).
    NaN,
    /// Numbers JSON allows: `1e999` (numeric holds it) and `1e999999` (numeric does not).
    HugeNumbers,
    /// `{},{},…` as fast as the socket takes it, without end.
    Endless,
    /// A few bytes every 50 ms, without end.
    Trickle,
}

/// A running hostile source; stops when dropped.
pub struct HostileSource {
    url: String,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The good row served first (its key is 1).
pub const GOOD_ITEM: &str = r#"{"id_synthese":1,"id_perm_sinp":"0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6","wkt_4326":"POINT(6.5 45.2)","derniere_action":"2024-03-01 10:00:00"}"#;

/// Most bytes one answer may write, and how long, whatever the attack: the tests stay bounded
/// even if gn2pg kept reading.
const MAX_ANSWER_BYTES: u64 = 400 << 20;
const MAX_ANSWER_TIME: Duration = Duration::from_secs(60);

impl HostileSource {
    pub fn start(attack: Attack) -> HostileSource {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let url = format!("http://{}/gn", listener.local_addr().expect("address"));
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let (stop2, written2) = (stop.clone(), written.clone());
        let thread = std::thread::spawn(move || {
            let mut data_requests = 0;
            let started = Instant::now();
            // Bounded: a few requests per harvest, at most 5 minutes.
            for _ in 0..64 {
                let stream = loop {
                    if stop2.load(Ordering::SeqCst) || started.elapsed() > Duration::from_secs(300) {
                        return;
                    }
                    match listener.accept() {
                        Ok((s, _)) => break s,
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                };
                let _ = stream.set_nonblocking(false);
                let _ = serve(stream, attack, &mut data_requests, &stop2, &written2);
            }
        });
        HostileSource { url, stop, written, thread: Some(thread) }
    }

    /// The GeoNature URL to register.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Body bytes written so far (all answers).
    pub fn bytes_written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }
}

impl Drop for HostileSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    mut s: TcpStream,
    attack: Attack,
    data_requests: &mut u32,
    stop: &AtomicBool,
    written: &AtomicU64,
) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut rd = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    rd.read_line(&mut line)?;
    let mut len = 0usize;
    // Bounded: at most 100 header lines.
    for _ in 0..100 {
        let mut h = String::new();
        if rd.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len.min(1 << 20)];
    rd.read_exact(&mut body)?;
    if !line.contains("/api/exports/api/") {
        let msg = r#"{"code":404,"name":"Not Found","description":"nope"}"#;
        return write!(
            s,
            "HTTP/1.1 404 NOT FOUND\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}",
            msg.len()
        );
    }
    *data_requests += 1;
    if *data_requests == 1 {
        let page = format!(r#"{{"items":[{GOOD_ITEM}],"limit":1,"total":2,"total_filtered":2}}"#);
        return write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
            page.len()
        );
    }
    // No Content-Length: the answer ends when the connection closes (or never).
    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")?;
    let mut out = Writer { s, n: 0, started: Instant::now(), stop, written };
    let envelope_end = br#"],"limit":1000,"total":2,"total_filtered":2}"#;
    match attack {
        Attack::EmptyObjects(n) => {
            out.put(b"{\"items\":[")?;
            out.repeat(b"{},", n - 1)?;
            out.put(b"{}")?;
            out.put(envelope_end)
        }
        Attack::ArrayElements(n) => {
            out.put(b"{\"items\":[{\"id_synthese\":2,\"a\":[")?;
            out.repeat(b"0,", n - 1)?;
            out.put(b"0]}")?;
            out.put(envelope_end)
        }
        Attack::Nesting(n) => {
            out.put(b"{\"items\":[")?;
            out.repeat(b"[", n)?;
            out.repeat(b"]", n)?;
            out.put(envelope_end)
        }
        Attack::LongString(n) => {
            out.put(b"{\"items\":[{\"id_synthese\":2,\"s\":\"")?;
            out.repeat(b"x", n)?;
            out.put(b"\"}")?;
            out.put(envelope_end)
        }
        Attack::InvalidUtf8 => {
            out.put(b"{\"items\":[{\"id_synthese\":2,\"s\":\"caf\xe9 \xff\"}")?;
            out.put(envelope_end)
        }
        Attack::NaN => {
            out.put(b"{\"items\":[{\"id_synthese\":2,\"v\":NaN}")?;
            out.put(envelope_end)
        }
        Attack::HugeNumbers => {
            out.put(
                br#"{"items":[{"id_synthese":2,"id_perm_sinp":"0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d7","v":1e999},"#,
            )?;
            out.put(br#"{"id_synthese":3,"id_perm_sinp":"0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d8","v":1e999999}"#)?;
            out.put(envelope_end)
        }
        Attack::Endless => {
            out.put(b"{\"items\":[")?;
            out.repeat(b"{},", u64::MAX)
        }
        Attack::Trickle => {
            out.put(b"{\"items\":[")?;
            // Bounded by the writer's time limit.
            loop {
                out.put(b"{},")?;
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Writes an answer in chunks, stopping at the first error (gn2pg hung up), at the test's end,
/// or at the bounds on bytes and time.
struct Writer<'a> {
    s: TcpStream,
    n: u64,
    started: Instant,
    stop: &'a AtomicBool,
    written: &'a AtomicU64,
}

impl Writer<'_> {
    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        if self.stop.load(Ordering::SeqCst) || self.n > MAX_ANSWER_BYTES || self.started.elapsed() > MAX_ANSWER_TIME {
            return Err(std::io::Error::other("bound reached"));
        }
        self.s.write_all(b)?;
        self.n += b.len() as u64;
        self.written.fetch_add(b.len() as u64, Ordering::SeqCst);
        Ok(())
    }

    fn repeat(&mut self, unit: &[u8], times: u64) -> std::io::Result<()> {
        let per_chunk = (64 * 1024 / unit.len()).max(1) as u64;
        let chunk = unit.repeat(per_chunk as usize);
        let mut left = times;
        while left > 0 {
            let k = left.min(per_chunk);
            self.put(&chunk[..k as usize * unit.len()])?;
            left -= k;
        }
        Ok(())
    }
}

/// Peak and current resident memory of a process, in bytes (`VmHWM`, `VmRSS` of
/// /proc/<pid>/status); None once it is gone.
pub fn memory_of(pid: i64) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |field: &str| {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|v| v * 1024)
    };
    Some((kb("VmHWM:")?, kb("VmRSS:")?))
}
