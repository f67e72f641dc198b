//! Keys: tokens survive a restart, rotation changes them on both sides of a
//! masked join alike, and no key byte ever appears in an EXPLAIN of any
//! form, an error, a debug log line, an audit record or the catalog file.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;

use common::Captured;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use veil_engine::keys::MasterKey;
use veil_engine::{Engine, Session};

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"),
    )
    .join("..")
}

async fn text(s: &mut Session, sql: &str) -> String {
    let batches = match s.execute(sql).await {
        Ok(out) => match out.collect().await {
            Ok(b) => b,
            Err(e) => return e.to_string(),
        },
        Err(e) => return e.to_string(),
    };
    let opts = FormatOptions::default().with_null("NULL");
    let mut out = String::new();
    for b in &batches {
        for c in b.columns() {
            let f = ArrayFormatter::try_new(c.as_ref(), &opts).unwrap();
            for r in 0..b.num_rows() {
                out.push_str(&f.value(r).to_string());
                out.push('\n');
            }
        }
    }
    out
}

async fn run(s: &mut Session, sql: &str) {
    s.execute(sql).await.unwrap().collect().await.unwrap();
}

/// A demo engine in `dir` where card_id is HASHed for analysts on both
/// sides of the transactions-cards join, and project `joins` (masked joins
/// ON) holds both sources with carol as a member.
async fn open(dir: &Path, fresh: bool) -> Arc<Engine> {
    let engine = Engine::open(dir, &root()).unwrap();
    if fresh {
        engine.bootstrap_admin(Some("admin-pw".into())).unwrap();
        veil_engine::statement::load_demo(&engine).await.unwrap();
        let mut admin = engine.session("admin");
        for sql in [
            "ALTER DATA SOURCE sales.transactions TAG COLUMN card_id WITH ('Join.Card')",
            "ALTER DATA SOURCE payments.cards TAG COLUMN card_id WITH ('Join.Card')",
            "CREATE MASKING POLICY card_keys ON COLUMNS TAGGED 'Join.Card' USING HASH FOR has_group('analysts')",
            "CREATE MASKING POLICY email_enc ON hr.employees (email) USING ENCRYPT FOR has_group('analysts')",
        ] {
            run(&mut admin, sql).await;
        }
        let mut sally = engine.session("sally");
        for sql in [
            "CREATE PROJECT joins",
            "ALTER PROJECT joins ADD DATA SOURCE sales.transactions",
            "ALTER PROJECT joins ADD DATA SOURCE payments.cards",
            "ALTER PROJECT joins ADD DATA SOURCE hr.employees",
            "ALTER PROJECT joins ADD MEMBER carol",
            "ALTER PROJECT joins SET MASKED JOINS ON",
        ] {
            run(&mut sally, sql).await;
        }
    }
    engine
}

const TOKENS: &str = "SELECT card_id FROM payments.cards ORDER BY card_id LIMIT 5";
const JOIN: &str =
    "SELECT count(*) FROM sales.transactions t JOIN payments.cards c ON t.card_id = c.card_id";

