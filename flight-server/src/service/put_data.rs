//! The record batches a DoPut carries (bound parameters, ingested rows).
//!
//! They are the client's bytes: a message that does not decode is the
//! client's mistake (InvalidArgument), and so is one on which arrow's IPC
//! reader panics rather than failing: arrow-ipc 59 slices a record
//! batch's buffers out of the message body without checking that they lie
//! inside it (`Buffer::slice_with_length` asserts). Before, the panic reset
//! the client's HTTP/2 stream ("h2 protocol error", code Cancelled), and
//! other decoding errors came back as Internal.

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::sql::server::PeekableFlightDataStream;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use futures::{Stream, StreamExt, TryStreamExt};
use tonic::Status;

/// A DoPut's record batches, decoded; the first failure ends the stream.
pub(super) struct PutBatches {
    inner: FlightRecordBatchStream,
    failed: bool,
}

impl PutBatches {
    /// The batches of `request`'s messages, without the descriptor-only
    /// message some clients send first (the arrow-rs client's prepared
    /// update does).
    pub(super) fn new(request: tonic::Request<PeekableFlightDataStream>) -> Self {
        let messages = request
            .into_inner()
            .map_err(FlightError::from)
            .try_filter(|m| {
                std::future::ready(!(m.data_header.is_empty() && m.data_body.is_empty()))
            });
        Self {
            inner: FlightRecordBatchStream::new_from_flight_data(messages),
            failed: false,
        }
    }

    /// The schema the stream announced, once its first message is read.
    pub(super) fn schema(&self) -> Option<&SchemaRef> {
        self.inner.schema()
    }
}

/// The error of data that does not decode.
fn undecodable(why: &str) -> Status {
    Status::invalid_argument(format!("the Arrow IPC data sent cannot be decoded: {why}"))
}

impl Stream for PutBatches {
    type Item = Result<RecordBatch, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.poll_next_unpin(cx)));
        let error = match polled {
            Ok(Poll::Ready(Some(Ok(batch)))) => return Poll::Ready(Some(Ok(batch))),
            Ok(Poll::Ready(None)) => return Poll::Ready(None),
            Ok(Poll::Pending) => return Poll::Pending,
            // The transport's own error (the client went away, ...).
            Ok(Poll::Ready(Some(Err(FlightError::Tonic(status))))) => *status,
            Ok(Poll::Ready(Some(Err(e)))) => undecodable(&e.to_string()),
            Err(panic) => undecodable(veil_engine::panic_message(panic.as_ref())),
        };
        self.failed = true;
        Poll::Ready(Some(Err(error)))
    }
}
