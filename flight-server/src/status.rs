//! Mapping of engine errors onto gRPC status codes.

use tonic::{Code, Status};
use veil_engine::{ErrorKind, VeilError};

/// Longest status message sent: errors that quote a statement (a syntax
/// error in a 1 MiB script) would otherwise not fit in the HTTP/2 trailers
/// a client accepts, and the client would see a protocol error instead.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// The gRPC status for an engine error. Internal errors keep their message
/// (it never holds data values or keys) but get code Internal.
pub fn to_status(e: VeilError) -> Status {
    let code = match e.kind() {
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::Aborted => Code::Aborted,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::Internal => Code::Internal,
    };
    let mut message = e.to_string();
    if message.len() > MAX_MESSAGE_BYTES {
        message.truncate(message.floor_char_boundary(MAX_MESSAGE_BYTES));
        message.push_str(" ... (message truncated)");
    }
    Status::new(code, message)
}

/// Converts anything that converts into an engine error.
pub fn status<E: Into<VeilError>>(e: E) -> Status {
    to_status(e.into())
}