#[tokio::test]
async fn tokens_survive_restart_and_rotation_changes_both_sides_alike() {
    let dir = tempfile::tempdir().unwrap();
    let (inside, outside) = {
        let engine = open(dir.path(), true).await;
        let mut carol = engine.session("carol");
        let outside = text(&mut carol, TOKENS).await;
        carol.use_project(Some("joins")).unwrap();
        (text(&mut carol, TOKENS).await, outside)
    };
    assert_ne!(inside, outside, "project key differs from the column key");
    let engine = open(dir.path(), false).await;
    let mut carol = engine.session("carol");
    assert_eq!(text(&mut carol, TOKENS).await, outside, "after restart");
    carol.use_project(Some("joins")).unwrap();
    assert_eq!(text(&mut carol, TOKENS).await, inside, "after restart");
    assert_eq!(text(&mut carol, JOIN).await, "1007\n");
    // Decryption is not a SQL function, for anyone.
    for user in ["carol", "admin"] {
        let e = text(
            &mut engine.session(user),
            "SELECT veil_decrypt(email) FROM hr.employees",
        )
        .await;
        assert!(e.contains("Invalid function 'veil_decrypt'"), "{e}");
    }

    run(
        &mut engine.session("sally"),
        "ROTATE KEYS FOR PROJECT joins",
    )
    .await;
    let rotated = text(&mut carol, TOKENS).await;
    assert_ne!(rotated, inside, "tokens follow the project key version");
    assert_eq!(text(&mut carol, JOIN).await, "1007\n", "both sides rotated");

    run(&mut engine.session("admin"), "ROTATE KEYS").await;
    carol.use_project(None).unwrap();
    assert_ne!(
        text(&mut carol, TOKENS).await,
        outside,
        "column keys rotated"
    );
    assert_eq!(text(&mut carol, JOIN).await, "0\n");
    // The audit records the rotations, by version only.
    let audit = engine.store().audit_records(&Default::default()).unwrap();
    let rotations: Vec<_> = audit
        .iter()
        .filter(|r| r.entry.action == "RotateKeys")
        .map(|r| (r.entry.object.clone(), r.entry.detail.clone()))
        .collect();
    assert_eq!(
        rotations,
        vec![
            (
                "joins".to_string(),
                r#"{"project":"joins","version":2}"#.to_string()
            ),
            ("column keys".to_string(), r#"{"version":2}"#.to_string()),
        ]
    );
}

#[tokio::test]
async fn two_projects_never_share_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), true).await;
    let mut sally = engine.session("sally");
    for sql in [
        "CREATE PROJECT joins2",
        "ALTER PROJECT joins2 ADD DATA SOURCE payments.cards",
        "ALTER PROJECT joins2 ADD MEMBER carol",
        "ALTER PROJECT joins2 SET MASKED JOINS ON",
    ] {
        run(&mut sally, sql).await;
    }
    let all = "SELECT card_id FROM payments.cards";
    let mut carol = engine.session("carol");
    carol.use_project(Some("joins")).unwrap();
    let a: std::collections::BTreeSet<String> = text(&mut carol, all)
        .await
        .lines()
        .map(String::from)
        .collect();
    carol.use_project(Some("joins2")).unwrap();
    let b: std::collections::BTreeSet<String> = text(&mut carol, all)
        .await
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(a.len(), 1000);
    assert_eq!(b.len(), 1000);
    assert!(a.is_disjoint(&b), "tokens of two projects intersect");
    // From inside one project, another project's catalog does not exist,
    // nor does `veil`.
    for other in ["joins.payments.cards", "veil.payments.cards"] {
        let e = text(&mut carol, &format!("SELECT count(*) FROM {other}")).await;
        assert!(e.contains("not found"), "{other}: {e}");
    }
}

/// Every encoding of a secret a leak could use.
fn encodings(bytes: &[u8]) -> Vec<String> {
    vec![
        hex::encode(bytes),
        hex::encode_upper(bytes),
        STANDARD.encode(bytes),
        STANDARD_NO_PAD.encode(bytes),
        URL_SAFE.encode(bytes),
        URL_SAFE_NO_PAD.encode(bytes),
        format!("{bytes:?}"),
    ]
}

