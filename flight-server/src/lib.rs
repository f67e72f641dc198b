//! Veil's Flight SQL front end: a thin adapter from Flight SQL RPCs to the
//! governed engine. It authenticates every RPC (DoGet included), holds
//! sessions, and signs tickets and prepared-statement handles; it contains
//! no policy logic.

pub mod auth;
pub mod bench;
pub mod config;
pub mod server;
pub mod service;
pub mod signed;
pub mod status;
pub mod tls;

pub use server::{serve, ServeHandle};
