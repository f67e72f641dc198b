//! The catalog's entities: users, permissions, data sources, policies
//! (purposes and projects live in [`crate::project`]).
//!
//! A [`CatalogSnapshot`] is an immutable picture of the whole catalog at one
//! policy version; policy evaluation and planning read only snapshots.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::VeilError;

/// A global permission (exact names of DESIGN.md section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(missing_docs)]
pub enum Permission {
    ApplicationAdmin,
    UserAdmin,
    Audit,
    CreateDataSource,
    CreateProject,
    FetchPolicyInfo,
    Governance,
    ImpersonateUser,
    ProjectManagement,
}

impl Permission {
    /// Every permission, in a stable order.
    pub const ALL: [Permission; 9] = [
        Permission::ApplicationAdmin,
        Permission::UserAdmin,
        Permission::Audit,
        Permission::CreateDataSource,
        Permission::CreateProject,
        Permission::FetchPolicyInfo,
        Permission::Governance,
        Permission::ImpersonateUser,
        Permission::ProjectManagement,
    ];

    /// The exact name, e.g. `USER_ADMIN`.
    pub fn name(&self) -> &'static str {
        match self {
            Permission::ApplicationAdmin => "APPLICATION_ADMIN",
            Permission::UserAdmin => "USER_ADMIN",
            Permission::Audit => "AUDIT",
            Permission::CreateDataSource => "CREATE_DATA_SOURCE",
            Permission::CreateProject => "CREATE_PROJECT",
            Permission::FetchPolicyInfo => "FETCH_POLICY_INFO",
            Permission::Governance => "GOVERNANCE",
            Permission::ImpersonateUser => "IMPERSONATE_USER",
            Permission::ProjectManagement => "PROJECT_MANAGEMENT",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Permission {
    type Err = VeilError;
    fn from_str(s: &str) -> Result<Self, VeilError> {
        Permission::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                VeilError::InvalidArgument(format!(
                    "unknown permission '{s}'; expected one of {}",
                    Permission::ALL.map(|p| p.name()).join(", ")
                ))
            })
    }
}

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Unique name.
    pub name: String,
    /// argon2id PHC string; None when the user has no password.
    pub password_hash: Option<String>,
    /// Groups.
    pub groups: BTreeSet<String>,
    /// Attributes: key -> set of values.
    pub attributes: BTreeMap<String, BTreeSet<String>>,
    /// Global permissions.
    pub permissions: BTreeSet<Permission>,
}

impl User {
    /// Whether the user holds a permission.
    pub fn has(&self, p: Permission) -> bool {
        self.permissions.contains(&p)
    }
}

/// Who may query a data source at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Subscription {
    /// Every authenticated principal.
    Anyone,
    /// Principals for whom the condition holds.
    When(String),
    /// Only these users.
    Users(Vec<String>),
    /// Only owners (the default for a new source).
    OwnersOnly,
}

impl fmt::Display for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subscription::Anyone => f.write_str("ANYONE"),
            Subscription::When(c) => write!(f, "WHEN {c}"),
            Subscription::Users(u) => write!(f, "USERS ({})", u.join(", ")),
            Subscription::OwnersOnly => f.write_str("OWNERS ONLY"),
        }
    }
}

/// One column of a source's schema snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnInfo {
    /// Column name.
    pub name: String,
    /// Arrow type, as Arrow's display string (informational).
    pub data_type: String,
    /// Tags on the column.
    pub tags: BTreeSet<String>,
}

impl ColumnInfo {
    /// The columns of an Arrow schema, without tags.
    pub fn untagged(schema: &arrow_schema::Schema) -> Vec<ColumnInfo> {
        schema
            .fields()
            .iter()
            .map(|f| ColumnInfo {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
                tags: BTreeSet::new(),
            })
            .collect()
    }
}

/// A registered data source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSource {
    /// Schema part of `schema.table`.
    pub schema: String,
    /// Table part of `schema.table`.
    pub table: String,
    /// Parquet file, directory or glob URL.
    pub location: String,
    /// The Arrow schema at registration, as Arrow IPC-free JSON.
    pub arrow_schema: String,
    /// Columns with their tags.
    pub columns: Vec<ColumnInfo>,
    /// Owners (user names).
    pub owners: BTreeSet<String>,
    /// Subscription policy.
    pub subscription: Subscription,
    /// Registered Parquet, or derived from a project's workspace table.
    #[serde(default)]
    pub kind: SourceKind,
}

/// What a data source is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceKind {
    /// Parquet registered by `CREATE DATA SOURCE`.
    #[default]
    Parquet,
    /// Registered from a workspace table by `CREATE DERIVED DATA SOURCE`.
    Derived(Box<Lineage>),
}

