//! In-process governed behaviour over the demo catalog and real Parquet.

use crate::common;
use crate::common::cells as rows;

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use veil_engine::{Engine, ErrorKind, Session};

async fn demo() -> (tempfile::TempDir, Arc<Engine>) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), &common::root()).unwrap();
    engine.bootstrap_admin(Some("admin-pw".into())).unwrap();
    veil_engine::statement::load_demo(&engine).await.unwrap();
    (dir, engine)
}

/// The text of `what` (`EXPLAIN` or `EXPLAIN ANALYZE`) of `sql`.
async fn explain(s: &mut Session, what: &str, sql: &str) -> String {
    q(s, &format!("{what} {sql}")).await.concat().join("\n")
}

async fn q(s: &mut Session, sql: &str) -> Vec<Vec<String>> {
    let out = s
        .execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows(&out.collect().await.unwrap_or_else(|e| panic!("{sql}: {e}")))
}

async fn err(s: &mut Session, sql: &str) -> veil_engine::VeilError {
    match s.execute(sql).await {
        Err(e) => e,
        Ok(out) => match out.collect().await {
            Err(e) => e,
            Ok(b) => panic!("{sql} should fail, got {:?}", rows(&b)),
        },
    }
}

/// A plan that only passes columns on reads classic strings
/// (`classic_strings.rs`) only where no policy applies: alice's
/// `SELECT *` arrives as `Utf8`, while bob's, under a governed scan, still
/// has every mask and row filter applied.
#[tokio::test]
async fn pass_through_strings_never_skip_a_policy() {
    use datafusion::arrow::datatypes::DataType;
    let (_d, engine) = demo().await;
    let mut alice = engine.session("alice");
    let mut bob = engine.session("bob");
    let sql = "SELECT * FROM hr.employees";
    let out = alice.execute(sql).await.unwrap();
    let email = out.schema.index_of("email").unwrap();
    assert_eq!(*out.schema.field(email).data_type(), DataType::Utf8);
    let raw = rows(&out.collect().await.unwrap());
    assert_eq!(raw.len(), 1000);
    assert!(raw.iter().all(|r| r[email].ends_with("@example.com")));

    let out = bob.execute(sql).await.unwrap();
    let (ssn, region) = (
        out.schema.index_of("ssn").unwrap(),
        out.schema.index_of("region").unwrap(),
    );
    let masked = rows(&out.collect().await.unwrap());
    let us = q(
        &mut alice,
        "SELECT count(*) FROM hr.employees WHERE region = 'US'",
    )
    .await;
    assert_eq!(masked.len().to_string(), us[0][0]);
    for r in &masked {
        assert_eq!(r[ssn], "NULL");
        assert_eq!(r[email].len(), 32, "{r:?}");
        assert!(r[email].chars().all(|c| c.is_ascii_hexdigit()), "{r:?}");
        assert_eq!(r[region], "US");
    }
    let limited = q(&mut bob, "SELECT email FROM hr.employees LIMIT 3").await;
    assert!(limited.iter().all(|r| !r[0].contains('@')), "{limited:?}");
}

#[tokio::test]
async fn two_users_see_different_masked_and_filtered_rows() {
    let (_d, engine) = demo().await;
    let mut alice = engine.session("alice");
    let mut bob = engine.session("bob");
    let sql = "SELECT ssn, email, salary, region FROM hr.employees ORDER BY employee_id LIMIT 3";
    let a = q(&mut alice, sql).await;
    let b = q(&mut bob, sql).await;
    // alice (hr): raw values, every region.
    assert!(
        a[0][0].len() == 11 && a[0][0].as_bytes()[3] == b'-',
        "{a:?}"
    );
    assert!(a[0][1].ends_with("@example.com"));
    // bob: ssn NULL, email a 32-hex token, salary rounded, only US rows.
    for r in &b {
        assert_eq!(r[0], "NULL");
        assert_eq!(r[1].len(), 32);
        assert!(r[1].chars().all(|c| c.is_ascii_hexdigit()));
        assert!(r[2].parse::<i64>().unwrap() % 10000 == 0);
        assert_eq!(r[3], "US");
    }
    let all = q(&mut alice, "SELECT count(*) FROM hr.employees").await;
    let us = q(&mut bob, "SELECT count(*) FROM hr.employees").await;
    let us_raw = q(
        &mut alice,
        "SELECT count(*) FROM hr.employees WHERE region = 'US'",
    )
    .await;
    assert_eq!(all[0][0], "1000");
    assert_eq!(us, us_raw);
}

#[tokio::test]
async fn unsubscribed_source_is_denied_and_invisible() {
    let (_d, engine) = demo().await;
    let mut dave = engine.session("dave");
    let e = err(&mut dave, "SELECT * FROM hr.employees").await;
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(
        e.to_string()
            .contains("dave is not subscribed to hr.employees"),
        "{e}"
    );
    let tables = q(&mut dave, "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema <> 'information_schema'").await;
    assert_eq!(
        tables,
        vec![vec!["sales".to_string(), "transactions".to_string()]]
    );
    let show = q(&mut dave, "SHOW TABLES").await;
    assert!(!show.iter().flatten().any(|c| c == "employees"), "{show:?}");
}

#[tokio::test]
async fn masked_values_never_reach_predicates_joins_or_groups() {
    let (_d, engine) = demo().await;
    let mut alice = engine.session("alice");
    let mut bob = engine.session("bob");
    let ssn = q(
        &mut alice,
        "SELECT ssn FROM hr.employees WHERE region = 'US' ORDER BY employee_id LIMIT 1",
    )
    .await[0][0]
        .clone();
    // A filter on the raw value finds nothing: the filter sees the mask.
    for sql in [
        format!("SELECT count(*) FROM hr.employees WHERE ssn = '{ssn}'"),
        format!("SELECT count(*) FROM hr.employees WHERE ssn LIKE '{}%'", &ssn[..3]),
        format!("SELECT count(*) FROM (SELECT * FROM hr.employees) t WHERE t.ssn = '{ssn}'"),
        format!("WITH e AS (SELECT ssn FROM hr.employees) SELECT count(*) FROM e WHERE ssn IN ('{ssn}')"),
        format!("SELECT count(*) FROM sales.transactions t WHERE EXISTS (SELECT 1 FROM hr.employees e WHERE e.ssn = '{ssn}')"),
    ] {
        assert_eq!(q(&mut bob, &sql).await, vec![vec!["0".to_string()]], "{sql}");
    }
    // A LIKE of several segments (matched by substring search,
    // like_segments.rs) sees the mask too: raw emails hold '@' and '.',
    // bob's HASH tokens neither.
    let emails = "SELECT count(*) > 0 FROM hr.employees WHERE email LIKE '%@%.%'";
    assert_eq!(q(&mut alice, emails).await, vec![vec!["true".to_string()]]);
    assert_eq!(q(&mut bob, emails).await, vec![vec!["false".to_string()]]);
    let plan = explain(&mut bob, "EXPLAIN", emails).await;
    assert!(plan.contains("LIKE %@%.%"), "{plan}");
    // GROUP BY / DISTINCT on a masked column see only tokens or NULLs.
    let groups = q(&mut bob, "SELECT DISTINCT ssn FROM hr.employees").await;
    assert_eq!(groups, vec![vec!["NULL".to_string()]]);
    // Window functions and ORDER BY see the token.
    let w = q(
        &mut bob,
        "SELECT email, row_number() OVER (ORDER BY email) FROM hr.employees ORDER BY email LIMIT 1",
    )
    .await;
    assert_eq!(w[0][0].len(), 32);
    // Masked keys of two tables never join.
    let j = q(
        &mut bob,
        "SELECT count(*) FROM hr.employees a JOIN hr.employees b ON a.email = b.email",
    )
    .await;
    let n = q(&mut bob, "SELECT count(*) FROM hr.employees").await;
    assert_eq!(j, n, "self-join on a token is one-to-one");
    // An IN on the join key is moved below the join (semi_join.rs) and
    // still compares tokens (equal HASH masks compare as raw keys, as a
    // join on them does): a raw value matches nothing, tokens match all.
    let email = q(
        &mut alice,
        "SELECT email FROM hr.employees WHERE region = 'US' ORDER BY employee_id LIMIT 1",
    )
    .await[0][0]
        .clone();
    let join = "SELECT count(*) FROM hr.employees a JOIN hr.employees b ON a.email = b.email";
    let raw = format!("{join} WHERE a.email IN (SELECT v FROM (VALUES ('{email}')) t(v))");
    assert_eq!(q(&mut bob, &raw).await, vec![vec!["0".to_string()]]);
    let tokens = format!("{join} WHERE a.email IN (SELECT email FROM hr.employees)");
    assert_eq!(q(&mut bob, &tokens).await, n);
    let plan = explain(&mut bob, "EXPLAIN", &tokens).await;
    let at = |what: &str| {
        let line = plan
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("{what}: {plan}"));
        line.len() - line.trim_start().len()
    };
    assert!(at("LeftSemi Join") > at("Inner Join"), "{plan}");
    // A filter ANDing a test of a HASHed column with a cheap test that stays
    // above the barrier hashes only the rows the cheap one keeps
    // (costly_conjuncts.rs), and still compares tokens.
    let token = q(
        &mut bob,
        "SELECT email FROM hr.employees ORDER BY employee_id LIMIT 1",
    )
    .await[0][0]
        .clone();
    let mixed = |v: &str| {
        format!("SELECT count(*) FROM hr.employees WHERE email = '{v}' AND employee_id % 7 <> 3")
    };
    assert_eq!(
        q(&mut bob, &mixed(&email)).await,
        vec![vec!["0".to_string()]]
    );
    assert_eq!(
        q(&mut bob, &mixed(&token)).await,
        vec![vec!["1".to_string()]]
    );
    let plan = explain(&mut bob, "EXPLAIN", &mixed(&token)).await;
    assert!(
        plan.contains("FilterExec: CASE WHEN employee_id@") && plan.contains(" THEN veil_hash["),
        "{plan}"
    );
}

