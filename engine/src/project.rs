//! Purposes and projects (DESIGN.md sections 2 and 3): the entities, and the
//! pure rules around them: purpose ancestry, recommended and explicit
//! equalized entitlements, member compliance, and the effective principal of
//! a user acting inside a project.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::condition::{parse_condition, Condition};
use crate::error::{Result, VeilError};
use crate::model::{CatalogSnapshot, User};
use crate::principal::Principal;

/// Names a project may not take: they are catalogs, schemas or keywords.
pub const RESERVED_PROJECT_NAMES: &[&str] = &[
    "veil",
    "none",
    "system",
    "workspace",
    "information_schema",
    "datafusion",
    "public",
];

/// A purpose: why data is used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purpose {
    /// Unique name, e.g. `Fraud Detection`.
    pub name: String,
    /// Parent purpose: acting under this purpose also satisfies the parent.
    pub parent: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// Text a member must accept (`ACKNOWLEDGE PURPOSE`) before acting under it.
    pub acknowledgement: Option<String>,
    /// Who created it.
    pub created_by: String,
}

/// The state of a purpose requested for a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PurposeState {
    /// Waiting for a PROJECT_MANAGEMENT decision.
    Pending,
    /// Approved: a pre-authorized exception inside the project.
    Approved,
    /// Denied.
    Denied,
}

impl fmt::Display for PurposeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PurposeState::Pending => "PENDING",
            PurposeState::Approved => "APPROVED",
            PurposeState::Denied => "DENIED",
        })
    }
}

/// A decision on a project purpose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Who approved or denied.
    pub by: String,
    /// When (RFC 3339).
    pub at: String,
}

/// A purpose requested for a project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectPurpose {
    /// State.
    pub state: PurposeState,
    /// Who requested it.
    pub requested_by: String,
    /// The last approval or denial, if any.
    pub decision: Option<Decision>,
    /// Members who acknowledged the purpose's acknowledgement text.
    pub acknowledged_by: BTreeSet<String>,
}

/// Equalized entitlements: groups and attribute values every member must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Entitlements {
    /// Groups.
    pub groups: BTreeSet<String>,
    /// Attribute values.
    pub attributes: BTreeMap<String, BTreeSet<String>>,
}

impl Entitlements {
    /// The recommended set: the intersection of every member's groups and
    /// attribute values (an attribute no member set shares is dropped).
    pub fn recommended<'u>(members: impl IntoIterator<Item = &'u User>) -> Self {
        let mut it = members.into_iter();
        let Some(first) = it.next() else {
            return Self::default();
        };
        let mut e = Self {
            groups: first.groups.clone(),
            attributes: first.attributes.clone(),
        };
        for u in it {
            e.groups.retain(|g| u.groups.contains(g));
            e.attributes.retain(|k, vs| {
                let theirs = u.attributes.get(k);
                vs.retain(|v| theirs.is_some_and(|t| t.contains(v)));
                !vs.is_empty()
            });
        }
        e
    }

    /// Parses explicit entitlements: a conjunction of `has_group('g')` and
    /// `has_attribute('k', 'v')` (TRUE for none). Anything else cannot be held
    /// by one synthetic principal and is refused.
    pub fn parse(text: &str) -> Result<Self> {
        fn walk(c: &Condition, e: &mut Entitlements, text: &str) -> Result<()> {
            match c {
                Condition::And(a, b) => {
                    walk(a, e, text)?;
                    walk(b, e, text)
                }
                Condition::Bool(true) => Ok(()),
                Condition::HasGroup(g) => {
                    e.groups.insert(g.clone());
                    Ok(())
                }
                Condition::HasAttribute(k, v) => {
                    e.attributes.entry(k.clone()).or_default().insert(v.clone());
                    Ok(())
                }
                other => Err(VeilError::InvalidArgument(format!(
                    "equalized entitlements '{text}' must be has_group(...) and \
                     has_attribute(...) joined by AND; {other:?} cannot be held by a principal"
                ))),
            }
        }
        let mut e = Self::default();
        walk(&parse_condition(text)?, &mut e, text)?;
        Ok(e)
    }

    /// What `user` lacks of these entitlements, one phrase per item.
    pub fn lacking(&self, user: &User) -> Vec<String> {
        let mut out: Vec<String> = self
            .groups
            .iter()
            .filter(|g| !user.groups.contains(*g))
            .map(|g| format!("group '{g}'"))
            .collect();
        for (k, vs) in &self.attributes {
            for v in vs {
                if !user.attributes.get(k).is_some_and(|have| have.contains(v)) {
                    out.push(format!("attribute {k} = '{v}'"));
                }
            }
        }
        out
    }
}

