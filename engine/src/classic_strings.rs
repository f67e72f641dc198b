//! Plans that only pass a Parquet scan's columns on read strings as `Utf8`.
//!
//! DataFusion reads Parquet strings as `Utf8View`, which pays off where
//! strings are compared, hashed or grouped. A result leaves the engine for
//! a client that gets `Utf8` (the Flight service converts every view
//! column before sending, `flight-server/src/service/wire.rs`), so for a
//! plan whose every node only moves rows (projections of plain columns,
//! limits, merges of partitions) the views are built only to be copied
//! out again: `SELECT * FROM lineitem` spent about 8 % of its CPU on that
//! conversion and 3 % on building the views (`perf` of `veil bench
//! flight`). [`ClassicStringScans`] has the scan of such a plan read its
//! top-level `Utf8View` and `BinaryView` columns as `Utf8` and `Binary`.
//!
//! It is not governance and never applies under anything that computes: a
//! filter, a join, an aggregate, a sort, a mask, a governed scan
//! (`GovernedScanExec` is not a pass-through node) and a scan with a
//! predicate (its pruning was planned for the view types) keep their
//! types. The values are the same either way.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema};
use datafusion::common::config::ConfigOptions;
use datafusion::common::Result;
use datafusion::datasource::physical_plan::{FileSource, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::limit::{GlobalLimitExec, LocalLimitExec};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::{ChildrenPropertiesMode, ExecutionPlan, ReplaceChildrenOptions};

/// The physical optimizer rule (see the module documentation).
#[derive(Debug, Default)]
pub struct ClassicStringScans;

impl PhysicalOptimizerRule for ClassicStringScans {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(classic(&plan)?.unwrap_or(plan))
    }

    fn name(&self) -> &str {
        "veil_classic_string_scans"
    }

    /// The output's string columns change from views to offsets.
    fn schema_check(&self) -> bool {
        false
    }
}

/// `plan` with its scan reading classic strings, or `None` when a node on
/// the way down computes or the scan stays as it is.
fn classic(plan: &Arc<dyn ExecutionPlan>) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    if let Some(scan) = plan.downcast_ref::<DataSourceExec>() {
        return classic_scan(scan);
    }
    let moves_rows = plan.downcast_ref::<ProjectionExec>().is_some_and(|p| {
        p.expr()
            .iter()
            .all(|e| e.expr.downcast_ref::<Column>().is_some())
    }) || plan.is::<CoalescePartitionsExec>()
        || plan.is::<CooperativeExec>()
        || plan.is::<GlobalLimitExec>()
        || plan.is::<LocalLimitExec>();
    let [child] = plan.children()[..] else {
        return Ok(None);
    };
    if !moves_rows {
        return Ok(None);
    }
    match classic(child)? {
        Some(child) => Arc::clone(plan)
            .replace_children(
                vec![child],
                ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
            )
            .map(Some),
        None => Ok(None),
    }
}

/// A Parquet scan without a predicate, reading its top-level view columns
/// as their classic types; `None` for any other scan.
fn classic_scan(scan: &DataSourceExec) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let Some((config, source)) = scan.downcast_to_file_source::<ParquetSource>() else {
        return Ok(None);
    };
    let table = source.table_schema();
    let Some(projection) = source
        .projection()
        .filter(|p| p.iter().all(|e| e.expr.downcast_ref::<Column>().is_some()))
    else {
        return Ok(None);
    };
    if source.filter().is_some() || !table.virtual_columns().is_empty() {
        return Ok(None);
    }
    let file_schema = table.file_schema();
    let mut changed = false;
    let fields: Vec<FieldRef> = file_schema
        .fields()
        .iter()
        .map(|f| match classic_type(f.data_type()) {
            Some(t) => {
                changed = true;
                Arc::new(Field::clone(f).with_data_type(t))
            }
            None => Arc::clone(f),
        })
        .collect();
    if !changed {
        return Ok(None);
    }
    let file_schema = Schema::new_with_metadata(fields, file_schema.metadata().clone());
    let table = TableSchema::builder(Arc::new(file_schema))
        .with_table_partition_cols(table.table_partition_cols().clone())
        .build();
    let options = source.table_parquet_options().clone();
    let hint = options.global.metadata_size_hint;
    let mut classic = ParquetSource::new(table).with_table_parquet_options(options);
    if let Some(hint) = hint {
        classic = classic.with_metadata_size_hint(hint);
    }
    if let Some(factory) = source.parquet_file_reader_factory() {
        classic = classic.with_parquet_file_reader_factory(Arc::clone(factory));
    }
    let Some(classic) = classic.try_pushdown_projection(projection)? else {
        return Ok(None);
    };
    let mut config = config.clone();
    config.file_source = classic;
    Ok(Some(DataSourceExec::from_data_source(config)))
}

