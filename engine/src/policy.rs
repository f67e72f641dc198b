//! Policy evaluation: a pure function from (principal, catalog snapshot,
//! source) to a decision. Planning, `SHOW POLICY INFO` and the audit log all
//! use this one function, so what is shown is what is enforced.
//!
//! - Subscription: owners always; otherwise the source's subscription policy.
//! - Masks: every masking policy that targets the column (explicitly or by a
//!   tag covering one of its tags, `PII` covers `PII.SSN`) and applies to the
//!   principal (UNLESS / FOR); the most restrictive wins (NULL > CONSTANT >
//!   HASH > ENCRYPT > REGEX > SHOW_FIRST/LAST > ROUND > DATE_TRUNC), ties by
//!   policy name; the others are reported as overridden.
//! - Rows: every applicable row policy, ANDed.
//! - Fail closed: a condition that does not parse is an error naming the
//!   policy, never a silent skip.

use crate::condition::cached_condition;
use crate::error::{Result, VeilError};
use crate::model::{
    tag_covers, Applicability, CatalogSnapshot, DataSource, Lineage, MaskMethod, Policy,
    PolicyRule, Restriction, SourceKind, Subscription, Target,
};
use crate::principal::Principal;

/// The mask in force on one column.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnMask {
    /// Column name.
    pub column: String,
    /// Winning policy.
    pub policy: String,
    /// Its method.
    pub method: MaskMethod,
    /// Other applicable policies that lost on precedence.
    pub overridden: Vec<String>,
}

/// A row policy in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowFilter {
    /// Policy name.
    pub policy: String,
    /// Predicate SQL text over the source's columns and principal functions.
    pub predicate: String,
    /// Whether the policy targets by tag (then it applies only where its
    /// columns exist).
    pub global: bool,
}

/// What a principal may see of one source.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceDecision {
    /// `schema.table`.
    pub source: String,
    /// Masked columns, in schema order.
    pub masks: Vec<ColumnMask>,
    /// Row policies, ANDed.
    pub row_filters: Vec<RowFilter>,
}

impl SourceDecision {
    /// The mask on a column, if any.
    pub fn mask_of(&self, column: &str) -> Option<&ColumnMask> {
        self.masks.iter().find(|m| m.column == column)
    }
}

/// The decision for one source.
#[derive(Debug, Clone, PartialEq)]
pub enum Access {
    /// Not subscribed; the reason names the source and the principal.
    Denied(String),
    /// Subscribed, with these masks and filters.
    Granted(SourceDecision),
}

fn applies(policy: &Policy, p: &Principal) -> Result<bool> {
    let cond = |c: &str| {
        cached_condition(c).map_err(|e| VeilError::PolicyFailure {
            policy: policy.name.clone(),
            reason: e.to_string(),
        })
    };
    Ok(match &policy.applicability {
        Applicability::Always => true,
        Applicability::Unless(c) => !cond(c)?.eval(p),
        Applicability::For(c) => cond(c)?.eval(p),
    })
}

/// Whether the principal is subscribed; Err(reason) when not.
///
/// A derived source that is stale against its parents (a parent's policies
/// became stricter for its derivation principal since it was derived) also
/// requires, until it is re-derived, that the principal may see at least as
/// much of every parent as the derivation did.
pub fn subscription(
    p: &Principal,
    snapshot: &CatalogSnapshot,
    source: &DataSource,
) -> Result<std::result::Result<(), String>> {
    if let Err(reason) = own_subscription(p, source)? {
        return Ok(Err(reason));
    }
    let SourceKind::Derived(lineage) = &source.kind else {
        return Ok(Ok(()));
    };
    if is_owner(p, source) {
        return Ok(Ok(()));
    }
    if let Some(reason) = outside_purposes(p, source) {
        return Ok(Err(reason));
    }
    let stale = staleness(snapshot, lineage)?;
    if stale.is_empty() {
        return Ok(Ok(()));
    }
    for (parent, was) in &lineage.parents {
        let now = match snapshot.sources.get(parent) {
            Some(ps) => restriction(p, snapshot, ps)?,
            None => Restriction::default(),
        };
        if !now.stricter_than(was).is_empty() {
            return Ok(Err(format!(
                "{} is not subscribed to {}: it is stale against its parents ({}) and, until it \
                 is re-derived, needs access to {parent} at least as broad as its derivation had",
                p.describe(),
                source.full_name(),
                stale.join("; ")
            )));
        }
    }
    Ok(Ok(()))
}

