//! One module per screen.

pub mod admin;
pub mod alerts;
pub mod flows;
pub mod signin;
pub mod source;
