//! Sources admin (gn2pg_admin): add and edit sources, Test connection before saving
//! (`gn2pg_check_source`), remove, and the GeoNature accounts allowed to sign in.
//!
//! Credentials are write-only: the password, token and webhook fields are always empty; left
//! empty, the stored value is kept, and it is passed from table to function inside one SQL
//! statement, never through the dashboard.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::db::{Level, UserTx};
use crate::layout::{self, badge, csrf, dash, flash};
use crate::web::{url_encode, AppError, State as AppState, User};

#[derive(Deserialize, Default, Clone)]
pub struct SourceForm {
    #[serde(default)]
    csrf: String,
    /// Set when editing a saved source.
    #[serde(default)]
    original: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    export_id: String,
    #[serde(default)]
    auth: String,
    #[serde(default)]
    login: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    organism: String,
    #[serde(default)]
    organism_id: String,
    #[serde(default)]
    options: String,
    #[serde(default)]
    alert_webhook: String,
    #[serde(default)]
    clear_webhook: String,
}

/// What a saved source shows in the form; credentials only as "set or not".
struct Saved {
    form: SourceForm,
    has_password: bool,
    has_token: bool,
    has_webhook: bool,
}

fn admin_only(level: Level) -> Result<(), AppError> {
    if level.admin {
        Ok(())
    } else {
        Err(AppError::Forbidden("the sources admin needs the role gn2pg_admin".into()))
    }
}

async fn enter(app: &AppState, user: &User, write: bool) -> Result<(UserTx, Level), AppError> {
    let (tx, level) = app.db.begin(&user.session.account, write).await?;
    if let Err(e) = admin_only(level) {
        tx.rollback().await;
        return Err(e);
    }
    Ok((tx, level))
}

fn opt(s: &str) -> Option<String> {
    Some(s.trim().to_string()).filter(|s| !s.is_empty())
}

impl SourceForm {
    /// The options object: the JSON field, with the organism fields merged in.
    fn options_json(&self) -> Result<Value, AppError> {
        let mut o: Map<String, Value> = match self.options.trim() {
            "" => Map::new(),
            text => match serde_json::from_str(text) {
                Ok(Value::Object(m)) => m,
                _ => {
                    return Err(AppError::BadRequest("options must be a JSON object, e.g. {\"page_size\": 500}".into()))
                }
            },
        };
        for (k, v) in [("organism", &self.organism), ("organism_id", &self.organism_id)] {
            match opt(v) {
                Some(v) => o.insert(k.into(), Value::String(v)),
                None => o.remove(k),
            };
        }
        Ok(Value::Object(o))
    }

    fn export_id(&self) -> Result<i32, AppError> {
        self.export_id.trim().parse().map_err(|_| AppError::BadRequest("export id must be a whole number".into()))
    }

    fn auth(&self) -> String {
        match self.auth.as_str() {
            "login" | "token" | "public" => self.auth.clone(),
            _ => "public".into(),
        }
    }
}

