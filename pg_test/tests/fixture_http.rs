//! The fixture source over real HTTP, with a tiny std::net client (no reqwest) so these tests
//! exercise exactly the bytes a harvester receives.

use gn2pg_pg_test::fixture::{
    Access, ExportConfig, Faults, FixtureConfig, FixtureServer, Mutation, Shape, TotalFiltered, View,
};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// False when the connection closed before Content-Length bytes arrived.
    complete: bool,
}

impl Resp {
    fn header(&self, k: &str) -> Option<&str> {
        self.headers.iter().find(|(a, _)| a.eq_ignore_ascii_case(k)).map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }
}

struct Client {
    port: u16,
    conn: Option<BufReader<TcpStream>>,
    cookies: Vec<(String, String)>,
    accept: Option<&'static str>,
    connects: u32,
}

impl Client {
    fn new(srv: &FixtureServer) -> Client {
        Client { port: srv.port(), conn: None, cookies: Vec::new(), accept: Some("application/json"), connects: 0 }
    }

    fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> Resp {
        if self.conn.is_none() {
            let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            self.conn = Some(BufReader::new(s));
            self.connects += 1;
        }
        let mut req = format!("{method} /geonature/api{path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n", self.port);
        if let Some(a) = self.accept {
            req.push_str(&format!("Accept: {a}\r\n"));
        }
        if !self.cookies.is_empty() {
            let c: Vec<String> = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req.push_str(&format!("Cookie: {}\r\n", c.join("; ")));
        }
        let body = body.unwrap_or("");
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
        let r = self.conn.as_mut().unwrap();
        r.get_mut().write_all(req.as_bytes()).unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let status: u16 =
            line.split_whitespace().nth(1).unwrap_or_else(|| panic!("status line {line:?}")).parse().unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.push((k.to_string(), v.trim().to_string()));
        }
        let mut resp = Resp { status, headers, body: Vec::new(), complete: true };
        let len: usize = resp.header("content-length").unwrap().parse().unwrap();
        let mut got = 0;
        resp.body = vec![0; len];
        while got < len {
            match r.read(&mut resp.body[got..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        if got < len {
            resp.body.truncate(got);
            resp.complete = false;
        }
        for (k, v) in &resp.headers {
            if k.eq_ignore_ascii_case("set-cookie") {
                let (name, val) = v.split(';').next().unwrap().split_once('=').unwrap();
                self.cookies.retain(|(n, _)| n != name);
                self.cookies.push((name.to_string(), val.to_string()));
            }
        }
        if !resp.complete || resp.header("connection") == Some("close") {
            self.conn = None;
        }
        resp
    }

    fn get(&mut self, path: &str) -> Resp {
        self.request("GET", path, None)
    }

    fn login(&mut self, srv: &FixtureServer) -> Resp {
        let cfg = srv.config();
        let body = json!({"login": cfg.login, "password": cfg.password}).to_string();
        self.request("POST", "/auth/login", Some(&body))
    }
}

fn start(rows: u64) -> FixtureServer {
    FixtureServer::start(FixtureConfig { rows, ..Default::default() }).unwrap()
}

fn items(v: &Value) -> Vec<Value> {
    match &v["items"] {
        Value::Array(a) => a.clone(),
        o => o["features"].as_array().unwrap().iter().map(|f| f["properties"].clone()).collect(),
    }
}

fn ids(v: &Value) -> Vec<i64> {
    items(v).iter().map(|i| i["id_synthese"].as_i64().unwrap()).collect()
}

#[test]
fn login_ok_ko_and_cookies() {
    let srv = start(10);
    let mut c = Client::new(&srv);
    let bad = c.request("POST", "/auth/login", Some(r#"{"login":"harvester","password":"nope"}"#));
    assert_eq!(bad.status, 401);
    assert_eq!(bad.json(), json!({"code": 401, "name": "Unauthorized", "description": "Invalid password"}));
    assert!(c.cookies.is_empty());
    let bad_app =
        c.request("POST", "/auth/login", Some(r#"{"login":"harvester","password":"secret","id_application":99}"#));
    assert_eq!(bad_app.status, 400);

    // Module list needs a session: 401 for JSON clients, a redirect for the others.
    assert_eq!(c.get("/gn_commons/modules").status, 401);
    c.accept = None;
    let redirect = c.get("/gn_commons/modules");
    assert_eq!(redirect.status, 302);
    assert!(redirect.header("location").unwrap().contains("/geonature/#/login?next="));
    assert!(redirect.text().contains("Redirecting"));
    c.accept = Some("application/json, text/plain, */*");

    let ok = c.request("POST", "/auth/login", Some(r#"{"login":"harvester","password":"secret","id_application":3}"#));
    assert_eq!(ok.status, 200);
    let v = ok.json();
    assert_eq!(v["user"]["identifiant"], "harvester");
    assert!(v["token"].as_str().unwrap().starts_with("eyJ"));
    assert!(v["expires"].as_str().unwrap().contains('T'));
    let names: Vec<&str> = c.cookies.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["token", "session"]);
    let cookies = ok.headers.iter().filter(|(k, _)| k == "Set-Cookie").count();
    assert_eq!(cookies, 2);

    let m = c.get("/gn_commons/modules");
    assert_eq!(m.status, 200);
    let exports: Vec<Value> =
        m.json().as_array().unwrap().iter().filter(|m| m["module_code"] == "EXPORTS").cloned().collect();
    assert_eq!(exports.len(), 1);
    assert_eq!(exports[0]["module_path"], "exports");
    assert_eq!(exports[0]["cruved"]["R"], 3);

    // Either cookie alone is a session; the JWT works as a bearer token.
    let jwt = v["token"].as_str().unwrap().to_string();
    let session_only: Vec<(String, String)> = c.cookies.iter().filter(|(k, _)| k == "session").cloned().collect();
    c.cookies = session_only;
    assert_eq!(c.get("/gn_commons/modules").status, 200);
    c.cookies.clear();
    let mut raw = TcpStream::connect(("127.0.0.1", srv.port())).unwrap();
    write!(raw, "GET /geonature/api/gn_commons/modules HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nAuthorization: Bearer {jwt}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    raw.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");

    srv.expire_sessions();
    c.login(&srv);
    srv.expire_sessions();
    assert_eq!(c.get("/gn_commons/modules").status, 401);
    let stats = srv.stats();
    assert_eq!(stats.logins, 4);
    assert_eq!(stats.login_failures, 2);
}

#[test]
fn session_ttl_expires() {
    let srv = FixtureServer::start(FixtureConfig { rows: 5, session_ttl_secs: 1, ..Default::default() }).unwrap();
    let mut c = Client::new(&srv);
    c.login(&srv);
    assert_eq!(c.get("/exports/api/1").status, 200);
    std::thread::sleep(Duration::from_millis(1050));
    assert_eq!(c.get("/exports/api/1").status, 401);
}

#[test]
fn public_discovery_endpoints() {
    let srv = start(10);
    let mut c = Client::new(&srv);
    let cfg = c.get("/gn_commons/config").json();
    assert_eq!(cfg["GEONATURE_VERSION"], "2.16.4");
    assert_eq!(cfg["EXPORTS"]["MODULE_API"], "/exports");
    assert_eq!(cfg["EXPORTS"]["max_page_size_api"], 1000);
    let m = c.get("/gn_commons/module/EXPORTS");
    assert_eq!(m.status, 200);
    assert_eq!(m.json()["module_path"], "exports");
    assert_eq!(c.get("/gn_commons/module/NOPE").status, 404);
    let nf = c.get("/nowhere");
    assert_eq!(nf.status, 404);
    assert_eq!(nf.header("content-type"), Some("application/json"));
    assert_eq!(nf.json()["name"], "Not Found");
    assert_eq!(c.request("GET", "/auth/login", None).status, 405);
    assert_eq!(c.connects, 1, "keep-alive must serve everything on one connection");
    assert_eq!(srv.stats().connections, 1);
}

#[test]
fn export_access_modes() {
    let srv = start(30);
    let mut c = Client::new(&srv);
    let token = srv.config().token.clone();
    // Public.
    let r = c.get("/exports/api/3?limit=5");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    // Token.
    assert_eq!(c.get(&format!("/exports/api/2?token={token}")).status, 200);
    let wrong = c.get("/exports/api/2?token=ffffffffffffffffffffffffffffffff");
    assert_eq!(wrong.status, 403);
    assert_eq!(wrong.json()["name"], "Forbidden");
    assert!(wrong.json()["request_id"].is_string());
    assert_eq!(c.get("/exports/api/2").status, 403);
    // Login.
    assert_eq!(c.get("/exports/api/1").status, 401);
    c.accept = None;
    assert_eq!(c.get("/exports/api/1").status, 302);
    c.accept = Some("application/json");
    c.login(&srv);
    assert_eq!(c.get("/exports/api/1").status, 200);
    assert_eq!(c.get("/exports/api/2").status, 200, "a session user may read a token export");
    assert_eq!(c.get("/exports/api/2?token=bad").status, 403, "a wrong token wins over the session");
    // Unknown export, trailing slash, other module path.
    assert_eq!(c.get("/exports/api/99").status, 404);
    assert_eq!(c.get("/exports/api/3/").status, 404);
    assert_eq!(c.get("/export/api/3").status, 404);

    let srv2 = FixtureServer::start(FixtureConfig { rows: 3, module_path: "mes_exports".into(), ..Default::default() })
        .unwrap();
    let mut c2 = Client::new(&srv2);
    assert_eq!(c2.get("/mes_exports/api/3").status, 200);
    assert_eq!(c2.get("/exports/api/3").status, 404);
    assert_eq!(c2.get("/gn_commons/config").json()["EXPORTS"]["MODULE_API"], "/mes_exports");
}

#[test]
fn paging_parameters() {
    let srv = start(1500);
    let mut c = Client::new(&srv);
    // offset is a page index.
    let v = c.get("/exports/api/3?limit=10&offset=2").json();
    assert_eq!(ids(&v), (21..=30).collect::<Vec<_>>());
    assert_eq!((v["limit"].as_i64(), v["page"].as_i64()), (Some(10), Some(2)));
    assert_eq!((v["total"].as_u64(), v["total_filtered"].as_u64()), (Some(1500), Some(1500)));
    assert_eq!(v["license"]["name"], "Licence Ouverte/Open Licence Version 2.0");
    // limit is capped silently; garbage falls back to the default.
    let v = c.get("/exports/api/3?limit=5000").json();
    assert_eq!((v["limit"].as_i64(), items(&v).len()), (Some(1000), 1000));
    let v = c.get("/exports/api/3?limit=abc&offset=xyz").json();
    assert_eq!((v["limit"].as_i64(), v["page"].as_i64()), (Some(1000), Some(0)));
    srv.set_export(7, ExportConfig { max_page_size: 250, ..Default::default() });
    let v = c.get("/exports/api/7?limit=1000&offset=1").json();
    assert_eq!(v["limit"], 250);
    assert_eq!(ids(&v)[0], 251);
    // limit=0: no LIMIT at all; negative values are server errors.
    let v = c.get("/exports/api/3?limit=0&filter_n_up_id_synthese=1401").json();
    assert_eq!(items(&v).len(), 100);
    assert_eq!(v["limit"], 0);
    assert_eq!(c.get("/exports/api/3?limit=-1").status, 500);
    assert_eq!(c.get("/exports/api/3?offset=-1").status, 500);
    // Keyset emulation.
    let v = c.get("/exports/api/3?orderby=id_synthese&filter_n_up_id_synthese=995&limit=10&offset=0").json();
    assert_eq!(ids(&v), (995..=1004).collect::<Vec<_>>());
    assert_eq!(v["total_filtered"], 1500 - 994);
    assert_eq!(v["total"], 1500);
    let v = c.get("/exports/api/3?orderby=id_synthese:DESC&limit=3").json();
    assert_eq!(ids(&v), [1500, 1499, 1498]);
    let v = c.get("/exports/api/3?filter_n_up_id_synthese=10&filter_n_lo_id_synthese=12").json();
    assert_eq!(ids(&v), [10, 11, 12]);
    let v = c.get("/exports/api/3?id_synthese=77").json();
    assert_eq!(ids(&v), [77]);
    // Errors and ignored keys.
    let r = c.get("/exports/api/3?orderby=nope");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["description"], "No column name nope to sort with");
    assert_eq!(r.json()["name"], "Bad Request");
    let r = c.get("/exports/api/3?filter_n_up_nope=1");
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["name"], "Internal Server Error");
    assert_eq!(c.get("/exports/api/3?filter_n_up_id_synthese=abc").status, 500);
    assert_eq!(c.get("/exports/api/3?filter_d_up_derniere_action=hier").status, 500);
    let v = c.get("/exports/api/3?limit=2&action=%5B%22I%22%5D&whatever=1").json();
    assert_eq!(ids(&v), [1, 2]);
    // Equality and date filters on other columns scan, and still agree with the rows.
    let v = c.get("/exports/api/3?limit=1000&cd_nom=4001&filter_d_up_date_debut=2020-01-01").json();
    let got = items(&v);
    assert!(!got.is_empty());
    assert_eq!(v["total_filtered"].as_u64().unwrap() as usize, got.len());
    assert!(got.iter().all(|i| i["cd_nom"] == 4001 && i["date_debut"].as_str().unwrap() >= "2020-01-01"));
    let v = c.get("/exports/api/3?limit=20&orderby=cd_nom:desc").json();
    let cds: Vec<i64> = items(&v).iter().map(|i| i["cd_nom"].as_i64().unwrap()).collect();
    assert!(cds.windows(2).all(|w| w[0] >= w[1]));
}

#[test]
fn shapes_and_null_geometry() {
    let srv = FixtureServer::start(FixtureConfig { rows: 100, null_geometry_every: 9, ..Default::default() }).unwrap();
    let mut c = Client::new(&srv);
    let arr = c.get("/exports/api/3?limit=100").json();
    let rows = arr["items"].as_array().unwrap();
    assert_eq!(rows.len(), 100);
    assert!(rows[8]["wkt_4326"].is_null() && rows[8]["id_synthese"] == 9);
    assert!(rows[0]["jdd_data"].is_object() && rows[0]["ca_data"]["name"].is_string());
    assert!(rows[0].get("jdd_uuid").is_none(), "view (a) has no flat jdd_uuid");

    let fc = c.get("/exports/api/5?limit=100").json();
    assert_eq!(fc["items"]["type"], "FeatureCollection");
    let features = fc["items"]["features"].as_array().unwrap();
    assert_eq!(features.len(), 89, "null geometries are dropped");
    assert_eq!((fc["total"].as_u64(), fc["total_filtered"].as_u64()), (Some(100), Some(100)));
    let mut kinds = std::collections::BTreeSet::new();
    for f in features {
        assert_eq!(f["type"], "Feature");
        let g = &f["geometry"];
        kinds.insert(g["type"].as_str().unwrap().to_string());
        let wkt = f["properties"]["wkt_4326"].as_str().unwrap();
        if g["type"] == "Point" {
            let (x, y) = (g["coordinates"][0].as_f64().unwrap(), g["coordinates"][1].as_f64().unwrap());
            assert!((4.0..=7.5).contains(&x) && (43.5..=46.5).contains(&y));
            let inner = wkt.strip_prefix("POINT(").unwrap().strip_suffix(')').unwrap();
            let (wx, wy) = inner.split_once(' ').unwrap();
            assert_eq!((wx.parse::<f64>().unwrap(), wy.parse::<f64>().unwrap()), (x, y));
        }
    }
    assert_eq!(kinds.into_iter().collect::<Vec<_>>(), ["LineString", "Point", "Polygon"]);
    // Same columns in both shapes.
    let a_keys: Vec<&String> = rows[0].as_object().unwrap().keys().collect();
    let f_keys: Vec<&String> = features[0]["properties"].as_object().unwrap().keys().collect();
    assert_eq!(a_keys, f_keys);

    let b = c.get(&format!("/exports/api/2?limit=3&token={}", srv.config().token)).json();
    let p = &b["items"]["features"][0]["properties"];
    for k in ["jdd_uuid", "jdd_nom", "jdd_acteurs", "ca_uuid", "ca_nom", "floutage_dee", "derniere_action"] {
        assert!(p.get(k).is_some(), "{k} missing");
    }
    let acteurs: Value = serde_json::from_str(p["jdd_acteurs"].as_str().unwrap()).unwrap();
    assert!(acteurs.is_array());

    let m = c.get("/exports/api/4?orderby=id_ca").json();
    let cas = m["items"].as_array().unwrap();
    assert_eq!(cas.len(), 3);
    assert_eq!(cas[2]["id_ca"], 3);
    assert!(cas[0]["datasets"][0]["jdd_data"]["uuid"].is_string());
    assert_eq!(m["total"], 3);
}

#[test]
fn total_filtered_profiles() {
    let srv = start(2500);
    let mut c = Client::new(&srv);
    let profiles = [
        (10, TotalFiltered::Exact, [2500, 2500, 2500, 2500]),
        (11, TotalFiltered::Page, [1000, 1000, 500, 0]),
        (12, TotalFiltered::MinusOffset, [2500, 1500, 500, 0]),
    ];
    for (id, tf, want) in profiles {
        srv.set_export(id, ExportConfig { total_filtered: tf, ..Default::default() });
        for (page, w) in want.iter().enumerate() {
            let v = c.get(&format!("/exports/api/{id}?limit=1000&offset={page}")).json();
            assert_eq!(v["total_filtered"], *w, "{tf:?} page {page}");
            assert_eq!(items(&v).len(), [1000, 1000, 500, 0][page]);
        }
    }
    srv.set_export(13, ExportConfig { total_filtered: TotalFiltered::NoLimit, ..Default::default() });
    let v = c.get("/exports/api/13?limit=1000&offset=1&filter_n_up_id_synthese=2001").json();
    assert_eq!(items(&v).len(), 500);
    assert_eq!((v["limit"].as_i64(), v["total_filtered"].as_u64()), (Some(1000), Some(500)));
}

#[test]
fn mutations_and_deletion_log() {
    let srv = start(200);
    let mut c = Client::new(&srv);
    c.login(&srv);
    let before = srv.now();
    std::thread::sleep(Duration::from_millis(2));
    let r = srv.mutate(Mutation { insert: 5, update: 7, delete: 3, delete_ids: vec![42], update_ids: vec![43] });
    assert_eq!(r.inserted, (201..=205).collect::<Vec<_>>());
    assert_eq!(r.deleted.len(), 4);
    assert_eq!(r.updated.len(), 8);
    assert!(r.deleted.contains(&42) && r.updated.contains(&43));
    assert!(r.updated.iter().all(|u| !r.deleted.contains(u)));
    // Counts are spread over the id range.
    assert!(r.deleted.iter().filter(|&&d| d != 42).all(|&d| d > 10));

    let v = c.get("/exports/api/1?limit=1000").json();
    assert_eq!(v["total"], 200 - 4 + 5);
    let got = ids(&v);
    assert!(!got.contains(&42) && got.contains(&205));
    assert_eq!(srv.live_rows(), 201);

    let since =
        c.get(&format!("/exports/api/1?limit=1000&filter_d_up_derniere_action={}", before.replace(' ', "%20"))).json();
    let mut changed = ids(&since);
    changed.sort();
    let mut want: Vec<i64> = r.inserted.iter().chain(&r.updated).copied().collect();
    want.sort();
    assert_eq!(changed, want);
    let row43 = items(&since).into_iter().find(|i| i["id_synthese"] == 43).unwrap();
    assert!(row43["comment_occurrence"].as_str().unwrap().contains("mise à jour n°1"));
    assert!(row43["derniere_action"].as_str().unwrap() > before.as_str());

    let log = c
        .get(&format!(
            "/synthese/log?last_action=D&meta_last_action_date=gte:{}&limit=3&page=1",
            before.replace(' ', "T")
        ))
        .json();
    assert_eq!((log["total"].as_u64(), log["limit"].as_i64(), log["page"].as_i64()), (Some(4), Some(3), Some(1)));
    assert!(log.get("total_filtered").is_none());
    let mut deleted: Vec<i64> =
        log["items"].as_array().unwrap().iter().map(|i| i["id_synthese"].as_i64().unwrap()).collect();
    let page2 = c
        .get(&format!(
            "/synthese/log?last_action=D&meta_last_action_date=gte:{}&limit=3&page=2",
            before.replace(' ', "T")
        ))
        .json();
    deleted.extend(page2["items"].as_array().unwrap().iter().map(|i| i["id_synthese"].as_i64().unwrap()));
    deleted.sort();
    let mut want_d = r.deleted.clone();
    want_d.sort();
    assert_eq!(deleted, want_d);
    assert_eq!(log["items"][0]["last_action"], "D");
    let future = c.get("/synthese/log?last_action=D&meta_last_action_date=gt:2999-01-01").json();
    assert_eq!(future["total"], 0);
    let all = c.get("/synthese/log?sort=meta_last_action_date:desc").json();
    assert_eq!(all["total"], 4 + 5 + 8);
    assert_eq!(all["limit"], 50);
    assert_eq!(c.get("/synthese/log?meta_last_action_date=gte:hier").status, 400);
    assert_eq!(c.get("/synthese/log?sort=id_synthese").status, 400);
    c.cookies.clear();
    assert_eq!(c.get("/synthese/log?last_action=D").status, 401);
}

#[test]
fn rename_ca_bumps_rows_and_clock_offset() {
    let srv = start(300);
    let mut c = Client::new(&srv);
    let wall = srv.now();
    srv.faults(Faults { clock_offset_secs: -7200, ..Default::default() });
    let before = srv.now();
    assert!(before < wall, "the offset applies to now()");
    srv.rename_ca(1, "Cadre renommé « test »");
    let v =
        c.get(&format!("/exports/api/3?limit=1000&filter_d_up_derniere_action={}", before.replace(' ', "T"))).json();
    let rows = items(&v);
    assert_eq!(rows.len(), 300 * 3 / 10, "the 3 JDDs of CA 1 are bumped");
    assert!(rows.iter().all(|r| r["ca_data"]["name"] == "Cadre renommé « test »"));
    let m = c.get("/exports/api/4").json();
    assert_eq!(m["items"][1]["ca_nom"], "Cadre renommé « test »");
}

#[test]
fn faults_are_injected() {
    let srv = start(3000);
    let mut c = Client::new(&srv);
    srv.faults(Faults { fail_next: 2, error_status: 503, ..Default::default() });
    for _ in 0..2 {
        let r = c.get("/exports/api/3?limit=10");
        assert_eq!(r.status, 503);
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(r.json()["code"], 503);
    }
    assert_eq!(c.get("/exports/api/3?limit=10").status, 200);

    srv.faults(Faults { fail_next: 1, error_status: 502, html_errors: true, ..Default::default() });
    let r = c.get("/exports/api/3?limit=10");
    assert_eq!(r.status, 502);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.text().contains("<center>nginx</center>"));

    srv.faults(Faults { error_every: 3, error_status: 500, ..Default::default() });
    let statuses: Vec<u16> = (0..6).map(|_| c.get("/exports/api/3?limit=1").status).collect();
    assert_eq!(statuses, [200, 200, 500, 200, 200, 500]);

    srv.faults(Faults { html_ok_next: 1, ..Default::default() });
    let r = c.get("/exports/api/3?limit=10");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(serde_json::from_slice::<Value>(&r.body).is_err());

    srv.faults(Faults { truncate_next: 1, ..Default::default() });
    let connects = c.connects;
    let r = c.get("/exports/api/3?limit=100");
    assert_eq!(r.status, 200);
    assert!(!r.complete);
    let announced: usize = r.header("content-length").unwrap().parse().unwrap();
    assert_eq!(r.body.len(), announced / 2);
    let r = c.get("/exports/api/3?limit=100");
    assert!(r.complete && r.status == 200);
    assert_eq!(c.connects, connects + 1, "the truncated connection was closed");

    srv.faults(Faults { slow_ms: 150, ..Default::default() });
    let t = Instant::now();
    assert_eq!(c.get("/exports/api/3?limit=1").status, 200);
    assert!(t.elapsed() >= Duration::from_millis(150));

    srv.faults(Faults { drip_ms: 5, ..Default::default() });
    let t = Instant::now();
    let r = c.get("/exports/api/3?limit=100");
    assert!(r.complete && r.json()["items"].as_array().unwrap().len() == 100);
    assert!(t.elapsed() >= Duration::from_millis(5 * (r.body.len() / 16384) as u64));

    srv.faults(Faults::default());
    srv.reset_stats();
    c.get("/exports/api/3?limit=10");
    let s = srv.stats();
    assert_eq!((s.requests, s.data_requests, s.data_pages, s.data_rows, s.faults_injected), (1, 1, 1, 10, 0));
    // Bytes are counted once written, which can be just after the client has read them.
    let t = Instant::now();
    while srv.stats().bytes_sent < 1000 && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(srv.stats().bytes_sent > 1000);
}

/// Paging through an export must return exactly `expected_rows`, whatever the shape and view.
#[test]
fn expected_rows_match_served_pages() {
    let srv = FixtureServer::start(FixtureConfig { rows: 2345, null_geometry_every: 7, ..Default::default() }).unwrap();
    srv.mutate(Mutation { insert: 17, update: 31, delete: 29, ..Default::default() });
    srv.rename_ca(2, "CA « 3 » renommé");
    srv.mutate(Mutation { update: 5, delete_ids: vec![1, 2345], ..Default::default() });
    srv.set_export(
        6,
        ExportConfig {
            access: Access::Public,
            shape: Shape::FeatureCollection,
            view: View::CdNomenclature,
            total_filtered: TotalFiltered::MinusOffset,
            max_page_size: 300,
        },
    );
    let mut c = Client::new(&srv);
    c.login(&srv);
    let token = srv.config().token.clone();
    for (export, keyset) in [(1, true), (1, false), (2, true), (3, false), (5, true), (6, false), (4, false)] {
        let expected = srv.expected_rows(export);
        let key = if export == 4 { "id_ca" } else { "id_synthese" };
        let mut served: Vec<Value> = Vec::new();
        let mut next = 0i64;
        for page in 0..100 {
            let path = if keyset {
                format!("/exports/api/{export}?limit=500&offset=0&orderby={key}&filter_n_up_{key}={next}&token={token}")
            } else {
                format!("/exports/api/{export}?limit=500&offset={page}&orderby={key}&token={token}")
            };
            let path = if export == 2 { path } else { path.replace(&format!("&token={token}"), "") };
            let v = c.get(&path).json();
            let limit = v["limit"].as_u64().unwrap() as usize;
            let got = items(&v);
            // A FeatureCollection page can be short mid-stream (dropped null geometries), so only
            // an empty page ends the walk; none is empty mid-stream with every 7th row null.
            if got.is_empty() {
                break;
            }
            assert!(got.len() <= limit);
            next = got.last().unwrap()[key].as_i64().unwrap() + 1;
            served.extend(got);
        }
        assert_eq!(served.len(), expected.len(), "export {export} keyset={keyset}");
        for (s, e) in served.iter().zip(&expected) {
            assert_eq!(*s, e.item, "export {export}");
            assert_eq!(s[key].as_i64(), Some(e.id_synthese));
            if export != 4 {
                assert_eq!(s["wkt_4326"].as_str(), e.wkt.as_deref());
                assert_eq!(s["derniere_action"].as_str(), Some(e.derniere_action.as_str()));
                assert_eq!(s["id_perm_sinp"].as_str(), Some(e.uuid.as_str()));
            }
        }
    }
    let e1 = srv.expected_rows(1);
    assert_eq!(e1.len() as u64, srv.live_rows());
    assert!(e1.iter().any(|r| r.wkt.is_none()));
    assert!(srv.expected_rows(2).iter().all(|r| r.wkt.is_some()));
    assert!(srv.expected_rows(99).is_empty());
}

#[test]
fn binds_loopback_only_and_stops() {
    assert!(FixtureServer::start_on("0.0.0.0:0", FixtureConfig::default()).is_err());
    let srv = start(5);
    let port = srv.port();
    assert!(srv.base_url().starts_with("http://127.0.0.1:"));
    let mut c = Client::new(&srv);
    assert_eq!(c.get("/exports/api/3").status, 200);
    srv.stop();
    srv.stop();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}
