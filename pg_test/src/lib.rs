//! Test support for gn2pg.

pub mod db;
pub mod fixture;
