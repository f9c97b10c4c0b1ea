//! What a source is: where it lives, how to authenticate, and the per-source options
//! (`gn2pg.source.options`). Validation happens here so that `gn2pg_add_source` refuses a bad
//! registration up front instead of failing at 3 a.m. in a scheduled run.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use url::Url;

use super::error::{redact_params, SourceError};

/// How the data API is reached (docs/source-api.md §1.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// `POST /auth/login`, then the session cookies.
    Login { login: String, password: String },
    /// `?token=<hex>`: the only token transport that works on every export module version.
    Token(String),
    /// Public export: no credentials at all.
    Public,
}

impl Auth {
    pub fn kind(&self) -> &'static str {
        match self {
            Auth::Login { .. } => "login",
            Auth::Token(_) => "token",
            Auth::Public => "public",
        }
    }
}

/// Where harvested rows are kept besides `gn2pg.observation` (`options.destination`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The local GeoNature: `gn_synthese.synthese` and `gn_meta` (sql/destination.sql).
    GeoNature,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagingMode {
    /// `orderby=<key>&filter_n_up_<key>=<last+1>&offset=0` (docs/source-api.md §4.6): stable under
    /// concurrent inserts and deletes, and no OFFSET scan on the server.
    Keyset,
    /// `offset` = page index; for views without an integer key.
    Offset,
}

/// Requests of a keyset full run (or of a reconciliation) in flight at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streams {
    /// Exactly this many key ranges fetched concurrently, as the operator chose.
    Fixed(u32),
    /// Paced to the source (`source::pacing`), within `gn2pg.max_streams_per_host`.
    Auto,
}

/// Per-source options. Every field has a default; GUCs fill the transport defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceOptions {
    pub page_size: u32,
    pub paging: PagingMode,
    /// Unique integer column used for ordering and keyset paging (`id_synthese`).
    pub key_column: String,
    /// SINP permanent identifier column (`id_perm_sinp`).
    pub uuid_column: String,
    /// WKT column used when the item carries no GeoJSON geometry (`wkt_4326`).
    pub wkt_column: String,
    /// Source modification timestamp used for incremental windows (`derniere_action`).
    pub updated_column: String,
    /// Export module prefix; discovered from `/gn_commons/modules` (login) or defaulted.
    pub module_path: Option<String>,
    /// Extra query parameters sent with every data request (filters).
    pub query: BTreeMap<String, String>,
    pub connect_timeout: Option<Duration>,
    pub timeout: Option<Duration>,
    pub max_retries: Option<u32>,
    pub max_page_bytes: Option<usize>,
    /// Safety margin subtracted from the latest source timestamp seen (incremental runs).
    pub overlap: Option<Duration>,
    /// `id_application` sent at login (required by GeoNature <= 2.9 only).
    pub id_application: Option<i64>,
    /// Parallel key-range streams of a keyset full run, fetched concurrently by one worker.
    pub streams: Streams,
    /// Background workers loading a keyset full run in parallel, one key range each: uses
    /// several CPU cores of the database server.
    pub workers: u32,
    /// `mode => 'auto'` runs a full (reconciling) harvest when the last successful full one is
    /// older than this; None = the default for the access mode, Some(0) = never.
    pub full_every_hours: Option<u64>,
    /// Incremental runs look for deletions by range counts (`source::reconcile`); None = the
    /// default for the access mode (token and public sources, which have no deletion log).
    pub reconcile: Option<bool>,
    /// Name of the organisation that publishes the export (shown by `gn2pg.flow_status`).
    pub organism: Option<String>,
    /// Its id in the national organisms referential (free text: a number or a uuid).
    pub organism_id: Option<String>,
    /// Staleness limit of this source: no successful run for longer raises a `stale` alert.
    /// `Some(ZERO)` means never stale; `None` falls back to `gn2pg.stale_after`.
    pub stale_after: Option<Duration>,
    /// A second export of the same instance serving one row per acquisition framework with
    /// its nested `datasets` (GN2PG's `metadata_only` view), harvested in full at the start of
    /// every run into `gn2pg.metadata`.
    pub metadata_export_id: Option<i32>,
    /// Unique integer column of the metadata export, for paging (`id_ca`).
    pub metadata_key_column: String,
    /// Rows are also kept in the local GeoNature. Its policy for nomenclature values it cannot
    /// resolve (`nomenclature_unknown`: `reject`, the default, or `default`) is checked here and
    /// read by sql/destination.sql.
    pub destination: Option<Destination>,
    /// Extra trust anchors for this source's TLS (PEM certificates, e.g. a private CA), on top
    /// of the system's and webpki's roots. Verification stays on.
    pub ca_certificate: Option<String>,
    /// Accept sending the login or the token over plain http:// to a host that is not the
    /// machine itself (they travel in clear).
    pub allow_insecure_http: bool,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            page_size: 1000,
            paging: PagingMode::Keyset,
            key_column: "id_synthese".into(),
            uuid_column: "id_perm_sinp".into(),
            wkt_column: "wkt_4326".into(),
            updated_column: "derniere_action".into(),
            module_path: None,
            query: BTreeMap::new(),
            connect_timeout: None,
            timeout: None,
            max_retries: None,
            max_page_bytes: None,
            overlap: None,
            id_application: None,
            streams: Streams::Auto,
            workers: 1,
            full_every_hours: None,
            reconcile: None,
            organism: None,
            organism_id: None,
            stale_after: None,
            metadata_export_id: None,
            metadata_key_column: "id_ca".into(),
            destination: None,
            ca_certificate: None,
            allow_insecure_http: false,
        }
    }
}