#[tokio::test]
async fn no_key_byte_in_explain_errors_logs_audit_or_catalog() {
    let logs = Captured::default();
    let sink = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .try_init()
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), true).await;
    let mut seen = String::new();
    for (user, project) in [("carol", None), ("carol", Some("joins")), ("bob", None)] {
        let mut s = engine.session(user);
        s.use_project(project).unwrap();
        for sql in [
            JOIN,
            "EXPLAIN SELECT * FROM hr.employees e JOIN payments.cards c ON e.employee_id = c.employee_id",
            "EXPLAIN VERBOSE SELECT email, card_id FROM hr.employees, payments.cards WHERE email = 'x'",
            "EXPLAIN ANALYZE SELECT count(DISTINCT card_id) FROM sales.transactions",
            "EXPLAIN FORMAT TREE SELECT email FROM hr.employees",
            "EXPLAIN FORMAT PGJSON SELECT email FROM hr.employees",
            "EXPLAIN FORMAT GRAPHVIZ SELECT card_id FROM payments.cards",
            "SELECT email + 1 FROM hr.employees",
            "SELECT CAST(email AS INT) FROM hr.employees",
            "SELECT card_id / 0 FROM payments.cards",
            "SELECT veil_decrypt(email) FROM hr.employees",
            "SELECT * FROM hr.nope",
            "SHOW POLICY INFO FOR hr.employees",
            "CREATE MASKING POLICY bad ON hr.employees (salary) USING HASH UNLESS nope()",
        ] {
            seen.push_str(&text(&mut s, sql).await);
        }
    }
    let mut haystacks: Vec<(&str, Vec<u8>)> =
        vec![("results, plans and errors", seen.into_bytes())];
    let audit: String = engine
        .store()
        .audit_records(&Default::default())
        .unwrap()
        .iter()
        .map(|r| format!("{:?}\n", r.entry))
        .collect();
    haystacks.push(("audit", audit.into_bytes()));
    haystacks.push(("logs", logs.0.lock().unwrap().clone()));
    for f in ["catalog.sqlite", "catalog.sqlite-wal"] {
        if let Ok(bytes) = std::fs::read(dir.path().join(f)) {
            haystacks.push((f, bytes));
        }
    }
    assert!(
        String::from_utf8_lossy(&haystacks[2].1).contains("Optimized"),
        "debug logs were captured"
    );

    let master_hex = std::fs::read_to_string(dir.path().join("keys/master.key")).unwrap();
    let master: [u8; 32] = hex::decode(master_hex.trim()).unwrap().try_into().unwrap();
    let m = MasterKey::from_bytes(master);
    let snapshot = engine.snapshot().unwrap();
    let project = &snapshot.projects["joins"];
    let mut secrets: Vec<(String, [u8; 32])> = vec![
        ("master".into(), master),
        ("signing".into(), m.signing_key()),
        ("audit".into(), m.audit_key()),
        (
            "project joins v1".into(),
            m.derive(&format!("veil/mask/project:{}/v1", project.id)),
        ),
    ];
    for col in [
        "sales.transactions.card_id",
        "payments.cards.card_id",
        "hr.employees.email",
        "hr.employees.name",
    ] {
        secrets.push((col.into(), m.derive(&format!("veil/mask/col:{col}/v1"))));
    }
    for (name, secret) in &secrets {
        for (place, hay) in &haystacks {
            let hay_text = String::from_utf8_lossy(hay);
            for enc in encodings(secret) {
                assert!(!hay_text.contains(&enc), "{name} key found in {place}");
            }
            assert!(
                !hay.windows(32).any(|w| w == secret),
                "{name} key bytes found in {place}"
            );
        }
    }
}

