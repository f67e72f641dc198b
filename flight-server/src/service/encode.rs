//! Record batches as Flight data.
//!
//! Like arrow-flight's `FlightDataEncoder` (the schema message first, then
//! one IPC message per batch, batches over 2 MiB of buffers split by rows
//! so a message stays under the 4 MiB gRPC clients accept by default), but
//! the IPC body of every batch is allocated at the size of the one before.
//! arrow-flight 59 keeps that capacity only between the pieces of a split
//! batch, so each unsplit batch's body grew from empty by doubling: 3.5 %
//! of the CPU of streaming `lineitem` went to those reallocations and the
//! pages they touched.
//!
//! Batches come from [`super::wire`], whose types hold no dictionaries, so
//! no dictionary messages are ever needed.

use std::future::ready;

use arrow_flight::{FlightData, SchemaAsIpc};
use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::writer::{
    DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions,
};
use futures::future::Either;
use futures::{stream, Stream, StreamExt};
use tonic::Status;

use super::DoGetStream;
use crate::status::internal;

/// Largest buffer size a batch is sent in one message with.
const MAX_MESSAGE_BUFFERS: usize = 2 * 1024 * 1024;

/// The Flight data of a result: `schema`'s message, then `batches` (in
/// that schema); an error ends the stream after the messages before it.
pub(super) fn flight_stream<S>(schema: &Schema, batches: S) -> DoGetStream
where
    S: Stream<Item = Result<RecordBatch, Status>> + Send + 'static,
{
    let mut encoder = Encoder::new();
    let head = encoder.schema(schema);
    let body = batches
        .map(move |b| {
            b.and_then(|b| {
                encoder
                    .batch(&b)
                    .map_err(|e| internal(format!("cannot encode a result batch: {e}")))
            })
        })
        .flat_map(|r| match r {
            Ok(messages) => Either::Left(stream::iter(messages.into_iter().map(Ok))),
            Err(e) => Either::Right(stream::once(ready(Err(e)))),
        });
    Box::pin(stream::once(ready(Ok(head))).chain(body))
}

/// Encodes one stream's batches.
pub(super) struct Encoder {
    options: IpcWriteOptions,
    generator: IpcDataGenerator,
    dictionaries: DictionaryTracker,
    context: IpcWriteContext,
}

impl Encoder {
    pub(super) fn new() -> Self {
        let mut context = IpcWriteContext::default();
        context.set_reserve_scratch(true);
        Self {
            options: IpcWriteOptions::default(),
            generator: IpcDataGenerator::default(),
            dictionaries: DictionaryTracker::new(false),
            context,
        }
    }

    /// The message announcing `schema`, sent before any batch.
    pub(super) fn schema(&self, schema: &Schema) -> FlightData {
        SchemaAsIpc::new(schema, &self.options).into()
    }

    /// The messages carrying `batch`.
    pub(super) fn batch(&mut self, batch: &RecordBatch) -> Result<Vec<FlightData>, ArrowError> {
        let size: usize = batch
            .columns()
            .iter()
            .map(|c| c.get_buffer_memory_size())
            .sum();
        let pieces = size.div_ceil(MAX_MESSAGE_BUFFERS).max(1);
        let rows = batch.num_rows();
        let per_piece = rows.div_ceil(pieces).max(1);
        let mut out = Vec::with_capacity(pieces);
        let mut offset = 0;
        loop {
            let piece = batch.slice(offset, per_piece.min(rows - offset));
            let (dictionaries, data) = self.generator.encode(
                &piece,
                &mut self.dictionaries,
                &self.options,
                &mut self.context,
            )?;
            out.extend(dictionaries.into_iter().map(FlightData::from));
            out.push(data.into());
            offset += piece.num_rows();
            if offset >= rows {
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_flight::utils::flight_data_to_batches;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field};

    use super::*;

    fn batch(rows: usize, width: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("text", DataType::Utf8, true),
        ]));
        let ids = Int64Array::from_iter_values(0..rows as i64);
        let text =
            StringArray::from_iter((0..rows).map(|i| (i % 7 != 0).then(|| format!("{i:0width$}"))));
        RecordBatch::try_new(schema, vec![Arc::new(ids), Arc::new(text)]).unwrap()
    }

    fn round_trip(batches: &[RecordBatch]) -> (Vec<FlightData>, Vec<RecordBatch>) {
        let mut encoder = Encoder::new();
        let mut data = vec![encoder.schema(&batches[0].schema())];
        for b in batches {
            data.extend(encoder.batch(b).unwrap());
        }
        let decoded = flight_data_to_batches(&data).unwrap();
        (data, decoded)
    }

    #[test]
    fn batches_of_different_sizes_arrive_whole_and_in_order() {
        let batches = [batch(10, 4), batch(5000, 20), batch(0, 1), batch(3, 300)];
        let (data, decoded) = round_trip(&batches);
        // A schema message and one message per batch, empty ones included.
        assert_eq!(data.len(), 5);
        assert_eq!(decoded.len(), batches.len());
        for (sent, got) in batches.iter().zip(&decoded) {
            assert_eq!(sent, got);
        }
    }

    #[test]
    fn a_batch_over_two_mib_is_split_into_messages_that_fit() {
        // 40,000 rows of 100-byte strings: about 4.3 MB of buffers.
        let big = batch(40_000, 100);
        let (data, decoded) = round_trip(std::slice::from_ref(&big));
        let messages = &data[1..];
        assert!(messages.len() >= 3, "{} messages", messages.len());
        for m in messages {
            assert!(m.data_body.len() <= MAX_MESSAGE_BUFFERS + 64 * 1024);
        }
        let rows: usize = decoded.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(rows, 40_000);
        let whole = datafusion::arrow::compute::concat_batches(&big.schema(), &decoded).unwrap();
        assert_eq!(whole, big);
    }

    #[test]
    fn a_slice_sends_only_its_rows() {
        let b = batch(1000, 10);
        let (data, decoded) = round_trip(&[b.slice(990, 10)]);
        assert_eq!(decoded, vec![b.slice(990, 10)]);
        // Ten ids, ten offsets, a validity bitmap and about 90 bytes of text.
        assert!(
            data[1].data_body.len() < 512,
            "{} bytes",
            data[1].data_body.len()
        );
    }
}
