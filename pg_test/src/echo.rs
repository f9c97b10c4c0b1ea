//! An indiscreet GeoNature for tests of secrets: it echoes what it received (the password sent
//! to `/auth/login`, the session cookie, the request line with its `?token=`) in its error
//! answers, the way careless proxies and debug pages do. gn2pg must not store or send any of it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// How the export data API answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// HTTP 500 with a JSON description quoting the password, cookie and request line (except
    /// for the first key range of a parallel run, which is empty).
    ErrorBody,
    /// HTTP 403 with an HTML page quoting them.
    ForbiddenPage,
    /// A redirect whose Location carries them.
    Redirect,
    /// A page whose single item has the request's token as its uuid: rejected, and the
    /// rejection's message quotes the value.
    BadItem,
}

/// A running indiscreet source on 127.0.0.1; `url` is its GeoNature root.
pub struct EchoSource {
    pub url: String,
    /// Session cookie values handed out, for the test's assertions.
    pub cookies: Arc<Mutex<Vec<String>>>,
}

fn answer(status: &str, ct: &str, extra: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ct}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

impl EchoSource {
    /// Serves at most `max_requests` requests (a few harvests), then stops accepting.
    pub fn start(mode: Echo, max_requests: usize) -> EchoSource {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/gn", l.local_addr().unwrap());
        let cookies = Arc::new(Mutex::new(Vec::new()));
        let handed = cookies.clone();
        std::thread::spawn(move || {
            static SESSION: AtomicU32 = AtomicU32::new(0);
            let mut password = String::new();
            for conn in l.incoming().take(max_requests) {
                let Ok(mut s) = conn else { return };
                let mut rd = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                if rd.read_line(&mut line).is_err() {
                    continue;
                }
                let (mut len, mut cookie) = (0usize, String::new());
                loop {
                    let mut h = String::new();
                    if rd.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                        break;
                    }
                    let lower = h.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    } else if lower.starts_with("cookie:") {
                        cookie = h[7..].trim().to_string();
                    }
                }
                let mut body = vec![0; len];
                let _ = rd.read_exact(&mut body);
                let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let out = if target.ends_with("/auth/login") {
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    password = v["password"].as_str().unwrap_or("").to_string();
                    let session = format!("sess-{}-{}", std::process::id(), SESSION.fetch_add(1, Ordering::SeqCst));
                    handed.lock().unwrap().push(session.clone());
                    answer("200 OK", "application/json", &format!("Set-Cookie: token={session}; Path=/\r\n"), "{}")
                } else if target.contains("/gn_commons/module") {
                    let m = r#"{"module_code":"EXPORTS","module_path":"exports"}"#;
                    let body = if target.contains("modules") { format!("[{m}]") } else { m.to_string() };
                    answer("200 OK", "application/json", "", &body)
                } else if target.contains("/exports/api/") && target.contains("%3ADESC") {
                    // The largest key, asked before a parallel run splits the key space.
                    let page =
                        r#"{"items":[{"id_synthese":1000}],"limit":1,"page":0,"total":1000,"total_filtered":1000}"#;
                    answer("200 OK", "application/json", "", page)
                } else if target.contains("/exports/api/") && mode == Echo::ErrorBody && target.contains("filter_n_lo_")
                {
                    // The first key range of a parallel run (the lead's) is empty: the echo
                    // reaches the part workers.
                    let page = r#"{"items":[],"limit":1000,"page":0,"total":0,"total_filtered":0}"#;
                    answer("200 OK", "application/json", "", page)
                } else if target.contains("/exports/api/") {
                    let told = format!("user with password {password}, cookie [{cookie}], request {target}");
                    match mode {
                        Echo::ErrorBody => answer(
                            "500 INTERNAL SERVER ERROR",
                            "application/json",
                            "",
                            &serde_json::json!({ "description": format!("cannot serve {told}") }).to_string(),
                        ),
                        Echo::ForbiddenPage => answer(
                            "403 FORBIDDEN",
                            "text/html",
                            "",
                            &format!("<html><title>Denied: {told}</title></html>"),
                        ),
                        Echo::Redirect => {
                            let to = format!(
                                "http://elsewhere.example/moved?from={}&p={password}&c={cookie}",
                                form_urlencoded::byte_serialize(target.as_bytes()).collect::<String>()
                            );
                            answer("302 FOUND", "text/html", &format!("Location: {to}\r\n"), "")
                        }
                        Echo::BadItem => {
                            let token = target.split("token=").nth(1).unwrap_or("").split('&').next().unwrap_or("");
                            let page = serde_json::json!({
                                "items": [{ "id_synthese": 1, "id_perm_sinp": token }],
                                "limit": 1000, "page": 0, "total": 1, "total_filtered": 1
                            });
                            answer("200 OK", "application/json", "", &page.to_string())
                        }
                    }
                } else {
                    answer("404 NOT FOUND", "application/json", "", r#"{"description":"nope"}"#)
                };
                let _ = s.write_all(out.as_bytes());
            }
        });
        EchoSource { url, cookies }
    }
}
