//! A one-export source serving canned pages, for items the fixture never produces.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;

/// A one-export source on 127.0.0.1: the first data request gets `page`, later ones an empty
/// page (one-row probes, `limit=1`, always get an empty page); anything else is a 404. Serves
/// at most 16 requests.
pub fn one_page_source(page: String) -> (String, std::thread::JoinHandle<()>) {
    pages_source(vec![page])
}

/// As [`one_page_source`], data request k getting `pages[k]`: with short pages (fewer rows than
/// the limit), one page per harvest.
pub fn pages_source(pages: Vec<String>) -> (String, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/gn", l.local_addr().unwrap());
    let h = std::thread::spawn(move || {
        let mut served = 0;
        // Bounded: a few harvests of a module lookup and a page or two each.
        for _ in 0..16 {
            let Ok((mut s, _)) = l.accept() else { return };
            let mut rd = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            if rd.read_line(&mut line).is_err() {
                continue;
            }
            let mut len = 0;
            loop {
                let mut h = String::new();
                if rd.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = rd.read_exact(&mut body);
            let empty = r#"{"items":[],"limit":1000,"page":0,"total":0,"total_filtered":0}"#;
            let (status, out) = if line.contains("/api/exports/api/") && line.contains("limit=1&") {
                // The engine's one-row probes (largest key, newest action): nothing to say,
                // and no page used up.
                ("200 OK", empty.replace("1000", "1"))
            } else if line.contains("/api/exports/api/") {
                served += 1;
                match pages.get(served - 1) {
                    Some(p) => ("200 OK", p.clone()),
                    None => ("200 OK", empty.to_string()),
                }
            } else {
                ("404 NOT FOUND", r#"{"code":404,"name":"Not Found","description":"nope"}"#.to_string())
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{out}",
                out.len()
            );
        }
    });
    (url, h)
}
