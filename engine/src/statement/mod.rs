//! Governance statements: the SQL extensions of DESIGN.md section 6.
//!
//! [`parse`] recognizes a governance statement by its leading keywords and
//! parses it with sqlparser's `Parser` (keywords, identifiers, literals, and
//! `parse_expr` for conditions and predicates); anything else is left to
//! DataFusion. [`exec`] checks the caller's rights and applies the change.

pub mod ast;
pub mod exec;
pub mod parser;

pub use ast::GovStatement;
pub use parser::parse;