fn form_markup(
    user: &User,
    f: &SourceForm,
    saved: Option<&Saved>,
    report: Option<Markup>,
    error: Option<&str>,
) -> Markup {
    let editing = !f.original.is_empty();
    let set = |b: bool| if b { "set: leave empty to keep it" } else { "not set" };
    html! {
        @if let Some(e) = error { div class="error" id="error" role="alert" { (e) } }
        form method="post" action="/admin/sources" id="source-form" class="source-form" {
            (csrf(user))
            input type="hidden" name="original" value=(f.original);
            label { "Name " input type="text" name="name" id="f-name" value=(f.name) required pattern="[a-z0-9_-]{1,63}" readonly[editing]; }
            label { "GeoNature URL " input type="url" name="url" id="f-url" value=(f.url) required placeholder="https://geonature.example.org"; }
            label { "Export id " input type="number" name="export_id" id="f-export" value=(f.export_id) min="1" required; }
            label { "Access " select name="auth" id="f-auth" {
                @for a in ["login", "token", "public"] { option value=(a) selected[f.auth == a] { (a) } }
            } }
            fieldset {
                legend { "Credentials (never shown back)" }
                label { "Login " input type="text" name="login" id="f-login" value=(f.login) autocomplete="off"; }
                label { "Password " input type="password" name="password" id="f-password" value="" autocomplete="new-password"
                        placeholder=(set(saved.is_some_and(|s| s.has_password))); }
                label { "Token " input type="password" name="token" id="f-token" value="" autocomplete="off"
                        placeholder=(set(saved.is_some_and(|s| s.has_token))); }
            }
            label { "Organism " input type="text" name="organism" id="f-organism" value=(f.organism) maxlength="200"; }
            label { "National organism id " input type="text" name="organism_id" id="f-organism-id" value=(f.organism_id) maxlength="100"; }
            label { "Other options (JSON) " textarea name="options" id="f-options" rows="3" placeholder="{\"page_size\": 1000}" { (f.options) } }
            label { "Alert webhook " input type="password" name="alert_webhook" id="f-webhook" value="" autocomplete="off"
                    placeholder=(set(saved.is_some_and(|s| s.has_webhook))); }
            @if saved.is_some_and(|s| s.has_webhook) { label { input type="checkbox" name="clear_webhook" value="1"; " remove the webhook" } }
            div class="actions" {
                button type="submit" formaction="/admin/sources/test" id="test-connection" data-into="test-result" { "Test connection" }
                button type="submit" id="save" { "Save" }
            }
        }
        div id="test-result" { @if let Some(r) = report { (r) } }
    }
}

/// A `gn2pg_check_source` report as HTML.
pub fn report_markup(r: &Value) -> Markup {
    let ok = r.get("ok").and_then(Value::as_bool).unwrap_or(false);
    let s = |k: &str| r.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let tri = |k: &str| match r.get(k).and_then(Value::as_bool) {
        Some(true) => "yes",
        Some(false) => "no",
        None => "not reached",
    };
    html! {
        section class=(if ok { "panel report ok" } else { "panel report bad" }) id="report" {
            h2 { @if ok { "The source answered" } @else { "Test failed" } }
            @if let Some(e) = s("error") { div class="error" id="report-error" { (e) } }
            dl class="facts" {
                dt { "Reachable" } dd id="r-reachable" { (tri("reachable")) }
                dt { "Authenticated" } dd id="r-authenticated" { (tri("authenticated")) }
                dt { "Export found" } dd id="r-export" { (tri("export_found")) }
                dt { "Item shape" } dd { (s("item_shape").unwrap_or_default()) }
                dt { "Rows" } dd id="r-rows" { (r.get("row_count").map(|v| v.to_string()).filter(|v| v != "null").unwrap_or_default()) }
                dt { "GeoNature" } dd { (s("geonature_version").unwrap_or_default()) }
                dt { "Export module" } dd { (s("export_module_version").unwrap_or_default()) }
                dt { "Geometry" } dd { (s("geometry").unwrap_or_default()) }
            }
            @if let Some(steps) = r.get("steps").and_then(Value::as_array) {
                ol class="steps" { @for st in steps {
                    li {
                        (badge(if st.get("ok").and_then(Value::as_bool).unwrap_or(false) { "ok" } else { "failed" })) " "
                        strong { (st.get("step").and_then(Value::as_str).unwrap_or("")) } " "
                        (st.get("detail").and_then(Value::as_str).unwrap_or("")) " "
                        small { "(" (st.get("ms").and_then(Value::as_u64).unwrap_or(0)) " ms)" }
                    }
                } }
            }
        }
    }
}

