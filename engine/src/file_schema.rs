//! A source's files checked against the schema the source was created with.
//!
//! DataFusion adapts each file to its table's schema (casts, nulls for a
//! nullable column the file lacks) and fails a file it cannot adapt with
//! an execution error, which reads like the user's mistake. A source's
//! files are rewritten outside Veil, so such a file is the source's fault:
//! [`FileSchemaCheck`] fails it with [`FileSchemaMismatch`], which the
//! catalog reports as the source being unreadable (`catalog.rs`).
//!
//! A file whose column DataFusion can cast to the source's type (strings
//! where the source has integers) may still hold values that do not cast,
//! and arrow's error quotes the value ("Cannot cast string '758-44-3250'
//! to value of Int64 type"): a masked column's raw value, or one of a row
//! the user may not see. Expressions over such a file's drifted columns
//! ([`DriftedRead`]) report any failure as [`FileSchemaMismatch`] without
//! the text; so do reads of a column the file declares nullable where the
//! source's is not, when it holds a null.

use std::collections::BTreeSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{FieldRef, Schema, SchemaRef};
use datafusion::common::nested_struct::validate_data_type_compatibility;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr_adapter::{
    DefaultPhysicalExprAdapterFactory, PhysicalExprAdapter, PhysicalExprAdapterFactory,
};

/// DataFusion's adapter, after refusing a file that lacks a non-nullable
/// column of its source or holds one of a type DataFusion cannot adapt to
/// the source's.
#[derive(Debug)]
pub(crate) struct FileSchemaCheck;

/// A file whose columns cannot be read as its source's.
#[derive(Debug, thiserror::Error)]
#[error("a file does not match its source's schema: {0}")]
pub(crate) struct FileSchemaMismatch(String);

/// DataFusion's adapter for a file with columns of another type than its
/// source's, or nullable where the source's are not: expressions over them
/// become [`DriftedRead`]s.
#[derive(Debug)]
struct DriftGuard {
    inner: Arc<dyn PhysicalExprAdapter>,
    /// Columns whose type or nullability in the file differs from the
    /// source's.
    drifted: BTreeSet<String>,
    /// Of those, the columns the source declares non-nullable.
    not_null: BTreeSet<String>,
}

impl PhysicalExprAdapter for DriftGuard {
    fn rewrite(&self, expr: Arc<dyn PhysicalExpr>) -> Result<Arc<dyn PhysicalExpr>> {
        let reads: BTreeSet<String> = collect_columns(&expr)
            .into_iter()
            .map(|c| c.name().to_string())
            .filter(|name| self.drifted.contains(name))
            .collect();
        // A column read as such must hold no nulls where its source's
        // cannot (an expression over it may).
        let not_null = expr
            .downcast_ref::<Column>()
            .is_some_and(|c| self.not_null.contains(c.name()));
        let rewritten = self.inner.rewrite(expr)?;
        if reads.is_empty() {
            return Ok(rewritten);
        }
        Ok(Arc::new(DriftedRead {
            expr: rewritten,
            columns: reads.into_iter().collect::<Vec<_>>().join(", "),
            not_null,
        }))
    }
}

/// An expression over columns a file holds with another type than its
/// source's, or nullable where the source's are not: its errors (a value
/// that does not cast, a null the source's column cannot hold) are the
/// file's, and carry no value. Pruning on such a file does not see through
/// it; files that match their source are not wrapped.
#[derive(Debug)]
pub(crate) struct DriftedRead {
    expr: Arc<dyn PhysicalExpr>,
    columns: String,
    /// A non-nullable column read as such: a null in it is the file's fault.
    not_null: bool,
}

impl fmt::Display for DriftedRead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.expr)
    }
}

impl PartialEq for DriftedRead {
    fn eq(&self, other: &Self) -> bool {
        self.expr.eq(&other.expr)
    }
}

impl Eq for DriftedRead {}

impl Hash for DriftedRead {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.expr.hash(state);
    }
}

impl PhysicalExpr for DriftedRead {
    fn return_field(&self, input_schema: &Schema) -> Result<FieldRef> {
        self.expr.return_field(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let mismatch = |what: &str| {
            DataFusionError::External(Box::new(FileSchemaMismatch(format!(
                "column {} holds {what}",
                self.columns
            ))))
        };
        let value = self.expr.evaluate(batch).map_err(|e| match e.find_root() {
            DataFusionError::ResourcesExhausted(_) => e,
            _ => mismatch("values that cannot be read as the source's type"),
        })?;
        let has_nulls = match &value {
            ColumnarValue::Array(a) => a.null_count() > 0,
            ColumnarValue::Scalar(v) => v.is_null(),
        };
        if self.not_null && has_nulls {
            return Err(mismatch("nulls where the source's column has none"));
        }
        Ok(value)
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.expr]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        let [expr] = <[_; 1]>::try_from(children).map_err(|c| {
            datafusion::common::internal_datafusion_err!("a file read has 1 child, not {}", c.len())
        })?;
        Ok(Arc::new(Self {
            expr,
            columns: self.columns.clone(),
            not_null: self.not_null,
        }))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.expr.fmt_sql(f)
    }
}