#[tokio::test]
async fn row_policy_is_a_barrier_for_failing_predicates() {
    let (_d, engine) = demo().await;
    let mut alice = engine.session("alice");
    let us = q(
        &mut alice,
        "SELECT count(*) FROM hr.employees WHERE region = 'US'",
    )
    .await;
    // Divides by zero on every non-US row, all of which bob's row policy hides.
    let sql = "SELECT count(*) FROM hr.employees \
               WHERE department <> 'x' AND 1 / CASE WHEN region = 'US' THEN 1 ELSE 0 END = 1";
    for pushdown in ["false", "true"] {
        for partitions in ["1", "4"] {
            for batch in ["1", "8192"] {
                let mut bob = engine.session("bob");
                bob.configure("datafusion.execution.parquet.pushdown_filters", pushdown)
                    .unwrap();
                bob.configure("datafusion.execution.parquet.reorder_filters", pushdown)
                    .unwrap();
                bob.configure("datafusion.execution.target_partitions", partitions)
                    .unwrap();
                bob.configure("datafusion.execution.batch_size", batch)
                    .unwrap();
                assert_eq!(
                    q(&mut bob, sql).await,
                    us,
                    "pushdown={pushdown} partitions={partitions} batch={batch}"
                );
                let cast = "SELECT count(*) FROM hr.employees WHERE CAST(CASE WHEN region = 'US' THEN '1' ELSE 'x' END AS INT) = 1";
                assert_eq!(q(&mut bob, cast).await, us);
            }
        }
    }
}

#[tokio::test]
async fn explain_shows_an_opaque_barrier_and_no_raw_values_or_keys() {
    let (_d, engine) = demo().await;
    let mut bob = engine.session("bob");
    for sql in [
        "EXPLAIN SELECT email FROM hr.employees WHERE department = 'hr'",
        "EXPLAIN VERBOSE SELECT email FROM hr.employees WHERE department = 'hr'",
        "EXPLAIN ANALYZE SELECT email FROM hr.employees WHERE department = 'hr'",
    ] {
        let text = q(&mut bob, sql)
            .await
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("\n");
        assert!(text.contains("GovernedScan"), "{sql}\n{text}");
        assert!(!text.contains("@example.com"), "{text}");
        // Neither the derived key bytes nor anything but the handle appears.
        let key = hex::encode(engine.keys().derive("veil/mask/col:hr.employees.email/v1"));
        assert!(!text.to_lowercase().contains(&key), "{text}");
        assert!(
            text.contains("veil_hash[col:hr.employees.email#v1]"),
            "{text}"
        );
        if sql.contains("ANALYZE") {
            assert!(
                !text.contains("DataSourceExec"),
                "physical input must be hidden:\n{text}"
            );
        }
    }
}

#[tokio::test]
async fn catalog_escapes_are_refused() {
    let (_d, engine) = demo().await;
    let mut bob = engine.session("bob");
    for sql in [
        "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '../testdata/hr/employees.parquet'",
        "SELECT * FROM '../testdata/hr/employees.parquet'",
        "COPY (SELECT 1) TO '/tmp/x.parquet'",
        "SET datafusion.execution.parquet.pushdown_filters = true",
        "CREATE TABLE t AS SELECT * FROM hr.employees",
        "DROP TABLE hr.employees",
        "INSERT INTO hr.employees SELECT * FROM hr.employees",
        "CREATE VIEW v AS SELECT * FROM hr.employees",
    ] {
        let e = err(&mut bob, sql).await;
        assert!(
            matches!(
                e.kind(),
                ErrorKind::PermissionDenied | ErrorKind::InvalidArgument | ErrorKind::NotFound
            ),
            "{sql}: {e}"
        );
    }
}

#[tokio::test]
async fn governance_statements_check_rights_and_validate() {
    let (_d, engine) = demo().await;
    let mut bob = engine.session("bob");
    let e = err(&mut bob, "CREATE USER mallory PASSWORD 'x'").await;
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    assert!(
        e.to_string().contains("bob lacks permission USER_ADMIN"),
        "{e}"
    );
    let e = err(&mut bob, "DROP POLICY pii_hash").await;
    assert!(e.to_string().contains("GOVERNANCE"), "{e}");
    let mut admin = engine.session("admin");
    let before = engine.snapshot().unwrap().version;
    for (sql, kind) in [
        (
            "CREATE ROW POLICY bad ON hr.employees USING salary + 1",
            ErrorKind::InvalidArgument,
        ),
        (
            "CREATE ROW POLICY bad ON hr.employees USING nope = 1",
            ErrorKind::InvalidArgument,
        ),
        (
            "CREATE MASKING POLICY bad ON hr.employees (name) USING ROUND 10",
            ErrorKind::InvalidArgument,
        ),
        (
            "CREATE MASKING POLICY bad ON hr.employees (nope) USING HASH",
            ErrorKind::NotFound,
        ),
        (
            "CREATE MASKING POLICY bad ON hr.employees (name) USING REGEX '(' REPLACE 'x'",
            ErrorKind::InvalidArgument,
        ),
        (
            "CREATE DATA SOURCE x.y FROM PARQUET 'testdata/nope.parquet'",
            ErrorKind::InvalidArgument,
        ),
        (
            "CREATE DATA SOURCE x.y FROM PARQUET 'testdata/demo/setup.sql'",
            ErrorKind::InvalidArgument,
        ),
        ("ALTER USER nobody ADD GROUP 'x'", ErrorKind::NotFound),
        ("CREATE USER bob", ErrorKind::AlreadyExists),
        ("DROP POLICY nope", ErrorKind::NotFound),
        ("DROP DATA SOURCE nope.nothing", ErrorKind::NotFound),
        (
            "SHOW POLICY INFO FOR hr.employees AS USER nobody",
            ErrorKind::NotFound,
        ),
        ("GRANT PERMISSION ROOT TO bob", ErrorKind::InvalidArgument),
        (
            "CREATE MASKING POLICY pii_hash ON COLUMNS TAGGED 'X' USING NULL",
            ErrorKind::AlreadyExists,
        ),
    ] {
        let e = err(&mut admin, sql).await;
        assert_eq!(e.kind(), kind, "{sql}: {e}");
    }
    assert_eq!(
        engine.snapshot().unwrap().version,
        before,
        "failed statements change nothing"
    );
}

