//! The catalog store: where users, sources, policies and the audit log live.
//!
//! Every mutation goes through [`CatalogStore::apply`], which writes the
//! changes, bumps the policy version and appends the audit record in one
//! transaction: either all of it is durable or none of it is.

mod postgres;
mod sqlite;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use serde::Serialize;

use crate::error::{Result, VeilError};
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

impl Change {
    /// The row the change writes: (table, key, new JSON body, or `None` to
    /// delete). Every entity is stored the same way, one row of
    /// `(name, body)` per entity.
    pub(crate) fn row(&self) -> Result<(&'static str, String, Option<String>)> {
        Ok(match self {
            Change::PutUser(u) => ("users", u.name.clone(), Some(json(u)?)),
            Change::DeleteUser(n) => ("users", n.clone(), None),
            Change::PutSource(s) => ("data_sources", s.full_name(), Some(json(s)?)),
            Change::DeleteSource(n) => ("data_sources", n.clone(), None),
            Change::PutPolicy(p) => ("policies", p.name.clone(), Some(json(p)?)),
            Change::DeletePolicy(n) => ("policies", n.clone(), None),
            Change::PutPurpose(p) => ("purposes", p.name.clone(), Some(json(p)?)),
            Change::DeletePurpose(n) => ("purposes", n.clone(), None),
            Change::PutProject(p) => ("projects", p.name.clone(), Some(json(p)?)),
            Change::DeleteProject(n) => ("projects", n.clone(), None),
            Change::PutSettings(s) => ("settings", "server".to_string(), Some(json(s)?)),
            Change::PutWorkspaceTable(t, _) => (
                "workspace_tables",
                workspace_key(&t.project_id, &t.name),
                Some(json(t)?),
            ),
            Change::DeleteWorkspaceTable(p, n, _) => {
                ("workspace_tables", workspace_key(p, n), None)
            }
        })
    }

    /// For a conditional change: (project id, table, what it expects).
    pub(crate) fn expects(&self) -> Option<(&str, &str, Expect)> {
        match self {
            Change::PutWorkspaceTable(t, e) => Some((&t.project_id, &t.name, *e)),
            Change::DeleteWorkspaceTable(p, n, e) => Some((p, n, *e)),
            _ => None,
        }
    }
}

/// The tables an entity is stored in, one row of `(name, body)` each.
pub(crate) const ENTITY_TABLES: [&str; 7] = [
    "users",
    "data_sources",
    "policies",
    "purposes",
    "projects",
    "settings",
    "workspace_tables",
];

/// The key of a workspace table's row.
pub(crate) fn workspace_key(project_id: &str, name: &str) -> String {
    format!("{project_id}/{name}")
}

pub(crate) fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| VeilError::Internal(format!("serialize: {e}")))
}

pub(crate) fn unjson<T: serde::de::DeserializeOwned>(
    table: &str,
    name: &str,
    s: &str,
) -> Result<T> {
    serde_json::from_str(s)
        .map_err(|e| VeilError::Internal(format!("catalog row {table}.{name} is corrupt: {e}")))
}

/// Checks a conditional workspace change against the stored row's body
/// (`None`: no row): a writer that committed first wins.
pub(crate) fn expected(name: &str, expect: Expect, stored: Option<&str>) -> Result<()> {
    let version = match stored {
        None => None,
        Some(body) => Some(
            unjson::<crate::workspace::WorkspaceTable>("workspace_tables", name, body)?.version,
        ),
    };
    match (expect, version) {
        (Expect::Absent, None) => Ok(()),
        (Expect::Version(v), Some(now)) if v == now => Ok(()),
        (Expect::Absent, Some(_)) => Err(VeilError::AlreadyExists(format!(
            "workspace table {name} already exists"
        ))),
        (Expect::Version(v), None) => Err(VeilError::Conflict(format!(
            "workspace table {name} was dropped by another writer while this write ran \
             (expected version {v}); nothing was written"
        ))),
        (Expect::Version(v), Some(now)) => Err(VeilError::Conflict(format!(
            "workspace table {name} was changed by another writer (version {v} is now {now}); \
             nothing was written, retry"
        ))),
    }
}

