//! Purpose and project statements: rights, validation, the change with its
//! audit record, and the what-if report of `EXPLAIN ALTER PROJECT`.
//!
//! Rights: purposes need GOVERNANCE or PROJECT_MANAGEMENT; CREATE PROJECT
//! needs CREATE_PROJECT (the creator becomes owner); project owners manage
//! members, owners, sources, purposes requested and equalization; a member
//! may add a source they are subscribed to (owners only while equalized);
//! PROJECT_MANAGEMENT approves or denies; each member acknowledges for
//! themselves. A change of members or sources puts approved purposes back to
//! PENDING.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use super::ast::{GovStatement, ProjectAction};
use super::exec::{change, join, utf8_batch, Ctx, Outcome};
use crate::error::{Result, VeilError};
use crate::model::{CatalogSnapshot, Permission, Subscription, User};
use crate::policy::{decide, subscription, Access};
use crate::project::{
    effective_principal, Decision, Entitlements, EntitlementsSource, Equalization, Project,
    ProjectPurpose, Purpose, PurposeState,
};
use crate::store::Change;

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn purpose_name(name: &str) -> Result<()> {
    if name.trim().is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(VeilError::InvalidArgument(format!(
            "purpose name '{name}' must be 1 to 128 printable characters"
        )));
    }
    Ok(())
}

impl Ctx<'_> {
    fn me(&self) -> &str {
        self.session.effective_user()
    }

    fn project(&self, name: &str) -> Result<&Project> {
        self.snapshot
            .projects
            .get(name)
            .ok_or_else(|| VeilError::NotFound(format!("project {name} does not exist")))
    }

    fn purpose(&self, name: &str) -> Result<&Purpose> {
        self.snapshot
            .purposes
            .get(name)
            .ok_or_else(|| VeilError::NotFound(format!("purpose '{name}' does not exist")))
    }

    fn require_project_owner(&self, p: &Project, action: &str) -> Result<()> {
        if p.owners.contains(self.me()) {
            return Ok(());
        }
        Err(VeilError::PermissionDenied(format!(
            "{} is not an owner of project {} as needed to {action}",
            self.me(),
            p.name
        )))
    }

    /// Members see their project; PROJECT_MANAGEMENT and GOVERNANCE see all.
    fn may_see(&self, p: &Project) -> Result<bool> {
        Ok(p.members.contains(self.me())
            || self.has(Permission::ProjectManagement)?
            || self.has(Permission::Governance)?)
    }
}