/// Parameters the engine sends itself: a user filter must not silently override them.
const RESERVED_PARAMS: &[&str] = &["limit", "offset", "orderby", "token", "order"];

/// `gn2pg.source.options` as written: the known keys, each value checked by
/// `SourceOptions::from_json`. An unknown key (a typo) is refused, naming the known ones; a key
/// set to `null` is as if absent.
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OptionsJson {
    page_size: Option<Value>,
    paging: Option<Value>,
    key_column: Option<Value>,
    uuid_column: Option<Value>,
    wkt_column: Option<Value>,
    updated_column: Option<Value>,
    module_path: Option<Value>,
    query: Option<Value>,
    connect_timeout_ms: Option<Value>,
    timeout_ms: Option<Value>,
    max_retries: Option<Value>,
    max_page_bytes: Option<Value>,
    overlap_seconds: Option<Value>,
    id_application: Option<Value>,
    streams: Option<Value>,
    workers: Option<Value>,
    full_every_hours: Option<Value>,
    reconcile: Option<Value>,
    organism: Option<Value>,
    organism_id: Option<Value>,
    stale_after_hours: Option<Value>,
    metadata_export_id: Option<Value>,
    ca_certificate: Option<Value>,
    allow_insecure_http: Option<Value>,
    metadata_key_column: Option<Value>,
    destination: Option<Value>,
    nomenclature_unknown: Option<Value>,
}

fn column_name(opt: &str, v: &Value) -> Result<String, SourceError> {
    let s = v.as_str().ok_or_else(|| SourceError::Config(format!("option {opt} must be a string")))?;
    let ok = !s.is_empty() && s.len() <= 63 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(SourceError::Config(format!("option {opt} = {s:?} is not a column name (letters, digits, _)")));
    }
    Ok(s.to_string())
}

/// A short non-empty text without control characters (labels shown on dashboards).
fn label(opt: &str, v: &Value, max: usize) -> Result<String, SourceError> {
    match v.as_str().map(str::trim) {
        Some(s) if !s.is_empty() && s.chars().count() <= max && !s.chars().any(char::is_control) => Ok(s.to_string()),
        _ => Err(SourceError::Config(format!("option {opt} must be a non-empty text of at most {max} characters"))),
    }
}

fn positive(opt: &str, v: &Value, max: u64) -> Result<u64, SourceError> {
    match v.as_u64() {
        Some(n) if n >= 1 && n <= max => Ok(n),
        _ => Err(SourceError::Config(format!("option {opt} must be an integer between 1 and {max}"))),
    }
}

