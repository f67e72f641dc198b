//! Veil's engine: catalog, policy evaluation, governed planning and keys.
//!
//! No network code lives here; every governance behaviour is testable
//! in-process through [`Engine`] and [`Session`].

pub mod adaptive_and;
mod analyze_text;
mod any_partition;
pub mod audit;
pub mod avg_sums;
mod bounded_fns;
mod bounded_inputs;
mod bounded_windows;
pub mod build_side;
pub mod catalog;
mod catalog_cache;
mod checked;
pub mod classic_strings;
pub mod collect_build;
pub mod condition;
pub mod decimal_arith;
mod decoder_panic;
pub mod distributed;
mod dynamic_rows;
pub mod dynamic_scan;
pub mod engine;
pub mod error;
mod executor;
mod file_schema;
pub mod governance;
pub mod group_reduction;
pub mod interrupt;
pub mod join_arrays;
pub mod keys;
pub mod like_segments;
pub mod limits;
pub mod login;
pub mod metrics;
pub mod model;
mod plan_cache;
pub mod policy;
pub mod principal;
pub mod project;
pub mod semi_join;
mod shared_join;
pub mod shared_plan;
pub mod sql_guard;
pub mod statement;
pub mod store;
#[cfg(test)]
mod test_sql;
mod timeslice;
mod turns;
pub mod workspace;
mod yielding;

pub use engine::{CatalogParams, Engine, EngineOptions, QueryOutput, Session};
pub use error::{ErrorKind, Result, VeilError};
pub use executor::panic_message;
