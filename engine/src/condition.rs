//! Conditions: boolean expressions over principal functions only.
//!
//! `current_user()`, `has_group('g')`, `has_attribute('k', 'v')`,
//! `has_purpose('p')`, TRUE / FALSE, combined with AND / OR / NOT, plus
//! `current_user() = 'name'`, `<>`, `IN (...)` and `IS [NOT] NULL`.
//! Parsed with sqlparser's expression parser; anything else is rejected when
//! the policy is created, and again (fail closed) when it is evaluated.

use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, UnaryOperator, Value,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use crate::error::{Result, VeilError};
use crate::principal::Principal;

/// A compiled condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// A literal.
    Bool(bool),
    /// Both hold.
    And(Box<Condition>, Box<Condition>),
    /// Either holds.
    Or(Box<Condition>, Box<Condition>),
    /// Negation.
    Not(Box<Condition>),
    /// `has_group('g')`.
    HasGroup(String),
    /// `has_attribute('k', 'v')`.
    HasAttribute(String, String),
    /// `has_purpose('p')`.
    HasPurpose(String),
    /// `current_user() IN (...)` / `= '...'`.
    UserIn(Vec<String>),
    /// `current_user() IS NULL`.
    UserIsNull,
}

fn bad(text: &str, why: impl std::fmt::Display) -> VeilError {
    VeilError::InvalidArgument(format!("invalid condition '{text}': {why}"))
}

/// sqlparser reads `current_user` as a keyword without parentheses; accept
/// the documented `current_user()` form by rewriting it to that.
pub fn normalize_current_user(sql: &str) -> std::borrow::Cow<'_, str> {
    static RE: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
    match RE.get_or_init(|| regex::Regex::new(r"(?i)\bcurrent_user\s*\(\s*\)").ok()) {
        Some(re) => re.replace_all(sql, "current_user"),
        None => std::borrow::Cow::Borrowed(sql),
    }
}

/// A sqlparser `Parser` over `sql`, built from tokens: unlike
/// `Parser::try_with_sql` it logs nothing, so statement text (a password in
/// `CREATE USER`) never reaches a debug log.
/// Refuses, too, what [`check_name_chains`] refuses.
pub(crate) fn quiet_parser<'a>(
    dialect: &'a GenericDialect,
    sql: &str,
) -> std::result::Result<Parser<'a>, ParserError> {
    let tokens = tokens(dialect, sql)?;
    check_name_chains(&tokens).map_err(|e| ParserError::ParserError(e.to_string()))?;
    Ok(Parser::new(dialect).with_tokens_with_locations(tokens))
}

/// The tokens of `sql` (sqlparser's tokenizer: linear, logs nothing).
pub(crate) fn tokens(
    dialect: &GenericDialect,
    sql: &str,
) -> std::result::Result<Vec<TokenWithSpan>, ParserError> {
    Ok(Tokenizer::new(dialect, sql)
        .with_unescape(true)
        .tokenize_with_location()?)
}

/// The most `.` one chain of names and subscripts may hold (`a.b[1].c`
/// holds two). A chain is names, numbers, subscripts and whitespace; any
/// other token ends it, and so does a keyword that does not follow a `.`
/// (`CASE WHEN t.a THEN t.b ...` is many short chains). Real names have at
/// most catalog, schema, table, column and a few struct fields.
pub const MAX_NAME_PARTS: usize = 16;

/// Refuses a longer chain than [`MAX_NAME_PARTS`] before any parser sees
/// the text: sqlparser 0.62 (the one DataFusion 55 uses) takes time
/// exponential in the length of a chain that fails to parse (fixed
/// upstream in apache/datafusion-sqlparser-rs#2344). The `policy_expression`
/// fuzz target found a 71-byte statement that took 4 s in a release build,
/// and each further part doubles it; any user could have pinned a server
/// thread with one statement.
pub fn check_name_chains(tokens: &[TokenWithSpan]) -> Result<()> {
    let mut dots = 0usize;
    let mut after_dot = false;
    for t in tokens {
        let was_after_dot = std::mem::replace(&mut after_dot, false);
        match &t.token {
            Token::Period => {
                dots += 1;
                after_dot = true;
                if dots > MAX_NAME_PARTS {
                    return Err(VeilError::InvalidArgument(format!(
                        "a name or subscript chain with more than {MAX_NAME_PARTS} '.' \
                         (near line {}, column {}) is not accepted",
                        t.span.start.line, t.span.start.column
                    )));
                }
            }
            Token::Whitespace(_) => after_dot = was_after_dot,
            Token::Word(w) if w.keyword != Keyword::NoKeyword && !was_after_dot => dots = 0,
            Token::Word(_)
            | Token::Number(..)
            | Token::LBracket
            | Token::RBracket
            | Token::Colon
            | Token::DoubleColon => {}
            _ => dots = 0,
        }
    }
    Ok(())
}

