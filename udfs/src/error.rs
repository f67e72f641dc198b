//! Errors raised when a mask is built or evaluated.

use thiserror::Error;

/// An error building or applying a mask.
#[derive(Debug, Error)]
pub enum UdfError {
    /// The mask's parameters are invalid (bad regex, zero width, ...).
    #[error("invalid mask parameters: {0}")]
    InvalidParameters(String),
    /// The mask cannot be applied to a column of this type.
    #[error("mask {method} cannot be applied to a column of type {data_type}")]
    UnsupportedType {
        /// Method name, e.g. `ROUND`.
        method: &'static str,
        /// The column's Arrow type.
        data_type: String,
    },
    /// A token could not be decrypted (wrong key, key version or tampered token).
    #[error("token cannot be decrypted with key {0}")]
    Decrypt(String),
}

impl From<UdfError> for datafusion::error::DataFusionError {
    fn from(e: UdfError) -> Self {
        datafusion::error::DataFusionError::External(Box::new(e))
    }
}
