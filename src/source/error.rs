//! Errors of the source protocol. Every message names what was asked and why it failed, and
//! never contains a secret: URLs are redacted before they are stored in an error.

use std::time::Duration;

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

    /// Delay the server asked for (Retry-After), if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SourceError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Replaces the value of credential-bearing query parameters so that URLs can be logged.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let hidden = matches!(k.as_ref(), "token" | "api-key" | "password");
                    (k.into_owned(), if hidden { "***".to_string() } else { v.into_owned() })
                })
                .collect();
            if pairs.is_empty() {
                u.set_query(None);
            } else {
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => "<unparsable url>".to_string(),
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
    fn retryable_classes() {
        let h = |status| SourceError::Http { url: "u".into(), status, detail: String::new(), retry_after: None };
        assert!(h(502).is_retryable());
        assert!(h(429).is_retryable());
        assert!(!h(400).is_retryable());
        assert!(!SourceError::Forbidden { url: "u".into(), detail: String::new() }.is_retryable());
    }
}
