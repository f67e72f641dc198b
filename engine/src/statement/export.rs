//! `veil export`: the governance state as a script that `veil apply` (run
//! as `admin`) replays onto a new catalog, e.g. to move from the embedded
//! SQLite catalog to a shared PostgreSQL one.
//!
//! The replay runs as `admin`, who becomes owner of what it creates; the
//! script hands each source and project to its owners and takes `admin` out
//! again where it was not there, in an order that keeps every statement
//! allowed (a project's sources are added while `admin` still owns them,
//! purposes are decided after the last member change, which would put them
//! back to PENDING). What a script cannot say is listed in its header.

use std::collections::BTreeSet;
use std::fmt::Write;

use crate::model::{quote, CatalogSnapshot, PolicyRule, SourceKind, Subscription, User};
use crate::project::{Project, PurposeState};

/// The first line of an export: `veil apply` replays such a script only
/// onto a catalog with no governance yet (see [`super::apply_script`]).
pub const NEW_CATALOG_ONLY: &str = "-- veil: new catalog only";

/// The user a replay runs as.
const REPLAYER: &str = "admin";

/// The script for `snapshot`.
pub fn export_script(snapshot: &CatalogSnapshot) -> String {
    let mut out = String::new();
    let derived: BTreeSet<&str> = snapshot
        .sources
        .iter()
        .filter(|(_, s)| matches!(s.kind, SourceKind::Derived(_)))
        .map(|(n, _)| n.as_str())
        .collect();
    header(&mut out, snapshot, &derived);
    section(&mut out, "users");
    for user in snapshot.users.values().filter(|u| u.name != REPLAYER) {
        line(&mut out, create_user(user));
        for p in &user.permissions {
            line(&mut out, format!("GRANT PERMISSION {p} TO {}", user.name));
        }
    }
    section(&mut out, "purposes");
    for purpose in purposes_parents_first(snapshot) {
        let mut sql = format!("CREATE PURPOSE {}", quote(&purpose.name));
        if let Some(parent) = &purpose.parent {
            let _ = write!(sql, " PARENT {}", quote(parent));
        }
        if let Some(d) = &purpose.description {
            let _ = write!(sql, " DESCRIPTION {}", quote(d));
        }
        if let Some(a) = &purpose.acknowledgement {
            let _ = write!(sql, " ACKNOWLEDGEMENT {}", quote(a));
        }
        line(&mut out, sql);
    }
    section(&mut out, "data sources");
    let parquet = || {
        snapshot
            .sources
            .iter()
            .filter(|(n, _)| !derived.contains(n.as_str()))
    };
    for (name, s) in parquet() {
        line(
            &mut out,
            format!(
                "CREATE DATA SOURCE {name} FROM PARQUET {}",
                quote(&s.location)
            ),
        );
        for c in s.columns.iter().filter(|c| !c.tags.is_empty()) {
            line(
                &mut out,
                format!(
                    "ALTER DATA SOURCE {name} TAG COLUMN {} WITH ({})",
                    c.name,
                    list(&c.tags)
                ),
            );
        }
        if s.subscription != Subscription::OwnersOnly {
            line(
                &mut out,
                format!(
                    "ALTER DATA SOURCE {name} SET SUBSCRIPTION {}",
                    s.subscription
                ),
            );
        }
        for owner in s.owners.iter().filter(|o| *o != REPLAYER) {
            line(
                &mut out,
                format!("ALTER DATA SOURCE {name} ADD OWNER {owner}"),
            );
        }
    }
    section(&mut out, "policies");
    // Row policies on sources first: the masks' type checks read nothing
    // of them, and the order is stable either way.
    let mut policies: Vec<_> = snapshot.policies.values().collect();
    policies.sort_by_key(|p| (matches!(p.rule, PolicyRule::Mask(_)), p.name.clone()));
    for p in policies {
        line(&mut out, p.to_sql());
    }
    section(&mut out, "projects");
    for p in snapshot.projects.values() {
        project(&mut out, p, &derived);
    }
    section(&mut out, "ownership (admin created the sources above)");
    for (name, s) in parquet() {
        if !s.owners.contains(REPLAYER) && !s.owners.is_empty() {
            line(
                &mut out,
                format!("ALTER DATA SOURCE {name} REMOVE OWNER {REPLAYER}"),
            );
        }
    }
    out
}

