//! The engine's integration tests, in one binary (linking DataFusion once
//! instead of once per file). `keys.rs` and `logs.rs` stay binaries of their
//! own: each installs a process-wide log subscriber to read what the engine
//! logs, which would also capture every other test running beside it.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../common/mod.rs"]
mod common;

mod audit;
mod catalog_store;
mod cluster;
mod export;
mod fuzz_regressions;
mod governed;
mod policy_info;
mod properties;
mod shared_catalog;
mod slt;
mod sql_guard;
mod workspaces;