/// Inside a masked-joins project a join on two equal HASH (or ENCRYPT) masks
/// compares raw keys (engine/src/governance/raw_keys.rs): every shape of
/// join returns what the token join returns, the keys that come out are
/// tokens, and the raw key columns never reach a result or an EXPLAIN line
/// outside the join. Where the keys differ (outside the project), the join
/// still compares tokens and matches nothing.
#[tokio::test]
async fn a_masked_join_compares_raw_keys_and_returns_only_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), true).await;
    let mut carol = engine.session("carol");
    const RAW: &str = "__veil_raw_key_";

    // Outside the project the two columns have their own keys.
    let plan = text(&mut carol, &format!("EXPLAIN {JOIN}")).await;
    assert!(
        !plan.contains(RAW),
        "different keys must compare tokens:\n{plan}"
    );
    assert_eq!(text(&mut carol, JOIN).await, "0\n");

    carol.use_project(Some("joins")).unwrap();
    let plan = text(&mut carol, &format!("EXPLAIN {JOIN}")).await;
    assert!(
        plan.contains(RAW),
        "the project key join compares raw keys:\n{plan}"
    );

    // Each shape, against the same join forced onto tokens (a key that is
    // an expression is left alone): the same answer.
    let t = "sales.transactions t";
    let c = "payments.cards c";
    for (shape, raw_join, token_join) in [
        (
            "inner",
            format!("SELECT count(*), sum(t.amount) FROM {t} JOIN {c} ON t.card_id = c.card_id"),
            format!("SELECT count(*), sum(t.amount) FROM {t} JOIN {c} ON t.card_id + 0 = c.card_id + 0"),
        ),
        (
            "implicit, through a subquery alias",
            format!("SELECT count(*) FROM (SELECT card_id AS k, region FROM sales.transactions) t, {c} WHERE t.k = c.card_id AND t.region = 'EU'"),
            format!("SELECT count(*) FROM (SELECT card_id AS k, region FROM sales.transactions) t, {c} WHERE t.k + 0 = c.card_id + 0 AND t.region = 'EU'"),
        ),
        (
            "left, with a filter between",
            format!("SELECT count(*), count(c.card_id) FROM {c} LEFT JOIN (SELECT * FROM sales.transactions WHERE merchant <> 'x') t ON t.card_id = c.card_id"),
            format!("SELECT count(*), count(c.card_id) FROM {c} LEFT JOIN (SELECT * FROM sales.transactions WHERE merchant <> 'x') t ON t.card_id + 0 = c.card_id + 0"),
        ),
        (
            "semi",
            "SELECT count(*) FROM payments.cards WHERE card_id IN (SELECT card_id FROM sales.transactions)".to_string(),
            "SELECT count(*) FROM payments.cards WHERE card_id + 0 IN (SELECT card_id + 0 FROM sales.transactions)".to_string(),
        ),
        (
            "anti",
            "SELECT count(*) FROM payments.cards WHERE card_id NOT IN (SELECT card_id FROM sales.transactions)".to_string(),
            "SELECT count(*) FROM payments.cards WHERE card_id + 0 NOT IN (SELECT card_id + 0 FROM sales.transactions)".to_string(),
        ),
        (
            "three-way",
            format!("SELECT count(*) FROM {t} JOIN {c} ON t.card_id = c.card_id JOIN payments.cards c2 ON c2.card_id = t.card_id"),
            format!("SELECT count(*) FROM {t} JOIN {c} ON t.card_id + 0 = c.card_id + 0 JOIN payments.cards c2 ON c2.card_id + 0 = t.card_id + 0"),
        ),
        (
            "ENCRYPT, strings",
            "SELECT count(*) FROM hr.employees a JOIN hr.employees b ON a.email = b.email".to_string(),
            "SELECT count(*) FROM hr.employees a JOIN hr.employees b ON concat(a.email, '') = concat(b.email, '')".to_string(),
        ),
    ] {
        let plan = text(&mut carol, &format!("EXPLAIN {raw_join}")).await;
        assert!(plan.contains(RAW), "{shape}: not rewritten:\n{plan}");
        let plan = text(&mut carol, &format!("EXPLAIN {token_join}")).await;
        assert!(!plan.contains(RAW), "{shape}: control rewritten:\n{plan}");
        let got = text(&mut carol, &raw_join).await;
        assert_eq!(got, text(&mut carol, &token_join).await, "{shape}");
        assert!(!got.starts_with("0\n") && !got.contains("rror"), "{shape}: {got}");
    }

    // What comes out is tokens, never the raw 1..=1000 card ids, and no
    // raw key column is part of any result.
    let tokens: std::collections::BTreeSet<String> =
        text(&mut carol, "SELECT card_id FROM payments.cards")
            .await
            .lines()
            .map(String::from)
            .collect();
    for sql in [
        format!("SELECT t.card_id, c.card_id FROM {t} JOIN {c} ON t.card_id = c.card_id"),
        format!("SELECT card_id FROM {t} JOIN {c} USING (card_id)"),
        format!("SELECT * FROM {t} JOIN {c} ON t.card_id = c.card_id"),
    ] {
        let out = carol.execute(&sql).await.unwrap().collect().await.unwrap();
        let names: Vec<String> = out[0]
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert!(!names.iter().any(|n| n.contains(RAW)), "{sql}: {names:?}");
        let keys = text(
            &mut carol,
            &sql.replace("SELECT *", "SELECT t.card_id, c.card_id"),
        )
        .await;
        assert!(!keys.is_empty());
        for k in keys.lines() {
            assert!(tokens.contains(k), "{sql}: {k} is not a token");
            assert!(
                k.parse::<i64>().map_or(true, |v| !(1..=1000).contains(&v)),
                "{sql}: raw {k}"
            );
        }
    }
    // SQL cannot name a raw key column: names resolve before it exists.
    let e = text(
        &mut carol,
        &format!("SELECT t.{RAW}0 FROM {t} JOIN {c} ON t.card_id = c.card_id"),
    )
    .await;
    assert!(e.contains("No field named"), "{e}");
    // The raw card ids 1..=1000 span less than 1,024 values, so DataFusion
    // joins them through a direct-indexed array; whether it did would tell
    // how far apart the raw values are.
    for explain in ["EXPLAIN ANALYZE", "EXPLAIN ANALYZE VERBOSE"] {
        let analyzed = text(&mut carol, &format!("{explain} {JOIN}")).await;
        assert!(analyzed.contains("HashJoinExec"), "{analyzed}");
        assert!(!analyzed.contains("DynamicFilter"), "{analyzed}");
        assert!(!analyzed.contains("array_map"), "{analyzed}");
        assert_no_byte_metrics(&analyzed);
    }
}