async fn load_saved(tx: &UserTx, name: &str) -> Result<Option<Saved>, AppError> {
    let Some(r) = tx
        .opt(
            "SELECT s.name, s.url, s.export_id, s.auth, k.login, s.options,
                    k.password IS NOT NULL, k.token IS NOT NULL, k.alert_webhook IS NOT NULL
               FROM gn2pg.source s LEFT JOIN gn2pg.source_secret k ON k.source_id = s.id WHERE s.name = $1",
            &[&name],
        )
        .await?
    else {
        return Ok(None);
    };
    let mut options: Value = r.get(5);
    let take = |o: &mut Value, k: &str| {
        o.as_object_mut().and_then(|m| m.remove(k)).map(|v| v.as_str().map(str::to_string).unwrap_or(v.to_string()))
    };
    let organism = take(&mut options, "organism").unwrap_or_default();
    let organism_id = take(&mut options, "organism_id").unwrap_or_default();
    let rest = if options.as_object().is_some_and(|m| m.is_empty()) { String::new() } else { options.to_string() };
    Ok(Some(Saved {
        form: SourceForm {
            original: r.get(0),
            name: r.get(0),
            url: r.get(1),
            export_id: r.get::<_, i32>(2).to_string(),
            auth: r.get(3),
            login: r.get::<_, Option<String>>(4).unwrap_or_default(),
            organism,
            organism_id,
            options: rest,
            ..Default::default()
        },
        has_password: r.get(6),
        has_token: r.get(7),
        has_webhook: r.get(8),
    }))
}

#[derive(Deserialize, Default)]
pub struct ListQuery {
    done: Option<String>,
}

pub async fn list(State(app): State<AppState>, user: User, Query(q): Query<ListQuery>) -> Result<Response, AppError> {
    let (tx, level) = enter(&app, &user, false).await?;
    let sources = tx
        .query(
            "SELECT s.name, s.url, s.export_id, s.auth, s.options ->> 'organism', s.options ->> 'organism_id', s.enabled
               FROM gn2pg.source s ORDER BY s.name",
            &[],
        )
        .await?;
    let accounts = if app.geonature {
        tx.query(
            "SELECT login, role, mapped_by, to_char(mapped_at, 'YYYY-MM-DD HH24:MI') FROM gn2pg.geonature_account ORDER BY login",
            &[],
        )
        .await?
    } else {
        Vec::new()
    };
    tx.rollback().await;
    let body = html! {
        (flash(q.done.as_deref()))
        p { a href="/admin/sources/new" id="add-source" class="button" { "Add a source" } }
        table class="sources" id="sources-table" {
            thead { tr { th { "Name" } th { "URL" } th { "Export" } th { "Access" } th { "Organism" } th { "National id" } th {} } }
            tbody { @for s in &sources {
                @let name: String = s.get(0);
                tr {
                    td { a href=(format!("/sources/{name}")) { (name) } @if !s.get::<_, bool>(6) { " " span class="badge" { "disabled" } } }
                    td { code { (s.get::<_, String>(1)) } }
                    td class="num" { (s.get::<_, i32>(2)) }
                    td { (s.get::<_, String>(3)) }
                    td { @if let Some(o) = s.get::<_, Option<String>>(4) { (o) } @else { (dash()) } }
                    td { @if let Some(o) = s.get::<_, Option<String>>(5) { (o) } @else { (dash()) } }
                    td { a href=(format!("/admin/sources/{name}/edit")) { "Edit" } }
                }
            } }
        }
        @if app.geonature {
            section class="panel" id="geonature-accounts" {
                h2 { "GeoNature accounts" }
                p class="help" { "GeoNature (UsersHub) accounts that may sign in, and the gn2pg role each acts as. No row, no access." }
                table {
                    thead { tr { th { "Login" } th { "Role" } th { "Given by" } th { "On" } th {} } }
                    tbody { @for a in &accounts {
                        @let login: String = a.get(0);
                        tr {
                            td { (login) } td { (a.get::<_, String>(1)) } td { (a.get::<_, String>(2)) } td { (a.get::<_, String>(3)) }
                            td { form method="post" action="/admin/accounts/unmap" { (csrf(&user)) input type="hidden" name="login" value=(login); button type="submit" class="danger" { "Remove" } } }
                        }
                    } }
                }
                form method="post" action="/admin/accounts/map" id="map-account" {
                    (csrf(&user))
                    label { "GeoNature login " input type="text" name="login" required; }
                    label { " as " select name="role" { option { "gn2pg_reader" } option { "gn2pg_operator" } option { "gn2pg_admin" } } }
                    button type="submit" { "Give access" }
                }
            }
        }
    };
    Ok(layout::page("Sources admin", Some((&user, level)), body).into_response())
}

pub async fn new_form(State(app): State<AppState>, user: User) -> Result<Response, AppError> {
    let (tx, level) = enter(&app, &user, false).await?;
    tx.rollback().await;
    let f = SourceForm { auth: "login".into(), ..Default::default() };
    Ok(layout::page("Add a source", Some((&user, level)), form_markup(&user, &f, None, None, None)).into_response())
}