/// Where a derived source comes from (DESIGN.md section 5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    /// The project it was derived in.
    pub project: String,
    /// That project's id (its workspace path).
    pub project_id: String,
    /// The workspace table.
    pub table: String,
    /// The table version it pins.
    pub table_version: u64,
    /// The pinned Parquet files (object URLs); they outlive the table version.
    pub files: Vec<String>,
    /// Parent sources with what the derivation principal saw of each.
    pub parents: BTreeMap<String, Restriction>,
    /// Columns that hold masked values, with the source columns they came from.
    pub masked: BTreeMap<String, BTreeSet<String>>,
    /// Whether keyed masks used the project's join key (masked joins on):
    /// such tokens match nothing outside the project.
    pub project_keyed: bool,
    /// The project purposes the data was produced under (with ancestors).
    pub purposes: BTreeSet<String>,
    /// Whether it holds what only those purposes show (a policy exception
    /// they grant): then only principals acting under all of them, in a
    /// project that has them approved, are subscribed (owners always).
    #[serde(default)]
    pub purpose_bound: bool,
    /// The entitlements it was derived for (the project's equalized ones,
    /// or the least-privileged member's when equalization was off); also its
    /// subscription.
    pub entitlements: crate::project::Entitlements,
    /// Who derived it, and when (RFC 3339).
    pub derived_by: String,
    /// When.
    pub derived_at: String,
}

impl Lineage {
    /// The principal the derivation is judged for: the entitlements with the
    /// project's purposes, no user name.
    pub fn principal(&self) -> crate::principal::Principal {
        crate::principal::Principal {
            user: None,
            groups: self.entitlements.groups.clone(),
            attributes: self.entitlements.attributes.clone(),
            purposes: self.purposes.iter().cloned().collect(),
        }
    }
}

/// What a principal sees of one source, in a comparable form: used to tell
/// whether a parent's policies became stricter since a derivation, and
/// whether a workspace table holds more of a parent than a derivation may
/// publish.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restriction {
    /// Whether the principal was subscribed.
    pub subscribed: bool,
    /// Masked columns with their method's precedence rank (lower: stricter).
    pub masks: BTreeMap<String, u8>,
    /// Each masked column's method with its parameters (`ROUND 10` and
    /// `ROUND 10000` share a rank, not what they show), as stored JSON.
    /// Absent in lineage recorded before it was kept; then ranks compare.
    #[serde(default)]
    pub mask_methods: BTreeMap<String, String>,
    /// Row policies in force.
    pub row_policies: BTreeSet<String>,
    /// Each row policy's predicate with what its principal functions read
    /// of the principal (`attribute_contains(region)=US`): one policy
    /// filters differently for different principals. Absent in lineage
    /// recorded before it was kept; then only names compare.
    #[serde(default)]
    pub row_predicates: BTreeMap<String, String>,
}

impl Restriction {
    /// Why `self` (now) is stricter than `before`; empty when it is not.
    pub fn stricter_than(&self, before: &Restriction) -> Vec<String> {
        self.narrower(before, "now ")
    }

    /// What `self` hides of the source that `other` shows (a mask, a
    /// stricter mask, a row policy, the same policy resolved differently,
    /// no subscription); empty when it shows at least as much.
    pub fn hides_more_than(&self, other: &Restriction) -> Vec<String> {
        self.narrower(other, "")
    }

    fn narrower(&self, other: &Restriction, now: &str) -> Vec<String> {
        let mut why = Vec::new();
        if other.subscribed && !self.subscribed {
            why.push(format!(
                "{}subscribed",
                if now.is_empty() { "not " } else { "no longer " }
            ));
        }
        for (col, rank) in &self.masks {
            match other.masks.get(col) {
                None => why.push(format!("column {col} is {now}masked")),
                Some(was) if rank < was => why.push(format!("column {col} has a stricter mask")),
                Some(was) if rank == was => {
                    let (Some(mine), Some(theirs)) =
                        (self.mask_methods.get(col), other.mask_methods.get(col))
                    else {
                        continue;
                    };
                    if mine != theirs {
                        why.push(format!("column {col} is {now}masked differently"));
                    }
                }
                Some(_) => {}
            }
        }
        for p in &self.row_policies {
            if !other.row_policies.contains(p) {
                why.push(format!("row policy {p} {now}applies"));
                continue;
            }
            let (Some(mine), Some(theirs)) =
                (self.row_predicates.get(p), other.row_predicates.get(p))
            else {
                continue;
            };
            if mine != theirs {
                // Not the predicates themselves: policy details need
                // FETCH_POLICY_INFO.
                why.push(format!("row policy {p} {now}filters other rows"));
            }
        }
        why
    }
}