impl fmt::Display for Entitlements {
    /// As a condition: `has_group('a') AND has_attribute('k', 'v')`, or TRUE.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = |s: &str| s.replace('\'', "''");
        let mut parts: Vec<String> = self
            .groups
            .iter()
            .map(|g| format!("has_group('{}')", q(g)))
            .collect();
        for (k, vs) in &self.attributes {
            for v in vs {
                parts.push(format!("has_attribute('{}', '{}')", q(k), q(v)));
            }
        }
        if parts.is_empty() {
            f.write_str("TRUE")
        } else {
            f.write_str(&parts.join(" AND "))
        }
    }
}

/// How the equalized entitlements were fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntitlementsSource {
    /// The intersection of the members at the time.
    Recommended,
    /// Set explicitly by an owner.
    Explicit,
}

/// Equalization of a project (present when ON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Equalization {
    /// The entitlements of the synthetic principal.
    pub entitlements: Entitlements,
    /// Recommended or explicit.
    pub source: EntitlementsSource,
    /// Who fixed them, and when.
    pub set: Decision,
}

/// A project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    /// Unique name (lowercase); also the catalog name inside the project.
    pub name: String,
    /// Stable id (the workspace path uses it).
    pub id: String,
    /// Documentation text.
    pub documentation: Option<String>,
    /// Owners (always members too).
    pub owners: BTreeSet<String>,
    /// Members, owners included.
    pub members: BTreeSet<String>,
    /// Data sources (`schema.table`) with who added them.
    pub sources: BTreeMap<String, String>,
    /// Requested purposes by name.
    pub purposes: BTreeMap<String, ProjectPurpose>,
    /// Equalization; None when off.
    pub equalization: Option<Equalization>,
    /// Masked joins: HASH and ENCRYPT use the project's key on every project
    /// source, so masked keys join inside the project (and only there).
    pub masked_joins: bool,
    /// Current version of the project's join key (`ROTATE KEYS FOR PROJECT`).
    #[serde(default = "first_version")]
    pub key_version: u32,
}

fn first_version() -> u32 {
    1
}

impl Project {
    /// Puts every APPROVED purpose back to PENDING (members or sources
    /// changed); returns the names that changed.
    pub fn repend(&mut self) -> Vec<String> {
        let mut changed = vec![];
        for (name, p) in self.purposes.iter_mut() {
            if p.state == PurposeState::Approved {
                p.state = PurposeState::Pending;
                changed.push(name.clone());
            }
        }
        changed
    }

