//! The Arrow types results take on the wire.
//!
//! DataFusion reads Parquet strings as `Utf8View` and maps SQL `VARCHAR` to
//! it, but many Flight SQL clients cannot read view types: the Flight SQL
//! JDBC driver (DBeaver's) fails with "Unsupported ArrowType Utf8View", and
//! older Arrow libraries do not know them. Every schema and batch a client
//! receives therefore carries `Utf8View` as `Utf8` and `BinaryView` as
//! `Binary`, nested types included. Inside the engine nothing changes
//! (views stay where DataFusion is faster with them).
//!
//! The classic forms are also cheaper to send: the IPC writer sends every
//! data buffer a view array references, for each slice of it, while an
//! offset array sends only the bytes of its rows.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;

/// The type a client receives for `t`.
fn wire_type(t: &DataType) -> DataType {
    match t {
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        DataType::List(f) => DataType::List(wire_field(f)),
        DataType::LargeList(f) => DataType::LargeList(wire_field(f)),
        DataType::FixedSizeList(f, n) => DataType::FixedSizeList(wire_field(f), *n),
        DataType::Struct(fields) => DataType::Struct(fields.iter().map(wire_field).collect()),
        DataType::Map(f, sorted) => DataType::Map(wire_field(f), *sorted),
        DataType::Dictionary(k, v) => DataType::Dictionary(k.clone(), Box::new(wire_type(v))),
        other => other.clone(),
    }
}

fn wire_field(f: &FieldRef) -> FieldRef {
    Arc::new(Field::clone(f).with_data_type(wire_type(f.data_type())))
}

/// The schema a client receives for `schema`, or `None` when it is the same.
pub(super) fn wire_schema(schema: &Schema) -> Option<SchemaRef> {
    let fields: Vec<FieldRef> = schema.fields().iter().map(wire_field).collect();
    if fields.iter().zip(schema.fields()).all(|(a, b)| a == b) {
        return None;
    }
    Some(Arc::new(Schema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    )))
}

/// `schema` as a client receives it.
pub(super) fn client_schema(schema: SchemaRef) -> SchemaRef {
    wire_schema(&schema).unwrap_or(schema)
}

/// `batch` in the wire schema `to` (from [`wire_schema`] of its schema).
pub(super) fn wire_batch(batch: &RecordBatch, to: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    let columns = batch
        .columns()
        .iter()
        .zip(to.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(Arc::clone(c))
            } else {
                cast(c, f.data_type())
            }
        })
        .collect::<Result<Vec<ArrayRef>, _>>()?;
    RecordBatch::try_new(Arc::clone(to), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{
        Array, AsArray, BinaryViewArray, Int32Array, ListBuilder, StringViewArray,
        StringViewBuilder, StructArray,
    };

    #[test]
    fn view_types_arrive_as_their_classic_forms_nested_ones_too() {
        let mut list = ListBuilder::new(StringViewBuilder::new());
        list.values()
            .append_value("a string longer than twelve bytes");
        list.values().append_null();
        list.append(true);
        list.append(false);
        let list = Arc::new(list.finish()) as ArrayRef;
        let names = Arc::new(StringViewArray::from(vec![
            Some("ann"),
            None,
            Some("a name longer than twelve bytes"),
        ])) as ArrayRef;
        let blobs = Arc::new(BinaryViewArray::from(vec![
            Some(b"\x00\x01".as_slice()),
            Some(b"".as_slice()),
            None,
        ])) as ArrayRef;
        let inner = Arc::new(StructArray::from(vec![(
            Arc::new(Field::new("tag", DataType::Utf8View, true)),
            Arc::clone(&names),
        )])) as ArrayRef;
        let ids = Arc::new(Int32Array::from(vec![1, 2, 3])) as ArrayRef;
        let list = datafusion::arrow::compute::concat(&[&list, &list.slice(0, 1)]).unwrap();
        let batch = RecordBatch::try_from_iter(vec![
            ("id", ids),
            ("name", names),
            ("blob", blobs),
            ("tags", list),
            ("nested", inner),
        ])
        .unwrap();

        let to = wire_schema(&batch.schema()).expect("the schema has view types");
        let types: Vec<DataType> = to.fields().iter().map(|f| f.data_type().clone()).collect();
        let list_of = |t| DataType::List(Arc::new(Field::new("item", t, true)));
        assert_eq!(
            types,
            [
                DataType::Int32,
                DataType::Utf8,
                DataType::Binary,
                list_of(DataType::Utf8),
                DataType::Struct(vec![Field::new("tag", DataType::Utf8, true)].into()),
            ]
        );
        let out = wire_batch(&batch, &to).unwrap();
        assert_eq!(out.schema(), to);
        let name = out.column(1).as_string::<i32>();
        assert_eq!(name.value(2), "a name longer than twelve bytes");
        assert!(name.is_null(1));
        assert_eq!(out.column(2).as_binary::<i32>().value(0), b"\x00\x01");
        let tags = out.column(3).as_list::<i32>();
        assert_eq!(
            tags.value(0).as_string::<i32>().value(0),
            "a string longer than twelve bytes"
        );
        assert!(tags.is_null(1));
        // Unchanged columns are the same arrays, not copies.
        assert!(Arc::ptr_eq(out.column(0), batch.column(0)));
    }

    #[test]
    fn a_schema_without_view_types_is_left_alone() {
        let schema = Schema::new(vec![
            Field::new("a", DataType::Utf8, true),
            Field::new("b", DataType::Int64, false),
        ]);
        assert!(wire_schema(&schema).is_none());
        let schema = Arc::new(schema);
        assert!(Arc::ptr_eq(&client_schema(Arc::clone(&schema)), &schema));
    }
}
