//! Policy conditions (`UNLESS ...`, `WHEN ...`) and row predicates are
//! validated without panicking, whatever the text.
#![no_main]

use std::sync::{Arc, LazyLock};

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::DFSchema;
use libfuzzer_sys::fuzz_target;

static SCHEMA: LazyLock<Option<DFSchema>> = LazyLock::new(|| {
    let schema = Schema::new(vec![
        Field::new("employee_id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("region", DataType::Utf8, true),
        Field::new("salary", DataType::Float64, true),
        Field::new("hired", DataType::Date32, true),
    ]);
    DFSchema::try_from_qualified_schema("employees", &Arc::new(schema).as_ref().clone()).ok()
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = veil_engine::condition::parse_condition(text);
    if let Some(schema) = SCHEMA.as_ref() {
        let _ = veil_engine::governance::principal_fns::parse_predicate(text, schema);
    }
});