/// A file that ends like Parquet but whose footer names more metadata than
/// the file holds (this panicked inside parquet's decoder in debug builds)
/// is refused as a source like any unreadable file, and nothing changes.
#[tokio::test]
async fn a_garbage_parquet_footer_is_refused_as_a_source() {
    let (_d, engine) = demo().await;
    let mut admin = engine.session("admin");
    let before = engine.snapshot().unwrap().version;
    let files = tempfile::tempdir().unwrap();
    std::fs::write(
        files.path().join("part-0.parquet"),
        b"PAR1 this is not a parquet file PAR1",
    )
    .unwrap();
    let sql = format!(
        "CREATE DATA SOURCE x.y FROM PARQUET '{}/'",
        files.path().display()
    );
    let e = err(&mut admin, &sql).await;
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("is not readable Parquet"), "{e}");
    assert_eq!(engine.snapshot().unwrap().version, before);
}

/// Bytes damaged inside a file's pages (its footer intact, so the source
/// is created from it): every query over it either answers or fails as
/// that source's unreadable data (FailedPrecondition, no storage path),
/// never as the user's mistake or an internal error. Before, a page that
/// decoded to a bad dictionary index came back as InvalidArgument with
/// parquet's text ("dictionary index out of bounds: the len is 3000 but
/// the index is 3407").
#[tokio::test]
async fn damaged_pages_fail_as_the_sources_unreadable_data() {
    let (_d, engine) = demo().await;
    let mut admin = engine.session("admin");
    let original =
        std::fs::read(common::root().join("testdata/sales/transactions.parquet")).unwrap();
    let files = tempfile::tempdir().unwrap();
    let (mut answered, mut unreadable) = (0, 0);
    let copies = common::damaged_copies(&original, 0x9e37_79b9_7f4a_7c15, 120);
    for (i, (damaged, bytes)) in copies.into_iter().enumerate() {
        let dir = files.path().join(format!("t{i}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("part-0.parquet"), &bytes).unwrap();
        let create = format!(
            "CREATE DATA SOURCE damaged.t{i} FROM PARQUET '{}/'",
            dir.display()
        );
        if let Err(e) = admin.execute(&create).await {
            // Damage to the page index is found at creation.
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{create}: {e}");
            continue;
        }
        q(
            &mut admin,
            &format!("ALTER DATA SOURCE damaged.t{i} SET SUBSCRIPTION ANYONE"),
        )
        .await;
        let mut bob = engine.session("bob");
        for sql in [
            format!("SELECT * FROM damaged.t{i}"),
            format!("SELECT region, sum(amount) FROM damaged.t{i} GROUP BY region"),
        ] {
            let result = match bob.execute(&sql).await {
                Err(e) => Err(e),
                Ok(out) => out.collect().await,
            };
            match result {
                Ok(_) => answered += 1,
                Err(e) => {
                    let what = format!("{sql} (bytes {damaged:?}): {e}");
                    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{what}");
                    assert!(
                        e.to_string().contains(&format!(
                            "failed precondition: data source damaged.t{i} cannot be read:"
                        )),
                        "{what}"
                    );
                    assert!(!e.to_string().contains("part-0"), "{what}");
                    unreadable += 1;
                }
            }
        }
    }
    assert!(
        unreadable >= 10,
        "the damage is found: {unreadable} failed, {answered} answered"
    );
}

/// A one-column, dictionary-encoded, uncompressed Parquet file whose data
/// page says its dictionary indices are 40 bits wide (the first byte of
/// the page's values; at most 32 is valid), and whether parquet's own
/// reader panics on it (parquet 59 asserts, apache/arrow-rs#10722).
fn a_file_that_panics_the_decoder() -> (Vec<u8>, bool) {
    use datafusion::arrow::array::{ArrayRef, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::column::page::Page;
    use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
    let schema = Arc::new(Schema::new(vec![Field::new("city", DataType::Utf8, false)]));
    let cities = ["Oslo", "Lima", "Kyiv", "Pune"];
    let values = StringArray::from_iter_values((0..4096).map(|i| cities[i % 4]));
    let batch = RecordBatch::try_new(schema, vec![Arc::new(values) as ArrayRef]).unwrap();
    let mut bytes = vec![];
    let mut w = ArrowWriter::try_new(&mut bytes, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    // Where the data page's values start: its body, found in the file.
    let reader = SerializedFileReader::new(bytes::Bytes::from(bytes.clone())).unwrap();
    let mut pages = reader
        .get_row_group(0)
        .unwrap()
        .get_column_page_reader(0)
        .unwrap();
    let body = std::iter::from_fn(|| pages.get_next_page().unwrap())
        .find_map(|page| match page {
            Page::DataPage { buf, .. } => Some(buf),
            _ => None,
        })
        .unwrap();
    let at = bytes
        .windows(body.len())
        .position(|w| *w == body[..])
        .unwrap();
    assert_eq!(bytes[at], 2, "four values: indices of two bits");
    bytes[at] = 40;
    let read = bytes::Bytes::from(bytes.clone());
    let panicked = std::panic::catch_unwind(|| {
        let reader = ParquetRecordBatchReaderBuilder::try_new(read)
            .unwrap()
            .build();
        reader.unwrap().for_each(drop);
    })
    .is_err();
    (bytes, panicked)
}

/// Pages on which the Parquet decoder panics rather than failing (parquet
/// 59's assertion on a dictionary index bit width above 32) fail the query
/// as the source's unreadable data, like other damage, read in one
/// partition or spread over several: before, CI met one by chance in a
/// workspace file and the query failed as an internal error ("the
/// statement failed: assertion failed: num_bits <= size_of::<T>() * 8").
#[tokio::test]
async fn pages_that_panic_the_decoder_fail_as_the_sources_unreadable_data() {
    let (bytes, panicked) = a_file_that_panics_the_decoder();
    // When parquet errors instead (parquet 60), the hook is not needed.
    assert!(panicked, "parquet's reader panics on the file");
    let (_d, engine) = demo().await;
    let mut admin = engine.session("admin");
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("part-0.parquet"), &bytes).unwrap();
    let sql = format!(
        "CREATE DATA SOURCE damaged.cities FROM PARQUET '{}/'",
        files.path().display()
    );
    q(&mut admin, &sql).await;
    q(
        &mut admin,
        "ALTER DATA SOURCE damaged.cities SET SUBSCRIPTION ANYONE",
    )
    .await;
    let mut bob = engine.session("bob");
    for sql in [
        "SELECT * FROM damaged.cities",
        // Read by a partition DataFusion spawns (a repartition's input).
        "SELECT city, count(*) FROM damaged.cities GROUP BY city",
    ] {
        let result = match bob.execute(sql).await {
            Err(e) => Err(e),
            Ok(out) => out.collect().await,
        };
        let e = result.expect_err(sql);
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{sql}: {e}");
        let expected = "failed precondition: data source damaged.cities cannot be read:";
        assert!(e.to_string().contains(expected), "{sql}: {e}");
        assert!(!e.to_string().contains("part-0"), "{sql}: {e}");
    }
}

/// A source's directory rewritten with files of other columns (here the
/// employees file under the transactions source): queries that read the
/// columns fail as the source's unreadable data, not as the user's
/// mistake ("Column 'txn_id' is declared as non-nullable but contains
/// null values", InvalidArgument, before).
#[tokio::test]
async fn files_of_another_schema_fail_as_the_sources_unreadable_data() {
    let (_d, engine) = demo().await;
    let mut admin = engine.session("admin");
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("part-0.parquet");
    std::fs::copy(
        common::root().join("testdata/sales/transactions.parquet"),
        &file,
    )
    .unwrap();
    for sql in [
        format!(
            "CREATE DATA SOURCE drift.t FROM PARQUET '{}/'",
            files.path().display()
        ),
        "ALTER DATA SOURCE drift.t SET SUBSCRIPTION ANYONE".to_string(),
    ] {
        q(&mut admin, &sql).await;
    }
    let mut bob = engine.session("bob");
    let before = q(&mut bob, "SELECT count(*) FROM drift.t WHERE txn_id > 0").await;
    assert_ne!(before, vec![vec!["0".to_string()]]);

    std::fs::copy(common::root().join("testdata/hr/employees.parquet"), &file).unwrap();
    tokio::time::sleep(veil_engine::engine::LISTING_TTL + std::time::Duration::from_millis(200))
        .await;
    for sql in [
        "SELECT * FROM drift.t",
        "SELECT region, sum(amount) FROM drift.t GROUP BY region",
        "SELECT count(*) FROM drift.t WHERE txn_id > 0",
    ] {
        let e = err(&mut bob, sql).await;
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{sql}: {e}");
        assert!(
            e.to_string()
                .contains("failed precondition: data source drift.t cannot be read:"),
            "{sql}: {e}"
        );
        assert!(!e.to_string().contains("part-0"), "{sql}: {e}");
    }
}

/// A file whose column changed type (`badge` written as strings where the
/// source holds integers) fails as the source's unreadable data, not with
/// arrow's cast error, which quoted the raw value it could not parse: a
/// masked column's value, or one of a row the user may not see.
#[tokio::test]
async fn a_column_rewritten_as_strings_quotes_none_of_them() {
    use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
    let (_d, engine) = demo().await;
    let dir = tempfile::tempdir().unwrap();
    people_source(
        &engine,
        dir.path(),
        "drifted",
        &[(1, "EU", 10, 7), (2, "US", 20, 8)],
        "region = 'EU'",
    )
    .await;
    let mut admin = engine.session("admin");
    q(
        &mut admin,
        "CREATE MASKING POLICY badge_null ON t.drifted (badge) USING NULL",
    )
    .await;
    let secrets = ["758-44-3250", "hidden-row-badge"];
    let batch = RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
        ("region", Arc::new(StringArray::from(vec!["EU", "US"]))),
        ("salary", Arc::new(Int64Array::from(vec![10, 20]))),
        ("badge", Arc::new(StringArray::from(secrets.to_vec()))),
    ])
    .unwrap();
    let path = dir.path().join("drifted.parquet");
    common::write_parquet(&path, &batch);
    tokio::time::sleep(veil_engine::engine::LISTING_TTL + std::time::Duration::from_millis(200))
        .await;

    let mut bob = engine.session("bob");
    for sql in [
        "SELECT badge FROM t.drifted",
        "SELECT * FROM t.drifted",
        "SELECT count(*) FROM t.drifted WHERE badge > 0",
        "SELECT sum(badge) FROM t.drifted",
    ] {
        for s in [&mut bob, &mut admin] {
            let e = err(s, sql).await;
            let text = e.to_string();
            assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{sql}: {text}");
            assert!(
                text.contains("failed precondition: data source t.drifted cannot be read:"),
                "{sql}: {text}"
            );
            for secret in secrets {
                assert!(!text.contains(secret), "{sql}: {secret} in {text}");
            }
        }
    }
    // Columns that kept their type still read.
    let ids = q(&mut bob, "SELECT id, region FROM t.drifted").await;
    assert_eq!(ids, [["1".to_string(), "EU".to_string()]]);

    // `badge` written nullable, with a null, where the source's is not:
    // the file's fault too (it was InvalidArgument "Column 'badge' is
    // declared as non-nullable but contains null values").
    let batch = RecordBatch::try_from_iter_with_nullable([
        (
            "id",
            Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef,
            false,
        ),
        (
            "region",
            Arc::new(StringArray::from(vec!["EU", "US"])),
            false,
        ),
        ("salary", Arc::new(Int64Array::from(vec![10, 20])), false),
        (
            "badge",
            Arc::new(Int64Array::from(vec![None, Some(8)])),
            true,
        ),
    ])
    .unwrap();
    common::write_parquet(&path, &batch);
    tokio::time::sleep(veil_engine::engine::LISTING_TTL + std::time::Duration::from_millis(200))
        .await;
    for sql in [
        "SELECT badge FROM t.drifted",
        "SELECT count(badge) FROM t.drifted",
        "SELECT id FROM t.drifted WHERE badge IS NULL",
    ] {
        let e = err(&mut admin, sql).await;
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{sql}: {e}");
        assert!(
            e.to_string()
                .contains("failed precondition: data source t.drifted cannot be read:"),
            "{sql}: {e}"
        );
    }
    assert_eq!(
        q(&mut admin, "SELECT id, salary FROM t.drifted").await,
        [["1".to_string(), "10".to_string()]]
    );
}

/// A row policy that fails on the raw rows it filters (an SSN that does
/// not parse as a number, a division by zero) denies the query without
/// DataFusion's text, which quotes the raw value ("Cannot cast string
/// '758-44-3250' to value of Int32 type"): masked values and values of
/// hidden rows never come out in an error, whatever the statement.
#[tokio::test]
async fn a_row_policy_failing_on_the_data_shows_no_value() {
    let (_d, engine) = demo().await;
    let mut admin = engine.session("admin");
    let mut alice = engine.session("alice");
    let secrets: Vec<String> = q(&mut alice, "SELECT ssn, email, name FROM hr.employees")
        .await
        .into_iter()
        .flatten()
        .filter(|v| v != "NULL")
        .collect();
    assert!(secrets.len() > 100);
    for policy in [
        "CREATE ROW POLICY bad_cast ON hr.employees USING CAST(ssn AS INT) > 0 \
         UNLESS has_group('hr')",
        "CREATE ROW POLICY bad_div ON hr.employees \
         USING 1 / (length(email) - length(email)) > 0 UNLESS has_group('hr')",
    ] {
        q(&mut admin, policy).await;
        let mut bob = engine.session("bob");
        for sql in [
            "SELECT name FROM hr.employees",
            "SELECT count(*) FROM hr.employees",
            "SELECT * FROM hr.employees WHERE ssn IS NOT NULL",
            "EXPLAIN ANALYZE SELECT email FROM hr.employees",
            "SELECT e.name FROM hr.employees e JOIN hr.employees f ON e.email = f.email",
            "SELECT name FROM hr.employees WHERE email IN (SELECT email FROM hr.employees)",
            "SELECT name FROM hr.employees WHERE department = 'engineering'",
        ] {
            let e = err(&mut bob, sql).await;
            let text = e.to_string();
            assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{sql}: {text}");
            assert!(
                text.contains("a row policy on hr.employees failed on the data it filters"),
                "{sql}: {text}"
            );
            for secret in &secrets {
                assert!(!text.contains(secret.as_str()), "{sql}: {secret} in {text}");
            }
        }
        // Those the policy exempts read as before.
        let all = q(&mut alice, "SELECT count(*) FROM hr.employees").await;
        assert_ne!(all, vec![vec!["0".to_string()]]);
        let name = policy.split_whitespace().nth(3).unwrap();
        q(&mut admin, &format!("DROP POLICY {name}")).await;
    }
}

#[tokio::test]
async fn policy_changes_apply_to_the_next_statement() {
    let (_d, engine) = demo().await;
    let mut bob = engine.session("bob");
    let mut admin = engine.session("admin");
    assert_eq!(
        q(&mut bob, "SELECT DISTINCT region FROM hr.employees").await,
        vec![vec!["US".to_string()]]
    );
    q(&mut admin, "ALTER USER bob SET ATTRIBUTE region = ('EU')").await;
    assert_eq!(
        q(&mut bob, "SELECT DISTINCT region FROM hr.employees").await,
        vec![vec!["EU".to_string()]]
    );
    q(&mut admin, "ALTER USER bob ADD GROUP 'hr'").await;
    let r = q(
        &mut bob,
        "SELECT count(DISTINCT region), max(length(ssn)) FROM hr.employees",
    )
    .await;
    assert_eq!(r, vec![vec!["3".to_string(), "11".to_string()]]);
}

#[tokio::test]
async fn show_policy_info_reports_winner_and_overridden() {
    let (_d, engine) = demo().await;
    let mut alice = engine.session("alice");
    let r = q(&mut alice, "SHOW POLICY INFO FOR hr.employees AS USER bob").await;
    let ssn = r
        .iter()
        .find(|r| r[1] == "mask" && r[2] == "ssn")
        .expect("ssn row");
    assert_eq!(ssn[3], "NULL");
    assert_eq!(ssn[4], "ssn_null");
    assert_eq!(ssn[5], "pii_hash");
    assert!(r
        .iter()
        .any(|r| r[1] == "row filter" && r[4] == "employees_region"));
}

#[tokio::test]
async fn audit_chain_verifies() {
    let (_d, engine) = demo().await;
    let mut admin = engine.session("admin");
    let r = q(&mut admin, "VERIFY AUDIT").await;
    assert_eq!(r[0][0], "ok");
    assert!(r[0][1].parse::<i64>().unwrap() > 10);
}

#[tokio::test]
async fn leakproof_predicates_reach_the_scan_masked_ones_never_do() {
    let (_d, engine) = demo().await;
    let mut bob = engine.session("bob");
    let plan = q(
        &mut bob,
        "EXPLAIN SELECT name FROM hr.employees WHERE department = 'hr' AND email = 'x@example.com' AND 1 / employee_id > 0",
    )
    .await
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join("\n");
    let scan = plan
        .lines()
        .find(|l| l.contains("TableScan: hr.employees"))
        .unwrap_or_else(|| panic!("{plan}"));
    let filters = scan
        .split("filters=")
        .nth(1)
        .unwrap_or_else(|| panic!("{scan}"));
    assert!(filters.contains("department = Utf8"), "{scan}");
    assert!(
        !filters.contains("email"),
        "a masked column must not reach the scan: {scan}"
    );
    assert!(
        !filters.contains("employee_id"),
        "non-leakproof stays above: {scan}"
    );
    // The row policy is no logical copy: the physical barrier hands it to
    // the Parquet scan for pruning (governance/node.rs tests).
    assert!(!filters.contains("region"), "{scan}");
}

#[tokio::test]
async fn columns_read_only_inside_the_barrier_still_govern_every_row() {
    // bob sees US rows only, emails as tokens. The queries read neither
    // `region` (the policy's column) nor, in their output, `department`
    // (a leakproof filter the barrier applies inside): the barrier passes
    // on only what is read above it, and still applies both to every row.
    let (_d, engine) = demo().await;
    let mut alice = engine.session("alice");
    let mut bob = engine.session("bob");
    let want = q(
        &mut alice,
        "SELECT count(*) FROM hr.employees WHERE region = 'US' AND department = 'hr'",
    )
    .await;
    let emails = q(
        &mut bob,
        "SELECT email FROM hr.employees WHERE department = 'hr'",
    )
    .await;
    assert_eq!(emails.len().to_string(), want[0][0]);
    assert!(emails.len() > 10, "{emails:?}");
    for r in &emails {
        assert!(
            r[0].len() == 32 && r[0].chars().all(|c| c.is_ascii_hexdigit()),
            "{r:?}"
        );
    }
    let ones = q(
        &mut bob,
        "SELECT 1 FROM hr.employees WHERE department = 'hr'",
    )
    .await;
    assert_eq!(ones.len(), emails.len());
    // A masked column read by an expression only: tokens, not raw values.
    let lengths = q(
        &mut bob,
        "SELECT DISTINCT length(email) FROM hr.employees WHERE department = 'hr'",
    )
    .await;
    assert_eq!(lengths, [["32".to_string()]]);
}

/// Writes `people.parquet`-like files: `(id, region, salary, badge)` rows.
fn write_people(path: &std::path::Path, rows: &[(i64, &str, i64, i64)]) {
    use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
    let id: ArrayRef = Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0)));
    let region: ArrayRef = Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1)));
    let salary: ArrayRef = Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2)));
    let badge: ArrayRef = Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.3)));
    let batch = RecordBatch::try_from_iter([
        ("id", id),
        ("region", region),
        ("salary", salary),
        ("badge", badge),
    ])
    .unwrap();
    common::write_parquet(path, &batch);
}