/// Runs a purpose or project statement (not `USE PROJECT`, which changes the
/// session and is handled by the caller).
pub(super) fn plan(c: &Ctx<'_>, stmt: GovStatement) -> Result<Outcome> {
    match stmt {
        GovStatement::CreatePurpose {
            name,
            parent,
            description,
            acknowledgement,
        } => {
            let action = format!("create purpose '{name}'");
            if !(c.has(Permission::Governance)? || c.has(Permission::ProjectManagement)?) {
                return Err(VeilError::PermissionDenied(format!(
                    "{} lacks permission GOVERNANCE or PROJECT_MANAGEMENT needed to {action}",
                    c.me()
                )));
            }
            purpose_name(&name)?;
            if c.snapshot.purposes.contains_key(&name) {
                return Err(VeilError::AlreadyExists(format!(
                    "purpose '{name}' already exists"
                )));
            }
            if let Some(parent) = &parent {
                c.purpose(parent)?;
            }
            let purpose = Purpose {
                name: name.clone(),
                parent,
                description,
                acknowledgement,
                created_by: c.me().to_string(),
            };
            change(
                vec![Change::PutPurpose(purpose.clone())],
                c.audit("CreatePurpose", &name, json!({"purpose": purpose})),
                format!("purpose '{name}' created"),
            )
        }
        GovStatement::DropPurpose { name } => {
            if !(c.has(Permission::Governance)? || c.has(Permission::ProjectManagement)?) {
                return Err(VeilError::PermissionDenied(format!(
                    "{} lacks permission GOVERNANCE or PROJECT_MANAGEMENT needed to drop purpose '{name}'",
                    c.me()
                )));
            }
            c.purpose(&name)?;
            let users = c
                .snapshot
                .projects_where(|p| p.purposes.contains_key(&name));
            if !users.is_empty() {
                return Err(VeilError::FailedPrecondition(format!(
                    "purpose '{name}' is in use by projects {}",
                    join(&users)
                )));
            }
            let children: Vec<&str> = c
                .snapshot
                .purposes
                .values()
                .filter(|p| p.parent.as_deref() == Some(name.as_str()))
                .map(|p| p.name.as_str())
                .collect();
            if !children.is_empty() {
                return Err(VeilError::FailedPrecondition(format!(
                    "purpose '{name}' is the parent of {}",
                    join(children)
                )));
            }
            change(
                vec![Change::DeletePurpose(name.clone())],
                c.audit("DropPurpose", &name, json!({})),
                format!("purpose '{name}' dropped"),
            )
        }
        GovStatement::ShowPurposes => {
            let rows = c
                .snapshot
                .purposes
                .values()
                .map(|p| {
                    vec![
                        p.name.clone(),
                        p.parent.clone().unwrap_or_default(),
                        p.description.clone().unwrap_or_default(),
                        p.acknowledgement.clone().unwrap_or_default(),
                        p.created_by.clone(),
                    ]
                })
                .collect();
            Ok(Outcome::Rows(utf8_batch(
                &[
                    "name",
                    "parent",
                    "description",
                    "acknowledgement",
                    "created_by",
                ],
                rows,
            )?))
        }
        GovStatement::CreateProject {
            name,
            documentation,
        } => {
            c.require(Permission::CreateProject, &format!("create project {name}"))?;
            if c.snapshot.projects.contains_key(&name) {
                return Err(VeilError::AlreadyExists(format!(
                    "project {name} already exists"
                )));
            }
            let me = c.me().to_string();
            let project = Project {
                name: name.clone(),
                id: hex::encode(rand::random::<[u8; 16]>()),
                documentation,
                owners: [me.clone()].into(),
                members: [me].into(),
                sources: BTreeMap::new(),
                purposes: BTreeMap::new(),
                equalization: None,
                masked_joins: false,
                key_version: 1,
            };
            change(
                vec![Change::PutProject(project)],
                c.audit("CreateProject", &name, json!({})),
                format!("project {name} created"),
            )
        }
        GovStatement::DropProject { name } => {
            let p = c.project(&name)?;
            c.require_project_owner(p, &format!("drop project {name}"))?;
            // Its workspace goes with it (derived sources keep their files).
            let mut changes = vec![Change::DeleteProject(name.clone())];
            let mut tables = vec![];
            for t in c.snapshot.workspaces.get(&p.id).into_iter().flatten() {
                tables.push(t.0.clone());
                changes.push(Change::DeleteWorkspaceTable(
                    p.id.clone(),
                    t.0.clone(),
                    crate::store::Expect::Version(t.1.version),
                ));
            }
            change(
                changes,
                c.audit("DropProject", &name, json!({"workspace_tables": tables})),
                format!("project {name} dropped"),
            )
        }
        GovStatement::AlterProject { project, action } => {
            let (after, detail, status) = alter(c, &project, &action)?;
            change(
                vec![Change::PutProject(after)],
                c.audit("AlterProject", &project, detail),
                status,
            )
        }
        GovStatement::ExplainAlterProject { project, action } => {
            let (after, _, _) = alter(c, &project, &action)?;
            Ok(Outcome::Rows(what_if(&c.snapshot, after)?))
        }
        GovStatement::DecidePurpose {
            purpose,
            project,
            approve,
        } => {
            let verb = if approve { "approve" } else { "deny" };
            c.require(
                Permission::ProjectManagement,
                &format!("{verb} purpose '{purpose}' for project {project}"),
            )?;
            let mut p = c.project(&project)?.clone();
            let pp = p.purposes.get_mut(&purpose).ok_or_else(|| {
                VeilError::NotFound(format!(
                    "purpose '{purpose}' was not requested for project {project}"
                ))
            })?;
            let target = if approve {
                PurposeState::Approved
            } else {
                PurposeState::Denied
            };
            if pp.state == target {
                let by = pp
                    .decision
                    .as_ref()
                    .map(|d| format!(" by {} at {}", d.by, d.at))
                    .unwrap_or_default();
                return Err(VeilError::FailedPrecondition(format!(
                    "purpose '{purpose}' is already {target} for project {project}{by}"
                )));
            }
            pp.state = target;
            pp.decision = Some(Decision {
                by: c.me().to_string(),
                at: now(),
            });
            let action = if approve {
                "ApprovePurpose"
            } else {
                "DenyPurpose"
            };
            change(
                vec![Change::PutProject(p)],
                c.audit(action, &project, json!({"purpose": purpose})),
                format!("purpose '{purpose}' {target} for project {project}"),
            )
        }
        GovStatement::AcknowledgePurpose { purpose, project } => {
            let mut p = c.project(&project)?.clone();
            let me = c.me().to_string();
            if !p.members.contains(&me) {
                return Err(VeilError::PermissionDenied(format!(
                    "{me} is not a member of project {project}"
                )));
            }
            let text = c.purpose(&purpose)?.acknowledgement.clone();
            let pp = p.purposes.get_mut(&purpose).ok_or_else(|| {
                VeilError::NotFound(format!(
                    "purpose '{purpose}' was not requested for project {project}"
                ))
            })?;
            if text.is_none() {
                return Err(VeilError::FailedPrecondition(format!(
                    "purpose '{purpose}' asks for no acknowledgement"
                )));
            }
            if !pp.acknowledged_by.insert(me.clone()) {
                return Err(VeilError::AlreadyExists(format!(
                    "{me} already acknowledged purpose '{purpose}' for project {project}"
                )));
            }
            change(
                vec![Change::PutProject(p)],
                c.audit(
                    "AcknowledgePurpose",
                    &project,
                    json!({"purpose": purpose, "text": text}),
                ),
                format!("{me} acknowledged purpose '{purpose}' for project {project}"),
            )
        }
        GovStatement::ShowProjects => {
            let mut rows = vec![];
            for p in c.snapshot.projects.values() {
                if !c.may_see(p)? {
                    continue;
                }
                rows.push(vec![
                    p.name.clone(),
                    join(&p.owners),
                    join(&p.members),
                    join(p.sources.keys()),
                    join(
                        p.purposes
                            .iter()
                            .map(|(n, pp)| format!("{n}: {}", pp.state)),
                    ),
                    if p.equalization.is_some() {
                        "ON"
                    } else {
                        "OFF"
                    }
                    .into(),
                    if p.masked_joins { "ON" } else { "OFF" }.into(),
                    p.documentation.clone().unwrap_or_default(),
                ]);
            }
            Ok(Outcome::Rows(utf8_batch(
                &[
                    "name",
                    "owners",
                    "members",
                    "data_sources",
                    "purposes",
                    "equalization",
                    "masked_joins",
                    "documentation",
                ],
                rows,
            )?))
        }
        GovStatement::DescribeProject { name } => {
            let p = c.project(&name)?;
            if !c.may_see(p)? {
                return Err(VeilError::PermissionDenied(format!(
                    "{} is not a member of project {name} and lacks permission \
                     PROJECT_MANAGEMENT needed to describe it",
                    c.me()
                )));
            }
            Ok(Outcome::Rows(describe(&c.snapshot, p)?))
        }
        GovStatement::RotateKeys { project: None } => {
            c.require(Permission::ApplicationAdmin, "rotate the column keys")?;
            let mut settings = c.snapshot.settings.clone();
            settings.column_key_version += 1;
            let v = settings.column_key_version;
            change(
                vec![Change::PutSettings(settings)],
                c.audit("RotateKeys", "column keys", json!({"version": v})),
                format!("column keys rotated to version {v}"),
            )
        }
        GovStatement::RotateKeys {
            project: Some(name),
        } => {
            let mut p = c.project(&name)?.clone();
            if !c.has(Permission::ApplicationAdmin)? {
                c.require_project_owner(&p, &format!("rotate the key of project {name}"))?;
            }
            p.key_version += 1;
            let v = p.key_version;
            change(
                vec![Change::PutProject(p)],
                c.audit("RotateKeys", &name, json!({"project": name, "version": v})),
                format!("key of project {name} rotated to version {v}"),
            )
        }
        other => Err(VeilError::Internal(format!(
            "not a project statement: {other:?}"
        ))),
    }
}

