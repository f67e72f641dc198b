//! Catalog metadata RPCs, answered from the caller's governed catalog, so a
//! source the caller is not subscribed to is never listed; inside a project
//! the catalog is the project's and holds only its sources.

use std::sync::{Arc, LazyLock};

use arrow_flight::sql::metadata::{
    SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::{
    CommandGetDbSchemas, CommandGetTables, Nullable, Searchable, SqlInfo, XdbcDataType,
};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use tonic::Status;
use veil_engine::Session;

use crate::status::to_status;

/// Table type reported for data sources.
pub const TABLE_TYPE: &str = "TABLE";

/// Static server information for GetSqlInfo.
pub static SQL_INFO: LazyLock<Option<SqlInfoData>> = LazyLock::new(|| {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "Veil");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "59");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(SqlInfo::FlightSqlServerTransaction, 0i32);
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, false);
    b.build().ok()
});

fn xdbc(name: &str, dt: XdbcDataType, size: Option<i32>) -> XdbcTypeInfo {
    XdbcTypeInfo {
        type_name: name.into(),
        data_type: dt,
        column_size: size,
        literal_prefix: None,
        literal_suffix: None,
        create_params: None,
        nullable: Nullable::NullabilityNullable,
        case_sensitive: false,
        searchable: Searchable::Full,
        unsigned_attribute: Some(false),
        fixed_prec_scale: false,
        auto_increment: Some(false),
        local_type_name: Some(name.into()),
        minimum_scale: None,
        maximum_scale: None,
        sql_data_type: dt,
        datetime_subcode: None,
        num_prec_radix: None,
        interval_precision: None,
    }
}

/// The SQL types Veil returns, for GetXdbcTypeInfo.
pub static XDBC_INFO: LazyLock<Option<XdbcTypeInfoData>> = LazyLock::new(|| {
    let mut b = XdbcTypeInfoDataBuilder::new();
    b.append(xdbc("BOOLEAN", XdbcDataType::XdbcBit, Some(1)));
    b.append(xdbc("INTEGER", XdbcDataType::XdbcInteger, Some(32)));
    b.append(xdbc("BIGINT", XdbcDataType::XdbcBigint, Some(64)));
    b.append(xdbc("DOUBLE", XdbcDataType::XdbcDouble, Some(53)));
    b.append(xdbc("DECIMAL", XdbcDataType::XdbcDecimal, Some(38)));
    b.append(xdbc("VARCHAR", XdbcDataType::XdbcVarchar, None));
    b.append(xdbc("DATE", XdbcDataType::XdbcDate, None));
    b.append(xdbc("TIMESTAMP", XdbcDataType::XdbcTimestamp, None));
    b.build().ok()
});

/// (schema, table, arrow schema) of every source the caller may see.
pub async fn visible_tables(session: &Session) -> Result<Vec<(String, String, SchemaRef)>, Status> {
    let (ctx, _) = session.context().map_err(to_status)?;
    let mut out = vec![];
    let Some(catalog) = ctx.catalog(session.catalog_name()) else {
        return Ok(out);
    };
    for schema_name in catalog.schema_names() {
        let Some(schema) = catalog.schema(&schema_name) else {
            continue;
        };
        for table in schema.table_names() {
            if let Ok(Some(t)) = schema.table(&table).await {
                out.push((schema_name.clone(), table, t.schema()));
            }
        }
    }
    Ok(out)
}

/// Rows of GetDbSchemas.
pub async fn db_schemas(
    session: &Session,
    cmd: CommandGetDbSchemas,
) -> Result<RecordBatch, Status> {
    let mut b = cmd.into_builder();
    let mut seen = std::collections::BTreeSet::new();
    for (schema, _, _) in visible_tables(session).await? {
        if seen.insert(schema.clone()) {
            b.append(session.catalog_name(), schema);
        }
    }
    b.build().map_err(|e| Status::internal(e.to_string()))
}

/// Rows of GetTables.
pub async fn tables(session: &Session, cmd: CommandGetTables) -> Result<RecordBatch, Status> {
    let mut b = cmd.into_builder();
    for (schema, table, arrow_schema) in visible_tables(session).await? {
        b.append(
            session.catalog_name(),
            schema,
            table,
            TABLE_TYPE,
            &super::wire::client_schema(arrow_schema),
        )
        .map_err(|e| Status::internal(e.to_string()))?;
    }
    b.build().map_err(|e| Status::internal(e.to_string()))
}

/// The spec schema of GetPrimaryKeys.
pub fn primary_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_name", DataType::Utf8, true),
        Field::new("key_sequence", DataType::Int32, false),
    ]))
}

/// The spec schema of GetExportedKeys / GetImportedKeys / GetCrossReference.
pub fn foreign_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("pk_catalog_name", DataType::Utf8, true),
        Field::new("pk_db_schema_name", DataType::Utf8, true),
        Field::new("pk_table_name", DataType::Utf8, false),
        Field::new("pk_column_name", DataType::Utf8, false),
        Field::new("fk_catalog_name", DataType::Utf8, true),
        Field::new("fk_db_schema_name", DataType::Utf8, true),
        Field::new("fk_table_name", DataType::Utf8, false),
        Field::new("fk_column_name", DataType::Utf8, false),
        Field::new("key_sequence", DataType::Int32, false),
        Field::new("fk_key_name", DataType::Utf8, true),
        Field::new("pk_key_name", DataType::Utf8, true),
        Field::new("update_rule", DataType::UInt8, false),
        Field::new("delete_rule", DataType::UInt8, false),
    ]))
}
