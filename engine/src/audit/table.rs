//! `system.audit`: the audit log as a table for holders of AUDIT.
//!
//! Comparisons of `id` and `at` with literals and equality on `actor` and
//! `action` are pushed into the store's query (DataFusion still applies
//! them: `Inexact`), as are projections and LIMIT, so reading the last hour
//! of a long log does not read the whole log.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BinaryArray, Int64Array, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

use crate::store::{AuditFilter, AuditRecord, CatalogStore};

/// Columns of `system.audit` (and of exports); archives add `mac`.
pub fn audit_schema(with_mac: bool) -> SchemaRef {
    let mut fields = vec![
        Field::new("id", DataType::Int64, false),
        Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("actor", DataType::Utf8, false),
        Field::new("impersonated", DataType::Utf8, true),
        Field::new("project", DataType::Utf8, true),
        Field::new("action", DataType::Utf8, false),
        Field::new("object", DataType::Utf8, false),
        Field::new("outcome", DataType::Utf8, false),
        Field::new("detail", DataType::Utf8, false),
    ];
    if with_mac {
        fields.push(Field::new("mac", DataType::Binary, false));
    }
    Arc::new(Schema::new(fields))
}

fn micros(at: &str) -> Result<i64, DataFusionError> {
    chrono::DateTime::parse_from_rfc3339(at)
        .map(|t| t.timestamp_micros())
        .map_err(|e| DataFusionError::Internal(format!("audit time '{at}' is corrupt: {e}")))
}

/// Records as one batch of [`audit_schema`].
pub fn records_batch(records: &[AuditRecord], with_mac: bool) -> DfResult<RecordBatch> {
    let text = |f: fn(&AuditRecord) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(records.iter().map(f)))
    };
    let optional = |f: fn(&AuditRecord) -> Option<&str>| -> ArrayRef {
        Arc::new(records.iter().map(f).collect::<StringArray>())
    };
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(records.iter().map(|r| r.id))),
        Arc::new(
            TimestampMicrosecondArray::from(
                records
                    .iter()
                    .map(|r| micros(&r.at))
                    .collect::<Result<Vec<_>, _>>()?,
            )
            .with_timezone("UTC"),
        ),
        text(|r| &r.entry.actor),
        optional(|r| r.entry.impersonated.as_deref()),
        optional(|r| r.entry.project.as_deref()),
        text(|r| &r.entry.action),
        text(|r| &r.entry.object),
        text(|r| &r.entry.outcome),
        text(|r| &r.entry.detail),
    ];
    if with_mac {
        columns.push(Arc::new(BinaryArray::from_iter_values(
            records.iter().map(|r| r.mac.as_slice()),
        )));
    }
    Ok(RecordBatch::try_new(audit_schema(with_mac), columns)?)
}