impl DataSource {
    /// `schema.table`.
    pub fn full_name(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

/// A masking method with its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MaskMethod {
    /// NULL of the column's type.
    Null,
    /// A constant text.
    Constant(String),
    /// Keyed HMAC-SHA256 token.
    Hash,
    /// Deterministic authenticated encryption.
    Encrypt,
    /// Regex replace.
    Regex {
        /// Pattern.
        pattern: String,
        /// Replacement.
        replacement: String,
    },
    /// Keep the first n characters.
    ShowFirst(usize),
    /// Keep the last n characters.
    ShowLast(usize),
    /// floor(x / width) * width.
    Round(f64),
    /// Truncate to 'year', 'month' or 'day'.
    DateTrunc(String),
}

impl MaskMethod {
    /// Precedence rank: lower is more restrictive (NULL first).
    pub fn rank(&self) -> u8 {
        match self {
            MaskMethod::Null => 0,
            MaskMethod::Constant(_) => 1,
            MaskMethod::Hash => 2,
            MaskMethod::Encrypt => 3,
            MaskMethod::Regex { .. } => 4,
            MaskMethod::ShowFirst(_) | MaskMethod::ShowLast(_) => 5,
            MaskMethod::Round(_) => 6,
            MaskMethod::DateTrunc(_) => 7,
        }
    }
}

pub(crate) fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl fmt::Display for MaskMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaskMethod::Null => f.write_str("NULL"),
            MaskMethod::Constant(c) => write!(f, "CONSTANT {}", quote(c)),
            MaskMethod::Hash => f.write_str("HASH"),
            MaskMethod::Encrypt => f.write_str("ENCRYPT"),
            MaskMethod::Regex {
                pattern,
                replacement,
            } => write!(f, "REGEX {} REPLACE {}", quote(pattern), quote(replacement)),
            MaskMethod::ShowFirst(n) => write!(f, "SHOW_FIRST {n}"),
            MaskMethod::ShowLast(n) => write!(f, "SHOW_LAST {n}"),
            MaskMethod::Round(w) => write!(f, "ROUND {w}"),
            MaskMethod::DateTrunc(u) => write!(f, "DATE_TRUNC {}", quote(u)),
        }
    }
}

/// When a policy applies, relative to its condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applicability {
    /// Always.
    Always,
    /// For everyone except principals for whom the condition holds.
    Unless(String),
    /// Only for principals for whom the condition holds.
    For(String),
}

impl fmt::Display for Applicability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Applicability::Always => Ok(()),
            Applicability::Unless(c) => write!(f, " UNLESS {c}"),
            Applicability::For(c) => write!(f, " FOR {c}"),
        }
    }
}

/// What a policy targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// Columns of one source (masking) or the whole source (row; empty list).
    Source {
        /// `schema.table`.
        source: String,
        /// Columns (masking policies only).
        columns: Vec<String>,
    },
    /// Every column (masking) or every source (row) carrying this tag.
    Tag(String),
}

/// A masking or row policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Unique name.
    pub name: String,
    /// What it targets.
    pub target: Target,
    /// Masking or row.
    pub rule: PolicyRule,
    /// UNLESS / FOR.
    pub applicability: Applicability,
    /// Who created it.
    pub created_by: String,
}

/// The effect of a policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PolicyRule {
    /// Mask the targeted columns.
    Mask(MaskMethod),
    /// Keep only rows where the predicate holds (SQL text).
    Row(String),
}

impl Policy {
    /// Whether this is a global (tag-targeted) policy.
    pub fn is_global(&self) -> bool {
        matches!(self.target, Target::Tag(_))
    }

    /// The statement that recreates this policy (used by SHOW and export).
    pub fn to_sql(&self) -> String {
        let target = match (&self.target, &self.rule) {
            (Target::Tag(t), PolicyRule::Mask(_)) => format!("COLUMNS TAGGED {}", quote(t)),
            (Target::Tag(t), PolicyRule::Row(_)) => format!("SOURCES TAGGED {}", quote(t)),
            (Target::Source { source, columns }, PolicyRule::Mask(_)) => {
                format!("{source} ({})", columns.join(", "))
            }
            (Target::Source { source, .. }, PolicyRule::Row(_)) => source.clone(),
        };
        match &self.rule {
            PolicyRule::Mask(m) => format!(
                "CREATE MASKING POLICY {} ON {target} USING {m}{}",
                self.name, self.applicability
            ),
            PolicyRule::Row(p) => format!(
                "CREATE ROW POLICY {} ON {target} USING {p}{}",
                self.name, self.applicability
            ),
        }
    }
}

