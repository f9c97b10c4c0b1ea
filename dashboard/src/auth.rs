//! Sign-in. A PostgreSQL account is checked by the server itself (a short connection as that
//! role with the password given); a GeoNature account by its UsersHub bcrypt hash
//! (`utilisateurs.t_roles.pass_plus`), read through `gn2pg._geonature_sign_in`, and its mapping
//! to a gn2pg role (`gn2pg.geonature_account`). Passwords are used for that check and dropped.

use std::sync::OnceLock;

use crate::db::{pg_text, quote_ident, Db, PasswordCheck};
use crate::session::Account;

/// Why a sign-in did not succeed. `Wrong` is counted by the throttle; the others are not the
/// person's typing and say what an administrator must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    Wrong,
    Refused(String),
    Unavailable(String),
}

const WRONG: &str = "wrong login or password";

impl Failure {
    pub fn message(&self) -> String {
        match self {
            Failure::Wrong => WRONG.to_string(),
            Failure::Refused(m) => m.clone(),
            Failure::Unavailable(m) => format!("the database cannot be reached: {m}"),
        }
    }
}

pub async fn postgres(db: &Db, login: &str, password: &str) -> Result<Account, Failure> {
    if login.is_empty() || login.len() > 63 || password.is_empty() {
        return Err(Failure::Wrong);
    }
    match db.check_password(login, password).await {
        Ok(PasswordCheck::Accepted) => {}
        Ok(PasswordCheck::Refused) => return Err(Failure::Wrong),
        Err(e) => return Err(Failure::Unavailable(e)),
    }
    if db.accepts_any_password(login).await.map_err(Failure::Unavailable)? {
        return Err(Failure::Refused(format!(
            "the server accepts any password for role {login} (a trust line in pg_hba.conf), so the dashboard cannot \
             verify who you are; an administrator must require passwords (scram-sha-256) for it"
        )));
    }
    let c = db.own().await.map_err(|e| Failure::Unavailable(format!("{e:?}")))?;
    let row = c
        .query_opt(
            "SELECT r.rolname::text, r.rolsuper, pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER'),
                    pg_catalog.pg_has_role(r.oid, 'gn2pg_reader', 'USAGE')
               FROM pg_catalog.pg_roles r WHERE r.rolname = $1",
            &[&login],
        )
        .await
        .map_err(|e| Failure::Unavailable(pg_text(&e)))?
        .ok_or(Failure::Wrong)?;
    let (role, superuser, member, reader): (String, bool, bool, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if superuser {
        return Err(Failure::Refused(
            "superusers cannot sign in to the dashboard: sign in with a role that has gn2pg_admin".into(),
        ));
    }
    if !reader {
        return Err(Failure::Refused(
            "this role has none of the roles gn2pg_reader, gn2pg_operator, gn2pg_admin: ask an administrator for one"
                .into(),
        ));
    }
    if !member {
        return Err(Failure::Refused(format!(
            "the dashboard may not act as {role} yet: an administrator runs GRANT {} TO {};",
            quote_ident(&role),
            quote_ident(db.authenticator())
        )));
    }
    Ok(Account::Postgres { role })
}

/// A bcrypt hash to check wrong logins against, so that an unknown login takes as long as a
/// wrong password (GeoNature's cost, 12).
fn decoy_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| bcrypt::hash(crate::session::random_token(), 12).unwrap_or_default())
}

/// Checks `password` against a UsersHub hash on a blocking thread (bcrypt is slow on purpose).
async fn bcrypt_matches(password: &str, hash: Option<String>) -> bool {
    let (pw, known) = (password.to_string(), hash.is_some());
    let hash = hash.unwrap_or_else(|| decoy_hash().to_string());
    let ok = tokio::task::spawn_blocking(move || bcrypt::verify(pw, &hash).unwrap_or(false)).await.unwrap_or(false);
    ok && known
}

pub async fn geonature(db: &Db, login: &str, password: &str) -> Result<Account, Failure> {
    if login.is_empty() || login.len() > 100 || password.is_empty() {
        return Err(Failure::Wrong);
    }
    let c = db.own().await.map_err(|e| Failure::Unavailable(format!("{e:?}")))?;
    let row = c
        .query_opt(
            "SELECT password_hash, active, role, pg_catalog.pg_has_role(current_user, role, 'MEMBER')
               FROM gn2pg._geonature_sign_in($1)",
            &[&login],
        )
        .await
        .map_err(|e| Failure::Unavailable(pg_text(&e)))?;
    let hash = row.as_ref().and_then(|r| r.get::<_, Option<String>>(0)).filter(|h| h.starts_with("$2"));
    if !bcrypt_matches(password, hash).await {
        return Err(Failure::Wrong);
    }
    let row = row.ok_or(Failure::Wrong)?;
    let (active, role, member): (bool, String, bool) = (row.get(1), row.get(2), row.get(3));
    if !active {
        return Err(Failure::Refused("this GeoNature account is disabled".into()));
    }
    if !member {
        return Err(Failure::Refused(format!(
            "the dashboard may not act as {role} yet: an administrator runs GRANT {role} TO {};",
            quote_ident(db.authenticator())
        )));
    }
    Ok(Account::GeoNature { login: login.to_string() })
}

/// Whether GeoNature accounts can sign in here: the database has UsersHub's table and the
/// dashboard's role may call `gn2pg._geonature_sign_in`.
pub async fn geonature_available(db: &Db) -> Result<(bool, Option<String>), String> {
    let c = db.own().await.map_err(|e| format!("{e:?}"))?;
    let r = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                             WHERE n.nspname = 'utilisateurs' AND c.relname = 't_roles'),
                    coalesce((SELECT pg_catalog.has_schema_privilege(n.oid, 'USAGE')
                                     AND pg_catalog.has_function_privilege(p.oid, 'EXECUTE')
                                FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                               WHERE n.nspname = 'gn2pg' AND p.proname = '_geonature_sign_in'), false)",
            &[],
        )
        .await
        .map_err(|e| pg_text(&e))?;
    let (usershub, granted): (bool, bool) = (r.get(0), r.get(1));
    Ok(match (usershub, granted) {
        (true, true) => (true, None),
        (true, false) => (
            false,
            Some(format!(
                "GeoNature sign-in is off: this database has UsersHub accounts, but {} may not call gn2pg._geonature_sign_in \
                 (GRANT USAGE ON SCHEMA gn2pg TO {a}; GRANT EXECUTE ON FUNCTION gn2pg._geonature_sign_in(text) TO {a};)",
                db.authenticator(),
                a = quote_ident(db.authenticator())
            )),
        ),
        _ => (false, None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn usershub_hashes() {
        // pass_plus as UsersHub writes it: bcrypt.hashpw(pw, bcrypt.gensalt()) -> "$2b$12$...".
        let hash = bcrypt::hash_with_result("s3cret-é", 4).unwrap().format_for_version(bcrypt::Version::TwoB);
        assert!(hash.starts_with("$2b$04$"), "{hash}");
        assert!(bcrypt_matches("s3cret-é", Some(hash.clone())).await);
        assert!(!bcrypt_matches("s3cret-e", Some(hash.clone())).await);
        assert!(!bcrypt_matches("s3cret-é", None).await, "no account: refused even with the decoy's password");
        // PHP's UsersHub 1 wrote $2y$; the same check accepts it.
        let y = hash.replacen("$2b$", "$2y$", 1);
        assert!(bcrypt_matches("s3cret-é", Some(y)).await);
    }
}