/// Applies one `ALTER PROJECT` action to a copy of the project after
/// checking rights: (new project, audit detail, status text).
fn alter(
    c: &Ctx<'_>,
    name: &str,
    action: &ProjectAction,
) -> Result<(Project, serde_json::Value, String)> {
    use ProjectAction::*;
    let before = c.project(name)?;
    let mut p = before.clone();
    let me = c.me().to_string();
    let what = format!("{action:?}");
    if !matches!(action, AddSource(_)) {
        c.require_project_owner(before, &format!("alter project {name}"))?;
    }
    let mut repend = false;
    let status = match action {
        AddMember(u) => {
            c.user(u)?;
            if !p.members.insert(u.clone()) {
                return Err(VeilError::AlreadyExists(format!(
                    "{u} is already a member of project {name}"
                )));
            }
            repend = true;
            format!("{u} added to project {name}")
        }
        RemoveMember(u) => {
            if !p.members.contains(u) {
                return Err(VeilError::NotFound(format!(
                    "{u} is not a member of project {name}"
                )));
            }
            if p.owners.len() == 1 && p.owners.contains(u) {
                return Err(VeilError::FailedPrecondition(format!(
                    "{u} is the last owner of project {name}; add another owner first"
                )));
            }
            p.members.remove(u);
            p.owners.remove(u);
            repend = true;
            format!("{u} removed from project {name}")
        }
        AddOwner(u) => {
            c.user(u)?;
            if !p.owners.insert(u.clone()) {
                return Err(VeilError::AlreadyExists(format!(
                    "{u} is already an owner of project {name}"
                )));
            }
            repend = p.members.insert(u.clone());
            format!("{u} is an owner of project {name}")
        }
        RemoveOwner(u) => {
            if !p.owners.contains(u) {
                return Err(VeilError::NotFound(format!(
                    "{u} is not an owner of project {name}"
                )));
            }
            if p.owners.len() == 1 {
                return Err(VeilError::FailedPrecondition(format!(
                    "{u} is the last owner of project {name}; add another owner first"
                )));
            }
            p.owners.remove(u);
            format!("{u} is no longer an owner of project {name}")
        }
        AddSource(s) => {
            let source = c.source(s)?;
            if !p.members.contains(&me) {
                return Err(VeilError::PermissionDenied(format!(
                    "{me} is not a member of project {name}"
                )));
            }
            if p.equalization.is_some() {
                c.require_project_owner(
                    before,
                    &format!("add data sources while project {name} is equalized"),
                )?;
                if matches!(source.subscription, Subscription::Users(_)) {
                    return Err(VeilError::FailedPrecondition(format!(
                        "data source {s} is subscribed by named USERS and cannot be shared \
                         through equalized project {name}"
                    )));
                }
            }
            let adder = c.user(&me)?;
            if let Err(reason) = subscription(
                &before.member_principal(&c.snapshot, adder),
                &c.snapshot,
                source,
            )? {
                return Err(VeilError::PermissionDenied(format!(
                    "{reason}; only sources you are subscribed to can be added to project {name}"
                )));
            }
            if p.sources.insert(s.clone(), me.clone()).is_some() {
                return Err(VeilError::AlreadyExists(format!(
                    "data source {s} is already in project {name}"
                )));
            }
            repend = true;
            format!("data source {s} added to project {name}")
        }
        RemoveSource(s) => {
            if p.sources.remove(s).is_none() {
                return Err(VeilError::NotFound(format!(
                    "data source {s} is not in project {name}"
                )));
            }
            repend = true;
            format!("data source {s} removed from project {name}")
        }
        AddPurpose(x) => {
            c.purpose(x)?;
            if p.purposes.contains_key(x) {
                return Err(VeilError::AlreadyExists(format!(
                    "purpose '{x}' is already requested for project {name}"
                )));
            }
            p.purposes.insert(
                x.clone(),
                ProjectPurpose {
                    state: PurposeState::Pending,
                    requested_by: me.clone(),
                    decision: None,
                    acknowledged_by: BTreeSet::new(),
                },
            );
            format!("purpose '{x}' requested for project {name} (PENDING)")
        }
        RemovePurpose(x) => {
            if p.purposes.remove(x).is_none() {
                return Err(VeilError::NotFound(format!(
                    "purpose '{x}' was not requested for project {name}"
                )));
            }
            format!("purpose '{x}' removed from project {name}")
        }
        SetMaskedJoins(on) => {
            p.masked_joins = *on;
            format!(
                "masked joins {} for project {name}",
                if *on { "ON" } else { "OFF" }
            )
        }
        SetDocumentation(text) => {
            p.documentation = Some(text.clone());
            format!("project {name} documented")
        }
        SetEqualization(false) => {
            p.equalization = None;
            format!("equalization OFF for project {name}")
        }
        SetEqualization(true) => {
            if p.equalization.is_some() {
                return Err(VeilError::FailedPrecondition(format!(
                    "equalization is already ON for project {name}; SET EQUALIZED \
                     ENTITLEMENTS RECOMMENDED recomputes the entitlements"
                )));
            }
            for s in p.sources.keys() {
                if matches!(
                    c.snapshot.sources.get(s).map(|x| &x.subscription),
                    Some(Subscription::Users(_))
                ) {
                    return Err(VeilError::FailedPrecondition(format!(
                        "data source {s} is subscribed by named USERS and cannot be shared \
                         through an equalized project; remove it from project {name} first"
                    )));
                }
            }
            p.equalization = Some(recommended(c, &p, &me)?);
            format!("equalization ON for project {name}")
        }
        SetEntitlementsRecommended | SetEntitlements(_) => {
            if p.equalization.is_none() {
                return Err(VeilError::FailedPrecondition(format!(
                    "equalization is OFF for project {name}; SET EQUALIZATION ON first"
                )));
            }
            p.equalization = Some(match action {
                SetEntitlements(text) => Equalization {
                    entitlements: Entitlements::parse(text)?,
                    source: EntitlementsSource::Explicit,
                    set: Decision {
                        by: me.clone(),
                        at: now(),
                    },
                },
                _ => recommended(c, &p, &me)?,
            });
            format!("equalized entitlements of project {name} set")
        }
    };
    let repended = if repend { p.repend() } else { vec![] };
    let detail = json!({"change": what, "purposes_back_to_pending": repended});
    let status = if repended.is_empty() {
        status
    } else {
        format!(
            "{status}; purposes back to PENDING: {}",
            join(repended.iter().map(|r| format!("'{r}'")))
        )
    };
    Ok((p, detail, status))
}