/// The time of a timestamp literal as stored (RFC 3339, microseconds, UTC).
fn stored_time(v: &ScalarValue, shift_us: i64) -> Option<String> {
    let us = match v {
        ScalarValue::TimestampMicrosecond(Some(v), _) => *v,
        ScalarValue::TimestampMillisecond(Some(v), _) => v.checked_mul(1_000)?,
        ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1_000_000)?,
        ScalarValue::TimestampNanosecond(Some(v), _) => v.div_euclid(1_000),
        _ => return None,
    };
    let t = chrono::DateTime::from_timestamp_micros(us.checked_add(shift_us)?)?;
    Some(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

/// Narrows `f` by one filter; false when the filter is not understood.
fn narrow(f: &mut AuditFilter, expr: &Expr) -> bool {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = expr else {
        return false;
    };
    let (col, op, value) = match (left.as_ref(), right.as_ref()) {
        (Expr::Column(Column { name, .. }), Expr::Literal(v, _)) => (name, *op, v),
        (Expr::Literal(v, _), Expr::Column(Column { name, .. })) => match op.swap() {
            Some(op) => (name, op, v),
            None => return false,
        },
        _ => return false,
    };
    let tighten_min = |slot: &mut Option<i64>, v: i64| *slot = Some(slot.map_or(v, |s| s.max(v)));
    let tighten_max = |slot: &mut Option<i64>, v: i64| *slot = Some(slot.map_or(v, |s| s.min(v)));
    match (col.as_str(), value) {
        ("id", ScalarValue::Int64(Some(v))) => {
            let v = *v;
            match op {
                Operator::Eq => {
                    tighten_min(&mut f.min_id, v);
                    tighten_max(&mut f.max_id, v);
                }
                Operator::Gt => tighten_min(&mut f.min_id, v.saturating_add(1)),
                Operator::GtEq => tighten_min(&mut f.min_id, v),
                Operator::Lt => tighten_max(&mut f.max_id, v.saturating_sub(1)),
                Operator::LtEq => tighten_max(&mut f.max_id, v),
                _ => return false,
            }
        }
        ("at", v) => {
            let (since, shift) = match op {
                Operator::GtEq => (true, 0),
                Operator::Gt => (true, 1),
                Operator::Lt => (false, 0),
                Operator::LtEq => (false, 1),
                _ => return false,
            };
            let Some(t) = stored_time(v, shift) else {
                return false;
            };
            // Stored times are fixed-width RFC 3339, so text order is time order.
            if since {
                f.since = Some(f.since.take().map_or(t.clone(), |o| o.max(t)));
            } else {
                f.before = Some(f.before.take().map_or(t.clone(), |o| o.min(t)));
            }
        }
        ("actor" | "action", ScalarValue::Utf8(Some(v))) if op == Operator::Eq => {
            let slot = if col == "actor" {
                &mut f.actor
            } else {
                &mut f.action
            };
            if slot.as_ref().is_some_and(|old| old != v) {
                // Contradictory equalities: nothing matches; keep the first
                // and let DataFusion's own filter drop the rest.
                return true;
            }
            *slot = Some(v.clone());
        }
        _ => return false,
    }
    true
}

/// The `system.audit` table.
#[derive(Debug)]
pub struct AuditTable {
    store: Arc<dyn CatalogStore>,
}

impl AuditTable {
    /// The audit log of `store`.
    pub fn new(store: Arc<dyn CatalogStore>) -> Self {
        Self { store }
    }
}

#[async_trait]
impl TableProvider for AuditTable {
    fn schema(&self) -> SchemaRef {
        audit_schema(false)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|e| {
                if narrow(&mut AuditFilter::default(), e) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let mut filter = AuditFilter::default();
        let mut all_pushed = true;
        for e in filters {
            all_pushed &= narrow(&mut filter, e);
        }
        // A LIMIT may be applied by the store only when every filter was.
        if all_pushed {
            filter.limit = limit;
        }
        let store = Arc::clone(&self.store);
        let records = tokio::task::spawn_blocking(move || store.audit_records(&filter))
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .map_err(DataFusionError::from)?;
        let batch = records_batch(&records, false)?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            audit_schema(false),
            projection.cloned(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    #[test]
    fn comparisons_narrow_the_store_query() {
        let mut f = AuditFilter::default();
        assert!(narrow(&mut f, &col("id").gt(lit(5i64))));
        assert!(narrow(&mut f, &lit(9i64).gt_eq(col("id"))));
        assert!(narrow(&mut f, &col("actor").eq(lit("bob"))));
        let t = ScalarValue::TimestampMicrosecond(Some(1_700_000_000_000_000), Some("UTC".into()));
        assert!(narrow(&mut f, &col("at").lt(Expr::Literal(t, None))));
        assert_eq!((f.min_id, f.max_id), (Some(6), Some(9)));
        assert_eq!(f.actor.as_deref(), Some("bob"));
        assert_eq!(f.before.as_deref(), Some("2023-11-14T22:13:20.000000Z"));
        // Anything else is left to DataFusion.
        assert!(!narrow(&mut f, &col("detail").like(lit("%x%"))));
        assert!(!narrow(&mut f, &col("id").not_eq(lit(3i64))));
    }
}
