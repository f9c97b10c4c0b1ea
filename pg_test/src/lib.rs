//! Test support for gn2pg.

pub mod checks;
pub mod db;
pub mod fixture;
