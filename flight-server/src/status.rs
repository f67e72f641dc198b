//! Mapping of engine errors onto gRPC status codes.

use tonic::{Code, Status};
use veil_engine::{ErrorKind, VeilError};

/// Longest status message sent: errors that quote a statement (a syntax
/// error in a 1 MiB script) would otherwise not fit in the HTTP/2 trailers
/// a client accepts, and the client would see a protocol error instead.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// The gRPC status for an engine error.
///
/// An internal error (a bug, a panic, a storage failure) is not the
/// caller's to read: its text can hold a storage path, a panic's message or
/// whatever a library put in it. The caller gets code Internal and an
/// incident id; the server log gets the whole error under that id at ERROR.
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
        // The engine recorded it under an incident id already.
        ErrorKind::Internal if matches!(e, VeilError::Incident(_)) => {
            return Status::internal(e.to_string());
        }
        ErrorKind::Internal => return internal(e),
    };
    let mut message = e.to_string();
    if message.len() > MAX_MESSAGE_BYTES {
        message.truncate(message.floor_char_boundary(MAX_MESSAGE_BYTES));
        message.push_str(" ... (message truncated)");
    }
    Status::new(code, message)
}

/// Code Internal with an incident id; the error itself goes to the log.
pub fn internal(e: impl std::fmt::Display) -> Status {
    let incident = hex::encode(rand::random::<[u8; 6]>());
    tracing::error!(incident = %incident, "internal error: {e}");
    Status::internal(format!(
        "internal error, incident {incident}: the server could not complete the request \
         (its log has the details under this incident)"
    ))
}

/// Converts anything that converts into an engine error.
pub fn status<E: Into<VeilError>>(e: E) -> Status {
    to_status(e.into())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Log lines written while it is the default subscriber.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<u8>>>);

    impl Write for Log {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_internal_error_reaches_the_log_not_the_caller() {
        let log = Log::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let secret = "the statement failed: index 7 out of range for 758-44-3250 \
                      at /srv/warehouse/projects/3/keep";
        let status = tracing::subscriber::with_default(subscriber, || {
            to_status(VeilError::Internal(secret.into()))
        });
        assert_eq!(status.code(), Code::Internal);
        let message = status.message();
        for hidden in ["758-44-3250", "/srv/warehouse", "index 7"] {
            assert!(!message.contains(hidden), "{message}");
        }
        let incident = message
            .strip_prefix("internal error, incident ")
            .and_then(|rest| rest.split(':').next())
            .unwrap_or_else(|| panic!("no incident in {message}"));
        assert_eq!(incident.len(), 12, "{message}");
        let logged = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        let line = logged
            .lines()
            .find(|l| l.contains(incident))
            .unwrap_or_else(|| panic!("incident {incident} not logged: {logged}"));
        assert!(line.contains("ERROR") && line.contains(secret), "{line}");

        // Two failures, two incidents.
        let again = to_status(VeilError::Internal(secret.into()));
        assert_ne!(again.message(), message);
        // Every other kind keeps its message.
        let denied = to_status(VeilError::PermissionDenied("bob may not".into()));
        assert_eq!(denied.code(), Code::PermissionDenied);
        assert_eq!(denied.message(), "permission denied: bob may not");
    }
}
