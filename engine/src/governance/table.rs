//! [`GovernedTable`]: what the per-session catalog hands DataFusion for a
//! data source. It cannot be scanned: the governance analyzer must replace
//! every scan of it, and a scan that escaped the rewrite fails closed.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{plan_err, Result};
use datafusion::datasource::TableType;
use datafusion::logical_expr::{Expr, TableSource};
use datafusion::physical_plan::ExecutionPlan;

/// A governed data source as seen by the SQL planner.
#[derive(Debug)]
pub struct GovernedTable {
    /// `schema.table`.
    pub source: String,
    /// The raw table (a ListingTable over Parquet). Only the analyzer reaches it.
    pub(crate) inner: Arc<dyn TableProvider>,
    /// What the principal sees: masked columns with their masked types.
    schema: SchemaRef,
}

impl GovernedTable {
    /// Wraps a raw provider; `schema` is the principal's view of it (same
    /// columns in the same order, masked types).
    pub fn new(source: String, inner: Arc<dyn TableProvider>, schema: SchemaRef) -> Self {
        Self {
            source,
            inner,
            schema,
        }
    }

    /// The governed table behind a plan's table source, if it is one.
    pub fn from_source(source: &Arc<dyn TableSource>) -> Option<Arc<GovernedTable>> {
        let provider = datafusion::datasource::source_as_provider(source).ok()?;
        let any: Arc<dyn Any + Send + Sync> = provider;
        any.downcast::<GovernedTable>().ok()
    }
}

#[async_trait]
impl TableProvider for GovernedTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan_err!(
            "refusing to scan {}: the governed plan rewrite did not run",
            self.source
        )
    }
}
