//! `SHOW POLICY INFO` agrees with what a query returns and with what the
//! engine recorded it applied, for every demo persona and for generated
//! principals (groups, regions, clearance).

use crate::common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use common::{demo, rows};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use proptest::prelude::*;
use veil_engine::store::AuditFilter;
use veil_engine::{Engine, EngineOptions};

const SOURCES: [(&str, &str); 3] = [
    ("hr.employees", "testdata/hr/employees.parquet"),
    ("payments.cards", "testdata/payments/cards.parquet"),
    ("sales.transactions", "testdata/sales/transactions.parquet"),
];

/// The raw file: (row count, every column's values as text).
type Raw = (usize, HashMap<String, HashSet<String>>);

async fn raw(path: &str) -> Raw {
    let ctx = SessionContext::new();
    let path = common::root().join(path);
    let batches = ctx
        .read_parquet(path.to_str().unwrap(), ParquetReadOptions::default())
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let opts = FormatOptions::default().with_null("NULL");
    let mut values: HashMap<String, HashSet<String>> = HashMap::new();
    let mut count = 0;
    for b in &batches {
        count += b.num_rows();
        for (field, col) in b.schema().fields().iter().zip(b.columns()) {
            let f = ArrayFormatter::try_new(col.as_ref(), &opts).unwrap();
            let set = values.entry(field.name().clone()).or_default();
            for r in 0..b.num_rows() {
                set.insert(f.value(r).to_string());
            }
        }
    }
    (count, values)
}