/// Registers `people.parquet`-like `rows` as `t.<table>` (subscription
/// ANYONE) with a row policy `USING <predicate>`, as admin.
async fn people_source(
    engine: &Arc<Engine>,
    dir: &std::path::Path,
    table: &str,
    rows: &[(i64, &str, i64, i64)],
    predicate: &str,
) {
    let path = dir.join(format!("{table}.parquet"));
    write_people(&path, rows);
    let mut admin = engine.session("admin");
    for sql in [
        format!(
            "CREATE DATA SOURCE t.{table} FROM PARQUET '{}'",
            path.display()
        ),
        format!("ALTER DATA SOURCE t.{table} SET SUBSCRIPTION ANYONE"),
        format!("CREATE ROW POLICY {table}_rows ON t.{table} USING {predicate}"),
    ] {
        q(&mut admin, &sql).await;
    }
}

/// The barrier's line of `EXPLAIN VERBOSE`'s plan with statistics.
async fn barrier_statistics(s: &mut Session, sql: &str) -> (String, String) {
    let out = q(s, &format!("EXPLAIN VERBOSE {sql}")).await;
    let with_stats = out
        .iter()
        .find(|r| r[0] == "physical_plan_with_stats")
        .unwrap_or_else(|| panic!("{out:?}"))[1]
        .clone();
    // The barrier that passes all four columns.
    let line = with_stats
        .lines()
        .find(|l| l.contains("GovernedScanExec") && l.contains("Col[3]"))
        .unwrap_or_else(|| panic!("{with_stats}"))
        .trim()
        .to_string();
    (line, with_stats)
}