/// Why `p` (not an owner) may not use a purpose-bound derived source: it
/// acts outside the purposes the source's data was read under.
fn outside_purposes(p: &Principal, source: &DataSource) -> Option<String> {
    let SourceKind::Derived(lineage) = &source.kind else {
        return None;
    };
    if !lineage.purpose_bound || lineage.purposes.is_subset(&p.purposes) || is_owner(p, source) {
        return None;
    }
    Some(format!(
        "{} is not subscribed to {}: it holds data read under the purposes of project {} ({}), \
         so it is used only under them, in a project that has them approved",
        p.describe(),
        source.full_name(),
        lineage.project,
        lineage
            .purposes
            .iter()
            .map(|x| format!("'{x}'"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

fn is_owner(p: &Principal, source: &DataSource) -> bool {
    p.user.as_ref().is_some_and(|u| source.owners.contains(u))
}

/// The source's own subscription policy (owners always).
fn own_subscription(p: &Principal, source: &DataSource) -> Result<std::result::Result<(), String>> {
    let name = source.full_name();
    if is_owner(p, source) {
        return Ok(Ok(()));
    }
    let ok = match &source.subscription {
        Subscription::Anyone => true,
        Subscription::OwnersOnly => false,
        Subscription::Users(users) => p.user.as_ref().is_some_and(|u| users.contains(u)),
        Subscription::When(c) => cached_condition(c)
            .map_err(|e| VeilError::PolicyFailure {
                policy: format!("subscription of {name}"),
                reason: e.to_string(),
            })?
            .eval(p),
    };
    Ok(if ok {
        Ok(())
    } else {
        Err(format!("{} is not subscribed to {name}", p.describe()))
    })
}

/// What `p` sees of `source` (its own policies only), comparably.
pub fn restriction(
    p: &Principal,
    snapshot: &CatalogSnapshot,
    source: &DataSource,
) -> Result<Restriction> {
    if own_subscription(p, source)?.is_err() || outside_purposes(p, source).is_some() {
        return Ok(Restriction::default());
    }
    let d = decide_granted(p, snapshot, source)?;
    Ok(Restriction {
        subscribed: true,
        masks: d
            .masks
            .iter()
            .map(|m| (m.column.clone(), m.method.rank()))
            .collect(),
        mask_methods: d
            .masks
            .iter()
            .filter_map(|m| Some((m.column.clone(), serde_json::to_string(&m.method).ok()?)))
            .collect(),
        row_policies: d.row_filters.iter().map(|r| r.policy.clone()).collect(),
        row_predicates: predicate_inputs(p, source, &d.row_filters),
    })
}

/// Each row filter's predicate as resolved for `p`: its text and what its
/// principal functions read of `p` (`principal_inputs`). A predicate that
/// does not parse over the source's schema is left out (a global policy
/// on a column the source lacks does not apply; any other such predicate
/// fails every query that reads the source).
fn predicate_inputs(
    p: &Principal,
    source: &DataSource,
    filters: &[RowFilter],
) -> std::collections::BTreeMap<String, String> {
    use crate::governance::principal_fns::{parse_predicate, principal_inputs};
    let Ok(schema) = crate::catalog::source_schema(source) else {
        return Default::default();
    };
    let Ok(schema) = datafusion::common::DFSchema::try_from(schema.as_ref().clone()) else {
        return Default::default();
    };
    filters
        .iter()
        .filter_map(|rf| {
            let parsed = parse_predicate(&rf.predicate, &schema).ok()?;
            let inputs = principal_inputs(&parsed, p);
            Some((rf.policy.clone(), format!("{} | {inputs}", rf.predicate)))
        })
        .collect()
}

/// What `p` would see of workspace table `t` that their own access to its
/// parents hides: one line per write that read a parent with broader
/// access than `p` has (`who` names `p` in them); empty when `p` sees at
/// least as much of every parent as each write read. Members outside
/// equalization see different data, so a table sally (hr) wrote holds what
/// bob's masks hide; the same check guards derived sources, for the
/// entitlements they are shared with.
pub fn read_beyond(
    p: &Principal,
    snapshot: &CatalogSnapshot,
    t: &crate::workspace::WorkspaceTable,
    who: &str,
) -> Result<Vec<String>> {
    let mut beyond = Vec::new();
    for parent in &t.parents {
        let Some(reads) = t.reads.get(parent) else {
            beyond.push(format!(
                "its writes read {parent} before Veil recorded with what access (write it again \
                 from its sources)"
            ));
            continue;
        };
        let sees = match snapshot.sources.get(parent) {
            Some(ps) => restriction(p, snapshot, ps)?,
            None => Restriction::default(),
        };
        for read in reads {
            let why = sees.hides_more_than(&read.access);
            if !why.is_empty() {
                beyond.push(format!(
                    "{} wrote what they read of {parent}, more than {who} may see of it ({})",
                    read.by,
                    why.join(", ")
                ));
            }
        }
    }
    beyond.dedup();
    Ok(beyond)
}

/// Why a derived source is stale against its parents (empty: it is not):
/// for the principal it was derived as, a parent is gone or its policies
/// are now stricter than at derivation.
pub fn staleness(snapshot: &CatalogSnapshot, lineage: &Lineage) -> Result<Vec<String>> {
    let deriver = lineage.principal();
    let mut why = Vec::new();
    for (parent, was) in &lineage.parents {
        match snapshot.sources.get(parent) {
            None => why.push(format!("parent {parent} no longer exists")),
            Some(ps) => why.extend(
                restriction(&deriver, snapshot, ps)?
                    .stricter_than(was)
                    .into_iter()
                    .map(|r| format!("{parent}: {r}")),
            ),
        }
    }
    Ok(why)
}

/// Evaluates every policy on `source` for `p`.
pub fn decide(p: &Principal, snapshot: &CatalogSnapshot, source: &DataSource) -> Result<Access> {
    if let Err(reason) = subscription(p, snapshot, source)? {
        return Ok(Access::Denied(reason));
    }
    decide_granted(p, snapshot, source).map(Access::Granted)
}

/// Masks and row filters of a source for a subscribed principal.
fn decide_granted(
    p: &Principal,
    snapshot: &CatalogSnapshot,
    source: &DataSource,
) -> Result<SourceDecision> {
    let name = source.full_name();
    let mut candidates: Vec<Vec<&Policy>> = vec![Vec::new(); source.columns.len()];
    let mut row_filters = Vec::new();
    for policy in snapshot.policies.on_source(source) {
        let targeted: Vec<usize> = match (&policy.target, &policy.rule) {
            (Target::Source { source: s, columns }, PolicyRule::Mask(_)) if *s == name => source
                .columns
                .iter()
                .enumerate()
                .filter(|(_, c)| columns.iter().any(|x| x.eq_ignore_ascii_case(&c.name)))
                .map(|(i, _)| i)
                .collect(),
            (Target::Tag(t), PolicyRule::Mask(_)) => source
                .columns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.tags.iter().any(|ct| tag_covers(t, ct)))
                .map(|(i, _)| i)
                .collect(),
            (Target::Source { source: s, .. }, PolicyRule::Row(pred)) if *s == name => {
                if applies(policy, p)? {
                    row_filters.push(RowFilter {
                        policy: policy.name.clone(),
                        predicate: pred.clone(),
                        global: false,
                    });
                }
                continue;
            }
            (Target::Tag(t), PolicyRule::Row(pred)) => {
                let tagged = source
                    .columns
                    .iter()
                    .any(|c| c.tags.iter().any(|ct| tag_covers(t, ct)));
                if tagged && applies(policy, p)? {
                    row_filters.push(RowFilter {
                        policy: policy.name.clone(),
                        predicate: pred.clone(),
                        global: true,
                    });
                }
                continue;
            }
            _ => continue,
        };
        if targeted.is_empty() || !applies(policy, p)? {
            continue;
        }
        for i in targeted {
            candidates[i].push(policy);
        }
    }
    let masks = candidates
        .into_iter()
        .enumerate()
        .filter_map(|(i, mut ps)| {
            ps.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.name.cmp(&b.name)));
            let (winner, rest) = ps.split_first()?;
            let PolicyRule::Mask(method) = &winner.rule else {
                return None;
            };
            Some(ColumnMask {
                column: source.columns[i].name.clone(),
                policy: winner.name.clone(),
                method: method.clone(),
                overridden: rest.iter().map(|p| p.name.clone()).collect(),
            })
        })
        .collect();
    Ok(SourceDecision {
        source: name,
        masks,
        row_filters,
    })
}

fn rank(p: &Policy) -> u8 {
    match &p.rule {
        PolicyRule::Mask(m) => m.rank(),
        PolicyRule::Row(_) => u8::MAX,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::model::ColumnInfo;

    fn source() -> DataSource {
        let col = |n: &str, tags: &[&str]| ColumnInfo {
            name: n.into(),
            data_type: "Utf8".into(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
        };
        DataSource {
            schema: "hr".into(),
            table: "employees".into(),
            location: "x".into(),
            arrow_schema: String::new(),
            columns: vec![
                col("name", &[]),
                col("ssn", &["PII.SSN"]),
                col("email", &["PII"]),
            ],
            owners: BTreeSet::from(["owner".to_string()]),
            subscription: Subscription::When("has_group('staff')".into()),
            kind: SourceKind::Parquet,
        }
    }

    fn mask(name: &str, target: Target, m: MaskMethod, a: Applicability) -> Policy {
        Policy {
            name: name.into(),
            target,
            rule: PolicyRule::Mask(m),
            applicability: a,
            created_by: "admin".into(),
        }
    }

    fn user(name: &str, groups: &[&str]) -> Principal {
        Principal {
            user: Some(name.into()),
            groups: groups.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn snapshot(policies: Vec<Policy>) -> CatalogSnapshot {
        let mut s = CatalogSnapshot::default();
        for p in policies {
            s.policies.insert(p.name.clone(), p);
        }
        s
    }

    fn granted(a: Access) -> SourceDecision {
        match a {
            Access::Granted(d) => d,
            Access::Denied(r) => panic!("denied: {r}"),
        }
    }

    #[test]
    fn subscription_owner_and_condition() {
        let snap = snapshot(vec![]);
        let src = source();
        assert!(
            matches!(decide(&user("bob", &[]), &snap, &src).unwrap(), Access::Denied(r) if r.contains("bob is not subscribed to hr.employees"))
        );
        granted(decide(&user("bob", &["staff"]), &snap, &src).unwrap());
        granted(decide(&user("owner", &[]), &snap, &src).unwrap());
    }

    #[test]
    fn tag_hierarchy_precedence_and_unless() {
        let snap = snapshot(vec![
            mask(
                "pii_hash",
                Target::Tag("PII".into()),
                MaskMethod::Hash,
                Applicability::Unless("has_group('hr')".into()),
            ),
            mask(
                "ssn_null",
                Target::Source {
                    source: "hr.employees".into(),
                    columns: vec!["ssn".into()],
                },
                MaskMethod::Null,
                Applicability::Always,
            ),
            mask(
                "z_show",
                Target::Tag("PII.SSN".into()),
                MaskMethod::ShowLast(4),
                Applicability::Always,
            ),
        ]);
        let d = granted(decide(&user("bob", &["staff"]), &snap, &source()).unwrap());
        let ssn = d.mask_of("ssn").unwrap();
        assert_eq!(ssn.policy, "ssn_null");
        assert_eq!(
            ssn.overridden,
            vec!["pii_hash".to_string(), "z_show".to_string()]
        );
        assert_eq!(d.mask_of("email").unwrap().method, MaskMethod::Hash);
        assert!(d.mask_of("name").is_none());

        // hr is excepted from pii_hash only.
        let d = granted(decide(&user("hana", &["staff", "hr"]), &snap, &source()).unwrap());
        assert!(d.mask_of("email").is_none());
        assert_eq!(
            d.mask_of("ssn").unwrap().overridden,
            vec!["z_show".to_string()]
        );
    }

    #[test]
    fn for_applies_only_to_matching_principals_and_rows_are_anded() {
        let row = |n: &str, pred: &str| Policy {
            name: n.into(),
            target: Target::Source {
                source: "hr.employees".into(),
                columns: vec![],
            },
            rule: PolicyRule::Row(pred.into()),
            applicability: Applicability::For("has_group('contractors')".into()),
            created_by: "admin".into(),
        };
        let snap = snapshot(vec![
            row("r1", "name <> 'x'"),
            row("r2", "email IS NOT NULL"),
        ]);
        let d = granted(decide(&user("c", &["staff", "contractors"]), &snap, &source()).unwrap());
        assert_eq!(d.row_filters.len(), 2);
        let d = granted(decide(&user("e", &["staff"]), &snap, &source()).unwrap());
        assert!(d.row_filters.is_empty());
    }

    #[test]
    fn broken_condition_fails_closed() {
        let snap = snapshot(vec![mask(
            "broken",
            Target::Tag("PII".into()),
            MaskMethod::Hash,
            Applicability::Unless("has_group(".into()),
        )]);
        let err = decide(&user("bob", &["staff"]), &snap, &source()).unwrap_err();
        assert!(err.to_string().contains("broken"), "{err}");
    }
}
