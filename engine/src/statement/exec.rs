//! Executes governance statements: checks the caller's rights, validates,
//! and applies the change with its audit record in one transaction.
//!
//! Rights are checked against the authenticated user and, when
//! impersonating, the impersonated user too: impersonation never grants a
//! permission the impersonator lacks.

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::DFSchema;
use datafusion::logical_expr::ExprSchemable;
use datafusion::prelude::SessionContext;
use veil_udfs::{mask_udf, KeyHandle, MaskKey};

use super::ast::GovStatement;
use crate::catalog::{parquet_options, source_schema};
use crate::condition::parse_condition;
use crate::engine::{hash_password, QueryOutput, Session};
use crate::error::{Result, VeilError};
use crate::governance::principal_fns::{parse_predicate, resolve};
use crate::governance::rule::mask_spec;
use crate::model::{
    CatalogSnapshot, ColumnInfo, DataSource, MaskMethod, Permission, Policy, PolicyRule,
    SourceKind, Subscription, Target, User,
};
use crate::policy::{decide, Access};
use crate::principal::Principal;
use crate::store::{AuditEntry, Change};

/// The context a governance statement is planned in.
pub(super) struct Ctx<'a> {
    pub(super) session: &'a Session,
    pub(super) snapshot: Arc<CatalogSnapshot>,
}

impl Ctx<'_> {
    pub(super) fn callers(&self) -> Result<Vec<&User>> {
        let mut v = vec![self.session.caller(&self.snapshot)?];
        if let Some(i) = self.session.impersonated() {
            v.push(self.user(i)?);
        }
        Ok(v)
    }

    pub(super) fn require(&self, p: Permission, action: &str) -> Result<()> {
        for u in self.callers()? {
            if !u.has(p) {
                return Err(VeilError::PermissionDenied(format!(
                    "{} lacks permission {p} needed to {action}",
                    u.name
                )));
            }
        }
        Ok(())
    }

    pub(super) fn has(&self, p: Permission) -> Result<bool> {
        Ok(self.callers()?.iter().all(|u| u.has(p)))
    }

    pub(super) fn owns(&self, s: &DataSource) -> Result<bool> {
        Ok(self.callers()?.iter().all(|u| s.owners.contains(&u.name)))
    }

    /// Owner of the source, or holder of `alt`.
    fn require_owner_or(&self, s: &DataSource, alt: Permission, action: &str) -> Result<()> {
        if self.owns(s)? || self.has(alt)? {
            return Ok(());
        }
        Err(VeilError::PermissionDenied(format!(
            "{} is not an owner of {} and lacks permission {alt} needed to {action}",
            self.session.effective_user(),
            s.full_name()
        )))
    }

    pub(super) fn user(&self, name: &str) -> Result<&User> {
        self.snapshot
            .users
            .get(name)
            .ok_or_else(|| VeilError::NotFound(format!("user {name} does not exist")))
    }

    pub(super) fn source(&self, name: &str) -> Result<&DataSource> {
        self.snapshot
            .sources
            .get(name)
            .ok_or_else(|| VeilError::NotFound(format!("data source {name} does not exist")))
    }

    pub(super) fn audit(
        &self,
        action: &str,
        object: &str,
        detail: serde_json::Value,
    ) -> AuditEntry {
        AuditEntry {
            actor: self.session.user().to_string(),
            impersonated: self.session.impersonated().map(str::to_string),
            project: self.session.project().map(str::to_string),
            action: action.into(),
            object: object.into(),
            detail: detail.to_string(),
            outcome: "ok".into(),
        }
    }
}

