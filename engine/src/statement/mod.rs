//! Governance statements: the SQL extensions of DESIGN.md section 6.
//!
//! [`parse`] recognizes a governance statement by its leading keywords and
//! parses it with sqlparser's `Parser` (keywords, identifiers, literals, and
//! `parse_expr` for conditions and predicates); anything else is left to
//! DataFusion. [`exec`] checks the caller's rights and applies the change.

pub mod ast;
pub mod exec;
pub mod export;
pub mod parser;
mod projects;
mod sources;

pub use ast::{GovStatement, ProjectAction};
pub use parser::parse;

/// Runs a script's statements in order as `session`. Statements whose object
/// exists already are skipped, so a script can be applied again safely.
/// Returns (applied, skipped).
pub async fn apply_script(
    session: &mut crate::Session,
    script: &str,
) -> crate::error::Result<(usize, usize)> {
    if script.lines().any(|l| l.trim() == export::NEW_CATALOG_ONLY) {
        refuse_unless_new(session.engine().snapshot()?.as_ref())?;
    }
    let (mut applied, mut skipped) = (0, 0);
    for stmt in split_script(script)? {
        match session.execute(&stmt).await {
            Ok(out) => {
                out.collect().await?;
                applied += 1;
            }
            Err(e) if e.kind() == crate::ErrorKind::AlreadyExists => skipped += 1,
            Err(e) => {
                return Err(crate::VeilError::InvalidArgument(format!(
                    "script statement '{stmt}' failed: {e}"
                )))
            }
        }
    }
    Ok((applied, skipped))
}

/// A `veil export` replays onto a catalog with no governance yet (its
/// `admin` only): onto one that has some, it would set back whatever
/// changed since the export, then stop at the first statement no longer
/// allowed.
fn refuse_unless_new(snapshot: &crate::model::CatalogSnapshot) -> crate::error::Result<()> {
    let users = snapshot.users.keys().filter(|u| *u != "admin").count();
    let found = [
        ("users besides admin", users),
        ("data sources", snapshot.sources.len()),
        ("policies", snapshot.policies.len()),
        ("purposes", snapshot.purposes.len()),
        ("projects", snapshot.projects.len()),
    ];
    let held: Vec<String> = found
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(what, n)| format!("{n} {what}"))
        .collect();
    if held.is_empty() {
        return Ok(());
    }
    Err(crate::VeilError::FailedPrecondition(format!(
        "this script is a `veil export`, which replays onto a new catalog only; this \
         catalog has {}; nothing was applied",
        held.join(", ")
    )))
}

/// The demo governance script, relative to the repository root.
pub const DEMO_SCRIPT: &str = "testdata/demo/setup.sql";

/// Applies the demo script (`testdata/demo/setup.sql` under the engine's
/// base directory) as `admin`; returns (applied, skipped).
pub async fn load_demo(
    engine: &std::sync::Arc<crate::Engine>,
) -> crate::error::Result<(usize, usize)> {
    let path = engine.base_dir().join(DEMO_SCRIPT);
    let script = std::fs::read_to_string(&path).map_err(|e| {
        crate::VeilError::InvalidArgument(format!("demo script {}: {e}", path.display()))
    })?;
    apply_script(&mut engine.session("admin"), &script).await
}

/// Splits a script into statements at top-level semicolons (string
/// literals and comments respected); empty statements are dropped. Each
/// statement is the script's own text, from its first token to its last
/// (re-rendering tokens would lose the escaping of quotes in literals).
pub fn split_script(script: &str) -> crate::error::Result<Vec<String>> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::{Location, Token, Tokenizer};
    let tokens = Tokenizer::new(&GenericDialect {}, script)
        .tokenize_with_location()
        .map_err(|e| crate::error::VeilError::InvalidArgument(format!("script: {e}")))?;
    // Byte offset of each line's start; a location's column counts chars.
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(script.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let offset = |l: Location| -> usize {
        let line_start = usize::try_from(l.line)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|n| line_starts.get(n).copied())
            .unwrap_or(script.len());
        let col = usize::try_from(l.column).unwrap_or(1).saturating_sub(1);
        script[line_start..]
            .char_indices()
            .nth(col)
            .map_or(script.len(), |(i, _)| line_start + i)
    };
    let mut out = Vec::new();
    let mut span: Option<(Location, Location)> = None;
    for t in tokens {
        match t.token {
            Token::SemiColon | Token::EOF => {
                if let Some((from, to)) = span.take() {
                    out.push(script[offset(from)..offset(to)].trim().to_string());
                }
            }
            Token::Whitespace(_) => {}
            _ => {
                let from = span.map_or(t.span.start, |(from, _)| from);
                span = Some((from, t.span.end));
            }
        }
    }
    if let Some((from, to)) = span {
        out.push(script[offset(from)..offset(to)].trim().to_string());
    }
    Ok(out)
}

/// Rewrites JDBC/ODBC-style `?` placeholders to DataFusion's `$1`, `$2`, ...
/// (string literals and comments are left alone).
pub fn number_placeholders(sql: &str) -> std::borrow::Cow<'_, str> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    if !sql.contains('?') {
        return std::borrow::Cow::Borrowed(sql);
    }
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        return std::borrow::Cow::Borrowed(sql);
    };
    if !tokens
        .iter()
        .any(|t| matches!(t, Token::Placeholder(p) if p == "?"))
    {
        return std::borrow::Cow::Borrowed(sql);
    }
    let mut n = 0;
    let mut out = String::with_capacity(sql.len() + 8);
    for t in tokens {
        match t {
            Token::Placeholder(p) if p == "?" => {
                n += 1;
                out.push_str(&format!("${n}"));
            }
            other => out.push_str(&other.to_string()),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_outside_literals() {
        assert_eq!(
            number_placeholders("SELECT ? , '?' , ?"),
            "SELECT $1 , '?' , $2"
        );
        assert_eq!(number_placeholders("SELECT 1"), "SELECT 1");
    }

    #[test]
    fn scripts_split_on_top_level_semicolons() {
        let s = split_script("CREATE USER a PASSWORD 'x;y'; -- c;\n;SHOW USERS").unwrap();
        assert_eq!(s, ["CREATE USER a PASSWORD 'x;y'", "SHOW USERS"]);
        // Statements are the script's text: quotes stay escaped, non-ASCII
        // text and comments inside a statement stay where they were.
        let s = split_script(
            "CREATE PURPOSE 'it''s' DESCRIPTION 'é;ü' /* why */ ;\n\n  CREATE USER b; ",
        )
        .unwrap();
        assert_eq!(
            s,
            ["CREATE PURPOSE 'it''s' DESCRIPTION 'é;ü'", "CREATE USER b"]
        );
    }
}