pub async fn edit_form(
    State(app): State<AppState>,
    user: User,
    Path(name): Path<String>,
) -> Result<Response, AppError> {
    let (tx, level) = enter(&app, &user, false).await?;
    let saved = load_saved(&tx, &name).await?;
    tx.rollback().await;
    let saved = saved.ok_or_else(|| AppError::NotFound(format!("source \"{name}\" does not exist")))?;
    let body = html! {
        (form_markup(&user, &saved.form, Some(&saved), None, None))
        section class="panel danger-zone" {
            h2 { "Remove this source" }
            form method="post" action=(format!("/admin/sources/{name}/remove")) id="remove-form" {
                (csrf(&user))
                label { input type="checkbox" name="drop_data" value="1"; " also delete its harvested rows" }
                label { input type="checkbox" name="confirm" value="1" required; " I want to remove " (name) }
                button type="submit" class="danger" { "Remove" }
            }
        }
    };
    Ok(layout::page(&format!("Edit {name}"), Some((&user, level)), body).into_response())
}

/// Test connection: the form as it stands, checked by the database; for a saved source, empty
/// credentials mean the stored ones. `fragment`: only the report (the page script asked).
pub async fn test(
    State(app): State<AppState>,
    user: User,
    headers: HeaderMap,
    Form(f): Form<SourceForm>,
) -> Result<Response, AppError> {
    user.check_csrf(&f.csrf)?;
    let fragment = headers.contains_key("x-gn2pg-fragment");
    let (tx, level) = enter(&app, &user, false).await?;
    let outcome = check(&tx, &f).await;
    let saved = if f.original.is_empty() { None } else { load_saved(&tx, &f.original).await? };
    tx.rollback().await;
    let (report, error) = match outcome {
        Ok(r) => (Some(report_markup(&r)), None),
        Err(AppError::Db(e)) => (None, Some(AppError::Db(e).lines().join(" "))),
        Err(e) => (None, Some(e.lines().join(" "))),
    };
    if fragment {
        return Ok(html! { @if let Some(e) = &error { div class="error" id="report-error" { (e) } } @if let Some(r) = report { (r) } }
            .into_response());
    }
    let title = if f.original.is_empty() { "Add a source".to_string() } else { format!("Edit {}", f.original) };
    let body = form_markup(&user, &f, saved.as_ref(), report, error.as_deref());
    Ok(layout::page(&title, Some((&user, level)), body).into_response())
}

async fn check(tx: &UserTx, f: &SourceForm) -> Result<Value, AppError> {
    let options = f.options_json()?;
    let export_id = f.export_id()?;
    let name = opt(&f.original);
    let row = tx
        .one(
            "SELECT gn2pg_check_source(name => $1, url => $2, export_id => $3, auth => $4, login => $5, password => $6,
                                       token => $7, options => $8)",
            &[&name, &f.url.trim(), &export_id, &f.auth(), &opt(&f.login), &opt(&f.password), &opt(&f.token), &options],
        )
        .await?;
    Ok(row.get(0))
}

/// Save: gn2pg_add_source, with the stored credentials kept where the form left them empty.
pub async fn save(State(app): State<AppState>, user: User, Form(f): Form<SourceForm>) -> Result<Response, AppError> {
    user.check_csrf(&f.csrf)?;
    let (tx, level) = enter(&app, &user, true).await?;
    let name = f.name.trim().to_string();
    let editing = !f.original.is_empty();
    let exists: bool = tx.one("SELECT EXISTS (SELECT 1 FROM gn2pg.source WHERE name = $1)", &[&name]).await?.get(0);
    let problem = if editing && f.original != name {
        Some("a source cannot be renamed".to_string())
    } else if !editing && exists {
        Some(format!("a source named \"{name}\" exists already: edit it instead"))
    } else {
        None
    };
    let outcome = match problem {
        Some(p) => Err(AppError::BadRequest(p)),
        None => store(&tx, &f, &name).await,
    };
    match outcome {
        Ok(()) => {
            tx.commit().await?;
            Ok(Redirect::to(&format!("/admin/sources?done=Source+{}+saved", url_encode(&name))).into_response())
        }
        Err(e) => {
            tx.rollback().await;
            let saved = if editing {
                let (tx, _) = enter(&app, &user, false).await?;
                let s = load_saved(&tx, &f.original).await?;
                tx.rollback().await;
                s
            } else {
                None
            };
            let body = form_markup(&user, &f, saved.as_ref(), None, Some(&e.lines().join(" ")));
            let title = if editing { format!("Edit {name}") } else { "Add a source".to_string() };
            Ok((e.status(), layout::page(&title, Some((&user, level)), body)).into_response())
        }
    }
}

