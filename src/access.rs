//! Who may do what. Three roles, created by the extension script (sql/operations.sql):
//! `gn2pg_reader` (read status and data), `gn2pg_operator` (+ run and cancel harvests),
//! `gn2pg_admin` (+ manage sources and schedules, read secrets). EXECUTE grants are the first
//! gate; the SQL functions check the role again (a broad GRANT by mistake must not open them),
//! then do their privileged work as the extension owner, like a SECURITY DEFINER function
//! would, but only after the check.
//!
//! `gn2pg.allowed_hosts` limits which hosts a non-superuser may make the server talk to.

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use url::Url;

pub const ADMIN: &str = "gn2pg_admin";
pub const OPERATOR: &str = "gn2pg_operator";

fn raise(code: PgSqlErrorCode, msg: String, hint: &str) -> ! {
    crate::error::raise(code, msg, None, Some(hint))
}

/// Refuses the call unless the current user has the privileges of `role` (superusers do).
pub fn require(role: &str, function: &str) {
    let ok = pinned(|| {
        Spi::get_one_with_args::<bool>("SELECT pg_catalog.pg_has_role(current_user, $1::name, 'USAGE')", &[role.into()])
    })
    .ok()
    .flatten()
    .unwrap_or(false);
    if !ok {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("gn2pg: permission denied for {function}"),
            &format!("{function} needs the privileges of role {role}: GRANT {role} TO <login role>;"),
        );
    }
}

pub fn is_superuser() -> bool {
    // SAFETY: reads the current user id of this backend.
    unsafe { pg_sys::superuser() }
}

/// Owner of the gn2pg extension: the role harvest workers run as.
pub fn extension_owner() -> pg_sys::Oid {
    Spi::get_one::<pg_sys::Oid>("SELECT (SELECT extowner FROM pg_catalog.pg_extension WHERE extname = 'gn2pg')")
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                "gn2pg: extension gn2pg is not installed in this database".into(),
                "CREATE EXTENSION gn2pg CASCADE;",
            )
        })
}

/// The search_path of code that runs with the owner's rights: nothing a caller can create is
/// found there. pg_temp is listed last explicitly, else it would be searched first for
/// relations and types (a caller's `pg_temp.text` domain would win over `pg_catalog.text`).
pub const SAFE_SEARCH_PATH: &str = "pg_catalog, pg_temp";

/// Puts back what `pinned` and `as_owner` changed, on return and while an ERROR unwinds.
struct Restore {
    /// GUC nest level opened by `pinned`: ending it restores the caller's search_path.
    nest_level: i32,
    /// User id and security context before `as_owner`.
    user: Option<(pg_sys::Oid, i32)>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        // SAFETY: both restore what this backend saved on entry, in reverse order, as
        // fmgr_security_definer does; during an ERROR the (sub)transaction abort would do the
        // same, and doing it here first is harmless.
        unsafe {
            if let Some((uid, ctx)) = self.user {
                pg_sys::SetUserIdAndSecContext(uid, ctx);
            }
            pg_sys::AtEOXact_GUC(!std::thread::panicking(), self.nest_level);
        }
    }
}

fn pin_search_path() -> Restore {
    // SAFETY: a new GUC nest level whose SAVE action is undone by AtEOXact_GUC (Restore), or by
    // the abort of the (sub)transaction if the backend never gets there.
    let nest_level = unsafe { pg_sys::NewGUCNestLevel() };
    let restore = Restore { nest_level, user: None };
    let value = std::ffi::CString::new(SAFE_SEARCH_PATH).expect("no NUL");
    // SAFETY: sets a USERSET GUC for the current nest level; errors are raised as ERRORs.
    unsafe {
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            pg_sys::PGERROR as i32,
            false,
        );
    }
    restore
}

/// Runs `f` with `search_path = pg_catalog, pg_temp`, then gives the caller back its own.
pub fn pinned<R>(f: impl FnOnce() -> R) -> R {
    let _restore = pin_search_path();
    f()
}