/// Checks one (user, source) pair, outside projects or in `project`.
async fn agrees(engine: &Arc<Engine>, user: &str, source: &str, raw: &Raw, project: Option<&str>) {
    let mut admin = engine.session("admin");
    let in_project = project
        .map(|p| format!(" IN PROJECT {p}"))
        .unwrap_or_default();
    let info = rows(
        &mut admin,
        &format!("SHOW POLICY INFO FOR {source} AS USER {user}{in_project}"),
    )
    .await;
    let sub = info.iter().find(|r| r[1] == "subscription").unwrap();
    let mut s = engine.session(user);
    s.use_project(project).unwrap();
    let result = match s.execute(&format!("SELECT * FROM {source}")).await {
        Ok(out) => out.collect().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if sub[3] == "denied" {
        let e = result.expect_err("policy info says denied; the query ran");
        assert!(
            e.contains(&sub[4]),
            "{user} {source}: '{e}' vs '{}'",
            sub[4]
        );
        return;
    }
    let batches = result.unwrap_or_else(|e| panic!("{user} {source}: granted but {e}"));
    // The decision the engine recorded for the query is the one shown.
    let record = engine
        .store()
        .audit_records(&AuditFilter {
            actor: Some(user.to_string()),
            action: Some("Query".into()),
            ..Default::default()
        })
        .unwrap()
        .pop()
        .unwrap();
    let detail: serde_json::Value = serde_json::from_str(&record.entry.detail).unwrap();
    let applied = &detail["sources"][0];
    let recorded_masks: BTreeSet<(String, String, String, String)> = applied["masks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let overridden: Vec<&str> = m["overridden"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o.as_str().unwrap())
                .collect();
            (
                m["column"].as_str().unwrap().to_string(),
                m["method"].as_str().unwrap().to_string(),
                m["policy"].as_str().unwrap().to_string(),
                overridden.join(", "),
            )
        })
        .collect();
    let shown_masks: BTreeSet<(String, String, String, String)> = info
        .iter()
        .filter(|r| r[1] == "mask")
        .map(|r| (r[2].clone(), r[3].clone(), r[4].clone(), r[5].clone()))
        .collect();
    assert_eq!(recorded_masks, shown_masks, "{user} {source}");
    let recorded_rows: BTreeSet<String> = applied["row_policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    let shown_rows: BTreeSet<String> = info
        .iter()
        .filter(|r| r[1] == "row filter")
        .map(|r| r[4].clone())
        .collect();
    assert_eq!(recorded_rows, shown_rows, "{user} {source}");

    // And the data looks like it: unmasked columns hold raw values, masked
    // ones none (NULL masks only NULL), all rows unless a row filter applies.
    let (raw_count, raw_values) = raw;
    let opts = FormatOptions::default().with_null("NULL");
    let mut count = 0;
    for b in &batches {
        count += b.num_rows();
        for (field, col) in b.schema().fields().iter().zip(b.columns()) {
            let name = field.name();
            let mask = shown_masks.iter().find(|m| &m.0 == name);
            let f = ArrayFormatter::try_new(col.as_ref(), &opts).unwrap();
            for r in 0..b.num_rows() {
                let v = f.value(r).to_string();
                let is_raw = raw_values[name].contains(&v);
                match mask.map(|m| m.1.split(' ').next().unwrap_or("")) {
                    None => assert!(is_raw, "{user} {source}.{name}: {v} is not a raw value"),
                    Some("NULL") => assert_eq!(v, "NULL", "{user} {source}.{name}"),
                    Some("ROUND" | "DATE_TRUNC") => {}
                    Some(m) => assert!(
                        v == "NULL" || !is_raw,
                        "{user} {source}.{name}: {m} let raw value {v} through"
                    ),
                }
            }
        }
    }
    if shown_rows.is_empty() {
        assert_eq!(count, *raw_count, "{user} {source}: no row filter shown");
    } else {
        assert!(count <= *raw_count);
    }
    assert_eq!(detail["rows"], count as u64);
}

async fn raws() -> Vec<Raw> {
    let mut out = vec![];
    for (_, path) in SOURCES {
        out.push(raw(path).await);
    }
    out
}

#[tokio::test]
async fn policy_info_agrees_with_queries_for_every_demo_persona() {
    let dir = tempfile::tempdir().unwrap();
    let engine = demo(dir.path(), EngineOptions::default()).await;
    let raws = raws().await;
    for user in ["admin", "alice", "bob", "carol", "dave", "sally", "pam"] {
        for ((source, _), raw) in SOURCES.iter().zip(&raws) {
            agrees(&engine, user, source, raw, None).await;
        }
    }
    // Inside a project: its purposes count, and only its sources exist.
    let mut sally = engine.session("sally");
    for sql in [
        "CREATE PROJECT research",
        "ALTER PROJECT research ADD DATA SOURCE sales.transactions",
        "ALTER PROJECT research ADD DATA SOURCE hr.employees",
        "ALTER PROJECT research ADD MEMBER bob",
        "ALTER PROJECT research ADD PURPOSE 'Research'",
    ] {
        rows(&mut sally, sql).await;
    }
    rows(
        &mut engine.session("pam"),
        "APPROVE PURPOSE 'Research' FOR PROJECT research",
    )
    .await;
    for user in ["sally", "bob"] {
        for ((source, _), raw) in SOURCES.iter().zip(&raws) {
            agrees(&engine, user, source, raw, Some("research")).await;
        }
    }
    let info = rows(
        &mut engine.session("admin"),
        "SHOW POLICY INFO FOR sales.transactions AS USER bob IN PROJECT research",
    )
    .await;
    assert!(
        !info.iter().any(|r| r[1] == "row filter"),
        "Research lifts the region filter: {info:?}"
    );
    let e = common::err(
        &mut engine.session("admin"),
        "SHOW POLICY INFO FOR hr.employees AS USER carol IN PROJECT research",
    )
    .await;
    assert!(
        e.to_string()
            .contains("carol is not a member of project research"),
        "{e}"
    );
}

fn principal() -> impl Strategy<Value = (Vec<&'static str>, Vec<&'static str>, Option<&'static str>)>
{
    (
        prop::sample::subsequence(vec!["hr", "staff", "analysts", "contractors"], 0..=4),
        prop::sample::subsequence(vec!["EU", "US", "APAC"], 0..=3),
        prop::option::of(prop::sample::select(vec!["high", "low"])),
    )
}

fn quoted(v: &[&str]) -> String {
    v.iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn policy_info_agrees_with_queries_for_generated_principals() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (engine, raws) = rt.block_on(async {
        (
            demo(dir.path(), EngineOptions::default()).await,
            raws().await,
        )
    });
    let n = std::sync::atomic::AtomicUsize::new(0);
    proptest!(ProptestConfig::with_cases(24), |((groups, regions, clearance) in principal())| {
        let user = format!("gen{}", n.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let mut attrs = vec![];
        if !regions.is_empty() {
            attrs.push(format!("region = ({})", quoted(&regions)));
        }
        if let Some(c) = clearance {
            attrs.push(format!("clearance = '{c}'"));
        }
        let mut sql = format!("CREATE USER {user}");
        if !groups.is_empty() {
            sql.push_str(&format!(" GROUPS ({})", quoted(&groups)));
        }
        if !attrs.is_empty() {
            sql.push_str(&format!(" ATTRIBUTES ({})", attrs.join(", ")));
        }
        rt.block_on(async {
            rows(&mut engine.session("admin"), &sql).await;
            for ((source, _), raw) in SOURCES.iter().zip(&raws) {
                agrees(&engine, &user, source, raw, None).await;
            }
        });
    });
}
