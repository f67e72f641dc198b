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
//! Dictionary-encoded columns (DataFusion's partition columns, for one)
//! travel as their values, as arrow-flight's encoder sends them by default,
//! so the types FlightInfo announces are the types that arrive.
//!
//! Top-level view columns are converted by [`view_values`] (each value
//! copied once); nested ones go through arrow's cast. A plan that only
//! passes a scan's columns on arrives here as `Utf8` already: the engine
//! reads its strings that way (`engine/src/classic_strings.rs`).
//!
//! The classic forms are also cheaper to send: the IPC writer sends every
//! data buffer a view array references, for each slice of it, while an
//! offset array sends only the bytes of its rows.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, GenericByteViewArray, RecordBatch, StringArray,
};
use datafusion::arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{ByteViewType, DataType, Field, FieldRef, Schema, SchemaRef};
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
        // Dictionaries travel as their values (arrow-flight's default,
        // "hydrated"), so what FlightInfo announces is what arrives.
        DataType::Dictionary(_, v) => wire_type(v),
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
            match (c.data_type(), f.data_type()) {
                (from, to) if from == to => Ok(Arc::clone(c)),
                (DataType::Utf8View, DataType::Utf8) => {
                    let (offsets, values) = view_values(c.as_string_view())?;
                    Ok(Arc::new(StringArray::try_new(offsets, values, c.nulls().cloned())?) as _)
                }
                (DataType::BinaryView, DataType::Binary) => {
                    let (offsets, values) = view_values(c.as_binary_view())?;
                    Ok(Arc::new(BinaryArray::try_new(offsets, values, c.nulls().cloned())?) as _)
                }
                // Nested views (rare in results) go through arrow's cast.
                (_, to) => cast(c, to),
            }
        })
        .collect::<Result<Vec<ArrayRef>, _>>()?;
    RecordBatch::try_new(Arc::clone(to), columns)
}