/// Largest `ca_certificate` accepted (a bundle of a few dozen certificates).
const MAX_CA_BYTES: usize = 256 * 1024;

/// Checks option `ca_certificate`: PEM text of one or more certificates, each usable as a
/// trust anchor (what the TLS client will do with them at every run).
fn ca_bundle(v: &Value) -> Result<String, SourceError> {
    use rustls::pki_types::pem::PemObject;
    let bad = |m: String| SourceError::Config(format!("option ca_certificate {m}"));
    let pem = v.as_str().ok_or_else(|| bad("must be PEM text (-----BEGIN CERTIFICATE----- ...)".into()))?;
    if pem.len() > MAX_CA_BYTES {
        return Err(bad(format!("is longer than {MAX_CA_BYTES} bytes")));
    }
    let mut anchors = rustls::RootCertStore::empty();
    for (i, cert) in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).enumerate() {
        let cert = cert.map_err(|e| bad(format!("is not valid PEM: {e:?}")))?;
        anchors.add(cert).map_err(|e| bad(format!("certificate {} cannot be a trust anchor: {e}", i + 1)))?;
    }
    if anchors.is_empty() {
        return Err(bad("holds no certificate (-----BEGIN CERTIFICATE----- block)".into()));
    }
    Ok(pem.to_string())
}

/// Whether a URL's host is this machine (127.0.0.0/8, ::1, localhost): plain http to it
/// crosses no network.
pub fn is_loopback(u: &Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost") || d.eq_ignore_ascii_case("localhost."),
        None => false,
    }
}

