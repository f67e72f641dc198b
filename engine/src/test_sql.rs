//! SQL helpers for the planner rules' unit tests.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;

/// The answer of `sql`, as a pretty-printed table.
pub(crate) async fn rows(ctx: &SessionContext, sql: &str) -> String {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    pretty_format_batches(&batches).unwrap().to_string()
}

/// The optimized logical plan of `sql`, indented.
pub(crate) async fn plan(ctx: &SessionContext, sql: &str) -> String {
    let df = ctx.sql(sql).await.unwrap();
    df.into_optimized_plan()
        .unwrap()
        .display_indent()
        .to_string()
}

/// The physical plan of `sql`, not executed.
pub(crate) async fn physical_plan(ctx: &SessionContext, sql: &str) -> Arc<dyn ExecutionPlan> {
    ctx.sql(sql)
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap()
}