fn header(out: &mut String, snapshot: &CatalogSnapshot, derived: &BTreeSet<&str>) {
    let _ = writeln!(
        out,
        "{NEW_CATALOG_ONLY}\n\
         -- Veil governance export of catalog version {}.\n\
         -- Replay with `veil apply FILE` on a new catalog; it runs as admin, whose own\n\
         -- user, password and permissions are the new catalog's.\n\
         -- Not in a script: workspace tables and derived data sources (data, not\n\
         -- governance), purpose acknowledgements (each member's own act), who decided\n\
         -- a purpose and when (the replay decides as admin), key versions (ROTATE KEYS\n\
         -- starts again at 1, so HASH and ENCRYPT tokens differ), and the audit log.",
        snapshot.version
    );
    if !derived.is_empty() {
        let names: Vec<&str> = derived.iter().copied().collect();
        let _ = writeln!(
            out,
            "-- Derived data sources left out: {}.",
            names.join(", ")
        );
    }
}

fn section(out: &mut String, name: &str) {
    let _ = writeln!(out, "\n-- {name}");
}

fn line(out: &mut String, sql: String) {
    out.push_str(&sql);
    out.push_str(";\n");
}

fn list<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    items
        .into_iter()
        .map(|s| quote(s))
        .collect::<Vec<_>>()
        .join(", ")
}

fn create_user(u: &User) -> String {
    let mut sql = format!("CREATE USER {}", u.name);
    if let Some(hash) = &u.password_hash {
        let _ = write!(sql, " PASSWORD HASH {}", quote(hash));
    }
    if !u.groups.is_empty() {
        let _ = write!(sql, " GROUPS ({})", list(&u.groups));
    }
    if !u.attributes.is_empty() {
        let attrs: Vec<String> = u
            .attributes
            .iter()
            .map(|(k, vs)| format!("{k} = ({})", list(vs)))
            .collect();
        let _ = write!(sql, " ATTRIBUTES ({})", attrs.join(", "));
    }
    sql
}

/// Purposes with every parent before its children (ties by name).
fn purposes_parents_first(snapshot: &CatalogSnapshot) -> Vec<&crate::project::Purpose> {
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut out = vec![];
    while out.len() < snapshot.purposes.len() {
        let before = out.len();
        for p in snapshot.purposes.values() {
            let ready = p.parent.as_deref().is_none_or(|parent| {
                done.contains(parent) || !snapshot.purposes.contains_key(parent)
            });
            if !done.contains(p.name.as_str()) && ready {
                done.insert(&p.name);
                out.push(p);
            }
        }
        if out.len() == before {
            // A cycle cannot be created; should one be stored, keep the rest
            // in name order rather than lose them.
            out.extend(
                snapshot
                    .purposes
                    .values()
                    .filter(|p| !done.contains(p.name.as_str())),
            );
            break;
        }
    }
    out
}

fn project(out: &mut String, p: &Project, derived: &BTreeSet<&str>) {
    let name = &p.name;
    let alter = |out: &mut String, action: String| {
        line(out, format!("ALTER PROJECT {name} {action}"));
    };
    let mut create = format!("CREATE PROJECT {name}");
    if let Some(doc) = &p.documentation {
        let _ = write!(create, " DOCUMENTATION {}", quote(doc));
    }
    line(out, create);
    for o in p.owners.iter().filter(|o| *o != REPLAYER) {
        alter(out, format!("ADD OWNER {o}"));
    }
    for m in p.members.difference(&p.owners).filter(|m| *m != REPLAYER) {
        alter(out, format!("ADD MEMBER {m}"));
    }
    for s in p.sources.keys() {
        if derived.contains(s.as_str()) {
            let _ = writeln!(out, "-- left out: derived data source {s}");
        } else {
            alter(out, format!("ADD DATA SOURCE {s}"));
        }
    }
    for purpose in p.purposes.keys() {
        alter(out, format!("ADD PURPOSE {}", quote(purpose)));
    }
    if let Some(eq) = &p.equalization {
        alter(out, "SET EQUALIZATION ON".into());
        alter(
            out,
            format!("SET EQUALIZED ENTITLEMENTS ({})", eq.entitlements),
        );
    }
    if p.masked_joins {
        alter(out, "SET MASKED JOINS ON".into());
    }
    // admin leaves before the decisions: a member change puts approved
    // purposes back to PENDING.
    if !p.members.contains(REPLAYER) {
        alter(out, format!("REMOVE MEMBER {REPLAYER}"));
    } else if !p.owners.contains(REPLAYER) {
        alter(out, format!("REMOVE OWNER {REPLAYER}"));
    }
    for (purpose, pp) in &p.purposes {
        let verb = match pp.state {
            PurposeState::Approved => "APPROVE",
            PurposeState::Denied => "DENY",
            PurposeState::Pending => continue,
        };
        line(
            out,
            format!("{verb} PURPOSE {} FOR PROJECT {name}", quote(purpose)),
        );
    }
}
