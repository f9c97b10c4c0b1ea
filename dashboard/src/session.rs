//! Sessions, kept in memory (a restart signs everyone out): a random id in an HttpOnly,
//! SameSite=Strict cookie (Secure over TLS), a CSRF token per session, an idle and an absolute
//! expiry. Nothing about a password is ever kept.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const COOKIE: &str = "gn2pg_session";
/// The sign-in form's own CSRF cookie (double submit), before any session exists.
pub const PRE_COOKIE: &str = "gn2pg_signin";
/// Sessions kept at most (oldest dropped first): memory stays bounded.
const MAX_SESSIONS: usize = 10_000;

/// 32 random bytes as hex.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the operating system's random source works");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Equality of two secrets in a time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who signed in, and as what the dashboard acts for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Account {
    /// A PostgreSQL login role: queries run as that role.
    Postgres { role: String },
    /// A GeoNature (UsersHub) account: queries run as the gn2pg role it is mapped to, looked up
    /// again at every request.
    GeoNature { login: String },
}

impl Account {
    pub fn label(&self) -> String {
        match self {
            Account::Postgres { role } => role.clone(),
            Account::GeoNature { login } => format!("{login} (GeoNature)"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub csrf: String,
    pub account: Account,
    pub created: Instant,
    pub last_seen: Instant,
}

pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    idle: Duration,
    lifetime: Duration,
}

impl Sessions {
    pub fn new(idle: Duration, lifetime: Duration) -> Sessions {
        Sessions { map: Mutex::new(HashMap::new()), idle, lifetime }
    }

    pub fn create(&self, account: Account) -> Session {
        let now = Instant::now();
        let s = Session { id: random_token(), csrf: random_token(), account, created: now, last_seen: now };
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        self.prune(&mut map, now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.values().min_by_key(|s| s.last_seen).map(|s| s.id.clone()) {
                map.remove(&oldest);
            }
        }
        map.insert(s.id.clone(), s.clone());
        s
    }

    fn expired(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.last_seen) > self.idle || now.duration_since(s.created) > self.lifetime
    }

    fn prune(&self, map: &mut HashMap<String, Session>, now: Instant) {
        map.retain(|_, s| !self.expired(s, now));
    }

    /// The live session of this id. `touch`: the request is the person's own (not an automatic
    /// refresh), so it restarts the idle delay.
    pub fn get(&self, id: &str, touch: bool) -> Option<Session> {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let s = map.get_mut(id)?;
        if self.expired(s, now) {
            map.remove(id);
            return None;
        }
        if touch {
            s.last_seen = now;
        }
        Some(s.clone())
    }

    pub fn remove(&self, id: &str) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

/// The value of cookie `name` in a Cookie header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').map(str::trim).find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// A Set-Cookie header value for a session-lifetime cookie (no Max-Age: the browser forgets it
/// when closed; the server expires it anyway).
pub fn set_cookie(name: &str, value: &str, secure: bool) -> String {
    format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict{}", if secure { "; Secure" } else { "" })
}

pub fn clear_cookie(name: &str, secure: bool) -> String {
    format!("{name}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{}", if secure { "; Secure" } else { "" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_compared_in_full() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(same_secret(&a, &a.clone()));
        assert!(!same_secret(&a, &b));
        assert!(!same_secret(&a, &a[..63]));
    }

    #[test]
    fn idle_and_absolute_expiry() {
        let s = Sessions::new(Duration::from_millis(150), Duration::from_millis(400));
        let a = s.create(Account::Postgres { role: "r".into() });
        std::thread::sleep(Duration::from_millis(100));
        assert!(s.get(&a.id, false).is_some());
        std::thread::sleep(Duration::from_millis(100));
        assert!(s.get(&a.id, true).is_none(), "an automatic refresh does not keep a session alive");

        let b = s.create(Account::Postgres { role: "r".into() });
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(100));
            let _ = s.get(&b.id, true);
        }
        assert!(s.get(&b.id, true).is_none(), "expires after its lifetime even when used");
        assert!(s.get("nope", true).is_none());
    }

    #[test]
    fn cookies() {
        assert_eq!(cookie_value("a=1; gn2pg_session=xyz; b=2", COOKIE), Some("xyz"));
        assert_eq!(cookie_value("gn2pg_session_x=1", COOKIE), None);
        let c = set_cookie(COOKIE, "v", true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.ends_with("; Secure"), "{c}");
        assert!(!set_cookie(COOKIE, "v", false).contains("Secure"));
    }
}
