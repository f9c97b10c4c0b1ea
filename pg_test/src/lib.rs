//! Test support for gn2pg.

pub mod canned;
pub mod checks;
pub mod db;
pub mod fixture;
pub mod hostile;
