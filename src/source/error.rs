//! Errors of the source protocol. Every message names what was asked and why it failed, and
//! never contains a secret: URLs are redacted before they are stored in an error.

use std::time::Duration;

use crate::error::{Error, Reason, SqlState};
use crate::source::page::OVER_LIMIT;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source registry row cannot be used as it is.
    #[error("invalid source configuration: {0}")]
    Config(String),

    /// TCP/TLS connection could not be established (wrong host, closed port, DNS).
    #[error("cannot connect to {url}: {cause}")]
    Connect { url: String, cause: String },

    /// No answer (or no further bytes) within the configured timeout.
    #[error("timeout waiting for {url}: {cause}")]
    Timeout { url: String, cause: String },

    /// The connection broke while reading the answer (e.g. the body was cut short).
    #[error("answer from {url} was cut short: {cause}")]
    Truncated { url: String, cause: String },

    /// A status the protocol does not expect; 429 and 5xx are worth retrying.
    #[error("{url} answered HTTP {status}: {detail}")]
    Http { url: String, status: u16, detail: String, retry_after: Option<Duration> },

    /// `POST /auth/login` refused the credentials.
    #[error("login refused by {url} (HTTP {status}): {detail}")]
    LoginRefused { url: String, status: u16, detail: String },

    /// The data API wants a session (401 or a redirect to the login page).
    #[error("{url} requires authentication (HTTP {status}): {detail}")]
    AuthRequired { url: String, status: u16, detail: String },

    /// 403 on the data API: wrong token, or the user may not read this export.
    #[error("access to {url} denied (HTTP 403): {detail}")]
    Forbidden { url: String, detail: String },

    /// 404: unknown export id, or a wrong GeoNature URL / module path.
    #[error("{url} not found (HTTP 404): {detail}")]
    NotFound { url: String, detail: String },

    /// A 2xx answer that is not JSON (a proxy or login HTML page, for instance).
    #[error("{url} did not answer JSON (content-type {content_type}): {snippet}")]
    NotJson { url: String, content_type: String, snippet: String },

    /// JSON that does not parse, or lacks what the export API always sends.
    #[error("invalid answer from {url}: {cause}")]
    BadAnswer { url: String, cause: String },

    /// The body grew past `max_page_bytes`.
    #[error("answer from {url} exceeds {max} bytes (gn2pg.max_page_bytes)")]
    TooLarge { url: String, max: usize },

    /// The logged-in user has no access to the EXPORTS module.
    #[error("module EXPORTS is not listed by {url}: the user lacks permission on the Export module")]
    NoExportModule { url: String },

    /// The paging plan cannot go on (the source ignores a filter, or repeats pages).
    #[error("paging failed: {0}")]
    Paging(String),

    /// The run was cancelled or the server is shutting down.
    #[error("cancelled: {0}")]
    Cancelled(String),
}

impl SourceError {
    /// Transient failures: another attempt may succeed (proxy 502, gunicorn timeout, overload).
    pub fn is_retryable(&self) -> bool {
        match self {
            SourceError::Connect { .. } | SourceError::Timeout { .. } | SourceError::Truncated { .. } => true,
            SourceError::Http { status, .. } => *status == 429 || *status >= 500,
            SourceError::BadAnswer { .. } => true, // a body cut by a proxy despite a clean close
            _ => false,
        }
    }

    /// What kind of failure this is, and the SQLSTATE the caller of a run gets (README, "Errors").
    pub fn class(&self) -> (Reason, SqlState) {
        use SourceError::*;
        match self {
            Config(_) | NotFound { .. } => (Reason::Config, SqlState::INVALID_PARAMETER_VALUE),
            Connect { .. } => (Reason::Http, SqlState::CANNOT_CONNECT),
            // An answer cut short is not an export answer (like cut JSON); the connection failed.
            Truncated { .. } => (Reason::Protocol, SqlState::CONNECTION_FAILURE),
            Http { .. } => (Reason::Http, SqlState::CONNECTION_EXCEPTION),
            Timeout { .. } => (Reason::Timeout, SqlState::CONNECTION_FAILURE),
            LoginRefused { .. } | AuthRequired { .. } | Forbidden { .. } | NoExportModule { .. } => {
                (Reason::Auth, SqlState::INVALID_AUTHORIZATION)
            }
            TooLarge { .. } => (Reason::Limit, SqlState::PROGRAM_LIMIT_EXCEEDED),
            // Page errors are plain strings (source::page::read_page); those over a limit are
            // all made with this prefix.
            BadAnswer { cause, .. } if cause.starts_with(OVER_LIMIT) => {
                (Reason::Limit, SqlState::PROGRAM_LIMIT_EXCEEDED)
            }
            NotJson { .. } | BadAnswer { .. } | Paging(_) => (Reason::Protocol, SqlState::DATA_EXCEPTION),
            Cancelled(_) => (Reason::Cancelled, SqlState::QUERY_CANCELED),
        }
    }