/// EXPLAIN ANALYZE shows row counts and timings, never byte or memory
/// metrics: the build side of a raw-key join or a raw-key partial
/// aggregate holds raw values, and their size would show.
fn assert_no_byte_metrics(analyzed: &str) {
    assert!(analyzed.contains("output_rows="), "{analyzed}");
    assert!(analyzed.contains("elapsed_compute="), "{analyzed}");
    for metric in ["mem_used", "bytes", "memory"] {
        assert!(!analyzed.contains(metric), "{metric}: {analyzed}");
    }
}

/// A partitioned hash join sends each row to `hash(key) % n` with public
/// hash seeds, and each partition's rows come out together: on raw keys
/// that would let a user read bits of a hash of the raw value off the
/// batches. Joins on raw keys therefore run as CollectLeft, where the same
/// join on tokens (tables too big to collect) is partitioned.
#[tokio::test]
async fn raw_key_joins_never_partition_on_the_raw_key() {
    use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch};
    const ROWS: i64 = 300_000;
    let dir = tempfile::tempdir().unwrap();
    for (name, step) in [("a", 1), ("b", 2)] {
        let keys: ArrayRef = Arc::new(Int64Array::from_iter_values((0..ROWS).map(|i| i * step)));
        let vals: ArrayRef = Arc::new(Int64Array::from_iter_values(0..ROWS));
        let batch = RecordBatch::try_from_iter([("k", keys), ("v", vals)]).unwrap();
        common::write_parquet(&dir.path().join(format!("{name}.parquet")), &batch);
    }
    let engine = Engine::open(dir.path(), &root()).unwrap();
    engine.bootstrap_admin(Some("admin-pw".into())).unwrap();
    veil_engine::statement::load_demo(&engine).await.unwrap();
    let mut admin = engine.session("admin");
    for name in ["a", "b"] {
        let path = dir.path().join(format!("{name}.parquet"));
        for sql in [
            format!(
                "CREATE DATA SOURCE big.{name} FROM PARQUET '{}'",
                path.display()
            ),
            format!("ALTER DATA SOURCE big.{name} SET SUBSCRIPTION ANYONE"),
            format!("ALTER DATA SOURCE big.{name} TAG COLUMN k WITH ('Key.Big')"),
        ] {
            run(&mut admin, &sql).await;
        }
    }
    run(
        &mut admin,
        "CREATE MASKING POLICY big_keys ON COLUMNS TAGGED 'Key.Big' USING HASH",
    )
    .await;
    let mut sally = engine.session("sally");
    for sql in [
        "CREATE PROJECT big",
        "ALTER PROJECT big ADD DATA SOURCE big.a",
        "ALTER PROJECT big ADD DATA SOURCE big.b",
        "ALTER PROJECT big SET MASKED JOINS ON",
        "USE PROJECT big",
        "SET datafusion.execution.target_partitions = 4",
    ] {
        run(&mut sally, sql).await;
    }
    let raw = "SELECT count(*), sum(a.v) FROM big.a a JOIN big.b b ON a.k = b.k";
    let tokens = "SELECT count(*), sum(a.v) FROM big.a a JOIN big.b b ON a.k + 0 = b.k + 0";
    let plan = text(&mut sally, &format!("EXPLAIN {tokens}")).await;
    assert!(plan.contains("mode=Partitioned"), "control:\n{plan}");
    let plan = text(&mut sally, &format!("EXPLAIN {raw}")).await;
    assert!(plan.contains("__veil_raw_key_"), "{plan}");
    assert!(plan.contains("mode=CollectLeft"), "{plan}");
    assert!(!plan.contains("Hash([__veil_raw_key"), "{plan}");
    let got = text(&mut sally, raw).await;
    assert_eq!(got, text(&mut sally, tokens).await);
    assert_eq!(
        got,
        format!("{}\n{}\n", ROWS / 2, (0..ROWS).step_by(2).sum::<i64>())
    );
}