/// Parses a condition's SQL text.
pub fn parse_condition(text: &str) -> Result<Condition> {
    quiet_parser(&GenericDialect {}, &normalize_current_user(text))
        .and_then(|mut p| {
            let e = p.parse_expr()?;
            p.expect_token(&datafusion::sql::sqlparser::tokenizer::Token::EOF)?;
            Ok(e)
        })
        .map_err(|e| bad(text, e))
        .and_then(|expr| compile(&expr, text))
}

/// The string literal arguments of a principal function call.
pub(crate) fn string_args(args: &FunctionArguments) -> Option<Vec<String>> {
    match args {
        FunctionArguments::None => Some(vec![]),
        FunctionArguments::List(list) => list
            .args
            .iter()
            .map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v))) => match &v.value {
                    Value::SingleQuotedString(s) => Some(s.clone()),
                    _ => None,
                },
                _ => None,
            })
            .collect(),
        FunctionArguments::Subquery(_) => None,
    }
}

fn is_current_user(e: &Expr) -> bool {
    matches!(e, Expr::Function(f)
        if f.name.to_string().eq_ignore_ascii_case("current_user")
            && string_args(&f.args).is_some_and(|a| a.is_empty()))
}

fn string_lit(e: &Expr) -> Option<String> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    }
}

fn compile(e: &Expr, text: &str) -> Result<Condition> {
    Ok(match e {
        Expr::Nested(inner) => compile(inner, text)?,
        Expr::Value(v) => match &v.value {
            Value::Boolean(b) => Condition::Bool(*b),
            other => return Err(bad(text, format!("unexpected literal {other}"))),
        },
        Expr::BinaryOp { left, op, right } => match op {
            BinaryOperator::And => Condition::And(
                Box::new(compile(left, text)?),
                Box::new(compile(right, text)?),
            ),
            BinaryOperator::Or => Condition::Or(
                Box::new(compile(left, text)?),
                Box::new(compile(right, text)?),
            ),
            BinaryOperator::Eq | BinaryOperator::NotEq => {
                let name = match (is_current_user(left), is_current_user(right)) {
                    (true, false) => string_lit(right),
                    (false, true) => string_lit(left),
                    _ => None,
                }
                .ok_or_else(|| {
                    bad(
                        text,
                        "only current_user() = '<name>' comparisons are allowed",
                    )
                })?;
                let c = Condition::UserIn(vec![name]);
                if *op == BinaryOperator::Eq {
                    c
                } else {
                    Condition::Not(Box::new(c))
                }
            }
            other => return Err(bad(text, format!("operator {other} is not allowed"))),
        },
        Expr::UnaryOp {
            op: UnaryOperator::Not,
            expr,
        } => Condition::Not(Box::new(compile(expr, text)?)),
        Expr::InList {
            expr,
            list,
            negated,
        } if is_current_user(expr) => {
            let names = list
                .iter()
                .map(string_lit)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad(text, "IN list must hold string literals"))?;
            let c = Condition::UserIn(names);
            if *negated {
                Condition::Not(Box::new(c))
            } else {
                c
            }
        }
        Expr::IsNull(inner) if is_current_user(inner) => Condition::UserIsNull,
        Expr::IsNotNull(inner) if is_current_user(inner) => {
            Condition::Not(Box::new(Condition::UserIsNull))
        }
        Expr::Function(f) => {
            let name = f.name.to_string().to_ascii_lowercase();
            let args = string_args(&f.args)
                .ok_or_else(|| bad(text, format!("{name}() takes string literal arguments")))?;
            match (name.as_str(), args.as_slice()) {
                ("has_group", [g]) => Condition::HasGroup(g.clone()),
                ("has_attribute", [k, v]) => Condition::HasAttribute(k.clone(), v.clone()),
                ("has_purpose", [p]) => Condition::HasPurpose(p.clone()),
                ("has_group" | "has_purpose", _) => {
                    return Err(bad(text, format!("{name}() takes one string argument")))
                }
                ("has_attribute", _) => {
                    return Err(bad(text, "has_attribute() takes two string arguments"))
                }
                ("current_user", _) => {
                    return Err(bad(text, "current_user() must be compared with a name"))
                }
                _ => {
                    return Err(bad(
                        text,
                        format!(
                            "unknown function {name}(); conditions may use current_user(), \
                             has_group(), has_attribute() and has_purpose()"
                        ),
                    ))
                }
            }
        }
        other => return Err(bad(text, format!("'{other}' is not a principal condition"))),
    })
}

