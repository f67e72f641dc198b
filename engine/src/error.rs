//! Engine errors. Every variant names the object and, for refusals, the
//! missing right; [`VeilError::kind`] tells the transport which status to use.

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use thiserror::Error;

/// What kind of failure an error is; maps one-to-one onto gRPC codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad credentials or token.
    Unauthenticated,
    /// The caller lacks a permission, ownership or subscription.
    PermissionDenied,
    /// Malformed statement or bad parameter.
    InvalidArgument,
    /// A named object does not exist.
    NotFound,
    /// A named object exists already.
    AlreadyExists,
    /// The system is not in a state that allows the operation.
    FailedPrecondition,
    /// A concurrent writer won; retrying may succeed.
    Aborted,
    /// A limit (size, memory) would be passed.
    ResourceExhausted,
    /// A bug or an unexpected storage failure.
    Internal,
}

/// An engine error.
#[derive(Debug, Error)]
pub enum VeilError {
    /// Bad credentials or token.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// A refusal; the text names who, what and the missing right.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// Malformed input.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A named object does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A named object exists already.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// Wrong state for the operation.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A concurrent change won (optimistic concurrency); nothing was written.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A limit would be passed; nothing was written.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// A policy cannot be applied; the query is denied (fail closed).
    #[error("policy {policy} cannot be applied, query denied: {reason}")]
    PolicyFailure {
        /// The policy's name.
        policy: String,
        /// Why it cannot be applied.
        reason: String,
    },
    /// Catalog storage failure.
    #[error("catalog storage error: {0}")]
    Store(#[from] rusqlite::Error),
    /// Query planning or execution failure.
    #[error("{0}")]
    DataFusion(Box<DataFusionError>),
    /// Anything else unexpected.
    #[error("internal error: {0}")]
    Internal(String),
    /// An internal error as its client gets it: only the incident id under
    /// which its audit record and the server log keep the whole error (whose
    /// text can hold a storage path, a panic's message or a value).
    #[error(
        "internal error, incident {0}: the server could not complete the request \
         (the audit log and the server log have the details under this incident)"
    )]
    Incident(String),
}

impl VeilError {
    /// The error for a client: an internal error becomes an [`VeilError::Incident`]
    /// with a new id (returned too, with the whole error logged at ERROR
    /// under it); any other error is returned as it is.
    pub fn into_incident(self) -> (VeilError, Option<String>) {
        if self.kind() != ErrorKind::Internal || matches!(self, VeilError::Incident(_)) {
            return (self, None);
        }
        let id = hex::encode(rand::random::<[u8; 6]>());
        tracing::error!(incident = %id, "internal error: {self}");
        (VeilError::Incident(id.clone()), Some(id))
    }
}

impl From<DataFusionError> for VeilError {
    fn from(e: DataFusionError) -> Self {
        // Unwrap our own errors that travelled through DataFusion.
        match e {
            DataFusionError::External(inner) => match inner.downcast::<VeilError>() {
                Ok(v) => *v,
                Err(other) => VeilError::DataFusion(Box::new(DataFusionError::External(other))),
            },
            DataFusionError::Diagnostic(_, inner) => VeilError::from(*inner),
            DataFusionError::Context(ctx, inner) => match VeilError::from(*inner) {
                VeilError::DataFusion(d) => {
                    VeilError::DataFusion(Box::new(DataFusionError::Context(ctx, d)))
                }
                v => v,
            },
            DataFusionError::Shared(shared) => match std::sync::Arc::try_unwrap(shared) {
                Ok(inner) => VeilError::from(inner),
                Err(shared) => VeilError::DataFusion(Box::new(DataFusionError::Shared(shared))),
            },
            other => VeilError::DataFusion(Box::new(other)),
        }
    }
}

impl From<datafusion::arrow::error::ArrowError> for VeilError {
    fn from(e: datafusion::arrow::error::ArrowError) -> Self {
        VeilError::DataFusion(Box::new(DataFusionError::ArrowError(Box::new(e), None)))
    }
}

impl From<VeilError> for DataFusionError {
    fn from(e: VeilError) -> Self {
        match e {
            VeilError::DataFusion(d) => *d,
            other => DataFusionError::External(Box::new(other)),
        }
    }
}

impl From<veil_udfs::UdfError> for VeilError {
    fn from(e: veil_udfs::UdfError) -> Self {
        VeilError::InvalidArgument(e.to_string())
    }
}