/// A barrier's statistics (what join ordering works from, and what
/// `EXPLAIN VERBOSE` prints) describe only the rows the principal sees:
/// two sources with the same visible rows and different hidden ones
/// (hidden ids and salaries far outside the visible range, 10x as many
/// hidden rows) give bob the same plan text; the numbers are the visible
/// row count and, for unmasked integer columns, null counts and the
/// distinct bound of the visible range; nothing about the masked column,
/// no min or max, no byte size. Counts follow the files when they change.
#[tokio::test]
async fn barrier_statistics_describe_only_visible_rows() {
    let (dir, engine) = demo().await;
    let visible: Vec<(i64, &str, i64, i64)> =
        (1..=40).map(|i| (i, "US", 1000 + i % 10, 7 * i)).collect();
    let hidden_small: Vec<_> = (41..=60).map(|i| (i, "EU", 2000, 7 * i)).collect();
    let hidden_large: Vec<_> = (0..600)
        .map(|i| (1_000_000 + i, "EU", 90_000_000 + i, -i))
        .collect();
    let mut admin = engine.session("admin");
    for (name, hidden) in [("a", &hidden_small), ("b", &hidden_large)] {
        let mut rows = visible.clone();
        rows.extend(hidden.iter().copied());
        let table = format!("people_{name}");
        let region = "attribute_contains('region', region) UNLESS has_group('hr')";
        people_source(&engine, dir.path(), &table, &rows, region).await;
        let tag = format!("ALTER DATA SOURCE t.{table} TAG COLUMN badge WITH ('PII.Badge')");
        q(&mut admin, &tag).await;
    }

    let mut bob = engine.session("bob");
    let sql = |name: &str| {
        format!("SELECT p.* FROM t.people_{name} p JOIN t.people_{name} o ON p.id = o.salary")
    };
    let (line_a, plan_a) = barrier_statistics(&mut bob, &sql("a")).await;
    let (_, plan_b) = barrier_statistics(&mut bob, &sql("b")).await;
    assert_eq!(
        plan_a,
        plan_b.replace("people_b", "people_a"),
        "hidden rows changed what bob's plan says"
    );
    // id: 40 visible, range 40; region: a string (no bound); salary: range
    // 10 (1000..=1009); badge: masked, nothing. The join's estimate is
    // made from the same numbers (its line is in the compared text).
    assert!(line_a.contains("Rows=Inexact(40)"), "{line_a}");
    assert!(line_a.contains("Bytes=Absent"), "{line_a}");
    assert!(
        line_a.contains("(Col[0]: Null=Inexact(0) Distinct=Inexact(40))"),
        "{line_a}"
    );
    assert!(line_a.contains("(Col[1]:)"), "{line_a}");
    assert!(
        line_a.contains("(Col[2]: Null=Inexact(0) Distinct=Inexact(10))"),
        "{line_a}"
    );
    assert!(line_a.contains("(Col[3]:)"), "{line_a}");
    for text in [&plan_a, &plan_b] {
        assert!(!text.contains("Min=") && !text.contains("Max="), "{text}");
        assert!(!text.contains("Exact("), "{text}");
    }
    assert_eq!(
        q(&mut bob, "SELECT count(*) FROM t.people_a").await,
        vec![vec!["40".to_string()]]
    );

    // carol (EU) sees other rows, so other numbers.
    let mut carol = engine.session("carol");
    let (line, _) = barrier_statistics(&mut carol, &sql("b")).await;
    assert!(line.contains("Rows=Inexact(600)"), "{line}");

    // New files, new counts (the listing is reused for up to a second).
    let more: Vec<_> = (1..=70).map(|i| (i, "US", 1000 + i % 20, i)).collect();
    write_people(&dir.path().join("people_a.parquet"), &more);
    tokio::time::sleep(veil_engine::engine::LISTING_TTL + std::time::Duration::from_millis(200))
        .await;
    let (line, _) = barrier_statistics(&mut bob, &sql("a")).await;
    assert!(line.contains("Rows=Inexact(70)"), "{line}");
    assert!(
        line.contains("(Col[2]: Null=Inexact(0) Distinct=Inexact(20))"),
        "{line}"
    );

    // pam (staff, no region) sees no row: zero, not the raw size.
    let mut pam = engine.session("pam");
    let (line, _) = barrier_statistics(&mut pam, &sql("b")).await;
    assert!(line.contains("Rows=Inexact(0)"), "{line}");
}

