//! Building PostgreSQL values off the backend thread: a page's items become jsonb datums,
//! EWKB geometries and ready-made arrays on the HTTP helper thread, so the backend spends its
//! time writing rows, not parsing text. No PostgreSQL calls in this module.

pub mod array;
pub mod geometry;
pub mod jsonb;
pub mod rows;
pub mod varlena;