/// Whether a column tag is covered by a policy tag (`PII` covers `PII.SSN`).
pub fn tag_covers(policy_tag: &str, column_tag: &str) -> bool {
    column_tag.eq_ignore_ascii_case(policy_tag)
        || (column_tag.len() > policy_tag.len()
            && column_tag.as_bytes()[policy_tag.len()] == b'.'
            && column_tag[..policy_tag.len()].eq_ignore_ascii_case(policy_tag))
}

/// Policies by name (read through `Deref` as the map), with an index of
/// the source and the tags each one targets, kept by [`Policies::insert`]
/// and [`Policies::remove`] (the only ways to change it), so deciding on a
/// source reads the policies that may apply to it instead of all of them.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    by_name: BTreeMap<String, Policy>,
    /// Names of the policies on each source (`schema.table`, as stored).
    by_source: HashMap<String, BTreeSet<String>>,
    /// Names of the policies on each tag, the tag in ASCII lowercase.
    by_tag: HashMap<String, BTreeSet<String>>,
}

impl Policies {
    /// Adds or replaces the policy `name`; returns the one it replaced.
    pub fn insert(&mut self, name: String, policy: Policy) -> Option<Policy> {
        let old = self.remove(&name);
        let names = match &policy.target {
            Target::Source { source, .. } => self.by_source.entry(source.clone()),
            Target::Tag(tag) => self.by_tag.entry(tag.to_ascii_lowercase()),
        };
        names.or_default().insert(name.clone());
        self.by_name.insert(name, policy);
        old
    }

    /// Removes the policy `name`.
    pub fn remove(&mut self, name: &str) -> Option<Policy> {
        let old = self.by_name.remove(name)?;
        let (index, key) = match &old.target {
            Target::Source { source, .. } => (&mut self.by_source, source.clone()),
            Target::Tag(tag) => (&mut self.by_tag, tag.to_ascii_lowercase()),
        };
        if let Some(names) = index.get_mut(&key) {
            names.remove(name);
            if names.is_empty() {
                index.remove(&key);
            }
        }
        Some(old)
    }

    /// In name order, every policy that targets `source` by name or targets
    /// a tag covering one of its column tags ([`tag_covers`]): a superset of
    /// the policies that apply to it, none of the others.
    pub fn on_source<'a>(&'a self, source: &DataSource) -> impl Iterator<Item = &'a Policy> {
        let mut names: BTreeSet<&str> = BTreeSet::new();
        if let Some(on) = self.by_source.get(&source.full_name()) {
            names.extend(on.iter().map(String::as_str));
        }
        for tag in source.columns.iter().flat_map(|c| &c.tags) {
            let tag = tag.to_ascii_lowercase();
            // The policy tags covering `tag`: itself and each prefix ending
            // before a '.'.
            let prefixes = tag
                .bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'.')
                .map(|(i, _)| &tag[..i])
                .chain([tag.as_str()]);
            for prefix in prefixes {
                if let Some(on) = self.by_tag.get(prefix) {
                    names.extend(on.iter().map(String::as_str));
                }
            }
        }
        names.into_iter().filter_map(|n| self.by_name.get(n))
    }
}

impl std::ops::Deref for Policies {
    type Target = BTreeMap<String, Policy>;

    fn deref(&self) -> &Self::Target {
        &self.by_name
    }
}

/// The whole catalog at one policy version.
#[derive(Debug, Clone, Default)]
pub struct CatalogSnapshot {
    /// Bumped by every mutation.
    pub version: u64,
    /// Users by name.
    pub users: BTreeMap<String, User>,
    /// Sources by `schema.table`.
    pub sources: BTreeMap<String, DataSource>,
    /// Policies by name, indexed by what they target.
    pub policies: Policies,
    /// Purposes by name.
    pub purposes: BTreeMap<String, crate::project::Purpose>,
    /// Projects by name.
    pub projects: BTreeMap<String, crate::project::Project>,
    /// Server-wide settings (key versions).
    pub settings: Settings,
    /// Workspace tables by project id, then table name.
    pub workspaces: BTreeMap<String, BTreeMap<String, crate::workspace::WorkspaceTable>>,
}

/// Server-wide settings kept in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Current version of the per-(source, column) mask keys; `ROTATE KEYS`
    /// makes the next one current.
    pub column_key_version: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            column_key_version: 1,
        }
    }
}