/// A policy that depends on the user makes one predicate per user; only
/// the first `MAX_PREDICATES` of a source are counted (each count scans
/// the source), later ones get the bucketed raw size, and the counted ones
/// keep their numbers.
#[tokio::test]
async fn per_user_predicates_are_counted_up_to_a_limit() {
    use veil_engine::governance::visible_stats::MAX_PREDICATES;
    let (dir, engine) = demo().await;
    let rows: Vec<_> = (1..=60).map(|i| (i, "US", 1000, i)).collect();
    let region = "attribute_contains('region', region)";
    people_source(&engine, dir.path(), "people", &rows, region).await;
    let mut admin = engine.session("admin");
    let sql = "SELECT id, region, salary, badge FROM t.people";
    for i in 0..=MAX_PREDICATES {
        q(
            &mut admin,
            &format!("CREATE USER u{i} ATTRIBUTES (region = 'R{i}')"),
        )
        .await;
        let (line, _) = barrier_statistics(&mut engine.session(&format!("u{i}")), sql).await;
        let want = if i < MAX_PREDICATES {
            "Rows=Inexact(0)"
        } else {
            "Rows=Inexact(64)"
        };
        assert!(line.contains(want), "u{i}: {line}");
    }
    let (line, _) = barrier_statistics(&mut engine.session("u0"), sql).await;
    assert!(line.contains("Rows=Inexact(0)"), "{line}");
}

/// A row policy that fails on some rows makes the barrier's count fail:
/// planning goes on with the bucketed raw size (the count's error is not
/// the statement's), and running the query still fails on the policy.
#[tokio::test]
async fn a_failing_visible_count_leaves_planning_alone() {
    let (dir, engine) = demo().await;
    let rows: Vec<_> = (1..=60)
        .map(|i| (i, if i % 2 == 0 { "US" } else { "7" }, 1000, i))
        .collect();
    let cast = "CAST(region AS BIGINT) > 0 UNLESS has_group('hr')";
    people_source(&engine, dir.path(), "people", &rows, cast).await;
    let mut bob = engine.session("bob");
    let (line, _) =
        barrier_statistics(&mut bob, "SELECT id, region, salary, badge FROM t.people").await;
    assert!(line.contains("Rows=Inexact(64)"), "{line}");
    let e = err(&mut bob, "SELECT count(*) FROM t.people").await;
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
    assert!(
        e.to_string()
            .contains("a row policy on t.people failed on the data it filters"),
        "{e}"
    );
}

/// A source on which no policy applies to the principal is planned as a
/// plain scan (DataFusion keeps its statistics, join order and dynamic
/// filters); a source with any applicable policy keeps the opaque barrier,
/// and the audit record lists the source either way.
#[tokio::test]
async fn exempt_principals_get_plain_scans_and_restricted_ones_the_barrier() {
    use veil_engine::store::AuditFilter;
    let (_d, engine) = demo().await;
    let explain = "EXPLAIN SELECT name, ssn FROM hr.employees WHERE salary > 0";
    // alice (hr) is exempt from every hr.employees policy.
    let mut alice = engine.session("alice");
    let text = q(&mut alice, explain).await.concat().join("\n");
    assert!(!text.contains("GovernedScan"), "{text}");
    assert!(text.contains("employees.parquet"), "{text}");
    let mine = q(&mut alice, "SELECT count(*) FROM hr.employees").await;
    assert_eq!(mine, vec![vec!["1000".to_string()]]);
    let last = engine
        .store()
        .audit_records(&AuditFilter::default())
        .unwrap()
        .pop()
        .unwrap();
    assert!(
        last.entry.detail.contains("hr.employees"),
        "{}",
        last.entry.detail
    );
    // bob has masks and a row policy there: barrier, no file, no raw value.
    let mut bob = engine.session("bob");
    let text = q(&mut bob, explain).await.concat().join("\n");
    assert!(text.contains("GovernedScan"), "{text}");
    assert!(!text.contains("employees.parquet"), "{text}");
    // dave (contractor) is not subscribed at all: still refused.
    let mut dave = engine.session("dave");
    let e = err(&mut dave, "SELECT count(*) FROM hr.employees").await;
    assert!(e.to_string().contains("not subscribed"), "{e}");
}

/// Runs a query through the plan kept by `plan_ahead` (Flight SQL's
/// GetFlightInfo, then DoGet).
async fn planned(s: &mut Session, sql: &str, plan: Option<&str>) -> Vec<Vec<String>> {
    let out = s.execute_planned(sql, None, plan).await.unwrap();
    rows(&out.collect().await.unwrap())
}

#[tokio::test]
async fn a_plan_made_ahead_never_runs_under_other_policies_users_or_sql() {
    let (_d, engine) = demo().await;
    let mut admin = engine.session("admin");
    let mut bob = engine.session("bob");
    let mut alice = engine.session("alice");
    let sql = "SELECT DISTINCT region FROM hr.employees ORDER BY region";
    let us = vec![vec!["US".to_string()]];

    // Planned, then run: bob's governed answer and an audit record naming
    // the row policy that made it.
    let (schema, id) = bob.plan_ahead(sql, None).await.unwrap();
    assert_eq!(schema.field(0).name(), "region");
    let id = id.expect("a query is planned ahead");
    assert_eq!(planned(&mut bob, sql, Some(&id)).await, us);
    let audit = engine
        .store()
        .audit_records(&Default::default())
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(audit.entry.action, "Query");
    assert!(audit.entry.detail.contains("employees_region"), "{audit:?}");
    // A plan is taken once; the same id again plans anew, same answer.
    assert_eq!(planned(&mut bob, sql, Some(&id)).await, us);

    // Another user presenting bob's plan gets their own answer.
    let (_, id) = bob.plan_ahead(sql, None).await.unwrap();
    let all = planned(&mut alice, sql, id.as_deref()).await;
    assert_eq!(all.len(), 3, "{all:?}");
    // Other SQL presenting bob's plan gets that SQL's answer.
    let (_, id) = bob.plan_ahead(sql, None).await.unwrap();
    let other = "SELECT count(*) FROM hr.employees WHERE region = 'EU'";
    assert_eq!(planned(&mut bob, other, id.as_deref()).await, [["0"]]);
    // Planned while impersonating bob, run as oneself: one's own answer.
    admin.impersonate(Some("bob")).unwrap();
    let (_, id) = admin.plan_ahead(sql, None).await.unwrap();
    admin.impersonate(None).unwrap();
    let own = planned(&mut admin, sql, id.as_deref()).await;
    assert_eq!(own, q(&mut admin, sql).await);
    assert_ne!(own, us, "the impersonated user's plan ran as admin");
    // Other settings: planned anew.
    let (_, id) = bob.plan_ahead(sql, None).await.unwrap();
    q(&mut bob, "SET datafusion.execution.batch_size = 7").await;
    assert_eq!(planned(&mut bob, sql, id.as_deref()).await, us);

    // A policy change between planning and running: the kept plan is
    // dropped and the new attribute applies.
    let (_, id) = bob.plan_ahead(sql, None).await.unwrap();
    q(&mut admin, "ALTER USER bob SET ATTRIBUTE region = ('EU')").await;
    assert_eq!(
        planned(&mut bob, sql, id.as_deref()).await,
        [["EU"]],
        "a plan made before the change must not run after it"
    );
    // Governance statements and SET are not planned ahead.
    let (schema, id) = bob.plan_ahead("SHOW DATA SOURCES", None).await.unwrap();
    assert!(schema.fields().is_empty() && id.is_none());
    let (_, id) = bob
        .plan_ahead("SET datafusion.execution.batch_size = 9", None)
        .await
        .unwrap();
    assert!(id.is_none());
}

