//! Receiving alerts in tests: a webhook receiver, and NOTIFY gn2pg_alert.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;
use serde_json::Value;

/// A webhook receiver on 127.0.0.1: answers 500 to the first `fail_first` requests, then 200,
/// and reports every request as (path, body, status answered).
pub struct Hook {
    pub base: String,
    rx: Receiver<(String, String, u16)>,
}

impl Hook {
    pub fn start(fail_first: usize) -> Hook {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for (n, s) in l.incoming().enumerate() {
                let Ok(s) = s else { return };
                let mut r = BufReader::new(s);
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut len = 0usize;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                }
                let mut body = vec![0; len];
                let _ = r.read_exact(&mut body);
                let status: u16 = if n < fail_first { 500 } else { 200 };
                let reason = if status == 200 { "OK" } else { "Internal Server Error" };
                let _ = r.get_mut().write_all(
                    format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
                );
                if tx.send((path, String::from_utf8_lossy(&body).into_owned(), status)).is_err() {
                    return;
                }
            }
        });
        Hook { base, rx }
    }

    /// The next request, within `secs` seconds.
    pub fn next(&self, secs: u64) -> Option<(String, Value, u16)> {
        self.rx
            .recv_timeout(Duration::from_secs(secs))
            .ok()
            .map(|(p, b, s)| (p, serde_json::from_str(&b).unwrap_or(Value::Null), s))
    }
}

/// The next `gn2pg_alert` notification payload of a listening session, within `secs` seconds.
pub fn next_alert(listener: &mut Client, secs: u64) -> Option<Value> {
    let mut n = listener.notifications();
    let mut it = n.timeout_iter(Duration::from_secs(secs));
    while let Ok(Some(note)) = it.next() {
        if note.channel() == "gn2pg_alert" {
            return Some(serde_json::from_str(note.payload()).unwrap());
        }
    }
    None
}