/// An anchor as the `meta` table keeps it: `id:mac-hex`.
pub(crate) fn parse_anchor(key: &str, value: &str) -> Result<AuditAnchor> {
    let bad = || VeilError::Internal(format!("catalog meta {key} is corrupt"));
    let (id, mac) = value.split_once(':').ok_or_else(bad)?;
    Ok(AuditAnchor {
        id: id.parse().map_err(|_| bad())?,
        mac: hex::decode(mac).map_err(|_| bad())?,
    })
}

/// The `meta` text of an anchor (see [`parse_anchor`]).
pub(crate) fn anchor_text(a: &AuditAnchor) -> String {
    format!("{}:{}", a.id, hex::encode(&a.mac))
}

/// Refuses changes computed from a catalog that has moved on: `based_on`
/// is the version of the snapshot they were computed from.
pub(crate) fn check_version(based_on: u64, stored: u64) -> Result<()> {
    if based_on == stored {
        return Ok(());
    }
    Err(VeilError::Conflict(format!(
        "the catalog changed while this statement ran (version {based_on} is now {stored}); \
         nothing was written, retry"
    )))
}

/// How many of a store's `known` migrations a catalog says ran; refuses a
/// catalog written by a newer server (it is not rewritten).
pub(crate) fn check_schema(applied: i64, known: usize) -> Result<usize> {
    let applied = usize::try_from(applied).unwrap_or(0);
    if applied > known {
        return Err(VeilError::FailedPrecondition(format!(
            "catalog schema version {applied} is newer than this server ({known})"
        )));
    }
    Ok(applied)
}

/// Puts one stored row into a snapshot being loaded.
pub(crate) fn load_row(
    snap: &mut CatalogSnapshot,
    table: &str,
    name: String,
    body: &str,
) -> Result<()> {
    match table {
        "users" => {
            snap.users.insert(name.clone(), unjson(table, &name, body)?);
        }
        "data_sources" => {
            snap.sources
                .insert(name.clone(), unjson(table, &name, body)?);
        }
        "policies" => {
            snap.policies
                .insert(name.clone(), unjson(table, &name, body)?);
        }
        "purposes" => {
            snap.purposes
                .insert(name.clone(), unjson(table, &name, body)?);
        }
        "projects" => {
            snap.projects
                .insert(name.clone(), unjson(table, &name, body)?);
        }
        "settings" if name == "server" => snap.settings = unjson(table, &name, body)?,
        "workspace_tables" => {
            let t: crate::workspace::WorkspaceTable = unjson(table, &name, body)?;
            snap.workspaces
                .entry(t.project_id.clone())
                .or_default()
                .insert(t.name.clone(), t);
        }
        _ => {}
    }
    Ok(())
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
    /// The archives that could not be read, each as "<file>: <why>".
    pub unreadable: Vec<String>,
}

/// Persistence of the catalog. Implementations must make every `apply` one
/// atomic transaction.
pub trait CatalogStore: Send + Sync + std::fmt::Debug {
    /// The current policy version (cheap; used to refresh cached snapshots).
    fn version(&self) -> Result<u64>;
    /// Loads the whole catalog.
    fn load(&self) -> Result<CatalogSnapshot>;
    /// Applies changes and their audit record atomically, if the catalog is
    /// still at version `based_on` (the snapshot the changes were computed
    /// from; Conflict otherwise); returns the new version.
    fn apply(&self, changes: &[Change], audit: &AuditEntry, based_on: u64) -> Result<u64>;
    /// Takes the catalog's write lock: held from reading the snapshot a
    /// change is computed from until the change is applied, so that servers
    /// sharing the catalog make their changes one at a time. The embedded
    /// store has one server, whose own lock suffices. Callers in one
    /// process take it one at a time (the engine's write guard does): the
    /// shared store's lock belongs to its connection, not to a thread.
    fn lock_writes(&self) -> Result<()> {
        Ok(())
    }
    /// Releases what [`CatalogStore::lock_writes`] took.
    fn unlock_writes(&self) {}
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
