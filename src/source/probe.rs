//! "Test connection": the requests a harvest starts with, sent once, and what the source said
//! to each. Used by `gn2pg_check_source` (src/check.rs) before a source is saved or to diagnose
//! one that fails. No PostgreSQL calls: the caller runs [`probe`] on a helper thread.
//!
//! Steps, each stopping the probe when it fails for good: the public configuration
//! (`/gn_commons/config`: is anything there, which GeoNature version), sign-in and Export module
//! discovery (as a harvest does them), the module's version when GeoNature tells it, then one
//! row of the export, read with the harvest's own page reader (item shape, row count, columns),
//! and one row of the metadata export when the source declares one.

use std::time::Instant;

use serde_json::{json, Value};

use super::client::{Host, SourceClient};
use super::config::{Auth, SourceConfig};
use super::page::{read_page, Shape};
use super::SourceError;

/// One request (or exchange) of the probe and its outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    pub ms: u64,
}

/// What the source answered. `None`: not reached that far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub reachable: Option<bool>,
    pub authenticated: Option<bool>,
    pub export_found: Option<bool>,
    pub geonature_version: Option<String>,
    pub export_module_version: Option<String>,
    pub module_path: Option<String>,
    pub max_page_size: Option<u64>,
    pub item_shape: Option<&'static str>,
    /// `total` of the export's first page: rows of the whole view.
    pub row_count: Option<u64>,
    /// `total_filtered` of that page (rows matching `options.query`); its meaning varies with
    /// GeoNature versions (docs/source-api.md §4.3), so it is informative only.
    pub row_count_filtered: Option<u64>,
    pub columns: Vec<String>,
    pub key_column_found: Option<bool>,
    pub uuid_column_found: Option<bool>,
    /// `feature geometry`, `<wkt column>` or `none`.
    pub geometry: Option<String>,
    pub metadata_export_found: Option<bool>,
    pub steps: Vec<Step>,
    pub failed_step: Option<&'static str>,
    pub error: Option<String>,
    /// The failure is of a kind a harvest retries (connection, timeout, 429, 5xx).
    pub transient: bool,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.failed_step.is_none()
    }

    fn step(&mut self, name: &'static str, started: Instant, outcome: Result<String, String>) -> bool {
        let ms = started.elapsed().as_millis() as u64;
        let ok = outcome.is_ok();
        let detail = outcome.unwrap_or_else(|e| e);
        self.steps.push(Step { name, ok, detail, ms });
        ok
    }

    fn fail(&mut self, name: &'static str, started: Instant, e: &SourceError) {
        self.transient = e.is_retryable();
        self.error = Some(e.to_string());
        self.failed_step = Some(name);
        self.step(name, started, Err(e.to_string()));
    }

    /// The report as the JSON object `gn2pg_check_source` returns.
    pub fn to_json(&self) -> Value {
        let steps: Vec<Value> =
            self.steps.iter().map(|s| json!({"step": s.name, "ok": s.ok, "detail": s.detail, "ms": s.ms})).collect();
        json!({
            "ok": self.ok(),
            "reachable": self.reachable,
            "authenticated": self.authenticated,
            "export_found": self.export_found,
            "geonature_version": self.geonature_version,
            "export_module_version": self.export_module_version,
            "module_path": self.module_path,
            "max_page_size": self.max_page_size,
            "item_shape": self.item_shape,
            "row_count": self.row_count,
            "row_count_filtered": self.row_count_filtered,
            "columns": self.columns,
            "key_column_found": self.key_column_found,
            "uuid_column_found": self.uuid_column_found,
            "geometry": self.geometry,
            "metadata_export_found": self.metadata_export_found,
            "failed_step": self.failed_step,
            "error": self.error,
            "transient": self.transient,
            "steps": steps,
        })
    }
}

fn is_unreachable(e: &SourceError) -> bool {
    matches!(e, SourceError::Connect { .. } | SourceError::Timeout { .. })
}