#[tokio::test]
async fn the_statement_governance_cannot_be_set_listed_or_left_out() {
    use datafusion::optimizer::AnalyzerRule;
    use veil_engine::governance::GovernanceRule;
    let (_d, engine) = demo().await;
    let mut bob = engine.session("bob");
    // Not settable, not even named in the settings a user can list.
    let e = err(&mut bob, "SET veil_governance.principal = 'admin'").await;
    assert!(e.to_string().contains("is not allowed"), "{e}");
    let listed = q(
        &mut bob,
        "SELECT name FROM information_schema.df_settings WHERE name LIKE '%veil%'",
    )
    .await;
    assert!(listed.is_empty(), "{listed:?}");
    // The rule refuses a plan that comes without a statement's governance.
    let (ctx, _) = bob.context().unwrap();
    let plan = ctx
        .state()
        .create_logical_plan("SELECT name FROM hr.employees")
        .await
        .unwrap();
    let bare = datafusion::common::config::ConfigOptions::new();
    let e = GovernanceRule.analyze(plan, &bare).unwrap_err();
    assert!(e.to_string().contains("no governance context"), "{e}");
    // Bob's own statements still see his view only.
    let names = q(&mut bob, "SELECT DISTINCT region FROM hr.employees").await;
    assert_eq!(names, vec![vec!["US".to_string()]]);
}

#[tokio::test]
async fn a_file_added_to_a_source_directory_is_read_by_the_next_query() {
    let (_d, engine) = demo().await;
    let dir = tempfile::tempdir().unwrap();
    let file = common::root().join("testdata/sales/transactions.parquet");
    std::fs::copy(&file, dir.path().join("a.parquet")).unwrap();
    let mut admin = engine.session("admin");
    for sql in [
        format!(
            "CREATE DATA SOURCE grow.t FROM PARQUET '{}/'",
            dir.path().display()
        ),
        "ALTER DATA SOURCE grow.t SET SUBSCRIPTION ANYONE".into(),
    ] {
        q(&mut admin, &sql).await;
    }
    let one = q(&mut admin, "SELECT count(*) FROM grow.t").await;
    std::fs::copy(&file, dir.path().join("b.parquet")).unwrap();
    // Listings are reused for LISTING_TTL.
    tokio::time::sleep(veil_engine::engine::LISTING_TTL + std::time::Duration::from_millis(200))
        .await;
    let two = q(&mut admin, "SELECT count(*) FROM grow.t").await;
    let n = |r: &Vec<Vec<String>>| r[0][0].parse::<u64>().unwrap();
    assert_eq!(n(&two), 2 * n(&one));
}

/// A row policy whose `LIKE` is matched by substring search
/// (like_segments.rs) keeps exactly the rows that `LIKE` keeps on the raw
/// values.
#[tokio::test]
async fn a_segment_like_row_policy_keeps_the_rows_its_like_keeps() {
    let (_dir, engine) = demo().await;
    let mut alice = engine.session("alice");
    let raw = "SELECT count(*) FROM hr.employees WHERE email LIKE '%a%a%@%'";
    let want: usize = q(&mut alice, raw).await[0][0].parse().unwrap();
    assert!(want > 0 && want < 1000, "{want} of 1000 emails match");
    let mut admin = engine.session("admin");
    for sql in [
        "CREATE USER ivan PASSWORD 'ivan-pw' GROUPS ('analysts', 'staff') \
         ATTRIBUTES (region = ('EU', 'US', 'APAC'))",
        "CREATE ROW POLICY two_as ON hr.employees USING email LIKE '%a%a%@%'",
    ] {
        q(&mut admin, sql).await;
    }
    let mut ivan = engine.session("ivan");
    let seen = q(&mut ivan, "SELECT count(*) FROM hr.employees").await;
    assert_eq!(seen, vec![vec![want.to_string()]]);
}

/// `attribute_contains` on integer and date columns: attribute values are text,
/// so "007" names 7, and a value that is no integer of the column (text,
/// out of range) matches nothing instead of failing the query.
#[tokio::test]
async fn attribute_contains_on_a_typed_column_matches_the_values_that_cast() {
    let (_dir, engine) = demo().await;
    let mut admin = engine.session("admin");
    for sql in [
        "CREATE USER ivan PASSWORD 'ivan-pw' GROUPS ('analysts', 'staff') \
         ATTRIBUTES (region = ('EU', 'US', 'APAC'), ids = ('3', '007', 'abc', '99999999999999999999', '-0'))",
        "CREATE ROW POLICY ids_only ON hr.employees USING attribute_contains('ids', employee_id)",
    ] {
        q(&mut admin, sql).await;
    }
    let mut ivan = engine.session("ivan");
    assert_eq!(
        q(
            &mut ivan,
            "SELECT employee_id FROM hr.employees ORDER BY employee_id"
        )
        .await,
        vec![vec!["3".to_string()], vec!["7".to_string()]]
    );
    // Filters on the column still combine with the policy.
    assert_eq!(
        q(
            &mut ivan,
            "SELECT count(*) FROM hr.employees WHERE employee_id > 5"
        )
        .await,
        vec![vec!["1".to_string()]]
    );
    // The same on a date column: a date that is no date matches nothing.
    let hired = q(
        &mut ivan,
        "SELECT CAST(hire_date AS VARCHAR) FROM hr.employees WHERE employee_id = 3",
    )
    .await;
    let day = hired[0][0].clone();
    for sql in [
        "DROP POLICY ids_only".to_string(),
        format!("ALTER USER ivan SET ATTRIBUTE days = ('{day}', 'not-a-date', '2024-13-45')"),
        "CREATE ROW POLICY hired_on ON hr.employees USING attribute_contains('days', hire_date)"
            .to_string(),
    ] {
        q(&mut admin, &sql).await;
    }
    let seen = q(
        &mut ivan,
        "SELECT CAST(hire_date AS VARCHAR) FROM hr.employees",
    )
    .await;
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|r| r[0] == day), "{seen:?}");
}

/// A grouped subquery joined on its group key aggregates only the keys of
/// the filtered side (group_reduction.rs): under bob's masks and row
/// policy the copied side is governed as the original (tokens compared,
/// rows of other regions absent), and the answers are the ones of a shape
/// the rule leaves alone (a range instead of an equality).
#[tokio::test]
async fn a_grouped_subquery_reduced_by_a_governed_join_answers_as_before() {
    let (_d, engine) = demo().await;
    let mut alice = engine.session("alice");
    let mut bob = engine.session("bob");
    let id = |region: &str| {
        format!(
        "SELECT employee_id, email FROM hr.employees WHERE region = '{region}' ORDER BY employee_id LIMIT 1"
    )
    };
    let us = q(&mut alice, &id("US")).await.remove(0);
    let apac = q(&mut alice, &id("APAC")).await.remove(0);
    let token = q(
        &mut bob,
        &format!(
            "SELECT email FROM hr.employees WHERE employee_id = {}",
            us[0]
        ),
    )
    .await[0][0]
        .clone();
    assert_ne!(token, us[1]);
    // Grouped by the HASHed email, joined on it to one employee.
    let query = |filter: &str| {
        format!(
            "SELECT e.employee_id, g.n FROM hr.employees e \
             JOIN (SELECT email, count(*) AS n, max(salary) AS top FROM hr.employees GROUP BY email) g \
             ON g.email = e.email WHERE {filter}"
        )
    };
    let cases = [
        (
            format!("e.employee_id = {}", us[0]),
            format!("e.employee_id > {0} - 1 AND e.employee_id < {0} + 1", us[0]),
            vec![vec![us[0].clone(), "1".into()]],
        ),
        // Another region's employee: absent from the copy as from the original.
        (
            format!("e.employee_id = {}", apac[0]),
            format!(
                "e.employee_id > {0} - 1 AND e.employee_id < {0} + 1",
                apac[0]
            ),
            vec![],
        ),
        // The token matches, the raw address does not.
        (
            format!("e.email = '{token}'"),
            format!("e.email >= '{token}' AND e.email < '{token}z'"),
            vec![vec![us[0].clone(), "1".into()]],
        ),
        (
            format!("e.email = '{}'", us[1]),
            format!("e.email >= '{0}' AND e.email < '{0}z'", us[1]),
            vec![],
        ),
    ];
    for (reduced, whole, want) in cases {
        let plan = explain(&mut bob, "EXPLAIN", &query(&reduced)).await;
        assert!(plan.contains("__veil_group_reducer"), "{plan}");
        assert!(!plan.contains("employees.parquet"), "{plan}");
        let plan = explain(&mut bob, "EXPLAIN", &query(&whole)).await;
        assert!(!plan.contains("__veil_group_reducer"), "{plan}");
        assert_eq!(q(&mut bob, &query(&reduced)).await, want, "{reduced}");
        assert_eq!(q(&mut bob, &query(&whole)).await, want, "{whole}");
    }
}

