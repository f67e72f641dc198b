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

/// Splits a script into statements at top-level semicolons (string
/// literals and comments respected); empty statements are dropped.
pub fn split_script(script: &str) -> crate::error::Result<Vec<String>> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer, Whitespace};
    let tokens = Tokenizer::new(&GenericDialect {}, script)
        .tokenize()
        .map_err(|e| crate::error::VeilError::InvalidArgument(format!("script: {e}")))?;
    let mut out = Vec::new();
    let mut current = String::new();
    let mut meaningful = false;
    for t in tokens {
        match t {
            Token::SemiColon => {
                if meaningful {
                    out.push(current.trim().to_string());
                }
                current.clear();
                meaningful = false;
            }
            Token::Whitespace(Whitespace::SingleLineComment { .. })
            | Token::Whitespace(Whitespace::MultiLineComment(_)) => current.push(' '),
            Token::Whitespace(_) => current.push_str(&t.to_string()),
            other => {
                meaningful = true;
                current.push_str(&other.to_string());
            }
        }
    }
    if meaningful {
        out.push(current.trim().to_string());
    }
    Ok(out)
}
