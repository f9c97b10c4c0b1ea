//! Test support for gn2pg.

pub mod attack;
pub mod canned;
pub mod checks;
pub mod db;
pub mod echo;
pub mod fixture;
pub mod geonature;
pub mod hook;
pub mod hostile;
pub mod roles;
pub mod tls;