    /// Delay the server asked for (Retry-After), if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SourceError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl From<SourceError> for Error {
    fn from(e: SourceError) -> Error {
        let (reason, sqlstate) = e.class();
        Error::new(reason, sqlstate, e.to_string())
    }
}

/// Whether a query parameter name looks like it carries a secret (`token`, `api_key`,
/// `password`, `access_token`, `sessionid`, `X-Amz-Signature`, …).
pub fn secret_param(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["token", "secret", "passw", "pwd", "key", "auth", "session", "sig", "credential", "jwt", "cookie"]
        .iter()
        .any(|w| n.contains(w))
}

/// Replaces the value of secret-looking query parameters (and any user:password) so that URLs
/// can be logged. Text that is not a URL is redacted as text (`redact_params`).
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let hidden = secret_param(&k);
                    (k.into_owned(), if hidden { "***".to_string() } else { v.into_owned() })
                })
                .collect();
            if pairs.is_empty() {
                u.set_query(None);
            } else {
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => redact_params(url),
    }
}

/// Redacts `name=value` pairs with a secret-looking name and `user:password@` in any text (an
/// unparsable URL, a message quoting one).
pub fn redact_params(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // Bounded: each turn consumes at least one character of `rest`.
    while let Some(eq) = rest.find('=') {
        let name_start =
            rest[..eq].rfind(|c: char| !(c.is_ascii_alphanumeric() || "_-.".contains(c))).map_or(0, |p| p + 1);
        let value_end = rest[eq + 1..].find(|c: char| "&;#\"' ,)\n".contains(c)).map_or(rest.len(), |p| eq + 1 + p);
        out.push_str(&rest[..eq + 1]);
        if secret_param(&rest[name_start..eq]) && value_end > eq + 1 {
            out.push_str("***");
        } else {
            out.push_str(&rest[eq + 1..value_end]);
        }
        rest = &rest[value_end..];
    }
    out.push_str(rest);
    // user:password@host in a URL that did not parse.
    if let Some(scheme) = out.find("://") {
        let after = scheme + 3;
        if let Some(at) = out[after..].find('@').map(|p| after + p) {
            if let Some(colon) = out[after..at].find(':').map(|p| after + p) {
                if !out[after..at].contains('/') {
                    out.replace_range(colon + 1..at, "***");
                }
            }
        }
    }
    out
}

/// The secrets of one source (password, token, session cookie values): any text gn2pg stores
/// or sends about the source goes through `scrub`, since a remote server may echo them (in an
/// error page, a redirect URL, a JSON message).
#[derive(Debug, Clone, Default)]
pub struct Scrubber {
    /// Every form a secret may take in a text, longest first.
    forms: Vec<String>,
}

/// Secrets shorter than this are not searched for (they would mask ordinary words).
pub const MIN_SECRET_LEN: usize = 4;

impl Scrubber {
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Scrubber {
        let mut forms: Vec<String> = Vec::new();
        for s in secrets.into_iter().filter(|s| s.chars().count() >= MIN_SECRET_LEN) {
            let json = serde_json::to_string(s).unwrap_or_default();
            let encoded: String = url::form_urlencoded::byte_serialize(s.as_bytes()).collect();
            let path: String =
                url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>().replace('+', "%20");
            let json = &json[1..json.len() - 1];
            for f in [s.to_string(), json.to_string(), encoded, path] {
                if f.chars().count() >= MIN_SECRET_LEN && !forms.contains(&f) {
                    forms.push(f);
                }
            }
        }
        forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
        Scrubber { forms }
    }