/// The classic type a top-level view column is read as.
fn classic_type(t: &DataType) -> Option<DataType> {
    match t {
        DataType::Utf8View => Some(DataType::Utf8),
        DataType::BinaryView => Some(DataType::Binary),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::compute::cast;
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::execution::SessionStateBuilder;
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::prelude::{ParquetReadOptions, SessionContext};

    /// A context over one Parquet file `t(n BIGINT, s VARCHAR)` of 1000
    /// rows (every tenth string NULL), with or without the rule.
    async fn context(dir: &std::path::Path, with_rule: bool) -> SessionContext {
        let path = dir.join("t.parquet");
        if !path.exists() {
            let n = Int64Array::from_iter_values(0..1000);
            let s: StringArray = (0..1000)
                .map(|i| (i % 10 != 0).then(|| format!("string number {i} of the file")))
                .collect();
            let batch = RecordBatch::try_from_iter([
                ("n", Arc::new(n) as ArrayRef),
                ("s", Arc::new(s) as ArrayRef),
            ])
            .unwrap();
            let mut writer =
                ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), batch.schema(), None)
                    .unwrap();
            writer.write(&batch).unwrap();
            writer.close().unwrap();
        }
        let mut state = SessionStateBuilder::new().with_default_features();
        if with_rule {
            state = state.with_physical_optimizer_rule(Arc::new(ClassicStringScans));
        }
        let ctx = SessionContext::new_with_state(state.build());
        ctx.register_parquet("t", path.to_str().unwrap(), ParquetReadOptions::default())
            .await
            .unwrap();
        ctx
    }

    /// The type of `s` in the answer to `sql`, and its values as `Utf8`.
    async fn strings(ctx: &SessionContext, sql: &str) -> (DataType, Vec<Option<String>>) {
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let mut values = Vec::new();
        let mut types = Vec::new();
        for b in &batches {
            let s = b.column_by_name("s").unwrap();
            types.push(s.data_type().clone());
            let s = cast(s, &DataType::Utf8).unwrap();
            let s = s.as_any().downcast_ref::<StringArray>().unwrap();
            values.extend(s.iter().map(|v| v.map(str::to_string)));
        }
        types.dedup();
        assert_eq!(types.len(), 1, "{sql}: {types:?}");
        (types[0].clone(), values)
    }

    /// Plans that only move rows read `Utf8` and answer what the view scan
    /// answers, rows and NULLs included.
    #[tokio::test]
    async fn pass_through_plans_read_classic_strings_with_the_same_values() {
        let dir = tempfile::tempdir().unwrap();
        let plain = context(dir.path(), false).await;
        let classic = context(dir.path(), true).await;
        for sql in [
            "SELECT * FROM t",
            "SELECT s, n FROM t",
            "SELECT s AS s FROM t LIMIT 7",
            "SELECT s FROM t LIMIT 3 OFFSET 995",
        ] {
            let (view_type, expected) = strings(&plain, sql).await;
            assert_eq!(view_type, DataType::Utf8View, "{sql}");
            let (t, got) = strings(&classic, sql).await;
            assert_eq!(t, DataType::Utf8, "{sql}");
            assert_eq!(got, expected, "{sql}");
            assert!(!got.is_empty(), "{sql}");
        }
        let (_, all) = strings(&classic, "SELECT * FROM t").await;
        assert_eq!(all.len(), 1000);
        assert_eq!(all.iter().filter(|v| v.is_none()).count(), 100);
    }

    /// The type of `s` in the table schema of each scan `sql` plans.
    async fn scan_types(ctx: &SessionContext, sql: &str) -> Vec<DataType> {
        let plan = ctx
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let mut types = Vec::new();
        plan.apply(|node| {
            if let Some((_, source)) = node
                .downcast_ref::<DataSourceExec>()
                .and_then(|d| d.downcast_to_file_source::<ParquetSource>())
            {
                let schema = source.table_schema().file_schema();
                types.push(schema.field_with_name("s").unwrap().data_type().clone());
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
        types
    }

    /// Anything that computes keeps the view scans: filters (pushed into
    /// the scan or not), functions of a column, aggregates, sorts, joins;
    /// the answers stay those of the plain context.
    #[tokio::test]
    async fn plans_that_compute_keep_views() {
        let dir = tempfile::tempdir().unwrap();
        let plain = context(dir.path(), false).await;
        let classic = context(dir.path(), true).await;
        assert_eq!(
            scan_types(&classic, "SELECT * FROM t").await,
            [DataType::Utf8]
        );
        for sql in [
            "SELECT s FROM t WHERE s LIKE '%7 of%'",
            "SELECT s FROM t WHERE n > 500",
            "SELECT upper(s) AS s FROM t",
            "SELECT s FROM t GROUP BY s ORDER BY s",
            "SELECT s FROM t ORDER BY s LIMIT 5",
            "SELECT a.s FROM t a JOIN t b ON a.n = b.n ORDER BY a.s",
        ] {
            let types = scan_types(&classic, sql).await;
            assert!(!types.is_empty(), "{sql}");
            assert!(
                types.iter().all(|t| *t == DataType::Utf8View),
                "{sql}: {types:?}"
            );
            let (_, got) = strings(&classic, sql).await;
            assert!(!got.is_empty(), "{sql}");
            assert_eq!(got, strings(&plain, sql).await.1, "{sql}");
        }
    }
}