pub(super) fn utf8_batch(columns: &[&str], rows: Vec<Vec<String>>) -> Result<QueryOutput> {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| Field::new(*c, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let arrays: Vec<ArrayRef> = (0..columns.len())
        .map(|i| {
            Arc::new(StringArray::from(
                rows.iter().map(|r| r[i].clone()).collect::<Vec<_>>(),
            )) as ArrayRef
        })
        .collect();
    let batch = RecordBatch::try_new(Arc::clone(&schema), arrays)?;
    QueryOutput::from_batches(schema, vec![batch])
}

pub(super) fn join<I: IntoIterator<Item = S>, S: AsRef<str>>(it: I) -> String {
    it.into_iter()
        .map(|s| s.as_ref().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A throwaway key for validating keyed masks (never used on data).
fn probe_key() -> MaskKey {
    MaskKey::new(
        KeyHandle {
            id: "validation".into(),
            version: 0,
        },
        [0u8; 32],
    )
}

/// Resolves a location to an absolute path or URL.
fn resolve_location(session: &Session, location: &str) -> String {
    if location.contains("://") || location.starts_with('/') {
        location.to_string()
    } else {
        session
            .engine()
            .base_dir()
            .join(location)
            .to_string_lossy()
            .into_owned()
    }
}

async fn infer_schema(location: &str) -> Result<datafusion::arrow::datatypes::SchemaRef> {
    let ctx = SessionContext::new();
    let url = datafusion::datasource::listing::ListingTableUrl::parse(location)
        .map_err(|e| VeilError::InvalidArgument(format!("location '{location}': {e}")))?;
    let state = ctx.state();
    let unreadable = |e: &dyn std::fmt::Display| {
        VeilError::InvalidArgument(format!(
            "location '{location}' is not readable Parquet: {e}"
        ))
    };
    // A garbage footer can panic inside parquet (see `SourceTable::scan_with_args`).
    let schema = crate::executor::unless_panic(parquet_options().infer_schema(&state, &url))
        .await
        .map_err(|panic| unreadable(&panic))?
        .map_err(|e| unreadable(&e))?;
    if schema.fields().is_empty() {
        return Err(VeilError::InvalidArgument(format!(
            "location '{location}' holds no Parquet files"
        )));
    }
    Ok(schema)
}

fn validate_row_predicate(source: &DataSource, predicate: &str, policy: &str) -> Result<()> {
    let schema = source_schema(source)?;
    let df = DFSchema::try_from_qualified_schema(source.full_name().as_str(), &schema)?;
    let bad = |e: String| {
        VeilError::InvalidArgument(format!(
            "row policy {policy}: predicate '{predicate}' does not apply to {}: {e}",
            source.full_name()
        ))
    };
    let parsed = parse_predicate(predicate, &df).map_err(|e| bad(e.to_string()))?;
    let resolved = resolve(parsed, &Principal::default(), &df).map_err(|e| bad(e.to_string()))?;
    match resolved.get_type(&df) {
        Ok(DataType::Boolean) | Ok(DataType::Null) => Ok(()),
        Ok(t) => Err(bad(format!("it has type {t}, not boolean"))),
        Err(e) => Err(bad(e.to_string())),
    }
}

fn validate_mask(
    source: Option<&DataSource>,
    columns: &[String],
    m: &MaskMethod,
    policy: &str,
) -> Result<()> {
    let udf = mask_udf(mask_spec(m, probe_key())?)
        .map_err(|e| VeilError::InvalidArgument(format!("masking policy {policy}: {e}")))?;
    let Some(source) = source else { return Ok(()) };
    let schema = source_schema(source)?;
    for c in columns {
        let field = schema.field_with_name(c).map_err(|_| {
            VeilError::NotFound(format!(
                "column {c} does not exist in {}",
                source.full_name()
            ))
        })?;
        udf.return_type(&[field.data_type().clone()]).map_err(|e| {
            VeilError::InvalidArgument(format!("masking policy {policy} on column {c}: {e}"))
        })?;
    }
    Ok(())
}

pub(super) enum Outcome {
    /// Catalog changes, their audit record and the status text.
    Change(Vec<Change>, AuditEntry, String),
    /// A read-only answer.
    Rows(QueryOutput),
}

pub(super) fn change(changes: Vec<Change>, audit: AuditEntry, status: String) -> Result<Outcome> {
    Ok(Outcome::Change(changes, audit, status))
}

/// Runs a governance statement for the session's caller. Returns the
/// result and whether the statement's audit record was already written
/// (with the change it made, in one transaction).
pub async fn execute(session: &mut Session, stmt: GovStatement) -> Result<(QueryOutput, bool)> {
    let engine = Arc::clone(session.engine());
    if let GovStatement::UseProject { project } = &stmt {
        session.use_project(project.as_deref())?;
        let status = QueryOutput::status(&match session.project() {
            Some(p) => format!("using project {p}"),
            None => "using no project".to_string(),
        })?;
        return Ok((status, false));
    }
    if let GovStatement::ShowTablesIn { schema } = &stmt {
        if !schema.eq_ignore_ascii_case(crate::workspace::WORKSPACE_SCHEMA) {
            return Ok((
                super::sources::show_tables_in(session, schema).await?,
                false,
            ));
        }
    }
    // Registration reads files: infer the schema before taking the write lock.
    let inferred = match &stmt {
        GovStatement::CreateDataSource { location, .. } => {
            let location = resolve_location(session, location);
            if engine.warehouse().contains(&location) {
                return Err(VeilError::PermissionDenied(format!(
                    "location {location} is inside the workspace warehouse; workspace tables \
                     are shared only by CREATE DERIVED DATA SOURCE in their project"
                )));
            }
            Some((infer_schema(&location).await?, location))
        }
        _ => None,
    };
    let _guard = engine.write_guard()?;
    let c = Ctx {
        session,
        snapshot: engine.snapshot()?,
    };
    match plan(&c, stmt, inferred)? {
        Outcome::Rows(out) => Ok((out, false)),
        Outcome::Change(changes, audit, status) => {
            engine.apply_locked(&changes, &audit, c.snapshot.version)?;
            // Workspace files the change stopped listing (a dropped project
            // or derived source) are released once no query can need them.
            let before = engine.warehouse().referenced(&c.snapshot);
            let after = engine.warehouse().referenced(engine.snapshot()?.as_ref());
            engine.release_later(before.difference(&after).cloned().collect());
            Ok((QueryOutput::status(&status)?, true))
        }
    }
}

/// A stored password hash given by `PASSWORD HASH` (as `veil export`
/// writes it): an argon2id PHC string, checked to parse, kept as given.
fn argon2id_hash(text: &str) -> Result<String> {
    match argon2::PasswordHash::new(text) {
        Ok(h) if h.algorithm.as_str() == "argon2id" && h.hash.is_some() => Ok(text.to_string()),
        _ => Err(VeilError::InvalidArgument(
            "PASSWORD HASH takes an argon2id hash as `veil export` writes it \
             ('$argon2id$v=19$m=...,t=...,p=...$salt$hash')"
                .into(),
        )),
    }
}

fn plan(
    c: &Ctx<'_>,
    stmt: GovStatement,
    inferred: Option<(datafusion::arrow::datatypes::SchemaRef, String)>,
) -> Result<Outcome> {
    use serde_json::json;
    match stmt {
        GovStatement::CreateUser {
            name,
            password,
            password_hash,
            groups,
            attributes,
        } => {
            c.require(Permission::UserAdmin, &format!("create user {name}"))?;
            if c.snapshot.users.contains_key(&name) {
                return Err(VeilError::AlreadyExists(format!(
                    "user {name} already exists"
                )));
            }
            let user = User {
                name: name.clone(),
                password_hash: match (password, password_hash) {
                    (Some(p), _) => Some(hash_password(&p)?),
                    (None, Some(h)) => Some(argon2id_hash(&h)?),
                    (None, None) => None,
                },
                groups: groups.iter().cloned().collect(),
                attributes: attributes
                    .into_iter()
                    .map(|(k, v)| (k, v.into_iter().collect()))
                    .collect(),
                permissions: BTreeSet::new(),
            };
            let detail = json!({"groups": user.groups, "attributes": user.attributes});
            change(
                vec![Change::PutUser(user)],
                c.audit("CreateUser", &name, detail),
                format!("user {name} created"),
            )
        }
        GovStatement::AlterUserAddGroup { user, group } => {
            alter_user(c, &user, "AddGroup", json!({"group": group}), |u| {
                u.groups.insert(group.clone());
            })
        }
        GovStatement::AlterUserRemoveGroup { user, group } => {
            alter_user(c, &user, "RemoveGroup", json!({"group": group}), |u| {
                u.groups.remove(&group);
            })
        }
        GovStatement::AlterUserSetAttribute { user, key, values } => alter_user(
            c,
            &user,
            "SetAttribute",
            json!({"key": key, "values": values}),
            |u| {
                u.attributes
                    .insert(key.clone(), values.iter().cloned().collect());
            },
        ),
        GovStatement::AlterUserUnsetAttribute { user, key } => {
            alter_user(c, &user, "UnsetAttribute", json!({"key": key}), |u| {
                u.attributes.remove(&key);
            })
        }
        GovStatement::AlterUserSetPassword { user, password } => {
            let own = c.session.impersonated().is_none() && c.session.user() == user;
            if !own {
                c.require(
                    Permission::UserAdmin,
                    &format!("change the password of {user}"),
                )?;
            }
            let mut u = c.user(&user)?.clone();
            u.password_hash = Some(hash_password(&password)?);
            change(
                vec![Change::PutUser(u)],
                c.audit("SetPassword", &user, json!({})),
                format!("password of {user} changed"),
            )
        }
        GovStatement::GrantPermission { permission, user } => {
            c.require(
                Permission::UserAdmin,
                &format!("grant {permission} to {user}"),
            )?;
            let mut u = c.user(&user)?.clone();
            u.permissions.insert(permission);
            change(
                vec![Change::PutUser(u)],
                c.audit(
                    "PermissionApplied",
                    &user,
                    json!({"permission": permission.name()}),
                ),
                format!("permission {permission} granted to {user}"),
            )
        }
        GovStatement::RevokePermission { permission, user } => {
            c.require(
                Permission::UserAdmin,
                &format!("revoke {permission} from {user}"),
            )?;
            let mut u = c.user(&user)?.clone();
            u.permissions.remove(&permission);
            change(
                vec![Change::PutUser(u)],
                c.audit(
                    "PermissionRemoved",
                    &user,
                    json!({"permission": permission.name()}),
                ),
                format!("permission {permission} revoked from {user}"),
            )
        }
        GovStatement::DropUser { name } => {
            c.require(Permission::UserAdmin, &format!("drop user {name}"))?;
            c.user(&name)?;
            if name == c.session.user() {
                return Err(VeilError::FailedPrecondition(format!(
                    "{name} cannot drop their own user"
                )));
            }
            let projects = c.snapshot.projects_where(|p| p.members.contains(&name));
            if !projects.is_empty() {
                return Err(VeilError::FailedPrecondition(format!(
                    "user {name} is a member of projects {}; remove them first",
                    join(&projects)
                )));
            }
            change(
                vec![Change::DeleteUser(name.clone())],
                c.audit("DropUser", &name, json!({})),
                format!("user {name} dropped"),
            )
        }
        GovStatement::CreateDataSource { source, .. } => {
            c.require(
                Permission::CreateDataSource,
                &format!("create data source {source}"),
            )?;
            super::sources::check_source_name(&source)?;
            if c.snapshot.sources.contains_key(&source) {
                return Err(VeilError::AlreadyExists(format!(
                    "data source {source} already exists"
                )));
            }
            let Some((schema, location)) = inferred else {
                return Err(VeilError::Internal("schema was not inferred".into()));
            };
            let (schema_name, table) = source.split_once('.').unwrap_or(("", &source));
            let arrow_schema = serde_json::to_string(schema.as_ref())
                .map_err(|e| VeilError::Internal(format!("schema: {e}")))?;
            let ds = DataSource {
                schema: schema_name.to_string(),
                table: table.to_string(),
                location: location.clone(),
                arrow_schema,
                columns: ColumnInfo::untagged(&schema),
                owners: BTreeSet::from([c.session.effective_user().to_string()]),
                subscription: Subscription::OwnersOnly,
                kind: SourceKind::Parquet,
            };
            change(
                vec![Change::PutSource(ds)],
                c.audit("CreateDataSource", &source, json!({"location": location})),
                format!("data source {source} created"),
            )
        }
        GovStatement::TagColumn {
            source,
            column,
            tags,
        } => alter_source(
            c,
            &source,
            Permission::Governance,
            "tag columns of",
            "TagColumn",
            json!({"column": column, "tags": tags}),
            |s| {
                let col = find_column(s, &column)?;
                col.tags.extend(tags.iter().cloned());
                Ok(())
            },
        ),
        GovStatement::UntagColumn {
            source,
            column,
            tags,
        } => alter_source(
            c,
            &source,
            Permission::Governance,
            "untag columns of",
            "UntagColumn",
            json!({"column": column, "tags": tags}),
            |s| {
                let col = find_column(s, &column)?;
                if tags.is_empty() {
                    col.tags.clear();
                } else {
                    for t in &tags {
                        col.tags.remove(t);
                    }
                }
                Ok(())
            },
        ),
        GovStatement::SetSubscription {
            source,
            subscription,
        } => {
            if let Subscription::Users(users) = &subscription {
                for u in users {
                    c.user(u)?;
                }
            }
            let text = subscription.to_string();
            alter_source(
                c,
                &source,
                Permission::Governance,
                "change the subscription policy of",
                "SetSubscription",
                json!({"subscription": text}),
                |s| {
                    s.subscription = subscription.clone();
                    Ok(())
                },
            )
        }
        GovStatement::AddOwner { source, user } => {
            c.user(&user)?;
            alter_source(
                c,
                &source,
                Permission::Governance,
                "add owners to",
                "AddOwner",
                json!({"owner": user}),
                |s| {
                    s.owners.insert(user.clone());
                    Ok(())
                },
            )
        }
        GovStatement::RemoveOwner { source, user } => alter_source(
            c,
            &source,
            Permission::Governance,
            "remove owners of",
            "RemoveOwner",
            json!({"owner": user}),
            |s| {
                if !s.owners.contains(&user) {
                    return Err(VeilError::NotFound(format!(
                        "{user} is not an owner of {}",
                        s.full_name()
                    )));
                }
                if s.owners.len() == 1 {
                    return Err(VeilError::FailedPrecondition(format!(
                        "{user} is the last owner of {}; add another owner first",
                        s.full_name()
                    )));
                }
                s.owners.remove(&user);
                Ok(())
            },
        ),
        GovStatement::DropDataSource { source } => {
            let s = c.source(&source)?;
            c.require_owner_or(s, Permission::Governance, "drop it")?;
            let projects = c
                .snapshot
                .projects_where(|p| p.sources.contains_key(&source));
            if !projects.is_empty() {
                return Err(VeilError::FailedPrecondition(format!(
                    "data source {source} is used by projects {}; remove it from them first",
                    join(&projects)
                )));
            }
            let mut changes = vec![Change::DeleteSource(source.clone())];
            // Local policies die with their source.
            for p in c.snapshot.policies.values() {
                if matches!(&p.target, Target::Source { source: t, .. } if *t == source) {
                    changes.push(Change::DeletePolicy(p.name.clone()));
                }
            }
            change(
                changes,
                c.audit("DropDataSource", &source, json!({})),
                format!("data source {source} dropped"),
            )
        }
        GovStatement::CreateMaskingPolicy {
            name,
            target,
            method,
            applicability,
        } => {
            if c.snapshot.policies.contains_key(&name) {
                return Err(VeilError::AlreadyExists(format!(
                    "policy {name} already exists"
                )));
            }
            match &target {
                Target::Tag(_) => {
                    c.require(
                        Permission::Governance,
                        &format!("create global masking policy {name}"),
                    )?;
                    validate_mask(None, &[], &method, &name)?;
                }
                Target::Source { source, columns } => {
                    let s = c.source(source)?;
                    c.require_owner_or(
                        s,
                        Permission::Governance,
                        &format!("create masking policy {name}"),
                    )?;
                    validate_mask(Some(s), columns, &method, &name)?;
                }
            }
            put_policy(
                c,
                Policy {
                    name,
                    target,
                    rule: PolicyRule::Mask(method),
                    applicability,
                    created_by: c.session.effective_user().to_string(),
                },
            )
        }
        GovStatement::CreateRowPolicy {
            name,
            target,
            predicate,
            applicability,
        } => {
            if c.snapshot.policies.contains_key(&name) {
                return Err(VeilError::AlreadyExists(format!(
                    "policy {name} already exists"
                )));
            }
            match &target {
                Target::Tag(_) => {
                    c.require(
                        Permission::Governance,
                        &format!("create global row policy {name}"),
                    )?;
                }
                Target::Source { source, .. } => {
                    let s = c.source(source)?;
                    c.require_owner_or(
                        s,
                        Permission::Governance,
                        &format!("create row policy {name}"),
                    )?;
                    validate_row_predicate(s, &predicate, &name)?;
                }
            }
            put_policy(
                c,
                Policy {
                    name,
                    target,
                    rule: PolicyRule::Row(predicate),
                    applicability,
                    created_by: c.session.effective_user().to_string(),
                },
            )
        }
        GovStatement::DropPolicy { name } => {
            let p = c
                .snapshot
                .policies
                .get(&name)
                .ok_or_else(|| VeilError::NotFound(format!("policy {name} does not exist")))?;
            match &p.target {
                Target::Tag(_) => c.require(
                    Permission::Governance,
                    &format!("drop global policy {name}"),
                )?,
                Target::Source { source, .. } => {
                    let s = c.source(source)?;
                    c.require_owner_or(s, Permission::Governance, &format!("drop policy {name}"))?;
                }
            }
            change(
                vec![Change::DeletePolicy(name.clone())],
                c.audit("DropPolicy", &name, json!({"policy": p.to_sql()})),
                format!("policy {name} dropped"),
            )
        }
        GovStatement::ShowUsers => {
            let all = c.has(Permission::UserAdmin)?;
            let rows = c
                .snapshot
                .users
                .values()
                .filter(|u| all || u.name == c.session.effective_user())
                .map(|u| {
                    vec![
                        u.name.clone(),
                        join(&u.groups),
                        u.attributes
                            .iter()
                            .map(|(k, v)| format!("{k}=({})", join(v)))
                            .collect::<Vec<_>>()
                            .join("; "),
                        join(u.permissions.iter().map(|p| p.name())),
                    ]
                })
                .collect();
            Ok(Outcome::Rows(utf8_batch(
                &["name", "groups", "attributes", "permissions"],
                rows,
            )?))
        }
        GovStatement::ShowDataSources => {
            let all = c.has(Permission::Governance)?;
            let principal = c.session.principal(&c.snapshot)?;
            let mut rows = Vec::new();
            // Inside a project only its sources exist, for everyone.
            let scope = match c.session.project() {
                Some(p) => c.snapshot.projects.get(p).map(|p| &p.sources),
                None => None,
            };
            for s in c.snapshot.sources.values() {
                if scope.is_some_and(|sources| !sources.contains_key(&s.full_name())) {
                    continue;
                }
                if !all && crate::policy::subscription(&principal, &c.snapshot, s)?.is_err() {
                    continue;
                }
                let tags = s
                    .columns
                    .iter()
                    .filter(|col| !col.tags.is_empty())
                    .map(|col| format!("{}: {}", col.name, join(&col.tags)))
                    .collect::<Vec<_>>()
                    .join("; ");
                let kind = match s.kind {
                    SourceKind::Parquet => "parquet",
                    SourceKind::Derived(_) => "derived",
                };
                rows.push(vec![
                    s.full_name(),
                    kind.into(),
                    s.location.clone(),
                    join(&s.owners),
                    s.subscription.to_string(),
                    tags,
                    super::sources::lineage_text(s),
                ]);
            }
            Ok(Outcome::Rows(utf8_batch(
                &[
                    "name",
                    "kind",
                    "location",
                    "owners",
                    "subscription",
                    "tags",
                    "lineage",
                ],
                rows,
            )?))
        }
        GovStatement::ShowPolicies => {
            let all = c.has(Permission::Governance)? || c.has(Permission::FetchPolicyInfo)?;
            let mut rows = Vec::new();
            for p in c.snapshot.policies.values() {
                let visible = all
                    || match &p.target {
                        Target::Tag(_) => false,
                        Target::Source { source, .. } => match c.snapshot.sources.get(source) {
                            Some(s) => c.owns(s)?,
                            None => false,
                        },
                    };
                if !visible {
                    continue;
                }
                let (kind, effect) = match &p.rule {
                    PolicyRule::Mask(m) => ("masking", m.to_string()),
                    PolicyRule::Row(pred) => ("row", pred.clone()),
                };
                let target = match &p.target {
                    Target::Tag(t) => format!("tag {t}"),
                    Target::Source { source, columns } if columns.is_empty() => source.clone(),
                    Target::Source { source, columns } => {
                        format!("{source} ({})", columns.join(", "))
                    }
                };
                rows.push(vec![
                    p.name.clone(),
                    kind.into(),
                    target,
                    effect,
                    p.applicability.to_string().trim().to_string(),
                    p.created_by.clone(),
                ]);
            }
            Ok(Outcome::Rows(utf8_batch(
                &[
                    "name",
                    "kind",
                    "target",
                    "effect",
                    "condition",
                    "created_by",
                ],
                rows,
            )?))
        }
        GovStatement::ShowPolicyInfo {
            source,
            as_user,
            in_project,
        } => {
            let s = c.source(&source)?;
            c.require_owner_or(
                s,
                Permission::FetchPolicyInfo,
                &format!("see the policies of {source}"),
            )?;
            // The principal a query would run as: the named user (outside
            // projects unless IN PROJECT), else this session's.
            let user = c.user(as_user.as_deref().unwrap_or(c.session.effective_user()))?;
            let project = match (&in_project, &as_user) {
                (Some(p), _) => Some(crate::project::project_name(p)?),
                (None, None) => c.session.project().map(str::to_string),
                (None, Some(_)) => None,
            };
            let principal =
                crate::project::effective_principal(&c.snapshot, user, project.as_deref())?;
            let who = principal.describe().to_string();
            // Inside a project, the same scope check as its catalog.
            let out_of_scope = project
                .as_deref()
                .and_then(|p| c.snapshot.projects.get(p))
                .filter(|p| !p.sources.contains_key(&source))
                .map(|p| format!("data source {source} is not part of project {}", p.name));
            let access = match out_of_scope {
                Some(reason) => Access::Denied(reason),
                None => decide(&principal, &c.snapshot, s)?,
            };
            let rows = match access {
                Access::Denied(reason) => vec![vec![
                    who,
                    "subscription".into(),
                    source.clone(),
                    "denied".into(),
                    reason,
                    String::new(),
                ]],
                Access::Granted(d) => {
                    let mut rows = vec![vec![
                        who.clone(),
                        "subscription".into(),
                        source.clone(),
                        "granted".into(),
                        s.subscription.to_string(),
                        String::new(),
                    ]];
                    for m in &d.masks {
                        rows.push(vec![
                            who.clone(),
                            "mask".into(),
                            m.column.clone(),
                            m.method.to_string(),
                            m.policy.clone(),
                            join(&m.overridden),
                        ]);
                    }
                    for r in &d.row_filters {
                        rows.push(vec![
                            who.clone(),
                            "row filter".into(),
                            source.clone(),
                            r.predicate.clone(),
                            r.policy.clone(),
                            String::new(),
                        ]);
                    }
                    rows
                }
            };
            Ok(Outcome::Rows(utf8_batch(
                &[
                    "principal",
                    "kind",
                    "object",
                    "effect",
                    "policy",
                    "overridden",
                ],
                rows,
            )?))
        }
        GovStatement::VerifyAudit => {
            c.require(Permission::Audit, "verify the audit log")?;
            let v = c.session.engine().verify_audit()?;
            let schema = Arc::new(Schema::new(vec![
                Field::new("status", DataType::Utf8, false),
                Field::new("records", DataType::Int64, false),
                Field::new("first_broken", DataType::Int64, true),
            ]));
            let batch = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(StringArray::from(vec![if v.first_broken.is_none() {
                        "ok"
                    } else {
                        "broken"
                    }])),
                    Arc::new(Int64Array::from(vec![v.records])),
                    Arc::new(Int64Array::from(vec![v.first_broken])),
                ],
            )?;
            Ok(Outcome::Rows(QueryOutput::from_batches(
                schema,
                vec![batch],
            )?))
        }
        s @ (GovStatement::CreatePurpose { .. }
        | GovStatement::DropPurpose { .. }
        | GovStatement::ShowPurposes
        | GovStatement::CreateProject { .. }
        | GovStatement::DropProject { .. }
        | GovStatement::AlterProject { .. }
        | GovStatement::ExplainAlterProject { .. }
        | GovStatement::DecidePurpose { .. }
        | GovStatement::AcknowledgePurpose { .. }
        | GovStatement::UseProject { .. }
        | GovStatement::ShowProjects
        | GovStatement::RotateKeys { .. }
        | GovStatement::DescribeProject { .. }) => super::projects::plan(c, s),
        s @ (GovStatement::CreateDerivedSource { .. }
        | GovStatement::DescribeDataSource { .. }
        | GovStatement::ShowTablesIn { .. }) => super::sources::plan(c, s),
    }
}

fn alter_user(
    c: &Ctx<'_>,
    name: &str,
    action: &str,
    detail: serde_json::Value,
    f: impl FnOnce(&mut User),
) -> Result<Outcome> {
    c.require(Permission::UserAdmin, &format!("alter user {name}"))?;
    let mut u = c.user(name)?.clone();
    f(&mut u);
    change(
        vec![Change::PutUser(u)],
        c.audit(action, name, detail),
        format!("user {name} altered"),
    )
}

#[allow(clippy::too_many_arguments)]
fn alter_source(
    c: &Ctx<'_>,
    name: &str,
    alt: Permission,
    what: &str,
    action: &str,
    detail: serde_json::Value,
    f: impl FnOnce(&mut DataSource) -> Result<()>,
) -> Result<Outcome> {
    let mut s = c.source(name)?.clone();
    c.require_owner_or(&s, alt, &format!("{what} {name}"))?;
    f(&mut s)?;
    change(
        vec![Change::PutSource(s)],
        c.audit(action, name, detail),
        format!("data source {name} altered"),
    )
}

fn find_column<'s>(s: &'s mut DataSource, column: &str) -> Result<&'s mut ColumnInfo> {
    let name = s.full_name();
    s.columns
        .iter_mut()
        .find(|c| c.name == column)
        .ok_or_else(|| VeilError::NotFound(format!("column {column} does not exist in {name}")))
}

fn put_policy(c: &Ctx<'_>, p: Policy) -> Result<Outcome> {
    if let crate::model::Applicability::Unless(cond) | crate::model::Applicability::For(cond) =
        &p.applicability
    {
        parse_condition(cond)?;
    }
    let name = p.name.clone();
    let audit = c.audit(
        "CreatePolicy",
        &name,
        serde_json::json!({"policy": p.to_sql()}),
    );
    change(
        vec![Change::PutPolicy(p)],
        audit,
        format!("policy {name} created"),
    )
}