/// A source for the GROUP BY tests: a 3-value string column with NULLs
/// (HASH), a 5-value integer (HASH), a 4-value string (ENCRYPT), a 4-value
/// string (SHOW_LAST 2, not injective: "xa1"/"ya1" share a value) and an
/// amount, 100,000 rows over many batches. Returns bob's session.
async fn grouping_source(dir: &Path) -> (Arc<Engine>, Session) {
    use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    let n = 100_000usize;
    let region: ArrayRef = Arc::new(StringArray::from_iter(
        (0..n).map(|i| (i % 11 != 0).then_some(["EU", "US", "APAC"][i % 3])),
    ));
    let tier: ArrayRef = Arc::new(Int64Array::from_iter_values((0..n as i64).map(|i| i % 5)));
    let code: ArrayRef = Arc::new(StringArray::from_iter_values(
        (0..n).map(|i| ["alpha", "beta", "gamma", "delta"][i % 4]),
    ));
    let tail: ArrayRef = Arc::new(StringArray::from_iter_values(
        (0..n).map(|i| ["xa1", "ya1", "xb2", "yb2"][i % 4]),
    ));
    let amount: ArrayRef = Arc::new(Int64Array::from_iter_values(
        (0..n as i64).map(|i| i % 1000),
    ));
    let batch = RecordBatch::try_from_iter([
        ("region", region),
        ("tier", tier),
        ("code", code),
        ("tail", tail),
        ("amount", amount),
    ])
    .unwrap();
    let path = dir.join("groups.parquet");
    common::write_parquet(&path, &batch);
    let engine = open(dir, true).await;
    let mut admin = engine.session("admin");
    for sql in [
        format!("CREATE DATA SOURCE g.s FROM PARQUET '{}'", path.display()),
        "ALTER DATA SOURCE g.s SET SUBSCRIPTION ANYONE".into(),
        "CREATE MASKING POLICY g_region ON g.s (region) USING HASH".into(),
        "CREATE MASKING POLICY g_tier ON g.s (tier) USING HASH".into(),
        "CREATE MASKING POLICY g_code ON g.s (code) USING ENCRYPT".into(),
        "CREATE MASKING POLICY g_tail ON g.s (tail) USING SHOW_LAST 2".into(),
    ] {
        run(&mut admin, &sql).await;
    }
    let bob = engine.session("bob");
    (engine, bob)
}

/// Line numbers (in EXPLAIN's physical plan, top down) of the first line
/// containing `needle`.
fn line_of(plan: &str, needle: &str) -> Option<usize> {
    plan.lines().position(|l| l.contains(needle))
}