impl SourceOptions {
    /// Parses `gn2pg.source.options`. Unknown keys are refused: a typo must not be ignored.
    pub fn from_json(v: &Value) -> Result<SourceOptions, SourceError> {
        if !v.is_object() {
            return Err(SourceError::Config("options must be a JSON object".into()));
        }
        let raw: OptionsJson = serde_json::from_value(v.clone())
            .map_err(|e| SourceError::Config(e.to_string().replacen("unknown field", "unknown option", 1)))?;
        let mut o = SourceOptions::default();
        if let Some(val) = &raw.page_size {
            o.page_size = positive("page_size", val, 1000)? as u32;
        }
        if let Some(val) = &raw.paging {
            o.paging = match val.as_str() {
                Some("keyset") => PagingMode::Keyset,
                Some("offset") => PagingMode::Offset,
                _ => return Err(SourceError::Config("option paging must be 'keyset' or 'offset'".into())),
            }
        }
        if let Some(val) = &raw.key_column {
            o.key_column = column_name("key_column", val)?;
        }
        if let Some(val) = &raw.uuid_column {
            o.uuid_column = column_name("uuid_column", val)?;
        }
        if let Some(val) = &raw.wkt_column {
            o.wkt_column = column_name("wkt_column", val)?;
        }
        if let Some(val) = &raw.updated_column {
            o.updated_column = column_name("updated_column", val)?;
        }
        if let Some(val) = &raw.module_path {
            let p = val
                .as_str()
                .map(|s| s.trim_matches('/'))
                .filter(|s| !s.is_empty() && !s.contains("..") && !s.contains('?'))
                .ok_or_else(|| SourceError::Config("option module_path must be a path like 'exports'".into()))?;
            o.module_path = Some(p.to_string());
        }
        if let Some(val) = &raw.query {
            let q = val
                .as_object()
                .ok_or_else(|| SourceError::Config("option query must be an object of parameters".into()))?;
            for (qk, qv) in q {
                if RESERVED_PARAMS.contains(&qk.as_str()) {
                    return Err(SourceError::Config(format!("option query may not set {qk:?}: gn2pg sends it itself")));
                }
                let s = match qv {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return Err(SourceError::Config(format!("option query.{qk} must be a string or number"))),
                };
                o.query.insert(qk.clone(), s);
            }
        }
        if let Some(val) = &raw.connect_timeout_ms {
            o.connect_timeout = Some(Duration::from_millis(positive("connect_timeout_ms", val, 3_600_000)?));
        }
        if let Some(val) = &raw.timeout_ms {
            o.timeout = Some(Duration::from_millis(positive("timeout_ms", val, 3_600_000)?));
        }
        if let Some(val) = &raw.max_retries {
            o.max_retries =
                Some(val.as_u64().filter(|n| *n <= 100).ok_or_else(|| {
                    SourceError::Config("option max_retries must be an integer between 0 and 100".into())
                })? as u32)
        }
        if let Some(val) = &raw.max_page_bytes {
            o.max_page_bytes = Some(positive("max_page_bytes", val, super::page::MAX_PAGE_BYTES_CAP as u64)? as usize)
        }
        if let Some(val) = &raw.overlap_seconds {
            o.overlap =
                Some(Duration::from_secs(val.as_u64().ok_or_else(|| {
                    SourceError::Config("option overlap_seconds must be a non-negative integer".into())
                })?))
        }
        if let Some(val) = &raw.id_application {
            o.id_application = Some(
                val.as_i64().ok_or_else(|| SourceError::Config("option id_application must be an integer".into()))?,
            )
        }
        if let Some(val) = &raw.streams {
            o.streams = match val.as_str() {
                Some("auto") => Streams::Auto,
                _ => Streams::Fixed(positive("streams", val, 16).map_err(|_| {
                    SourceError::Config("option streams must be 'auto' or an integer between 1 and 16".into())
                })? as u32),
            }
        }
        if let Some(val) = &raw.reconcile {
            o.reconcile = Some(
                val.as_bool().ok_or_else(|| SourceError::Config("option reconcile must be true or false".into()))?,
            )
        }
        if let Some(val) = &raw.workers {
            o.workers = positive("workers", val, 8)? as u32;
        }
        if let Some(val) = &raw.full_every_hours {
            o.full_every_hours = Some(val.as_u64().ok_or_else(|| {
                SourceError::Config("option full_every_hours must be a non-negative integer (0: never)".into())
            })?)
        }
        if let Some(val) = &raw.organism {
            o.organism = Some(label("organism", val, 200)?);
        }
        if let Some(val) = &raw.organism_id {
            o.organism_id = Some(match val {
                Value::Number(n) if n.is_u64() => n.to_string(),
                _ => label("organism_id", val, 100)?,
            })
        }
        if let Some(val) = &raw.stale_after_hours {
            o.stale_after = Some(Duration::from_secs(
                val.as_u64().filter(|n| *n <= 87_600).ok_or_else(|| {
                    SourceError::Config(
                        "option stale_after_hours must be an integer between 0 (never stale) and 87600".into(),
                    )
                })? * 3600,
            ))
        }
        if let Some(val) = &raw.metadata_export_id {
            o.metadata_export_id = Some(positive("metadata_export_id", val, i32::MAX as u64)? as i32);
        }
        if let Some(val) = &raw.metadata_key_column {
            o.metadata_key_column = column_name("metadata_key_column", val)?;
        }
        if let Some(val) = &raw.destination {
            o.destination = match val.as_str() {
                Some("geonature") => Some(Destination::GeoNature),
                _ => return Err(SourceError::Config("option destination must be 'geonature'".into())),
            }
        }
        if let Some(val) = &raw.nomenclature_unknown {
            if !matches!(val.as_str(), Some("reject" | "default")) {
                return Err(SourceError::Config("option nomenclature_unknown must be 'reject' or 'default'".into()));
            }
        }
        if let Some(val) = &raw.ca_certificate {
            o.ca_certificate = Some(ca_bundle(val)?);
        }
        if let Some(val) = &raw.allow_insecure_http {
            o.allow_insecure_http = val
                .as_bool()
                .ok_or_else(|| SourceError::Config("option allow_insecure_http must be true or false".into()))?
        }
        if raw.nomenclature_unknown.is_some() && o.destination.is_none() {
            return Err(SourceError::Config(
                "option nomenclature_unknown applies to a destination: add \"destination\": \"geonature\"".into(),
            ));
        }
        Ok(o)
    }
}