fn recommended(c: &Ctx<'_>, p: &Project, me: &str) -> Result<Equalization> {
    let members = p
        .members
        .iter()
        .map(|m| c.user(m))
        .collect::<Result<Vec<&User>>>()?;
    Ok(Equalization {
        entitlements: Entitlements::recommended(members),
        source: EntitlementsSource::Recommended,
        set: Decision {
            by: me.to_string(),
            at: now(),
        },
    })
}

/// A member's compliance, as DESCRIBE PROJECT and EXPLAIN show it.
fn compliance(snapshot: &CatalogSnapshot, p: &Project, member: &str) -> String {
    let Some(user) = snapshot.users.get(member) else {
        return "unknown user".into();
    };
    if p.equalization.is_none() {
        return "n/a (equalization off)".into();
    }
    match p.non_compliance(snapshot, user) {
        lacking if lacking.is_empty() => "in compliance".into(),
        lacking => format!("not in compliance: lacks {}", lacking.join(", ")),
    }
}

fn describe(snapshot: &CatalogSnapshot, p: &Project) -> Result<crate::engine::QueryOutput> {
    let mut rows = vec![vec![
        "project".to_string(),
        p.name.clone(),
        String::new(),
        p.documentation.clone().unwrap_or_default(),
    ]];
    for m in &p.members {
        let role = if p.owners.contains(m) {
            "owner"
        } else {
            "member"
        };
        rows.push(vec![
            role.into(),
            m.clone(),
            compliance(snapshot, p, m),
            String::new(),
        ]);
    }
    for (s, by) in &p.sources {
        rows.push(vec![
            "data source".into(),
            s.clone(),
            String::new(),
            format!("added by {by}"),
        ]);
    }
    for (name, pp) in &p.purposes {
        let mut detail = vec![format!("requested by {}", pp.requested_by)];
        if let Some(d) = &pp.decision {
            detail.push(match pp.state {
                PurposeState::Approved => format!("approved by {} at {}", d.by, d.at),
                PurposeState::Denied => format!("denied by {} at {}", d.by, d.at),
                // Only an approval goes back to PENDING.
                PurposeState::Pending => {
                    format!("re-approval needed (was approved by {} at {})", d.by, d.at)
                }
            });
        }
        if snapshot
            .purposes
            .get(name)
            .is_some_and(|x| x.acknowledgement.is_some())
        {
            detail.push(format!("acknowledged by: {}", join(&pp.acknowledged_by)));
        }
        rows.push(vec![
            "purpose".into(),
            name.clone(),
            pp.state.to_string(),
            detail.join("; "),
        ]);
    }
    rows.push(match &p.equalization {
        None => vec![
            "equalization".into(),
            "OFF".into(),
            String::new(),
            String::new(),
        ],
        Some(eq) => vec![
            "equalization".into(),
            "ON".into(),
            match eq.source {
                EntitlementsSource::Recommended => "RECOMMENDED",
                EntitlementsSource::Explicit => "EXPLICIT",
            }
            .into(),
            format!(
                "entitlements: {} (set by {} at {})",
                eq.entitlements, eq.set.by, eq.set.at
            ),
        ],
    });
    rows.push(vec![
        "masked joins".into(),
        if p.masked_joins { "ON" } else { "OFF" }.into(),
        String::new(),
        format!("join key version {}", p.key_version),
    ]);
    utf8_batch(&["kind", "name", "state", "detail"], rows)
}