    /// The approved purposes `member` may act under: acknowledged when the
    /// purpose asks for it.
    pub fn active_purposes(&self, snapshot: &CatalogSnapshot, member: &str) -> Vec<String> {
        self.purposes
            .iter()
            .filter(|(name, p)| {
                p.state == PurposeState::Approved
                    && (!needs_acknowledgement(snapshot, name)
                        || p.acknowledged_by.contains(member))
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// `user` with the project's purposes they may act under (and their
    /// ancestors), equalization aside.
    pub fn member_principal(&self, snapshot: &CatalogSnapshot, user: &User) -> Principal {
        let mut p = Principal::of_user(user);
        p.purposes = self
            .active_purposes(snapshot, &user.name)
            .iter()
            .flat_map(|x| with_ancestors(snapshot, x))
            .collect();
        p
    }

    /// Why `user` is not in compliance with the equalized entitlements (empty
    /// when compliant or equalization is off): missing entitlements, and
    /// approved purposes they have not acknowledged.
    pub fn non_compliance(&self, snapshot: &CatalogSnapshot, user: &User) -> Vec<String> {
        let Some(eq) = &self.equalization else {
            return vec![];
        };
        let mut out = eq.entitlements.lacking(user);
        for (name, p) in &self.purposes {
            if p.state == PurposeState::Approved
                && needs_acknowledgement(snapshot, name)
                && !p.acknowledged_by.contains(&user.name)
            {
                out.push(format!("acknowledgement of purpose '{name}'"));
            }
        }
        out
    }
}

fn needs_acknowledgement(snapshot: &CatalogSnapshot, purpose: &str) -> bool {
    snapshot
        .purposes
        .get(purpose)
        .is_none_or(|p| p.acknowledgement.is_some())
}

/// `purpose` and all its ancestors (the PARENT chain).
pub fn with_ancestors(snapshot: &CatalogSnapshot, purpose: &str) -> Vec<String> {
    let mut out = vec![purpose.to_string()];
    let mut current = snapshot.purposes.get(purpose);
    while let Some(parent) = current.and_then(|p| p.parent.as_ref()) {
        if out.contains(parent) || out.len() > snapshot.purposes.len() {
            break; // a cycle cannot be created, but never loop
        }
        out.push(parent.clone());
        current = snapshot.purposes.get(parent);
    }
    out
}

/// The principal `user` acts as in `project` (None: outside projects).
///
/// Inside a project the user must be a member; purposes are the approved
/// (and, where required, acknowledged) purposes with their ancestors. With
/// equalization on, the member must be in compliance, and the principal is
/// the synthetic one: no user name, exactly the equalized entitlements.
pub fn effective_principal(
    snapshot: &CatalogSnapshot,
    user: &User,
    project: Option<&str>,
) -> Result<Principal> {
    let Some(name) = project else {
        return Ok(Principal::of_user(user));
    };
    let project = member_project(snapshot, user, name)?;
    let principal = project.member_principal(snapshot, user);
    let Some(eq) = &project.equalization else {
        return Ok(principal);
    };
    let lacking = project.non_compliance(snapshot, user);
    if !lacking.is_empty() {
        return Err(VeilError::FailedPrecondition(format!(
            "{} is not in compliance with the equalized entitlements of project {name}: lacks {}",
            user.name,
            lacking.join(", ")
        )));
    }
    Ok(Principal {
        user: None,
        groups: eq.entitlements.groups.clone(),
        attributes: eq.entitlements.attributes.clone(),
        purposes: principal.purposes,
    })
}

/// The project `user` is a member of, or an error naming why not.
pub fn member_project<'s>(
    snapshot: &'s CatalogSnapshot,
    user: &User,
    name: &str,
) -> Result<&'s Project> {
    let project = snapshot
        .projects
        .get(name)
        .ok_or_else(|| VeilError::NotFound(format!("project {name} does not exist")))?;
    if !project.members.contains(&user.name) {
        return Err(VeilError::PermissionDenied(format!(
            "{} is not a member of project {name}",
            user.name
        )));
    }
    Ok(project)
}

/// Validates and normalizes a project name (lowercase identifier).
pub fn project_name(name: &str) -> Result<String> {
    let lower = name.to_ascii_lowercase();
    let ok = !lower.is_empty()
        && lower.len() <= 63
        && lower.starts_with(|c: char| c.is_ascii_lowercase())
        && lower
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        return Err(VeilError::InvalidArgument(format!(
            "project name '{name}' must start with a letter and hold only letters, digits \
             and '_' (at most 63)"
        )));
    }
    if RESERVED_PROJECT_NAMES.contains(&lower.as_str()) {
        return Err(VeilError::InvalidArgument(format!(
            "'{name}' is reserved and cannot name a project"
        )));
    }
    Ok(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str], attrs: &[(&str, &[&str])]) -> User {
        User {
            name: name.into(),
            password_hash: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            attributes: attrs
                .iter()
                .map(|(k, vs)| (k.to_string(), vs.iter().map(|v| v.to_string()).collect()))
                .collect(),
            permissions: Default::default(),
        }
    }

    #[test]
    fn recommended_entitlements_are_the_intersection() {
        let sally = user(
            "sally",
            &["hr", "staff", "analysts"],
            &[("region", &["EU", "US"]), ("clearance", &["high"])],
        );
        let bob = user(
            "bob",
            &["staff", "analysts"],
            &[("region", &["US", "APAC"])],
        );
        let e = Entitlements::recommended([&sally, &bob]);
        assert_eq!(
            e.groups,
            ["analysts", "staff"]
                .map(String::from)
                .into_iter()
                .collect()
        );
        assert_eq!(e.attributes.len(), 1, "clearance is not shared: {e:?}");
        assert_eq!(e.attributes["region"], ["US".to_string()].into());
        assert_eq!(
            e.to_string(),
            "has_group('analysts') AND has_group('staff') AND has_attribute('region', 'US')"
        );
        assert!(e.lacking(&sally).is_empty() && e.lacking(&bob).is_empty());
        let dave = user("dave", &["staff"], &[("region", &["APAC"])]);
        assert_eq!(
            e.lacking(&dave),
            vec!["group 'analysts'", "attribute region = 'US'"]
        );
        assert_eq!(Entitlements::recommended([]), Entitlements::default());
        assert_eq!(Entitlements::default().to_string(), "TRUE");
    }

    #[test]
    fn explicit_entitlements_are_a_conjunction_of_holdable_atoms() {
        let e =
            Entitlements::parse("has_group('claims') AND has_attribute('region', 'EU')").unwrap();
        assert_eq!(e.groups.len(), 1);
        assert_eq!(e.attributes["region"], ["EU".to_string()].into());
        assert_eq!(Entitlements::parse(&e.to_string()).unwrap(), e);
        for bad in [
            "has_group('a') OR has_group('b')",
            "NOT has_group('a')",
            "has_purpose('x')",
            "current_user() = 'bob'",
        ] {
            assert!(Entitlements::parse(bad).is_err(), "{bad}");
        }
    }

    fn purpose(name: &str, parent: Option<&str>, ack: bool) -> Purpose {
        Purpose {
            name: name.into(),
            parent: parent.map(String::from),
            description: None,
            acknowledgement: ack.then(|| "I agree".to_string()),
            created_by: "pm".into(),
        }
    }

    fn snapshot_with(purposes: &[Purpose], project: Project, users: &[User]) -> CatalogSnapshot {
        let mut s = CatalogSnapshot::default();
        for p in purposes {
            s.purposes.insert(p.name.clone(), p.clone());
        }
        for u in users {
            s.users.insert(u.name.clone(), u.clone());
        }
        s.projects.insert(project.name.clone(), project);
        s
    }

    fn project(members: &[&str], purposes: &[(&str, PurposeState, &[&str])]) -> Project {
        Project {
            name: "fraud".into(),
            id: "p1".into(),
            documentation: None,
            owners: [members[0].to_string()].into(),
            members: members.iter().map(|m| m.to_string()).collect(),
            sources: BTreeMap::new(),
            purposes: purposes
                .iter()
                .map(|(n, state, acks)| {
                    (
                        n.to_string(),
                        ProjectPurpose {
                            state: *state,
                            requested_by: members[0].into(),
                            decision: None,
                            acknowledged_by: acks.iter().map(|a| a.to_string()).collect(),
                        },
                    )
                })
                .collect(),
            equalization: None,
            masked_joins: false,
            key_version: 1,
        }
    }

    #[test]
    fn purposes_carry_their_ancestors_inside_the_project_only() {
        let sally = user("sally", &[], &[]);
        let s = snapshot_with(
            &[
                purpose("Research", None, false),
                purpose("Research.Fraud", Some("Research"), false),
                purpose("Marketing", None, false),
            ],
            project(
                &["sally"],
                &[
                    ("Research.Fraud", PurposeState::Approved, &[]),
                    ("Marketing", PurposeState::Pending, &[]),
                ],
            ),
            std::slice::from_ref(&sally),
        );
        let p = effective_principal(&s, &sally, Some("fraud")).unwrap();
        assert_eq!(
            p.purposes,
            ["Research", "Research.Fraud"].map(String::from).into()
        );
        assert!(effective_principal(&s, &sally, None)
            .unwrap()
            .purposes
            .is_empty());
        let carol = user("carol", &[], &[]);
        let e = effective_principal(&s, &carol, Some("fraud")).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::PermissionDenied);
        assert!(e
            .to_string()
            .contains("carol is not a member of project fraud"));
        let e = effective_principal(&s, &sally, Some("nope")).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::NotFound);
    }

    #[test]
    fn acknowledgement_gates_a_purpose_per_member() {
        let (sally, bob) = (user("sally", &[], &[]), user("bob", &[], &[]));
        let s = snapshot_with(
            &[purpose("Fraud", None, true)],
            project(
                &["sally", "bob"],
                &[("Fraud", PurposeState::Approved, &["sally"])],
            ),
            &[sally.clone(), bob.clone()],
        );
        let has = |u: &User| {
            effective_principal(&s, u, Some("fraud"))
                .unwrap()
                .purposes
                .contains("Fraud")
        };
        assert!(has(&sally));
        assert!(!has(&bob));
    }

    #[test]
    fn equalized_members_act_as_one_synthetic_principal() {
        let sally = user("sally", &["hr", "staff"], &[("region", &["EU", "US"])]);
        let bob = user("bob", &["staff"], &[("region", &["US"])]);
        let mut proj = project(&["sally", "bob"], &[]);
        proj.equalization = Some(Equalization {
            entitlements: Entitlements::recommended([&sally, &bob]),
            source: EntitlementsSource::Recommended,
            set: Decision {
                by: "sally".into(),
                at: "t".into(),
            },
        });
        proj.members.insert("dave".into());
        let dave = user("dave", &["staff"], &[("region", &["APAC"])]);
        let s = snapshot_with(&[], proj, &[sally.clone(), bob.clone(), dave.clone()]);
        let ps = effective_principal(&s, &sally, Some("fraud")).unwrap();
        let pb = effective_principal(&s, &bob, Some("fraud")).unwrap();
        assert_eq!(ps, pb);
        assert_eq!(ps.user, None);
        assert!(!ps.groups.contains("hr"));
        let e = effective_principal(&s, &dave, Some("fraud")).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::FailedPrecondition);
        assert!(
            e.to_string().contains("lacks attribute region = 'US'"),
            "{e}"
        );
    }

    #[test]
    fn repend_moves_only_approved_purposes() {
        let mut p = project(
            &["sally"],
            &[
                ("A", PurposeState::Approved, &[]),
                ("B", PurposeState::Denied, &[]),
                ("C", PurposeState::Pending, &[]),
            ],
        );
        assert_eq!(p.repend(), vec!["A"]);
        assert_eq!(p.purposes["A"].state, PurposeState::Pending);
        assert_eq!(p.purposes["B"].state, PurposeState::Denied);
    }

    #[test]
    fn project_names_are_lowercase_identifiers() {
        assert_eq!(project_name("Fraud").unwrap(), "fraud");
        for bad in ["", "1x", "a-b", "a/b", "..", "veil", "workspace", "NONE"] {
            assert!(project_name(bad).is_err(), "{bad}");
        }
    }
}
