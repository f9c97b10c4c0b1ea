//! The GeoNature Export API seen as a harvesting source: configuration, HTTP transport and
//! authentication, page parsing and the paging plan, the source's clock, reconciliation by
//! range counts and the pacing of streams.
//!
//! Nothing here calls PostgreSQL. The engine hands in a [`client::Host`] for the two things
//! only the backend can do (notice cancellation, sleep on its latch), so this whole module is
//! unit-tested with plain `cargo test`.

pub mod client;
pub mod clock;
pub mod config;
pub mod error;
pub mod pacing;
pub mod page;
pub mod paging;
pub mod probe;
pub mod reconcile;

pub use error::SourceError;