impl VeilError {
    /// The transport-independent kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            VeilError::Unauthenticated(_) => ErrorKind::Unauthenticated,
            VeilError::PermissionDenied(_) => ErrorKind::PermissionDenied,
            VeilError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            VeilError::NotFound(_) => ErrorKind::NotFound,
            VeilError::AlreadyExists(_) => ErrorKind::AlreadyExists,
            VeilError::FailedPrecondition(_) | VeilError::PolicyFailure { .. } => {
                ErrorKind::FailedPrecondition
            }
            VeilError::Conflict(_) => ErrorKind::Aborted,
            VeilError::ResourceExhausted(_) => ErrorKind::ResourceExhausted,
            VeilError::DataFusion(e)
                if matches!(e.find_root(), DataFusionError::ResourcesExhausted(_)) =>
            {
                ErrorKind::ResourceExhausted
            }
            VeilError::DataFusion(e) => datafusion_kind(e),
            VeilError::Store(_) | VeilError::Internal(_) | VeilError::Incident(_) => {
                ErrorKind::Internal
            }
        }
    }
}

/// The kind of a DataFusion error, by what is under its context layers
/// ("Optimizer rule 'simplify_expressions' failed" wraps the user's bad
/// regex or cast as much as an internal failure).
fn datafusion_kind(e: &DataFusionError) -> ErrorKind {
    let mut e = e;
    loop {
        e = match e {
            DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => inner,
            DataFusionError::Shared(inner) => inner,
            DataFusionError::Plan(m) if m.contains("not found") => return ErrorKind::NotFound,
            DataFusionError::SQL(..)
            | DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_)
            | DataFusionError::Execution(_)
            | DataFusionError::Configuration(_) => return ErrorKind::InvalidArgument,
            DataFusionError::ArrowError(e, _) => {
                return match e.as_ref() {
                    ArrowError::IoError(m, io)
                        if spill_limit(m) || spill_limit(&io.to_string()) =>
                    {
                        ErrorKind::ResourceExhausted
                    }
                    // The disk, not the statement.
                    ArrowError::IoError(..) => ErrorKind::Internal,
                    _ => ErrorKind::InvalidArgument,
                };
            }
            DataFusionError::IoError(io) if spill_limit(&io.to_string()) => {
                return ErrorKind::ResourceExhausted
            }
            // One of ours, shared between partitions (`Arc` kept it wrapped).
            DataFusionError::External(inner) if inner.is::<VeilError>() => {
                return inner
                    .downcast_ref::<VeilError>()
                    .map_or(ErrorKind::Internal, VeilError::kind);
            }
            // A pattern DataFusion compiled while planning (`'a' ~ '('`).
            DataFusionError::External(inner)
                if inner.is::<regex::Error>() || inner.is::<regex_syntax::Error>() =>
            {
                return ErrorKind::InvalidArgument;
            }
            _ => return ErrorKind::Internal,
        };
    }
}

/// Whether an I/O error is DataFusion's disk manager refusing a spill past
/// the `spill` limit: it reports that as a plain `io::Error` with this text
/// (datafusion-execution `disk_manager.rs`), nothing typed to match on.
fn spill_limit(message: &str) -> bool {
    message.contains("during the spilling process has exceeded the allowable limit")
}

/// Result alias for the engine.
pub type Result<T, E = VeilError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(e: DataFusionError) -> ErrorKind {
        VeilError::from(e).kind()
    }

    #[test]
    fn context_layers_do_not_hide_whose_mistake_it_is() {
        // Built from a variable: clippy checks literal patterns.
        let open = String::from("(");
        let bad_pattern = || regex::Regex::new(&open).unwrap_err();
        let syntax = regex_syntax::Parser::new().parse(&open).unwrap_err();
        let planned = DataFusionError::Context(
            "Optimizer rule 'simplify_expressions' failed".into(),
            Box::new(DataFusionError::Context(
                "Invalid regex".into(),
                Box::new(DataFusionError::External(Box::new(syntax))),
            )),
        );
        assert_eq!(kind(planned), ErrorKind::InvalidArgument);
        assert_eq!(
            kind(DataFusionError::External(Box::new(bad_pattern()))),
            ErrorKind::InvalidArgument
        );
        let folded = DataFusionError::Context(
            "Optimizer rule 'simplify_expressions' failed".into(),
            Box::new(DataFusionError::Plan("table 'x' not found".into())),
        );
        assert_eq!(kind(folded), ErrorKind::NotFound);
        // What is not the user's stays internal, wrapped or not.
        let io = || std::io::Error::other("disk");
        assert_eq!(
            kind(DataFusionError::External(Box::new(io()))),
            ErrorKind::Internal
        );
        assert_eq!(
            kind(DataFusionError::Context(
                "reading".into(),
                Box::new(DataFusionError::Internal("bug".into()))
            )),
            ErrorKind::Internal
        );
        assert_eq!(
            kind(DataFusionError::Context(
                "Optimizer rule 'x' failed".into(),
                Box::new(DataFusionError::ResourcesExhausted("memory".into()))
            )),
            ErrorKind::ResourceExhausted
        );
    }
}