/// Normalises a GeoNature URL to its API root: `https://host/geonature`,
/// `https://host/geonature/` and `https://host/geonature/api/` all become
/// `https://host/geonature/api`.
pub fn api_root(raw: &str) -> Result<Url, SourceError> {
    let raw = raw.trim();
    // Messages quote the URL: never with a secret it may carry.
    let shown = redact_params(raw);
    let mut u = Url::parse(raw).map_err(|e| SourceError::Config(format!("url {shown:?} is not a valid URL: {e}")))?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(SourceError::Config(format!("url {shown:?} must use http or https")));
    }
    if u.host_str().is_none_or(|h| h.is_empty()) {
        return Err(SourceError::Config(format!("url {shown:?} has no host")));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(SourceError::Config("url must not embed credentials: use login/password or token".into()));
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(SourceError::Config(format!(
            "url {shown:?} must not have a query or fragment: put filters in options.query"
        )));
    }
    let path = u.path().trim_end_matches('/').to_string();
    let path = if path.ends_with("/api") { path } else { format!("{path}/api") };
    u.set_path(&path);
    Ok(u)
}

/// Everything needed to talk to one source.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub name: String,
    pub api_root: Url,
    pub export_id: i32,
    pub auth: Auth,
    pub options: SourceOptions,
}

impl SourceConfig {
    /// Refuses credentials over plain http:// to another machine unless the source allows it
    /// explicitly (checked at registration and before every run).
    pub fn check_transport(&self) -> Result<(), SourceError> {
        let credentials = !matches!(self.auth, Auth::Public);
        if credentials
            && self.api_root.scheme() == "http"
            && !is_loopback(&self.api_root)
            && !self.options.allow_insecure_http
        {
            return Err(SourceError::Config(format!(
                "url {} is plain http:// and the source sends a {}: it would travel in clear; use https://, \
                 or set option allow_insecure_http to true to accept that",
                redact_params(self.api_root.as_str()),
                if matches!(self.auth, Auth::Token(_)) { "token" } else { "login and password" }
            )));
        }
        Ok(())
    }

    /// URL of an API path (`gn_commons/modules`, `exports/api/3`, ...).
    pub fn endpoint(&self, path: &str) -> Url {
        let mut u = self.api_root.clone();
        let p = format!("{}/{}", u.path().trim_end_matches('/'), path.trim_start_matches('/'));
        u.set_path(&p);
        u
    }
}