impl PhysicalExprAdapterFactory for FileSchemaCheck {
    fn create(
        &self,
        logical_file_schema: SchemaRef,
        physical_file_schema: SchemaRef,
    ) -> Result<Arc<dyn PhysicalExprAdapter>> {
        let (mut drifted, mut not_null) = (BTreeSet::new(), BTreeSet::new());
        for field in logical_file_schema.fields() {
            let mismatch = match physical_file_schema.field_with_name(field.name()) {
                Err(_) if !field.is_nullable() => {
                    Some(format!("column {} is missing", field.name()))
                }
                // DataFusion's own test (struct evolution included).
                Ok(file)
                    if file.data_type() != field.data_type()
                        || (file.is_nullable() && !field.is_nullable()) =>
                {
                    drifted.insert(field.name().clone());
                    if !field.is_nullable() {
                        not_null.insert(field.name().clone());
                    }
                    validate_data_type_compatibility(
                        field.name(),
                        file.data_type(),
                        field.data_type(),
                    )
                    .err()
                    .map(|e| e.strip_backtrace())
                }
                Ok(_) | Err(_) => None,
            };
            if let Some(mismatch) = mismatch {
                return Err(DataFusionError::External(Box::new(FileSchemaMismatch(
                    mismatch,
                ))));
            }
        }
        let inner =
            DefaultPhysicalExprAdapterFactory.create(logical_file_schema, physical_file_schema)?;
        if drifted.is_empty() {
            return Ok(inner);
        }
        Ok(Arc::new(DriftGuard {
            inner,
            drifted,
            not_null,
        }))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema};

    use super::*;

    fn check(source: Vec<Field>, file: Vec<Field>) -> std::result::Result<(), String> {
        FileSchemaCheck
            .create(Arc::new(Schema::new(source)), Arc::new(Schema::new(file)))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn files_are_refused_only_where_datafusion_could_not_read_them() {
        let id = || Field::new("id", DataType::Int64, false);
        let note = || Field::new("note", DataType::Utf8, true);
        // The same columns, a widening cast, a nullable column missing.
        assert!(check(vec![id(), note()], vec![id(), note()]).is_ok());
        assert!(check(vec![id()], vec![Field::new("id", DataType::Int32, false)]).is_ok());
        assert!(check(vec![id(), note()], vec![id()]).is_ok());
        // A non-nullable column missing; a type no cast reaches.
        let missing = check(vec![id(), note()], vec![note()]).unwrap_err();
        assert!(missing.contains("column id is missing"), "{missing}");
        let nested = Field::new(
            "id",
            DataType::Struct(Fields::from(vec![Field::new("x", DataType::Int64, true)])),
            true,
        );
        let typed = check(vec![id()], vec![nested]).unwrap_err();
        assert!(
            typed.contains("does not match its source's schema"),
            "{typed}"
        );
    }

    #[test]
    fn a_value_that_does_not_cast_is_the_files_fault_and_not_quoted() {
        use datafusion::arrow::array::StringArray;
        use datafusion::physical_expr::expressions::col;

        let source = Arc::new(Schema::new(vec![Field::new(
            "badge",
            DataType::Int64,
            true,
        )]));
        let file = Arc::new(Schema::new(vec![Field::new("badge", DataType::Utf8, true)]));
        let same = FileSchemaCheck
            .create(Arc::clone(&source), Arc::clone(&source))
            .unwrap();
        let plain = same.rewrite(col("badge", &source).unwrap()).unwrap();
        assert!(plain.downcast_ref::<DriftedRead>().is_none(), "{plain}");

        let adapter = FileSchemaCheck
            .create(Arc::clone(&source), Arc::clone(&file))
            .unwrap();
        let read = adapter.rewrite(col("badge", &source).unwrap()).unwrap();
        assert!(read.downcast_ref::<DriftedRead>().is_some(), "{read}");
        let batch = |v: &str| {
            RecordBatch::try_new(
                Arc::clone(&file),
                vec![Arc::new(StringArray::from(vec!["12", v]))],
            )
            .unwrap()
        };
        // Values that cast read as before.
        let ok = read.evaluate(&batch("13")).unwrap().into_array(2).unwrap();
        assert_eq!(ok.data_type(), &DataType::Int64);
        let e = read
            .evaluate(&batch("758-44-3250"))
            .unwrap_err()
            .to_string();
        assert!(!e.contains("758"), "{e}");
        assert!(
            e.contains("column badge holds values that cannot be read"),
            "{e}"
        );

        // Nullable in the file where the source's is not: read while it
        // holds no null, the file's fault when it does.
        use datafusion::arrow::array::Int64Array;
        let strict = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let loose = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        let adapter = FileSchemaCheck
            .create(Arc::clone(&strict), Arc::clone(&loose))
            .unwrap();
        let read = adapter.rewrite(col("id", &strict).unwrap()).unwrap();
        let ids = |v: Option<i64>| {
            RecordBatch::try_new(
                Arc::clone(&loose),
                vec![Arc::new(Int64Array::from(vec![Some(1), v]))],
            )
            .unwrap()
        };
        assert!(read.evaluate(&ids(Some(2))).is_ok());
        let e = read.evaluate(&ids(None)).unwrap_err().to_string();
        assert!(e.contains("column id holds nulls"), "{e}");
    }
}