#[tokio::test]
async fn a_masked_group_by_groups_raw_values_and_returns_only_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (_engine, mut bob) = grouping_source(dir.path()).await;

    // What bob sees row by row, grouped here: the expected groups.
    let all = common::rows(&mut bob, "SELECT region, tier, code, tail, amount FROM g.s").await;
    assert_eq!(all.len(), 100_000);
    let expect = |key: &dyn Fn(&Vec<String>) -> String| {
        let mut groups: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
        for row in &all {
            let g = groups.entry(key(row)).or_default();
            g.0 += 1;
            g.1 += row[4].parse::<i64>().unwrap();
        }
        groups
            .into_iter()
            .map(|(k, (count, sum))| format!("{k} {count} {sum}"))
            .collect::<Vec<_>>()
    };
    let sorted = |rows: Vec<Vec<String>>| {
        let mut lines: Vec<String> = rows.into_iter().map(|r| r.join(" ")).collect();
        lines.sort();
        lines
    };
    for (c, name, groups) in [
        (0, "region", 4),
        (1, "tier", 5),
        (2, "code", 4),
        (3, "tail", 2),
    ] {
        let expected = expect(&|r| r[c].clone());
        assert_eq!(expected.len(), groups, "{name}: {expected:?}");
        for partitions in [1, 4] {
            run(
                &mut bob,
                &format!("SET datafusion.execution.target_partitions = {partitions}"),
            )
            .await;
            let sql = format!("SELECT {name}, count(*), sum(amount) FROM g.s GROUP BY {name}");
            let got = sorted(common::rows(&mut bob, &sql).await);
            assert_eq!(got, expected, "{name}, {partitions} partitions");
            let plan = text(&mut bob, &format!("EXPLAIN {sql}")).await;
            // The partial aggregate groups the raw column and its keys are
            // masked right above it; nothing else groups raw values.
            let raw = plan.contains(&format!("mode=Partial, gby=[{name}@"))
                && matches!(
                    (line_of(&plan, &format!("@0) as {name}, count")), line_of(&plan, "mode=Partial")),
                    (Some(mask), Some(partial)) if mask < partial
                );
            // Injective masks group raw values; SHOW_LAST keeps its tokens.
            assert_eq!(raw, name != "tail", "{name}, {partitions}:\n{plan}");
            if raw {
                // Split, never Single (which may spill runs sorted by key),
                // and repartitioned by tokens, never by the raw values.
                assert!(!plan.contains("mode=Single"), "{plan}");
                assert!(plan.contains("mode=Final"), "{plan}");
                if let Some(hash) = line_of(&plan, "partitioning=Hash(") {
                    assert!(Some(hash) < line_of(&plan, &format!("@0) as {name}, count")));
                }
                assert_eq!(
                    partitions > 1,
                    plan.contains("partitioning=Hash("),
                    "{plan}"
                );
            }
        }
    }
    for explain in ["EXPLAIN ANALYZE", "EXPLAIN ANALYZE VERBOSE"] {
        let analyzed = text(
            &mut bob,
            &format!("{explain} SELECT region, count(*) FROM g.s GROUP BY region"),
        )
        .await;
        assert!(analyzed.contains("mode=Partial"), "{analyzed}");
        assert_no_byte_metrics(&analyzed);
    }

    // Two keys at once: the same pairs as row by row.
    let expected = expect(&|r| format!("{} {}", r[0], r[2]))
        .into_iter()
        .map(|l| l.rsplitn(3, ' ').last().unwrap().to_string())
        .collect::<Vec<_>>();
    let got = sorted(
        common::rows(
            &mut bob,
            "SELECT region, code FROM g.s GROUP BY region, code",
        )
        .await,
    );
    assert_eq!(got, expected);
    assert_eq!(got.len(), 16);

    // No raw value comes out of any shape that reads the grouped column.
    for sql in [
        "SELECT region, code, count(*) FROM g.s GROUP BY region, code",
        "SELECT DISTINCT region FROM g.s",
        "SELECT region, count(*) FROM g.s GROUP BY region HAVING count(*) > 10",
        "SELECT region, min(region), max(code) FROM g.s GROUP BY region",
        "SELECT count(DISTINCT region), count(DISTINCT code) FROM g.s",
        "SELECT region FROM g.s GROUP BY region ORDER BY region LIMIT 2",
        "SELECT region, tier, sum(amount) FROM g.s GROUP BY ROLLUP(region, tier)",
    ] {
        let out = text(&mut bob, sql).await;
        for raw in ["EU", "APAC", "alpha", "gamma", "xa1"] {
            // A value is one line. Tokens are random (random keys), and a
            // short raw value turns up inside one by chance ("EU" in about
            // one run in six), so short ones are compared whole.
            let leaked = if raw.len() >= 4 {
                out.contains(raw)
            } else {
                out.lines().any(|l| l.trim() == raw)
            };
            assert!(!leaked, "{sql}: {raw} in {out}");
        }
        assert!(!out.contains("rror"), "{sql}: {out}");
    }
}
