//! The catalog store: where users, sources, policies and the audit log live.
//!
//! Every mutation goes through [`CatalogStore::apply`], which writes the
//! changes, bumps the policy version and appends the audit record in one
//! transaction: either all of it is durable or none of it is.

mod sqlite;

pub use sqlite::SqliteStore;

use serde::Serialize;

use crate::error::Result;
use crate::model::{CatalogSnapshot, DataSource, Policy, User};
use crate::project::{Project, Purpose};

/// One change to the catalog.
#[derive(Debug, Clone)]
pub enum Change {
    /// Create or replace a user.
    PutUser(User),
    /// Remove a user.
    DeleteUser(String),
    /// Create or replace a data source.
    PutSource(DataSource),
    /// Remove a data source (by `schema.table`).
    DeleteSource(String),
    /// Create or replace a policy.
    PutPolicy(Policy),
    /// Remove a policy.
    DeletePolicy(String),
    /// Create or replace a purpose.
    PutPurpose(Purpose),
    /// Remove a purpose.
    DeletePurpose(String),
    /// Create or replace a project.
    PutProject(Project),
    /// Remove a project.
    DeleteProject(String),
    /// Replace the server-wide settings.
    PutSettings(crate::model::Settings),
    /// Create or replace a workspace table version, if the stored one is
    /// still what the writer expects (optimistic concurrency).
    PutWorkspaceTable(crate::workspace::WorkspaceTable, Expect),
    /// Remove a workspace table (project id, name), if it is as expected.
    DeleteWorkspaceTable(String, String, Expect),
}

/// What a conditional change expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Nothing stored under the name.
    Absent,
    /// This version stored under the name.
    Version(u64),
}

/// One audit record as the engine hands it to the store.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    /// Authenticated user.
    pub actor: String,
    /// Impersonated user, when any.
    pub impersonated: Option<String>,
    /// What happened, e.g. `CreateUser`, `Query`, `AuthFailure`.
    pub action: String,
    /// The object acted on.
    pub object: String,
    /// Free-form JSON detail (never key bytes, passwords or masked values).
    pub detail: String,
    /// `ok` or `error`.
    pub outcome: String,
}

/// A stored audit record.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    /// Sequence number.
    pub id: i64,
    /// RFC 3339 time.
    pub at: String,
    /// The entry.
    pub entry: AuditEntry,
}

/// Result of verifying the audit chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditVerification {
    /// Number of records checked.
    pub records: i64,
    /// Id of the first record whose MAC does not verify.
    pub first_broken: Option<i64>,
}

/// Persistence of the catalog. Implementations must make every `apply` one
/// atomic transaction.
pub trait CatalogStore: Send + Sync + std::fmt::Debug {
    /// The current policy version (cheap; used to refresh cached snapshots).
    fn version(&self) -> Result<u64>;
    /// Loads the whole catalog.
    fn load(&self) -> Result<CatalogSnapshot>;
    /// Applies changes and their audit record atomically; returns the new version.
    fn apply(&self, changes: &[Change], audit: &AuditEntry) -> Result<u64>;
    /// Appends an audit record that records no change (queries, logins).
    fn audit(&self, entry: &AuditEntry) -> Result<()>;
    /// Reads audit records in order.
    fn audit_records(&self) -> Result<Vec<AuditRecord>>;
    /// Verifies the audit hash chain.
    fn verify_audit(&self) -> Result<AuditVerification>;
}
