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
use datafusion::sql::sqlparser::tokenizer::Token;

use crate::error::{Result, VeilError};
use crate::principal::Principal;
use crate::sql_guard::{checked_tokens, quiet_parser, BoundedDialect};

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

/// Parses a condition's SQL text.
pub fn parse_condition(text: &str) -> Result<Condition> {
    let sql = normalize_current_user(text);
    let dialect = BoundedDialect::for_sql(&sql);
    let parsed = checked_tokens(&dialect, &sql).and_then(|tokens| {
        let mut p = quiet_parser(&dialect, tokens.map_err(|e| bad(text, e))?);
        let e = p.parse_expr().map_err(|e| bad(text, e))?;
        p.expect_token(&Token::EOF).map_err(|e| bad(text, e))?;
        Ok(e)
    });
    dialect.finish(parsed).and_then(|expr| compile(&expr, text))
}

/// Most parsed conditions [`cached_condition`] keeps; it starts over when full.
const CACHE_CAP: usize = 4096;

/// [`parse_condition`], remembered by text: every query evaluates the
/// conditions of the policies on the sources it reads, and parsing them
/// was a tenth of governed planning. Only conditions that parse are kept
/// (a failure is parsed, and reported, each time).
pub fn cached_condition(text: &str) -> Result<std::sync::Arc<Condition>> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Condition>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(c) = cache.lock().ok().and_then(|m| m.get(text).cloned()) {
        return Ok(c);
    }
    let parsed = Arc::new(parse_condition(text)?);
    if let Ok(mut m) = cache.lock() {
        if m.len() >= CACHE_CAP {
            m.clear();
        }
        m.insert(text.to_string(), Arc::clone(&parsed));
    }
    Ok(parsed)
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