/// What one member sees of each project source: `source` -> granted or
/// denied, `source.column` -> its mask, `source rows` -> row filters.
/// A member who cannot act in the project maps `(project)` to why.
fn access(snapshot: &CatalogSnapshot, p: &Project, member: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(user) = snapshot.users.get(member) else {
        return out;
    };
    let principal = match effective_principal(snapshot, user, Some(&p.name)) {
        Ok(x) => x,
        Err(e) => {
            out.insert("(project)".into(), e.to_string());
            return out;
        }
    };
    for name in p.sources.keys() {
        let Some(source) = snapshot.sources.get(name) else {
            continue;
        };
        match decide(&principal, snapshot, source) {
            Err(e) => {
                out.insert(name.clone(), format!("error: {e}"));
            }
            Ok(Access::Denied(reason)) => {
                out.insert(name.clone(), format!("denied: {reason}"));
            }
            Ok(Access::Granted(d)) => {
                out.insert(name.clone(), "granted".into());
                for m in &d.masks {
                    out.insert(
                        format!("{name}.{}", m.column),
                        format!("{} ({})", m.method, m.policy),
                    );
                }
                if !d.row_filters.is_empty() {
                    out.insert(
                        format!("{name} rows"),
                        d.row_filters
                            .iter()
                            .map(|r| format!("{} ({})", r.predicate, r.policy))
                            .collect::<Vec<_>>()
                            .join(" AND "),
                    );
                }
            }
        }
    }
    out
}

