//! Masking scalar UDFs for Veil, vectorized over whole Arrow arrays.
//!
//! Every mask is a [`ScalarUDF`](datafusion::logical_expr::ScalarUDF) built by
//! [`mask_udf`] from a [`MaskSpec`]. The governance analyzer in `veil-engine`
//! places exactly one projection of these UDFs above each governed scan, so
//! user expressions only ever see their output.
//!
//! Guarantees of this crate:
//! - NULL inputs stay NULL for every method.
//! - Work is done per array, never per row through `ScalarValue`; builders are
//!   pre-sized and a scratch buffer is reused. Dictionary arrays are masked
//!   once per distinct value; so are plain arrays of at most 16 distinct
//!   values for the costly methods (HASH, ENCRYPT, REGEX, SHOW_*).
//! - Keyed methods (HASH, ENCRYPT) hold key bytes only inside the UDF
//!   instance. `Debug`, `Display`, names and errors show the key *handle*
//!   (id and version), never the bytes. Two instances with different handles
//!   are never equal, so plan comparison and common-subexpression elimination
//!   cannot confuse them.
//!
//! ```text
//!   raw column ──► MaskUdf<M>::invoke ──► M::mask_array (whole array) ──► masked column
//!                      │ dictionary? mask values once, keep keys
//!                      │ ≤16 distinct? mask them once, take() per row
//!                      └ scalar?     mask a one-row array
//! ```

mod canonical;
mod constant;
mod date_trunc;
mod distinct;
mod encrypt;
mod error;
mod hash;
mod key;
mod mac;
mod mask;
mod null;
mod regex_replace;
mod round;
mod show;
mod strings;
mod wire;

pub use date_trunc::TruncUnit;
pub use encrypt::decrypt_token;
pub use error::UdfError;
pub use key::{KeyHandle, MaskKey};
pub use mask::{is_costly_mask, is_injective_mask, mask_udf, MaskSpec};
pub use wire::{decode_mask, encode_mask, ClusterKey};