    /// `text` with every secret replaced by `***`, and secret-looking parameters redacted.
    pub fn scrub(&self, text: &str) -> String {
        let mut t = text.to_string();
        for f in &self.forms {
            if t.contains(f.as_str()) {
                t = t.replace(f.as_str(), "***");
            }
        }
        redact_params(&t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_token() {
        let r = redact_url("http://h/api/exports/api/2?limit=10&token=abcdef");
        assert!(r.contains("token=***"), "{r}");
        assert!(!r.contains("abcdef"));
        assert!(r.contains("limit=10"));
    }

    #[test]
    fn secret_looking_parameters_are_redacted_in_urls_and_text() {
        let r = redact_url("https://u:pw1@h/api?limit=10&api_key=k1&access_token=t1&X-Amz-Signature=s1&cd_nom=4001");
        for secret in ["pw1", "k1", "t1", "s1"] {
            assert!(!r.contains(secret), "{secret} in {r}");
        }
        assert!(r.contains("limit=10") && r.contains("cd_nom=4001"), "{r}");
        // Not a URL any more, but still redacted.
        let t =
            redact_params("url \"http://a b/x?token=abc123&limit=5\" is not valid; password=hunter22, session=xyz9");
        assert!(!t.contains("abc123") && !t.contains("hunter22") && !t.contains("xyz9"), "{t}");
        assert!(t.contains("limit=5"), "{t}");
        let t = redact_params("http://user:hunter22@bad host/");
        assert!(!t.contains("hunter22"), "{t}");
        assert_eq!(redact_params("a = b, x=1"), "a = b, x=1");
    }

    #[test]
    fn the_scrubber_masks_every_form_of_a_secret() {
        let s = Scrubber::new(["p@ss w\"rd", "tok", "c00kie-value"]);
        let echoed = concat!(
            "login p@ss w\"rd refused; ",
            r#"{"password": "p@ss w\"rd"} "#,
            "redirect to /login?next=p%40ss+w%22rd&x=p%40ss%20w%22rd ",
            "cookie c00kie-value, tok stays (too short to search)"
        );
        let out = s.scrub(echoed);
        assert!(!out.contains("p@ss") && !out.contains("p%40ss") && !out.contains("c00kie"), "{out}");
        assert!(out.contains("tok stays"), "{out}");
        assert_eq!(Scrubber::default().scrub("nothing secret"), "nothing secret");
    }

    #[test]
    fn every_error_has_its_reason_and_sqlstate() {
        let url = || "http://h/api".to_string();
        let cases = [
            (SourceError::LoginRefused { url: url(), status: 401, detail: String::new() }, "auth", "28000"),
            (SourceError::Forbidden { url: url(), detail: String::new() }, "auth", "28000"),
            (SourceError::NoExportModule { url: url() }, "auth", "28000"),
            (SourceError::Connect { url: url(), cause: String::new() }, "http", "08001"),
            (SourceError::Http { url: url(), status: 503, detail: String::new(), retry_after: None }, "http", "08000"),
            (SourceError::Truncated { url: url(), cause: String::new() }, "protocol", "08006"),
            (SourceError::Timeout { url: url(), cause: String::new() }, "timeout", "08006"),
            (
                SourceError::NotJson { url: url(), content_type: "text/html".into(), snippet: String::new() },
                "protocol",
                "22000",
            ),
            (SourceError::BadAnswer { url: url(), cause: "truncated JSON".into() }, "protocol", "22000"),
            (SourceError::Paging("the source ignores filter_n_up_id".into()), "protocol", "22000"),
            (SourceError::TooLarge { url: url(), max: 1 }, "limit", "54000"),
            (SourceError::BadAnswer { url: url(), cause: format!("{OVER_LIMIT}more than 3 items") }, "limit", "54000"),
            (SourceError::NotFound { url: url(), detail: String::new() }, "config", "22023"),
            (SourceError::Config("bad".into()), "config", "22023"),
            (SourceError::Cancelled("stop".into()), "cancelled", "57014"),
        ];
        for (e, reason, sqlstate) in cases {
            let (r, s) = e.class();
            assert_eq!((r.as_str(), s.as_str()), (reason, sqlstate), "{e}");
        }
    }

    #[test]
    fn retryable_classes() {
        let h = |status| SourceError::Http { url: "u".into(), status, detail: String::new(), retry_after: None };
        assert!(h(502).is_retryable());
        assert!(h(429).is_retryable());
        assert!(!h(400).is_retryable());
        assert!(!SourceError::Forbidden { url: "u".into(), detail: String::new() }.is_retryable());
    }
}