/// Runs `f` as the extension owner, as the body of a SECURITY DEFINER function with
/// `SET search_path = pg_catalog, pg_temp` would run: nothing the caller created (functions,
/// operators or relations on its search_path, pg_temp types) is found by name, and SET ROLE is
/// refused. Callers check the caller's role first (`require`).
pub fn as_owner<R>(f: impl FnOnce() -> R) -> R {
    let mut restore = pin_search_path();
    let owner = extension_owner();
    let mut uid = pg_sys::Oid::INVALID;
    let mut ctx: i32 = 0;
    // SAFETY: standard save / switch of the current user, as fmgr_security_definer does.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut uid, &mut ctx);
        pg_sys::SetUserIdAndSecContext(owner, ctx | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
    }
    restore.user = Some((uid, ctx));
    f()
}

/// Confines a background worker that runs as the extension owner, right after it connects:
/// search_path as in `as_owner`, whatever the database or role settings say (a database owner
/// may set its database's search_path; it must not reach code running as a superuser).
pub fn confine_worker() {
    let value = std::ffi::CString::new(SAFE_SEARCH_PATH).expect("no NUL");
    // SAFETY: sets a GUC of this process with the highest priority source; no transaction needed.
    unsafe {
        pg_sys::SetConfigOption(
            c"search_path".as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
    }
}

/// One entry of `gn2pg.allowed_hosts`: a host pattern and the ports it allows.
struct HostEntry {
    /// `None`: any host (`*`); `Some("*.example.org")`: sub-domains; else one host.
    host: Option<String>,
    /// `None`: the scheme's default port only; `Some(None)`: any port; `Some(Some(p))`: port p.
    port: Option<Option<u16>>,
}

fn norm_host(s: &str) -> String {
    s.trim().trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase()
}

/// Parses an entry: `*`, `host`, `host:port`, `host:*`, `*.domain[:port|:*]`, `[v6][:port|:*]`,
/// or a bare IPv6 address (default port). None: not an entry (blank, or a bad port).
fn parse_entry(e: &str) -> Option<HostEntry> {
    let e = e.trim().to_ascii_lowercase();
    if e.is_empty() {
        return None;
    }
    if e == "*" {
        return Some(HostEntry { host: None, port: Some(None) });
    }
    let (host, port) = if let Some(rest) = e.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        (h.to_string(), after.strip_prefix(':'))
    } else if e.matches(':').count() == 1 {
        let (h, p) = e.split_once(':')?;
        (h.to_string(), Some(p))
    } else {
        (e.clone(), None)
    };
    let port = match port {
        None => None,
        Some("*") => Some(None),
        Some(p) => Some(Some(p.trim().parse::<u16>().ok()?)),
    };
    let host = norm_host(&host);
    (!host.is_empty()).then_some(HostEntry { host: Some(host), port })
}

/// Whether `url` (its host and port) is allowed by the comma-separated `allowed` list:
/// `*` allows anything; `host` allows that host on the scheme's default port (443 for https,
/// 80 for http), `host:8443` on that port, `host:*` on any port; `*.example.org` (with the same
/// port forms) any sub-domain of example.org. Case and a trailing dot are ignored; IPv6
/// addresses are written in brackets (`[::1]:8080`), or bare for the default port.
pub fn host_allowed(allowed: &str, url: &Url) -> bool {
    let host = norm_host(url.host_str().unwrap_or(""));
    if host.is_empty() {
        return false;
    }
    let port = url.port_or_known_default();
    let default = match url.scheme() {
        "https" => Some(443),
        "http" => Some(80),
        _ => None,
    };
    allowed.split(',').filter_map(parse_entry).any(|e| {
        let host_ok = match &e.host {
            None => true,
            Some(h) => match h.strip_prefix("*.") {
                Some(domain) => {
                    host.len() > domain.len() + 1
                        && host.ends_with(domain)
                        && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
                }
                None => *h == host,
            },
        };
        let port_ok = match e.port {
            None => port == default,
            Some(None) => true,
            Some(Some(p)) => port == Some(p),
        };
        host_ok && port_ok
    })
}

