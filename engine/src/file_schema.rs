//! A source's files checked against the schema the source was created with.
//!
//! DataFusion adapts each file to its table's schema (casts, nulls for a
//! nullable column the file lacks) and fails a file it cannot adapt with
//! an execution error, which reads like the user's mistake. A source's
//! files are rewritten outside Veil, so such a file is the source's fault:
//! [`FileSchemaCheck`] fails it with [`FileSchemaMismatch`], which the
//! catalog reports as the source being unreadable (`catalog.rs`).

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::nested_struct::validate_data_type_compatibility;
use datafusion::error::{DataFusionError, Result};
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

impl PhysicalExprAdapterFactory for FileSchemaCheck {
    fn create(
        &self,
        logical_file_schema: SchemaRef,
        physical_file_schema: SchemaRef,
    ) -> Result<Arc<dyn PhysicalExprAdapter>> {
        for field in logical_file_schema.fields() {
            let mismatch = match physical_file_schema.field_with_name(field.name()) {
                Err(_) if !field.is_nullable() => {
                    Some(format!("column {} is missing", field.name()))
                }
                // DataFusion's own test (struct evolution included).
                Ok(file) => validate_data_type_compatibility(
                    field.name(),
                    file.data_type(),
                    field.data_type(),
                )
                .err()
                .map(|e| e.strip_backtrace()),
                Err(_) => None,
            };
            if let Some(mismatch) = mismatch {
                return Err(DataFusionError::External(Box::new(FileSchemaMismatch(
                    mismatch,
                ))));
            }
        }
        DefaultPhysicalExprAdapterFactory.create(logical_file_schema, physical_file_schema)
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
}