impl Condition {
    /// Evaluates the condition for a principal.
    pub fn eval(&self, p: &Principal) -> bool {
        match self {
            Condition::Bool(b) => *b,
            Condition::And(a, b) => a.eval(p) && b.eval(p),
            Condition::Or(a, b) => a.eval(p) || b.eval(p),
            Condition::Not(a) => !a.eval(p),
            Condition::HasGroup(g) => p.groups.contains(g),
            Condition::HasAttribute(k, v) => p.has_attribute(k, v),
            Condition::HasPurpose(x) => p.purposes.contains(x),
            Condition::UserIn(names) => p.user.as_ref().is_some_and(|u| names.contains(u)),
            Condition::UserIsNull => p.user.is_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Principal {
        let mut p = Principal {
            user: Some("alice".into()),
            ..Default::default()
        };
        p.groups.insert("hr".into());
        p.attributes
            .entry("region".into())
            .or_default()
            .insert("EU".into());
        p
    }

    fn chains(sql: &str) -> Result<()> {
        check_name_chains(&tokens(&GenericDialect {}, sql).unwrap())
    }

    #[test]
    fn long_name_chains_are_refused_and_long_queries_are_not() {
        let chain = |n: usize| vec!["ab"; n].join(".");
        assert!(chains(&format!("SELECT {}", chain(17))).is_ok());
        let e = chains(&format!("SELECT {}", chain(18))).unwrap_err();
        assert!(e.to_string().contains("more than 16 '.'"), "{e}");
        // Keywords in field position stay in the chain (the fuzz input).
        assert!(chains(&format!("SELECT a.{}", vec!["to"; 17].join("."))).is_err());
        assert!(chains(&format!("SELECT a{}", "[1].b".repeat(17))).is_err());
        // Many qualified names in one expression, split by keywords.
        let arms: String = (0..40)
            .map(|i| format!(" WHEN s.t{i}.a THEN s.t{i}.b"))
            .collect();
        assert!(chains(&format!("SELECT CASE{arms} END FROM c.s.t")).is_ok());
        let joins: String = (0..40)
            .map(|i| format!(" JOIN c.s.t{i} USING (k)"))
            .collect();
        assert!(chains(&format!("SELECT x.y FROM c.s.t{joins}")).is_ok());
    }

    #[test]
    fn evaluates_principal_functions() {
        let p = alice();
        let t = |s: &str| parse_condition(s).unwrap().eval(&p);
        assert!(t("has_group('hr')"));
        assert!(!t("has_group('it')"));
        assert!(t("has_group('it') OR has_attribute('region', 'EU')"));
        assert!(!t("NOT has_attribute('region', 'EU')"));
        assert!(t("current_user() = 'alice'"));
        assert!(t("current_user() IN ('bob', 'alice')"));
        assert!(!t("current_user() IS NULL"));
        assert!(!t("has_purpose('Fraud')"));
    }

    #[test]
    fn synthetic_principal_has_no_name() {
        let p = Principal::default();
        assert!(!parse_condition("current_user() = 'alice'")
            .unwrap()
            .eval(&p));
        assert!(parse_condition("current_user() IS NULL").unwrap().eval(&p));
    }

    #[test]
    fn rejects_non_principal_expressions() {
        for s in [
            "salary > 5",
            "has_group(dept)",
            "has_group('a', 'b')",
            "lower('x') = 'x'",
            "has_group('hr') AND",
            "1",
        ] {
            assert!(parse_condition(s).is_err(), "{s} should be rejected");
        }
    }
}