/// q17's shape over governed sources (`shared_join.rs`): transactions
/// under their card's average amount. The transactions table is behind
/// bob's barrier (US rows), so the join is not shared; the answer is bob's
/// (only US transactions, as a shape the rules leave alone answers) and
/// no file or shared join shows in EXPLAIN ANALYZE.
#[tokio::test]
async fn an_average_over_a_governed_join_stays_behind_the_barrier() {
    let (_d, engine) = demo().await;
    let mut bob = engine.session("bob");
    let query = |filter: &str| {
        format!(
            "SELECT count(*), sum(amount), min(transactions.region), max(transactions.region) \
             FROM sales.transactions, payments.cards \
             WHERE cards.card_id = transactions.card_id AND {filter} \
             AND amount < (SELECT 0.8 * avg(amount) FROM sales.transactions \
             WHERE transactions.card_id = cards.card_id)"
        )
    };
    let reduced = query("cards.region = 'US'");
    let whole = query("cards.region >= 'US' AND cards.region <= 'US'");
    let plan = explain(&mut bob, "EXPLAIN", &reduced).await;
    assert!(plan.contains("__veil_group_reducer"), "{plan}");
    assert!(!plan.contains("SharedExec"), "{plan}");
    let got = q(&mut bob, &reduced).await;
    assert_eq!(got, q(&mut bob, &whole).await);
    // Some transactions, all of them US ones.
    assert_ne!(got[0][0], "0", "{got:?}");
    assert_eq!((got[0][2].as_str(), got[0][3].as_str()), ("US", "US"));
    let analyzed = explain(&mut bob, "EXPLAIN ANALYZE", &reduced).await;
    assert!(analyzed.contains("GovernedScanExec"), "{analyzed}");
    assert!(!analyzed.contains(".parquet"), "{analyzed}");
}

/// A CTE the query names twice is aggregated once (shared_plan.rs), under
/// bob's masks and row policy: the shared result is his (salaries
/// rounded, US rows only), the same as two different aggregates give, and
/// EXPLAIN ANALYZE still shows the barrier and no file.
#[tokio::test]
async fn a_governed_cte_named_twice_is_aggregated_once_as_the_principal_sees_it() {
    let (_d, engine) = demo().await;
    let mut bob = engine.session("bob");
    let query = |e: &str, n: &str| {
        format!(
            "WITH d AS (SELECT department, count(*) AS n, max(salary) AS highest FROM hr.employees GROUP BY department), \
             e AS ({e}) SELECT department, n, highest FROM d \
             WHERE highest = (SELECT max(highest) FROM e{n}) ORDER BY department"
        )
    };
    // `e` the same aggregate as `d` (shared), or `d`'s without the count
    // (not shared).
    let shared_sql = query(
        "SELECT department, count(*) AS n, max(salary) AS highest FROM hr.employees GROUP BY department",
        " WHERE n > 0",
    );
    let apart_sql = query(
        "SELECT department, max(salary) AS highest FROM hr.employees GROUP BY department",
        "",
    );
    let shared = q(&mut bob, &shared_sql).await;
    assert_eq!(shared, q(&mut bob, &apart_sql).await);
    assert!(!shared.is_empty());
    let highest = q(&mut bob, "SELECT max(salary) FROM hr.employees").await;
    for row in &shared {
        let visible = q(
            &mut bob,
            &format!(
                "SELECT count(*) FROM hr.employees WHERE department = '{}'",
                row[0]
            ),
        )
        .await;
        assert_eq!(visible[0][0], row[1]);
        assert_eq!(highest[0][0], row[2]);
        let top: i64 = row[2].parse().unwrap();
        assert_eq!(top % 10000, 0, "salary is rounded: {row:?}");
    }
    let count = |text: &str, what: &str| text.matches(what).count();
    let plan = explain(&mut bob, "EXPLAIN", &shared_sql).await;
    assert_eq!(count(&plan, "SharedExec"), 2, "{plan}");
    let plan = explain(&mut bob, "EXPLAIN", &apart_sql).await;
    assert_eq!(count(&plan, "SharedExec"), 0, "{plan}");
    let analyzed = explain(&mut bob, "EXPLAIN ANALYZE", &shared_sql).await;
    assert!(
        analyzed.contains("SharedExec") && analyzed.contains("GovernedScanExec"),
        "{analyzed}"
    );
    assert!(!analyzed.contains("employees.parquet"), "{analyzed}");
}

/// Decimal arithmetic runs without per-row overflow checks
/// (`decimal_arith.rs`) on what the principal sees: rounded salaries of
/// his region, and a filter on a product of the masked column matches no
/// raw salary.
#[tokio::test]
async fn decimal_arithmetic_on_a_masked_column_computes_on_the_masked_values() {
    let (_d, engine) = demo().await;
    let mut alice = engine.session("alice");
    let mut bob = engine.session("bob");
    let arith = "SELECT salary, CAST(salary AS DECIMAL(15, 2)) * CAST(1.5 AS DECIMAL(3, 1)) \
                 - CAST(salary AS DECIMAL(15, 2)) AS half FROM hr.employees";
    let seen = q(&mut bob, arith).await;
    let visible = q(&mut bob, "SELECT count(*) FROM hr.employees").await;
    assert_eq!(seen.len().to_string(), visible[0][0]);
    for row in &seen {
        let salary: i64 = row[0].parse().unwrap();
        assert_eq!(salary % 10000, 0, "rounded: {row:?}");
        assert_eq!(row[1], format!("{}.{:03}", salary / 2, (salary % 2) * 500));
    }
    let plan = explain(&mut bob, "EXPLAIN", arith).await;
    assert!(
        plan.contains("decimal_mul") && plan.contains("decimal_sub"),
        "{plan}"
    );

    // alice sees raw salaries; a raw one that rounding changes.
    let raw = q(
        &mut alice,
        "SELECT salary FROM hr.employees WHERE salary % 10000 <> 0 LIMIT 1",
    )
    .await;
    let raw: i64 = raw[0][0].parse().unwrap();
    let probe = format!(
        "SELECT count(*) FROM hr.employees \
         WHERE CAST(salary AS DECIMAL(15, 2)) * CAST(3 AS DECIMAL(2, 0)) = {}",
        raw * 3
    );
    let matches: i64 = q(&mut alice, &probe).await[0][0].parse().unwrap();
    assert!(matches >= 1, "alice finds the raw salary");
    assert_eq!(q(&mut bob, &probe).await, vec![vec!["0".to_string()]]);
}

/// A join's build-side keys filter the rows of scans outside barriers
/// (`dynamic_scan.rs`); a barrier keeps its hidden scan to itself and
/// answers as before.
#[tokio::test]
async fn join_keys_filtering_scans_leave_barriers_opaque() {
    let (_d, engine) = demo().await;
    let mut bob = engine.session("bob");
    let sql = "SELECT e.employee_id, e.region FROM (VALUES (1), (2), (3), (4), (5), (6), (7), (8)) ids(id) \
               JOIN hr.employees e ON e.employee_id = ids.id ORDER BY 1";
    let rows = q(&mut bob, sql).await;
    assert!(!rows.is_empty() && rows.len() < 8, "{rows:?}");
    assert!(rows.iter().all(|r| r[1] == "US"), "{rows:?}");
    let analyzed = explain(&mut bob, "EXPLAIN ANALYZE", sql).await;
    assert!(analyzed.contains("GovernedScanExec"), "{analyzed}");
    assert!(!analyzed.contains("employees.parquet"), "{analyzed}");
    assert!(!analyzed.contains("DynamicRowsExec"), "{analyzed}");
}