async fn store(tx: &UserTx, f: &SourceForm, name: &str) -> Result<(), AppError> {
    let options = f.options_json()?;
    let export_id = f.export_id()?;
    let auth = f.auth();
    let clear_webhook = !f.clear_webhook.is_empty();
    tx.one(
        "SELECT gn2pg_add_source(
                    name => $1, url => $2, export_id => $3, auth => $4,
                    login => CASE WHEN $4 = 'login' THEN $5 END,
                    password => CASE WHEN $4 = 'login' THEN coalesce($6, CASE WHEN s.auth = 'login' THEN k.password END) END,
                    token => CASE WHEN $4 = 'token' THEN coalesce($7, CASE WHEN s.auth = 'token' THEN k.token END) END,
                    options => $8,
                    alert_webhook => CASE WHEN $10 THEN NULL ELSE coalesce($9, k.alert_webhook) END)
           FROM (SELECT 1) one
           LEFT JOIN gn2pg.source s ON s.name = $1
           LEFT JOIN gn2pg.source_secret k ON k.source_id = s.id",
        &[
            &name,
            &f.url.trim(),
            &export_id,
            &auth,
            &opt(&f.login),
            &opt(&f.password),
            &opt(&f.token),
            &options,
            &opt(&f.alert_webhook),
            &clear_webhook,
        ],
    )
    .await?;
    Ok(())
}

#[derive(Deserialize)]
pub struct RemoveForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    drop_data: String,
    #[serde(default)]
    confirm: String,
}

pub async fn remove(
    State(app): State<AppState>,
    user: User,
    Path(name): Path<String>,
    Form(f): Form<RemoveForm>,
) -> Result<Response, AppError> {
    user.check_csrf(&f.csrf)?;
    if f.confirm.is_empty() {
        return Err(AppError::BadRequest("tick the confirmation to remove a source".into()));
    }
    let (tx, _) = enter(&app, &user, true).await?;
    let drop_data = !f.drop_data.is_empty();
    tx.one("SELECT gn2pg_remove_source($1, $2)", &[&name, &drop_data]).await?;
    tx.commit().await?;
    Ok(Redirect::to(&format!("/admin/sources?done=Source+{}+removed", url_encode(&name))).into_response())
}

#[derive(Deserialize)]
pub struct AccountForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    login: String,
    #[serde(default)]
    role: String,
}

pub async fn map_account(
    State(app): State<AppState>,
    user: User,
    Form(f): Form<AccountForm>,
) -> Result<Response, AppError> {
    user.check_csrf(&f.csrf)?;
    let (tx, _) = enter(&app, &user, true).await?;
    tx.one("SELECT gn2pg_map_geonature_account($1, $2)", &[&f.login.trim(), &f.role]).await?;
    tx.commit().await?;
    Ok(Redirect::to(&format!("/admin/sources?done=GeoNature+account+{}+may+sign+in", url_encode(f.login.trim())))
        .into_response())
}

pub async fn unmap_account(
    State(app): State<AppState>,
    user: User,
    Form(f): Form<AccountForm>,
) -> Result<Response, AppError> {
    user.check_csrf(&f.csrf)?;
    let (tx, _) = enter(&app, &user, true).await?;
    tx.one("SELECT gn2pg_unmap_geonature_account($1)", &[&f.login]).await?;
    tx.commit().await?;
    Ok(Redirect::to(&format!("/admin/sources?done=GeoNature+account+{}+removed", url_encode(&f.login))).into_response())
}
