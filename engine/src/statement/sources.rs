//! Statements about workspace tables and derived data sources:
//! `SHOW TABLES IN schema`, `CREATE DERIVED DATA SOURCE ... FROM WORKSPACE
//! TABLE t` and `DESCRIBE DATA SOURCE s` (kind, lineage, staleness).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use super::ast::GovStatement;
use super::exec::{change, join, utf8_batch, Ctx, Outcome};
use crate::engine::{QueryOutput, Session};
use crate::error::{Result, VeilError};
use crate::model::{ColumnInfo, DataSource, Lineage, Permission, SourceKind, Subscription};
use crate::policy::{read_beyond, restriction, staleness, subscription};
use crate::principal::Principal;
use crate::project::{with_ancestors, Entitlements, Project, PurposeState};
use crate::store::Change;
use crate::workspace::{table_name, WorkspaceTable, WORKSPACE_SCHEMA};

/// Schema names a data source may not use: they name catalog parts.
pub const RESERVED_SCHEMAS: &[&str] = &[WORKSPACE_SCHEMA, "information_schema", "system"];

/// Refuses a data-source name in a reserved schema.
pub(super) fn check_source_name(source: &str) -> Result<()> {
    let schema = source.split('.').next().unwrap_or_default();
    if RESERVED_SCHEMAS
        .iter()
        .any(|r| r.eq_ignore_ascii_case(schema))
    {
        return Err(VeilError::InvalidArgument(format!(
            "data source {source}: schema {schema} is reserved"
        )));
    }
    Ok(())
}

/// `SHOW TABLES IN schema` for a schema other than the workspace: the
/// tables of that schema the caller can see.
pub(super) async fn show_tables_in(session: &mut Session, schema: &str) -> Result<QueryOutput> {
    let sql = format!(
        "SELECT table_catalog, table_schema, table_name, table_type \
         FROM information_schema.tables WHERE table_schema = '{}' ORDER BY table_name",
        schema.replace('\'', "''")
    );
    Box::pin(session.execute(&sql)).await
}

pub(super) fn plan(c: &Ctx<'_>, stmt: GovStatement) -> Result<Outcome> {
    match stmt {
        GovStatement::ShowTablesIn { .. } => show_workspace(c),
        GovStatement::CreateDerivedSource { source, table } => create_derived(c, &source, &table),
        GovStatement::DescribeDataSource { source } => describe(c, &source),
        other => Err(VeilError::Internal(format!(
            "not a source statement: {other:?}"
        ))),
    }
}

/// The session's project, checked (membership, compliance) like a query.
fn current_project<'s>(c: &'s Ctx<'_>, what: &str) -> Result<&'s Project> {
    let Some(name) = c.session.project() else {
        return Err(VeilError::FailedPrecondition(format!(
            "{what} runs in a project's context: USE PROJECT p first"
        )));
    };
    c.session.principal(&c.snapshot)?;
    c.snapshot
        .projects
        .get(name)
        .ok_or_else(|| VeilError::NotFound(format!("project {name} does not exist")))
}

fn show_workspace(c: &Ctx<'_>) -> Result<Outcome> {
    let project = current_project(c, "SHOW TABLES IN workspace")?;
    let principal = c.session.principal(&c.snapshot)?;
    let mut rows = Vec::new();
    for t in c
        .snapshot
        .workspaces
        .get(&project.id)
        .into_iter()
        .flat_map(|t| t.values())
    {
        // A table the caller may not read shows no size: its row count
        // would tell how many rows their row policies hide.
        let readable = read_beyond(&principal, &c.snapshot, t, principal.describe())?.is_empty();
        let (count, bytes) = if readable {
            (t.rows.to_string(), t.bytes().to_string())
        } else {
            (String::new(), String::new())
        };
        rows.push(vec![
            t.name.clone(),
            t.version.to_string(),
            count,
            bytes,
            t.updated_by.clone(),
            t.updated_at.clone(),
            join(t.masked.keys()),
            join(&t.parents),
            if readable { "yes" } else { "no" }.to_string(),
        ]);
    }
    Ok(Outcome::Rows(utf8_batch(
        &[
            "table_name",
            "version",
            "rows",
            "bytes",
            "updated_by",
            "updated_at",
            "masked_columns",
            "sources",
            "readable",
        ],
        rows,
    )?))
}