/// Builds [`Auth`] from the registry columns, refusing incomplete combinations.
pub fn auth_from_parts(
    kind: &str,
    login: Option<&str>,
    password: Option<&str>,
    token: Option<&str>,
) -> Result<Auth, SourceError> {
    let present = |s: Option<&str>| s.is_some_and(|s| !s.is_empty());
    match kind {
        "login" => {
            if !present(login) || !present(password) {
                return Err(SourceError::Config("auth 'login' needs login and password".into()));
            }
            if present(token) {
                return Err(SourceError::Config("auth 'login' takes no token (use auth => 'token')".into()));
            }
            Ok(Auth::Login { login: login.unwrap().to_string(), password: password.unwrap().to_string() })
        }
        "token" => {
            if !present(token) {
                return Err(SourceError::Config("auth 'token' needs token (the export API key)".into()));
            }
            if present(login) || present(password) {
                return Err(SourceError::Config("auth 'token' takes no login or password".into()));
            }
            Ok(Auth::Token(token.unwrap().to_string()))
        }
        "public" => {
            if present(login) || present(password) || present(token) {
                return Err(SourceError::Config("auth 'public' takes no credentials".into()));
            }
            Ok(Auth::Public)
        }
        other => Err(SourceError::Config(format!("auth must be 'login', 'token' or 'public', not {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn api_root_variants() {
        for raw in
            ["http://h:8/geonature", "http://h:8/geonature/", "http://h:8/geonature/api", "http://h:8/geonature/api/"]
        {
            assert_eq!(api_root(raw).unwrap().as_str(), "http://h:8/geonature/api", "{raw}");
        }
        assert_eq!(api_root("https://gn.example.org").unwrap().as_str(), "https://gn.example.org/api");
    }

    #[test]
    fn api_root_rejects() {
        for raw in ["ftp://h/x", "not a url", "http://u:p@h/", "http://h/x?token=1"] {
            assert!(api_root(raw).is_err(), "{raw}");
        }
        // The refusal quotes the URL without the secrets it carries.
        for raw in
            ["http://h/x?token=s3cr3t", "http://h /x?api_key=s3cr3t", "ftp://h/x?password=s3cr3t", "http://u:s3cr3t@h/"]
        {
            let e = api_root(raw).unwrap_err().to_string();
            assert!(!e.contains("s3cr3t"), "{e}");
        }
    }

    #[test]
    fn endpoint_joins() {
        let c = SourceConfig {
            name: "s".into(),
            api_root: api_root("http://h/geonature").unwrap(),
            export_id: 3,
            auth: Auth::Public,
            options: SourceOptions::default(),
        };
        assert_eq!(c.endpoint("exports/api/3").as_str(), "http://h/geonature/api/exports/api/3");
    }

    #[test]
    fn options_parse_and_refuse() {
        let o = SourceOptions::from_json(&json!({"page_size": 500, "paging": "offset", "query": {"cd_nom": 4001}}))
            .unwrap();
        assert_eq!(o.page_size, 500);
        assert_eq!(o.paging, PagingMode::Offset);
        assert_eq!(o.query.get("cd_nom").unwrap(), "4001");
        let typo = SourceOptions::from_json(&json!({"page_sise": 5})).unwrap_err().to_string();
        assert!(typo.contains("unknown option `page_sise`") && typo.contains("`page_size`"), "{typo}");
        assert_eq!(SourceOptions::from_json(&json!({"page_size": null})).unwrap().page_size, 1000, "null: the default");
        assert!(SourceOptions::from_json(&json!({"page_size": 5000})).is_err());
        assert!(SourceOptions::from_json(&json!({"key_column": "id; drop"})).is_err());
        assert!(SourceOptions::from_json(&json!({"query": {"limit": 5}})).is_err());
        let o = SourceOptions::from_json(&json!({"streams": 4, "full_every_hours": 0})).unwrap();
        assert_eq!((o.streams, o.full_every_hours), (Streams::Fixed(4), Some(0)));
        assert!(SourceOptions::from_json(&json!({"streams": 0})).is_err());
        let o = SourceOptions::from_json(&json!({"streams": "auto", "reconcile": false})).unwrap();
        assert_eq!((o.streams, o.reconcile), (Streams::Auto, Some(false)));
        assert_eq!(SourceOptions::default().streams, Streams::Auto);
        assert!(SourceOptions::from_json(&json!({"streams": "many"})).unwrap_err().to_string().contains("'auto'"));
        assert!(SourceOptions::from_json(&json!({"reconcile": "yes"})).is_err());
    }

    #[test]
    fn organisation_and_staleness_options() {
        let o =
            SourceOptions::from_json(&json!({"organism": " PN Écrins ", "organism_id": 1234, "stale_after_hours": 36}))
                .unwrap();
        assert_eq!(o.organism.as_deref(), Some("PN Écrins"));
        assert_eq!(o.organism_id.as_deref(), Some("1234"));
        assert_eq!(o.stale_after, Some(Duration::from_secs(36 * 3600)));
        let o = SourceOptions::from_json(
            &json!({"organism_id": "5a7e3b9c-0000-4000-8000-000000000001", "stale_after_hours": 0}),
        )
        .unwrap();
        assert_eq!(o.organism_id.as_deref(), Some("5a7e3b9c-0000-4000-8000-000000000001"));
        assert_eq!(o.stale_after, Some(Duration::ZERO), "0 means never stale");
        assert_eq!(SourceOptions::from_json(&json!({})).unwrap().stale_after, None);
        for bad in [
            json!({"organism": ""}),
            json!({"organism": 12}),
            json!({"organism": "a\nb"}),
            json!({"organism_id": -3}),
            json!({"organism_id": ["x"]}),
            json!({"stale_after_hours": -1}),
            json!({"stale_after_hours": "2 days"}),
            json!({"stale_after_hours": 100000}),
        ] {
            assert!(SourceOptions::from_json(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn metadata_export_options() {
        let o = SourceOptions::default();
        assert_eq!((o.metadata_export_id, o.metadata_key_column.as_str()), (None, "id_ca"));
        let o = SourceOptions::from_json(&json!({"metadata_export_id": 4, "metadata_key_column": "id_af"})).unwrap();
        assert_eq!((o.metadata_export_id, o.metadata_key_column.as_str()), (Some(4), "id_af"));
        for bad in [
            json!({"metadata_export_id": 0}),
            json!({"metadata_export_id": "4"}),
            json!({"metadata_export_id": -1}),
            json!({"metadata_key_column": "id ca"}),
        ] {
            assert!(SourceOptions::from_json(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn destination_options() {
        assert_eq!(SourceOptions::default().destination, None);
        let o = SourceOptions::from_json(&json!({"destination": "geonature"})).unwrap();
        assert_eq!(o.destination, Some(Destination::GeoNature));
        for policy in ["reject", "default"] {
            let o = SourceOptions::from_json(&json!({"destination": "geonature", "nomenclature_unknown": policy}));
            assert_eq!(o.unwrap().destination, Some(Destination::GeoNature));
        }
        for bad in [
            json!({"destination": "synthese"}),
            json!({"destination": true}),
            json!({"destination": "geonature", "nomenclature_unknown": "ignore"}),
            json!({"nomenclature_unknown": "default"}),
        ] {
            assert!(SourceOptions::from_json(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_over_plain_http_need_an_explicit_opt_in_except_to_this_machine() {
        let cfg = |url: &str, auth: Auth, options: Value| SourceConfig {
            name: "s".into(),
            api_root: api_root(url).unwrap(),
            export_id: 1,
            auth,
            options: SourceOptions::from_json(&options).unwrap(),
        };
        let token = || Auth::Token("t0k3n".into());
        let e = cfg("http://geonature.example.org", token(), json!({})).check_transport().unwrap_err().to_string();
        assert!(e.contains("plain http://") && e.contains("allow_insecure_http") && !e.contains("t0k3n"), "{e}");
        let login = Auth::Login { login: "l".into(), password: "p".into() };
        assert!(cfg("http://10.0.0.5:8080/gn", login, json!({})).check_transport().is_err());
        assert!(cfg("http://geonature.example.org", token(), json!({"allow_insecure_http": true}))
            .check_transport()
            .is_ok());
        assert!(cfg("https://geonature.example.org", token(), json!({})).check_transport().is_ok());
        assert!(cfg("http://geonature.example.org", Auth::Public, json!({})).check_transport().is_ok());
        for local in ["http://127.0.0.1:8765/gn", "http://127.3.2.1/gn", "http://[::1]:9/gn", "http://localhost:9/gn"] {
            assert!(cfg(local, token(), json!({})).check_transport().is_ok(), "{local}");
        }
        assert!(SourceOptions::from_json(&json!({"allow_insecure_http": "yes"})).is_err());
    }

    #[test]
    fn a_ca_certificate_must_be_pem_certificates() {
        for bad in [
            json!(12),
            json!(""),
            json!("not a certificate"),
            json!("-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n"),
            json!("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
        ] {
            let e = SourceOptions::from_json(&json!({ "ca_certificate": bad })).unwrap_err().to_string();
            assert!(e.contains("option ca_certificate"), "{e}");
        }
    }

    #[test]
    fn auth_combinations() {
        assert!(auth_from_parts("login", Some("a"), Some("b"), None).is_ok());
        assert!(auth_from_parts("login", Some("a"), None, None).is_err());
        assert!(auth_from_parts("token", None, None, Some("t")).is_ok());
        assert!(auth_from_parts("token", Some("a"), None, Some("t")).is_err());
        assert!(auth_from_parts("public", None, None, None).is_ok());
        assert!(auth_from_parts("public", None, None, Some("t")).is_err());
        assert!(auth_from_parts("oauth", None, None, None).is_err());
    }
}