/// One entry of an [`access`] map, with what its absence means.
fn shown(map: &BTreeMap<String, String>, key: &str) -> String {
    if let Some(v) = map.get(key) {
        return v.clone();
    }
    if let Some(source) = key.strip_suffix(" rows") {
        let visible = map.get(source).is_some_and(|v| v == "granted");
        return if visible { "all rows" } else { "-" }.into();
    }
    match key.match_indices('.').nth(1) {
        // `schema.table.column`: clear when the source is visible at all.
        Some((i, _)) if map.get(&key[..i]).is_some_and(|v| v == "granted") => "clear".into(),
        _ => "-".into(),
    }
}

/// The report of `EXPLAIN ALTER PROJECT`: purposes whose state changes,
/// compliance of members, and every member's visible columns and row
/// filters that differ, computed on the catalog as it would be.
fn what_if(snapshot: &CatalogSnapshot, after: Project) -> Result<crate::engine::QueryOutput> {
    let before = snapshot
        .projects
        .get(&after.name)
        .cloned()
        .ok_or_else(|| VeilError::NotFound(format!("project {} does not exist", after.name)))?;
    let mut hypothetical = snapshot.clone();
    hypothetical
        .projects
        .insert(after.name.clone(), after.clone());
    let mut rows = vec![];
    for (name, pp) in &before.purposes {
        let now = after.purposes.get(name).map(|x| x.state.to_string());
        if now.as_deref() != Some(&pp.state.to_string()) {
            rows.push(vec![
                "purpose".into(),
                name.clone(),
                "state".into(),
                pp.state.to_string(),
                now.unwrap_or_else(|| "removed".into()),
            ]);
        }
    }
    for (name, pp) in &after.purposes {
        if !before.purposes.contains_key(name) {
            rows.push(vec![
                "purpose".into(),
                name.clone(),
                "state".into(),
                "not requested".into(),
                pp.state.to_string(),
            ]);
        }
    }
    let everyone: BTreeSet<&String> = before.members.union(&after.members).collect();
    for m in &everyone {
        let (was, will) = (
            before
                .members
                .contains(*m)
                .then(|| compliance(snapshot, &before, m)),
            after
                .members
                .contains(*m)
                .then(|| compliance(&hypothetical, &after, m)),
        );
        if was != will {
            rows.push(vec![
                "compliance".into(),
                (*m).clone(),
                "membership".into(),
                was.unwrap_or_else(|| "not a member".into()),
                will.unwrap_or_else(|| "not a member".into()),
            ]);
        }
    }
    for m in everyone {
        let was = if before.members.contains(m) {
            access(snapshot, &before, m)
        } else {
            BTreeMap::new()
        };
        let will = if after.members.contains(m) {
            access(&hypothetical, &after, m)
        } else {
            BTreeMap::new()
        };
        let keys: BTreeSet<&String> = was.keys().chain(will.keys()).collect();
        for k in keys {
            let (a, b) = (shown(&was, k), shown(&will, k));
            if a != b {
                rows.push(vec!["access".into(), m.clone(), k.clone(), a, b]);
            }
        }
    }
    utf8_batch(&["change", "subject", "object", "before", "after"], rows)
}
