//! Mapping of engine errors onto gRPC status codes.

use tonic::{Code, Status};
use veil_engine::{ErrorKind, VeilError};

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
    Status::new(code, e.to_string())
}

/// Converts anything that converts into an engine error.
pub fn status<E: Into<VeilError>>(e: E) -> Status {
    to_status(e.into())
}