/// `host[:port]` of a URL, as messages show it (no path, no credentials).
pub fn host_port(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    }
}

/// Why `gn2pg.allowed_hosts` refuses `url` (None: it allows it). `what` names the URL.
pub fn host_refusal(url: &Url, what: &str) -> Option<String> {
    (!host_allowed(&crate::guc::allowed_hosts(), url))
        .then(|| format!("{what} host \"{}\" is not allowed by gn2pg.allowed_hosts", host_port(url)))
}

const ALLOWED_HOSTS_HINT: &str = "A superuser lists the hosts gn2pg may reach: ALTER SYSTEM SET gn2pg.allowed_hosts = 'geonature.example.org, *.example.net, internal.example.org:8443'; SELECT pg_reload_conf();";

/// Refuses a URL whose host and port `gn2pg.allowed_hosts` does not allow, unless the caller
/// is a superuser (who could change the setting anyway). `what` names the URL in the message.
pub fn check_host(url: &Url, what: &str) {
    if is_superuser() {
        return;
    }
    if let Some(why) = host_refusal(url, what) {
        raise(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, format!("gn2pg: {why}"), ALLOWED_HOSTS_HINT);
    }
}

#[cfg(test)]
mod tests {
    use super::host_allowed;
    use url::Url;

    fn allowed(list: &str, url: &str) -> bool {
        host_allowed(list, &Url::parse(url).unwrap())
    }

    #[test]
    fn allowed_hosts_match_hosts() {
        let list = "geonature.example.org, *.sinp.fr ,127.0.0.1,[::1], Other.Example.NET.";
        for ok in [
            "https://geonature.example.org/geonature",
            "https://GeoNature.Example.org",
            "http://geonature.example.org:80/x",
            "https://a.sinp.fr",
            "https://x.y.sinp.fr",
            "http://127.0.0.1/",
            "http://[::1]/",
            "https://other.example.net",
        ] {
            assert!(allowed(list, ok), "{ok}");
        }
        for no in [
            "https://example.org",
            "https://sinp.fr",
            "https://evilsinp.fr",
            "https://geonature.example.org.evil.com",
            "http://127.0.0.2/",
            "http://localhost/",
        ] {
            assert!(!allowed(list, no), "{no}");
        }
        assert!(!allowed("", "https://geonature.example.org"), "empty list allows nothing");
        assert!(!allowed(" , ", "https://a"), "blank entries are ignored");
        assert!(allowed("*", "https://anything.example:8443"));
    }

    #[test]
    fn allowed_hosts_match_ports() {
        // A bare host allows the scheme's default port only.
        assert!(!allowed("geonature.example.org", "https://geonature.example.org:8443"));
        assert!(!allowed("127.0.0.1", "http://127.0.0.1:5432/"), "not the database's own port");
        assert!(allowed("geonature.example.org:8443", "https://geonature.example.org:8443/gn"));
        assert!(!allowed("geonature.example.org:8443", "https://geonature.example.org/gn"));
        assert!(allowed("127.0.0.1:*, localhost:*", "http://127.0.0.1:45678/gn"));
        assert!(allowed("*.sinp.fr:*", "https://a.sinp.fr:9000"));
        assert!(!allowed("*.sinp.fr", "https://a.sinp.fr:9000"));
        assert!(allowed("[::1]:8080", "http://[::1]:8080/"));
        assert!(!allowed("[::1]:8080", "http://[::1]:8081/"));
        assert!(allowed("::1", "http://[::1]/"));
        assert!(!allowed("host:notaport", "https://host"), "a bad entry allows nothing");
    }
}