/// Sends the probe's requests through `client` (built from the source's configuration and the
/// harvest's limits). Never fails: every outcome is in the report.
pub fn probe(client: &mut SourceClient, cfg: &SourceConfig, host: &dyn Host) -> Report {
    let mut r = Report::default();
    if let Err(e) = host.check_interrupts() {
        r.fail("config", Instant::now(), &e);
        return r;
    }

    // 1. The public configuration: says whether a GeoNature answers at this URL, and its version.
    let t = Instant::now();
    match client.get_api("gn_commons/config", host) {
        Ok(text) => {
            r.reachable = Some(true);
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            r.geonature_version = v.get("GEONATURE_VERSION").and_then(Value::as_str).map(str::to_string);
            r.max_page_size = v.pointer("/EXPORTS/max_page_size_api").and_then(Value::as_u64);
            let detail = match &r.geonature_version {
                Some(ver) => format!("GeoNature {ver}"),
                None => "answered, without GEONATURE_VERSION".to_string(),
            };
            r.step("config", t, Ok(detail));
        }
        Err(e) if is_unreachable(&e) || matches!(e, SourceError::Cancelled(_)) => {
            r.reachable = Some(false);
            r.fail("config", t, &e);
            return r;
        }
        Err(e) => {
            // GeoNature < 2.12 has no such route; the next steps say whether the URL is right.
            r.reachable = Some(true);
            r.step("config", t, Ok(format!("no public configuration (GeoNature < 2.12, or not a GeoNature URL): {e}")));
        }
    }

    // 2. Sign-in (login sources) and the Export module's prefix, as a harvest starts.
    let t = Instant::now();
    match client.prepare(host) {
        Ok(()) => {
            if matches!(cfg.auth, Auth::Login { .. }) {
                r.authenticated = Some(true);
            }
            r.module_path = client.module_path().map(str::to_string);
            let detail = match cfg.auth {
                Auth::Login { .. } => "signed in; Export module at /",
                _ => "Export module at /",
            };
            r.step("sign-in", t, Ok(format!("{detail}{}", r.module_path.as_deref().unwrap_or("exports"))));
        }
        Err(e) => {
            match &e {
                SourceError::LoginRefused { .. } => r.authenticated = Some(false),
                SourceError::NoExportModule { .. } => r.authenticated = Some(true),
                _ => {}
            }
            r.fail("sign-in", t, &e);
            return r;
        }
    }

    // 3. The module's version: GeoNature >= 2.17 lists it with the module (best effort).
    let t = Instant::now();
    let path = if matches!(cfg.auth, Auth::Login { .. }) { "gn_commons/modules" } else { "gn_commons/module/EXPORTS" };
    if let Ok(text) = client.get_api(path, host) {
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let row = match &v {
            Value::Array(rows) => rows.iter().find(|m| m.get("module_code") == Some(&json!("EXPORTS"))),
            other => Some(other),
        };
        r.export_module_version = row.and_then(|m| m.get("version")).and_then(Value::as_str).map(str::to_string);
        if let Some(ver) = &r.export_module_version {
            r.step("module version", t, Ok(format!("Export module {ver}")));
        }
    }

    // 4. One row of the export, read like a harvest reads its pages.
    let key = cfg.options.key_column.clone();
    let params = vec![
        ("limit".to_string(), "1".to_string()),
        ("offset".to_string(), "0".to_string()),
        ("orderby".to_string(), key.clone()),
    ];
    let t = Instant::now();
    let body = match client.fetch_export_page(&params, host) {
        Ok(b) => b,
        Err(e) => {
            match &e {
                SourceError::NotFound { .. } => r.export_found = Some(false),
                SourceError::Forbidden { .. } | SourceError::AuthRequired { .. } => {
                    r.authenticated = Some(false);
                }
                _ => {}
            }
            r.fail("export", t, &e);
            if let (Some(false), SourceError::NotFound { .. }) = (r.export_found, &e) {
                r.error = Some(format!("export {} not found: {e}", cfg.export_id));
            }
            return r;
        }
    };
    let url = super::error::redact_url(client.export_url(&params).as_str());
    let read = read_page(&body, &client.page_limits(), |item, geometry| Ok((item.is_ok(), geometry.is_some())));
    let (env, items) = match read {
        Ok(x) => x,
        Err(cause) => {
            r.export_found = Some(true);
            r.fail("export", t, &SourceError::BadAnswer { url, cause });
            return r;
        }
    };
    r.export_found = Some(true);
    if !matches!(cfg.auth, Auth::Public) {
        r.authenticated = Some(true);
    }
    r.item_shape = Some(match env.shape {
        Shape::Array => "array",
        Shape::FeatureCollection => "FeatureCollection",
    });
    r.row_count = env.total;
    r.row_count_filtered = env.total_filtered;
    let first = first_item(&body);
    r.columns = first.as_ref().map(|o| o.keys().cloned().collect()).unwrap_or_default();
    if let Some(o) = &first {
        r.key_column_found = Some(o.contains_key(&key));
        r.uuid_column_found = Some(o.contains_key(&cfg.options.uuid_column));
        let has_feature_geometry = items.first().is_some_and(|(_, g)| *g);
        r.geometry = Some(if has_feature_geometry {
            "feature geometry".to_string()
        } else if o.get(&cfg.options.wkt_column).is_some_and(|v| !v.is_null()) {
            cfg.options.wkt_column.clone()
        } else {
            "none".to_string()
        });
    }
    let mut detail = format!(
        "{} items, {} rows{}",
        r.item_shape.unwrap_or("?"),
        env.total.map_or("unknown".to_string(), |n| n.to_string()),
        if items.is_empty() { " (the export is empty)" } else { "" }
    );
    let mut problem = None;
    if r.key_column_found == Some(false) {
        problem = Some(format!(
            "items have no key column {key:?}: set option key_column (columns: {})",
            r.columns.join(", ")
        ));
    } else if r.uuid_column_found == Some(false) {
        detail.push_str(&format!("; no uuid column {:?}", cfg.options.uuid_column));
    }
    if let Some(p) = problem {
        r.fail("export", t, &SourceError::BadAnswer { url, cause: p });
        return r;
    }
    r.step("export", t, Ok(detail));

    // 5. The metadata export, when declared.
    if let Some(meta) = cfg.options.metadata_export_id {
        let t = Instant::now();
        let params = vec![
            ("limit".to_string(), "1".to_string()),
            ("offset".to_string(), "0".to_string()),
            ("orderby".to_string(), cfg.options.metadata_key_column.clone()),
        ];
        match client.fetch_other_export_page(meta, &params, host) {
            Ok(body) => match read_page(&body, &client.page_limits(), |_, _| Ok(())) {
                Ok((env, _)) => {
                    r.metadata_export_found = Some(true);
                    let n = env.total.map_or("unknown".to_string(), |n| n.to_string());
                    r.step("metadata export", t, Ok(format!("export {meta}: {n} acquisition frameworks")));
                }
                Err(cause) => {
                    r.metadata_export_found = Some(true);
                    let url = super::error::redact_url(client.other_export_url(meta, &params).as_str());
                    r.fail("metadata export", t, &SourceError::BadAnswer { url, cause });
                }
            },
            Err(e) => {
                r.metadata_export_found = Some(!matches!(e, SourceError::NotFound { .. }));
                r.fail("metadata export", t, &e);
            }
        }
    }
    r
}

/// The first item of an answer (a feature's properties), as a JSON object.
fn first_item(body: &str) -> Option<serde_json::Map<String, Value>> {
    let v: Value = serde_json::from_str(body).ok()?;
    let items = v.get("items")?;
    let first = match items {
        Value::Array(a) => a.first()?.clone(),
        Value::Object(o) => o.get("features")?.as_array()?.first()?.get("properties")?.clone(),
        _ => return None,
    };
    match first {
        Value::Object(o) => Some(o),
        _ => None,
    }
}