/// The offsets and values buffer of a view array's classic form, each
/// value copied once (arrow's cast appends value by value through a
/// builder, which was a tenth of the CPU of streaming `lineitem`). Null
/// slots are empty.
///
/// The offsets come first, from the views' lengths; then every value is
/// appended to a buffer reserved for all of them (not zeroed first): an
/// inline value (up to 12 bytes) by a fixed 12-byte copy whose tail is cut
/// off again, a longer one from the data buffer its view points into.
fn view_values<T: ByteViewType + ?Sized>(
    a: &GenericByteViewArray<T>,
) -> Result<(OffsetBuffer<i32>, Buffer), ArrowError> {
    let views = a.views();
    let mut offsets: Vec<i32> = Vec::with_capacity(views.len() + 1);
    offsets.push(0);
    let mut total = 0usize;
    match a.nulls().filter(|n| n.null_count() > 0) {
        None => offsets.extend(views.iter().map(|&v| {
            total += v as u32 as usize;
            total as i32
        })),
        Some(nulls) => offsets.extend(views.iter().zip(nulls.iter()).map(|(&v, valid)| {
            if valid {
                total += v as u32 as usize;
            }
            total as i32
        })),
    }
    // Checked before any offset is used: past 2 GiB they wrapped.
    if i32::try_from(total).is_err() {
        return Err(ArrowError::ComputeError(format!(
            "a result column batch holds {total} bytes of {}, more than the 2 GiB one batch \
             of {} can carry",
            a.data_type(),
            wire_type(a.data_type())
        )));
    }
    let buffers = a.data_buffers();
    // Never zeroed: every byte up to `total` is written below, and the
    // 12 spare bytes let an inline value be copied as a fixed 12 bytes.
    let mut values: Vec<u8> = Vec::with_capacity(total + 12);
    for (i, (&view, ends)) in views.iter().zip(offsets.windows(2)).enumerate() {
        let len = (ends[1] - ends[0]) as usize;
        if len == 0 {
            continue;
        }
        if len <= 12 {
            values.extend_from_slice(&view.to_le_bytes()[4..16]);
            values.truncate(values.len() - (12 - len));
        } else {
            // Long values: buffer index in bits 64..96, offset in 96..128.
            let (buffer, at) = ((view >> 64) as u32 as usize, (view >> 96) as usize);
            let bytes = buffers
                .get(buffer)
                .and_then(|b| b.get(at..at + len))
                .ok_or_else(|| {
                    ArrowError::InvalidArgumentError(format!(
                        "view {i} points outside the array's data buffers"
                    ))
                })?;
            values.extend_from_slice(bytes);
        }
    }
    Ok((
        OffsetBuffer::new(ScalarBuffer::from(offsets)),
        Buffer::from_vec(values),
    ))
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

    /// The classic form of `c` as arrow's own cast makes it.
    fn arrow_cast(c: &ArrayRef) -> ArrayRef {
        cast(c, &wire_type(c.data_type())).unwrap()
    }

    #[test]
    fn view_columns_convert_like_arrow_cast_slices_nulls_and_empties_too() {
        let long = "a value longer than the twelve inline bytes";
        let strings: Vec<Option<String>> = (0..300)
            .map(|i| match i % 7 {
                0 => None,
                1 => Some(String::new()),
                2 => Some("x".repeat(12)),
                3 => Some("y".repeat(13)),
                4 => Some(format!("{long} {i}")),
                5 => Some(format!("ü{i}")),
                _ => Some(format!("{i}")),
            })
            .collect();
        let names = Arc::new(StringViewArray::from_iter(strings.iter().cloned())) as ArrayRef;
        let blobs = Arc::new(BinaryViewArray::from_iter(
            strings
                .iter()
                .map(|s| s.as_ref().map(|s| s.as_bytes().to_vec())),
        )) as ArrayRef;
        for column in [names, blobs] {
            // Whole, sliced at an odd offset (the null mask's bits shift),
            // and empty.
            for c in [column.clone(), column.slice(5, 123), column.slice(300, 0)] {
                let batch = RecordBatch::try_from_iter(vec![("c", Arc::clone(&c))]).unwrap();
                let to = wire_schema(&batch.schema()).unwrap();
                let out = wire_batch(&batch, &to).unwrap();
                let expected = arrow_cast(&c);
                assert_eq!(out.column(0).data_type(), expected.data_type());
                assert_eq!(out.column(0).as_ref(), expected.as_ref());
                assert_eq!(out.column(0).null_count(), c.null_count());
            }
        }
    }

    #[test]
    fn a_null_slot_whose_view_has_a_length_converts_to_an_empty_null() {
        // Arrow leaves a null slot's view unspecified; a builder may keep
        // the value it had. Such bytes must not reach the client.
        let valid = StringViewArray::from(vec!["secret value longer than 12", "tiny"]);
        let nulls = datafusion::arrow::buffer::NullBuffer::from(vec![false, true]);
        let masked = StringViewArray::try_new(
            valid.views().clone(),
            valid.data_buffers().to_vec(),
            Some(nulls),
        )
        .unwrap();
        let (offsets, values) = view_values(&masked).unwrap();
        assert_eq!(offsets.as_ref(), &[0, 0, 4]);
        assert_eq!(values.as_slice(), b"tiny");
    }

    #[test]
    fn dictionary_columns_arrive_as_their_values() {
        use datafusion::arrow::array::DictionaryArray;
        use datafusion::arrow::datatypes::Int32Type;

        let dict: DictionaryArray<Int32Type> =
            vec![Some("north"), None, Some("south"), Some("north")]
                .into_iter()
                .collect();
        let schema = Schema::new(vec![Field::new("region", dict.data_type().clone(), true)]);
        let batch = RecordBatch::try_new(Arc::new(schema.clone()), vec![Arc::new(dict)]).unwrap();
        let to = wire_schema(&schema).expect("dictionaries change on the wire");
        assert_eq!(to.field(0).data_type(), &DataType::Utf8);
        let sent = wire_batch(&batch, &to).unwrap();
        let values: Vec<Option<&str>> = sent.column(0).as_string::<i32>().iter().collect();
        assert_eq!(values, [Some("north"), None, Some("south"), Some("north")]);
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
