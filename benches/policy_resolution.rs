//! Policy resolution at scale: a catalog of 10,000 sources, 10,000 policies
//! and 100,000 users, held in memory as the engine holds it (one snapshot
//! per policy version). Measures what every statement pays: the effective
//! principal of one user, then the decision (subscription, masks with
//! precedence, row filters) for the sources a query touches.
//!
//! `cargo bench -p veil-engine --bench policy_resolution`

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use veil_engine::model::{
    Applicability, CatalogSnapshot, ColumnInfo, DataSource, MaskMethod, Policy, PolicyRule,
    SourceKind, Subscription, Target, User,
};
use veil_engine::policy::{decide, Access};
use veil_engine::project::effective_principal;

const SOURCES: usize = 10_000;
const POLICIES: usize = 10_000;
const USERS: usize = 100_000;
const TAGS: usize = 200;
const GROUPS: usize = 500;

fn set(items: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    items.into_iter().collect()
}

/// Sources of 12 columns; three of them carry one of 200 tags (`Tn.sub`).
fn source(i: usize) -> DataSource {
    let columns = (0..12)
        .map(|c| ColumnInfo {
            name: format!("col_{c}"),
            data_type: "Utf8".into(),
            tags: if c < 3 {
                set([format!("T{}.sub{c}", (i * 7 + c) % TAGS)])
            } else {
                BTreeSet::new()
            },
        })
        .collect();
    DataSource {
        schema: format!("schema_{}", i % 100),
        table: format!("table_{i}"),
        location: format!("/data/{i}"),
        arrow_schema: String::new(),
        columns,
        owners: set([format!("user_{}", i % USERS)]),
        subscription: if i.is_multiple_of(2) {
            Subscription::Anyone
        } else {
            Subscription::When(format!(
                "has_group('g{}') OR has_group('staff')",
                i % GROUPS
            ))
        },
        kind: SourceKind::Parquet,
    }
}

/// 60 % local masks, 20 % tag masks, 20 % local row policies; each
/// UNLESS a group.
fn policy(i: usize) -> Policy {
    let target_source = format!(
        "schema_{}.table_{}",
        (i * 13) % SOURCES % 100,
        (i * 13) % SOURCES
    );
    let methods = [
        MaskMethod::Hash,
        MaskMethod::Null,
        MaskMethod::ShowLast(4),
        MaskMethod::Round(100.0),
    ];
    let (target, rule) = match i % 10 {
        0..=5 => (
            Target::Source {
                source: target_source,
                columns: vec![format!("col_{}", i % 12)],
            },
            PolicyRule::Mask(methods[i % 4].clone()),
        ),
        6 | 7 => (
            Target::Tag(format!("T{}", i % TAGS)),
            PolicyRule::Mask(methods[i % 4].clone()),
        ),
        _ => (
            Target::Source {
                source: target_source,
                columns: vec![],
            },
            PolicyRule::Row(format!("attribute_contains('region', col_{})", i % 12)),
        ),
    };
    Policy {
        name: format!("policy_{i}"),
        target,
        rule,
        applicability: Applicability::Unless(format!("has_group('g{}')", i % GROUPS)),
        created_by: "admin".into(),
    }
}

fn user(i: usize) -> User {
    User {
        name: format!("user_{i}"),
        password_hash: None,
        groups: set([format!("g{}", i % GROUPS), "staff".to_string()]),
        attributes: BTreeMap::from([(
            "region".to_string(),
            set([format!("R{}", i % 10), format!("R{}", (i + 3) % 10)]),
        )]),
        permissions: BTreeSet::new(),
    }
}

fn snapshot() -> CatalogSnapshot {
    let mut s = CatalogSnapshot::default();
    for i in 0..SOURCES {
        let src = source(i);
        s.sources.insert(src.full_name(), src);
    }
    for i in 0..POLICIES {
        let p = policy(i);
        s.policies.insert(p.name.clone(), p);
    }
    for i in 0..USERS {
        let u = user(i);
        s.users.insert(u.name.clone(), u);
    }
    s
}

fn bench(c: &mut Criterion) {
    let snap = snapshot();
    // Sources that policies target: table_13 and its neighbours in the
    // policy key space have several masks and row policies each.
    let names = [
        "schema_13.table_13",
        "schema_26.table_26",
        "schema_39.table_39",
    ];
    let resolve = |user: &str, sources: &[&str]| {
        let u = &snap.users[user];
        let p = effective_principal(&snap, u, None).expect("principal");
        let mut masks = 0;
        for s in sources {
            if let Access::Granted(d) = decide(&p, &snap, &snap.sources[*s]).expect("decide") {
                masks += d.masks.len() + d.row_filters.len();
            }
        }
        masks
    };
    // The benchmark measures real work: these sources carry policies.
    assert!(resolve("user_99999", &names) > 0);

    let mut g = c.benchmark_group("policy_resolution_10k_sources_10k_policies_100k_users");
    g.bench_function("principal_only", |b| {
        b.iter(|| effective_principal(&snap, &snap.users[black_box("user_54321")], None))
    });
    g.bench_function("one_source", |b| {
        b.iter(|| resolve(black_box("user_54321"), &names[..1]))
    });
    g.bench_function("three_sources", |b| {
        b.iter(|| resolve(black_box("user_54321"), &names))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
