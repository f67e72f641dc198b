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
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditEntry {
    /// Authenticated user.
    pub actor: String,
    /// Impersonated user, when any.
    pub impersonated: Option<String>,
    /// The project the session was in, when any.
    pub project: Option<String>,
    /// What happened, e.g. `CreateUser`, `Query`, `Authenticate`.
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
    /// Sequence number: consecutive, starting at 1.
    pub id: i64,
    /// RFC 3339 time (UTC, microseconds).
    pub at: String,
    /// The entry.
    pub entry: AuditEntry,
    /// HMAC over the entry and the previous record's MAC.
    pub mac: Vec<u8>,
}

/// Which audit records to read; every bound is optional and inclusive
/// except `before`.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Smallest id.
    pub min_id: Option<i64>,
    /// Largest id.
    pub max_id: Option<i64>,
    /// Records at or after this RFC 3339 time.
    pub since: Option<String>,
    /// Records strictly before this RFC 3339 time.
    pub before: Option<String>,
    /// Only this authenticated user.
    pub actor: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// At most this many records (the first ones by id).
    pub limit: Option<usize>,
}

/// The point where the live chain continues an archived one: the last
/// archived record's id and MAC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditAnchor {
    /// Last archived id (0: nothing archived).
    pub id: i64,
    /// Its MAC (empty: nothing archived).
    pub mac: Vec<u8>,
}

/// Result of verifying the audit hash chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditVerification {
    /// Number of records checked.
    pub records: i64,
    /// Id of the first record that is edited, missing or out of place.
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
    /// Appends audit records that record no change (queries, logins) in
    /// one transaction (a group commit).
    fn audit_batch(&self, entries: &[AuditEntry]) -> Result<()>;
    /// Appends one audit record that records no change.
    fn audit(&self, entry: &AuditEntry) -> Result<()> {
        self.audit_batch(std::slice::from_ref(entry))
    }
    /// Reads audit records in id order.
    fn audit_records(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>>;
    /// Verifies the live audit hash chain from the archive anchor on.
    fn verify_audit(&self) -> Result<AuditVerification>;
    /// Where the live chain starts.
    fn audit_anchor(&self) -> Result<AuditAnchor>;
    /// Removes the records up to and including `anchor.id` (already written
    /// to an archive) and makes `anchor` the start of the live chain, in one
    /// transaction; refuses when the stored record `anchor.id` does not
    /// carry `anchor.mac`.
    fn archive_audit(&self, anchor: &AuditAnchor) -> Result<usize>;
}