impl CatalogSnapshot {
    /// Names of the projects that match `f`, for error messages.
    pub fn projects_where(&self, f: impl Fn(&crate::project::Project) -> bool) -> Vec<String> {
        self.projects
            .values()
            .filter(|p| f(p))
            .map(|p| p.name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_hierarchy() {
        assert!(tag_covers("PII", "PII"));
        assert!(tag_covers("PII", "PII.SSN"));
        assert!(tag_covers("pii", "PII.SSN"));
        assert!(!tag_covers("PII", "PIIX"));
        assert!(!tag_covers("PII.SSN", "PII"));
    }

    fn policy(name: &str, target: Target) -> Policy {
        Policy {
            name: name.into(),
            target,
            rule: PolicyRule::Mask(MaskMethod::Null),
            applicability: Applicability::Always,
            created_by: "admin".into(),
        }
    }

    fn source(name: &str, tags: &[&[&str]]) -> DataSource {
        let (schema, table) = name.split_once('.').unwrap();
        DataSource {
            schema: schema.into(),
            table: table.into(),
            location: String::new(),
            arrow_schema: String::new(),
            columns: tags
                .iter()
                .enumerate()
                .map(|(i, t)| ColumnInfo {
                    name: format!("c{i}"),
                    data_type: "Utf8".into(),
                    tags: t.iter().map(|s| s.to_string()).collect(),
                })
                .collect(),
            owners: BTreeSet::new(),
            subscription: Subscription::Anyone,
            kind: SourceKind::Parquet,
        }
    }

    /// The index finds exactly the policies that target the source by name
    /// or a tag covering one of its column tags (what a scan of all of them
    /// with `tag_covers` finds), in name order, through replacements and
    /// removals.
    #[test]
    fn policies_on_a_source_are_exactly_those_a_full_scan_finds() {
        let tags = [
            "PII",
            "pii",
            "PII.SSN",
            "pii.ssn.last4",
            "PIIX",
            "Fin",
            "fin.card",
            "",
            ".",
            "é.x",
            "PII.",
            "a.b.c",
        ];
        let sources = ["hr.emp", "hr.Emp", "sales.tx"];
        let mut policies = Policies::default();
        let mut n = 0;
        for t in tags {
            policies.insert(
                format!("p{n:02}"),
                policy(&format!("p{n:02}"), Target::Tag(t.into())),
            );
            n += 1;
        }
        for s in sources {
            let columns = vec!["c0".to_string()];
            policies.insert(
                format!("p{n:02}"),
                policy(
                    &format!("p{n:02}"),
                    Target::Source {
                        source: s.into(),
                        columns,
                    },
                ),
            );
            n += 1;
        }
        // Replace a tag policy by a source policy and drop another.
        policies.insert(
            "p00".into(),
            policy(
                "p00",
                Target::Source {
                    source: "hr.emp".into(),
                    columns: vec![],
                },
            ),
        );
        assert!(policies.remove("p05").is_some());
        assert!(policies.remove("p05").is_none());

        let column_tags: [&[&str]; 6] = [
            &["PII.SSN"],
            &["pii.SSN.LAST4", "fin"],
            &["Fin.Card.X"],
            &[".", "PII..x"],
            &["É.x", "é.x"],
            &["a.b.c.d", "PIIX"],
        ];
        for name in sources {
            for tags in column_tags
                .iter()
                .map(|t| vec![*t])
                .chain([column_tags.to_vec(), vec![]])
            {
                let src = source(name, &tags);
                let got: Vec<&str> = policies.on_source(&src).map(|p| p.name.as_str()).collect();
                let scan: Vec<&str> = policies
                    .iter()
                    .filter(|(_, p)| match &p.target {
                        Target::Source { source, .. } => *source == src.full_name(),
                        Target::Tag(t) => src
                            .columns
                            .iter()
                            .any(|c| c.tags.iter().any(|ct| tag_covers(t, ct))),
                    })
                    .map(|(k, _)| k.as_str())
                    .collect();
                assert_eq!(got, scan, "{name} {tags:?}");
            }
        }
        // Not vacuous: covering tags, prefixes and the source name all count.
        let all = source("hr.emp", &column_tags);
        let got: Vec<&str> = policies.on_source(&all).map(|p| p.name.as_str()).collect();
        assert!(got.len() > 6, "{got:?}");
        assert!(
            got.contains(&"p00") && got.contains(&"p02") && got.contains(&"p12"),
            "{got:?}"
        );
        assert!(!got.contains(&"p05") && !got.contains(&"p13"), "{got:?}");
    }

    #[test]
    fn permission_names_round_trip() {
        for p in Permission::ALL {
            assert_eq!(p.name().parse::<Permission>().ok(), Some(p));
        }
        assert!("ROOT".parse::<Permission>().is_err());
    }
}