/// The entitlements a derived source is shared with: the project's
/// equalized ones, or (equalization off) the least-privileged member's, as
/// if equalization were on.
fn derivation_entitlements(c: &Ctx<'_>, project: &Project) -> Entitlements {
    match &project.equalization {
        Some(eq) => eq.entitlements.clone(),
        None => Entitlements::recommended(
            project
                .members
                .iter()
                .filter_map(|m| c.snapshot.users.get(m)),
        ),
    }
}

fn create_derived(c: &Ctx<'_>, source: &str, table: &str) -> Result<Outcome> {
    let project = current_project(c, "CREATE DERIVED DATA SOURCE")?;
    for u in c.callers()? {
        if !project.owners.contains(&u.name) {
            return Err(VeilError::PermissionDenied(format!(
                "{} is not an owner of project {} and cannot derive data sources from its \
                 workspace",
                u.name, project.name
            )));
        }
    }
    check_source_name(source)?;
    if c.snapshot.sources.contains_key(source) {
        return Err(VeilError::AlreadyExists(format!(
            "data source {source} already exists"
        )));
    }
    let name = table_name(table)?;
    let t: &WorkspaceTable = c
        .snapshot
        .workspaces
        .get(&project.id)
        .and_then(|w| w.get(&name))
        .ok_or_else(|| {
            VeilError::NotFound(format!(
                "workspace table {name} does not exist in project {}",
                project.name
            ))
        })?;
    let entitlements = derivation_entitlements(c, project);
    let purposes: BTreeSet<String> = project
        .purposes
        .iter()
        .filter(|(_, p)| p.state == PurposeState::Approved)
        .flat_map(|(n, _)| with_ancestors(&c.snapshot, n))
        .collect();
    let mut lineage = Lineage {
        project: project.name.clone(),
        project_id: project.id.clone(),
        table: name.clone(),
        table_version: t.version,
        files: vec![],
        parents: BTreeMap::new(),
        masked: t.masked.clone(),
        project_keyed: t.project_keyed,
        purposes,
        purpose_bound: false,
        entitlements: entitlements.clone(),
        derived_by: c.session.effective_user().to_string(),
        derived_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    let deriver = lineage.principal();
    for parent in &t.parents {
        let r = match c.snapshot.sources.get(parent) {
            Some(ps) => restriction(&deriver, &c.snapshot, ps)?,
            None => Default::default(),
        };
        lineage.parents.insert(parent.clone(), r);
    }
    // A derived source may hold only what its subscribers see of its parents.
    let beyond = read_beyond(&deriver, &c.snapshot, t, "those entitlements")?;
    if !beyond.is_empty() {
        return Err(VeilError::PermissionDenied(format!(
            "workspace table {name} cannot be derived: it holds data read with broader access \
             than the entitlements its derived source would be shared with ({entitlements}): {}; \
             write it with equalization on, or by members who see no more than those \
             entitlements",
            beyond.join("; ")
        )));
    }
    // What only the purposes show stays under them: the entitlements alone
    // could not read the table.
    let bare = Principal {
        purposes: BTreeSet::new(),
        ..deriver.clone()
    };
    lineage.purpose_bound = !read_beyond(&bare, &c.snapshot, t, "the entitlements")?.is_empty();
    let warehouse = c.session.engine().warehouse();
    lineage.files = t
        .files
        .iter()
        .map(|f| warehouse.url_of(&object_store::path::Path::from(f.path.as_str())))
        .collect();
    let schema = t.schema()?;
    let (schema_name, table_part) = source.split_once('.').unwrap_or(("", source));
    let ds = DataSource {
        schema: schema_name.to_string(),
        table: table_part.to_string(),
        location: warehouse.url_of(&warehouse.table_dir(&project.id, &name)),
        arrow_schema: t.arrow_schema.clone(),
        columns: ColumnInfo::untagged(&schema),
        owners: BTreeSet::from([c.session.effective_user().to_string()]),
        subscription: Subscription::When(entitlements.to_string()),
        kind: SourceKind::Derived(Box::new(lineage)),
    };
    let detail = json!({
        "project": project.name,
        "table": name,
        "table_version": t.version,
        "parents": t.parents,
        "masked_columns": t.masked.keys().collect::<Vec<_>>(),
        "subscription": ds.subscription.to_string(),
    });
    change(
        vec![Change::PutSource(ds)],
        c.audit("CreateDerivedDataSource", source, detail),
        format!(
            "derived data source {source} created from workspace table {name} version {} of \
             project {}",
            t.version, project.name
        ),
    )
}

/// The lineage column of `SHOW DATA SOURCES`.
pub(super) fn lineage_text(s: &DataSource) -> String {
    match &s.kind {
        SourceKind::Parquet => String::new(),
        SourceKind::Derived(l) => format!(
            "project {} workspace table {} version {}; parents {}",
            l.project,
            l.table,
            l.table_version,
            if l.parents.is_empty() {
                "none".to_string()
            } else {
                join(l.parents.keys())
            }
        ),
    }
}

fn describe(c: &Ctx<'_>, name: &str) -> Result<Outcome> {
    let s = c.source(name)?;
    let principal = c.session.principal(&c.snapshot)?;
    let privileged =
        c.owns(s)? || c.has(Permission::Governance)? || c.has(Permission::FetchPolicyInfo)?;
    if !privileged {
        if let Err(reason) = subscription(&principal, &c.snapshot, s)? {
            return Err(VeilError::PermissionDenied(reason));
        }
    }
    let mut rows: Vec<Vec<String>> = vec![
        vec!["name".into(), s.full_name()],
        vec![
            "kind".into(),
            match s.kind {
                SourceKind::Parquet => "parquet".into(),
                SourceKind::Derived(_) => "derived".into(),
            },
        ],
        vec!["location".into(), s.location.clone()],
        vec!["owners".into(), join(&s.owners)],
        vec!["subscription".into(), s.subscription.to_string()],
    ];
    if let SourceKind::Derived(l) = &s.kind {
        let stale = staleness(&c.snapshot, l)?;
        rows.extend([
            vec!["project".into(), l.project.clone()],
            vec![
                "workspace table".into(),
                format!("{} version {}", l.table, l.table_version),
            ],
            vec!["parents".into(), join(l.parents.keys())],
            vec![
                "purposes".into(),
                if l.purpose_bound {
                    format!(
                        "{}; required: it holds what they exempt from policies",
                        join(&l.purposes)
                    )
                } else {
                    join(&l.purposes)
                },
            ],
            vec!["entitlements".into(), l.entitlements.to_string()],
            vec![
                "derived".into(),
                format!("by {} at {}", l.derived_by, l.derived_at),
            ],
            vec![
                "stale".into(),
                if stale.is_empty() {
                    "no".into()
                } else {
                    format!(
                        "yes: {}; subscription also requires access to the parents as broad as \
                         at derivation until it is re-derived",
                        stale.join("; ")
                    )
                },
            ],
        ]);
    }
    for col in &s.columns {
        let mut text = col.data_type.clone();
        if !col.tags.is_empty() {
            text.push_str(&format!("; tags {}", join(&col.tags)));
        }
        if let SourceKind::Derived(l) = &s.kind {
            if let Some(origins) = l.masked.get(&col.name) {
                text.push_str(&format!(
                    "; masked (from {}{})",
                    join(origins),
                    if l.project_keyed {
                        ", project-keyed tokens"
                    } else {
                        ""
                    }
                ));
            }
        }
        rows.push(vec![format!("column {}", col.name), text]);
    }
    Ok(Outcome::Rows(utf8_batch(&["property", "value"], rows)?))
}
