//! The Flight SQL server's integration tests, in one binary (linking
//! DataFusion, arrow-flight and tonic once instead of once per file): real
//! servers on loopback sockets, real Rust Flight SQL clients.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

mod audit;
mod bench;
mod flight;
mod hardening;
mod projects;
mod shared_catalog;
mod workspaces;
