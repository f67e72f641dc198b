//! Principal functions in row-policy predicates, resolved at plan time.
//!
//! Row predicates are parsed by DataFusion against the source's schema with
//! placeholder UDFs for `current_user()`, `has_group('g')`,
//! `has_attribute('k', 'v')`, `has_purpose('p')` and
//! `attribute_contains('k', <expr>)`; [`resolve`] then replaces each call by
//! a literal (or an IN list) for the effective principal. A placeholder that
//! somehow reached execution fails the query instead of guessing.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{exec_err, plan_err, DFSchema, Result, ScalarValue};
use datafusion::execution::session_state::SessionState;
use datafusion::execution::{FunctionRegistry, SessionStateBuilder};
use datafusion::logical_expr::{
    lit, ColumnarValue, Expr, ExprSchemable, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Volatility,
};

use crate::principal::Principal;

const NAMES: [&str; 5] = [
    "current_user",
    "has_group",
    "has_attribute",
    "has_purpose",
    "attribute_contains",
];

#[derive(Debug, PartialEq, Eq, Hash)]
struct Placeholder {
    name: &'static str,
    signature: Signature,
}

impl ScalarUDFImpl for Placeholder {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(if self.name == "current_user" {
            DataType::Utf8
        } else {
            DataType::Boolean
        })
    }
    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        exec_err!(
            "{}() is a policy function and cannot be evaluated here",
            self.name
        )
    }
}

/// A session state that parses policy predicates (default functions plus the
/// principal placeholders). Built once.
pub fn parsing_state() -> &'static SessionState {
    static STATE: OnceLock<SessionState> = OnceLock::new();
    STATE.get_or_init(|| {
        let mut state = SessionStateBuilder::new().with_default_features().build();
        for name in NAMES {
            let udf = ScalarUDF::new_from_impl(Placeholder {
                name,
                signature: Signature::variadic_any(Volatility::Immutable),
            });
            // Registering into a fresh state cannot collide with anything we rely on.
            let _ = state.register_udf(Arc::new(udf));
        }
        state
    })
}

/// Parses a row predicate against `schema` (principal functions unresolved).
pub fn parse_predicate(sql: &str, schema: &DFSchema) -> Result<Expr> {
    let state = parsing_state();
    let limit = state.config_options().sql_parser.recursion_limit.get();
    let expr = crate::sql_guard::parse_expr(&crate::condition::normalize_current_user(sql), limit)?;
    state.create_logical_expr_from_sql_expr(expr, schema)
}

fn lit_str(e: &Expr) -> Option<&str> {
    match e {
        Expr::Literal(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
            _,
        ) => Some(s),
        _ => None,
    }
}

/// The literals `attribute_contains` compares `column` (of type `t`) with.
/// Attribute values are text. On a numeric or temporal column each value
/// becomes a literal of the column's type as a cast makes it ("007" names
/// 7, "2024-01-31" a date); a value that does not cast (text, out of
/// range) can match no row and is left out, where DataFusion's coercion
/// would have failed every query with a cast error.
fn attribute_literals(values: &BTreeSet<String>, t: &DataType) -> Vec<Expr> {
    if !(t.is_numeric() || t.is_temporal()) {
        return values.iter().map(|v| lit(v.as_str())).collect();
    }
    values
        .iter()
        .filter_map(|v| ScalarValue::Utf8(Some(v.clone())).cast_to(t).ok())
        .map(lit)
        .collect()
}

/// What the principal functions in `expr` read of `p`, as text
/// (`attribute_contains(region)=EU,US; has_group(hr)=false`): two
/// principals with equal inputs resolve `expr` alike. Built from the
/// policy's own calls and the principal's values, not from DataFusion's
/// display of the resolved predicate, so it reads the same across
/// DataFusion versions (it is stored with workspace tables and lineage).
pub fn principal_inputs(expr: &Expr, p: &Principal) -> String {
    let mut out = Vec::new();
    let _ = expr.apply(|e| {
        let Expr::ScalarFunction(f) = e else {
            return Ok(TreeNodeRecursion::Continue);
        };
        let name = f.func.name();
        if !NAMES.contains(&name) {
            return Ok(TreeNodeRecursion::Continue);
        }
        let strs: Vec<Option<&str>> = f.args.iter().map(lit_str).collect();
        let value = match (name, strs.as_slice()) {
            ("current_user", []) => p.user.clone().unwrap_or_else(|| "NULL".into()),
            ("has_group", [Some(g)]) => p.groups.contains(*g).to_string(),
            ("has_attribute", [Some(k), Some(v)]) => p.has_attribute(k, v).to_string(),
            ("has_purpose", [Some(x)]) => p.purposes.contains(*x).to_string(),
            ("attribute_contains", [Some(k), _]) => p
                .attributes
                .get(*k)
                .map(|vs| vs.iter().cloned().collect::<Vec<_>>().join(","))
                .unwrap_or_default(),
            _ => "?".into(),
        };
        let args: Vec<&str> = strs.iter().map(|s| s.unwrap_or("_")).collect();
        out.push(format!("{name}({})={value}", args.join(",")));
        Ok(TreeNodeRecursion::Continue)
    });
    out.join("; ")
}

/// Replaces every principal function in `expr` by its value for `p`;
/// `schema` is the schema `expr` applies to.
pub fn resolve(expr: Expr, p: &Principal, schema: &DFSchema) -> Result<Expr> {
    expr.transform_up(|e| {
        let Expr::ScalarFunction(f) = &e else {
            return Ok(Transformed::no(e));
        };
        let name = f.func.name();
        if !NAMES.contains(&name) {
            return Ok(Transformed::no(e));
        }
        let strs: Vec<Option<&str>> = f.args.iter().map(lit_str).collect();
        let value = match (name, strs.as_slice()) {
            ("current_user", []) => match &p.user {
                Some(u) => lit(u.as_str()),
                None => lit(ScalarValue::Utf8(None)),
            },
            ("has_group", [Some(g)]) => lit(p.groups.contains(*g)),
            ("has_attribute", [Some(k), Some(v)]) => lit(p.has_attribute(k, v)),
            ("has_purpose", [Some(x)]) => lit(p.purposes.contains(*x)),
            ("attribute_contains", [Some(k), _]) => {
                let column_type = f.args[1].get_type(schema)?;
                let values: Vec<Expr> = p
                    .attributes
                    .get(*k)
                    .map(|vs| attribute_literals(vs, &column_type))
                    .unwrap_or_default();
                if values.is_empty() {
                    lit(false)
                } else {
                    f.args[1].clone().in_list(values, false)
                }
            }
            _ => {
                return plan_err!(
                    "wrong arguments to {name}(): principal functions take string literals \
                     (attribute_contains takes a key and a column expression)"
                )
            }
        };
        Ok(Transformed::yes(value))
    })
    .map(|t| t.data)
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::datatypes::{Field, Schema};

    use super::*;

    fn principal(user: &str, regions: &[&str], groups: &[&str]) -> Principal {
        Principal {
            user: Some(user.into()),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            attributes: [(
                "region".to_string(),
                regions.iter().map(|r| r.to_string()).collect(),
            )]
            .into(),
            purposes: Default::default(),
        }
    }

    #[test]
    fn principal_inputs_tell_principals_apart_by_what_the_predicate_reads() {
        let schema = DFSchema::try_from(Schema::new(vec![Field::new(
            "region",
            DataType::Utf8,
            false,
        )]))
        .unwrap();
        let expr = parse_predicate(
            "attribute_contains('region', region) OR has_group('hr')",
            &schema,
        )
        .unwrap();
        let inputs = |p: &Principal| principal_inputs(&expr, p);
        let bob = principal("bob", &["US"], &["analysts"]);
        // Another user, other groups the predicate does not ask about.
        assert_eq!(
            inputs(&bob),
            inputs(&principal("erin", &["US"], &["staff"]))
        );
        assert_eq!(
            inputs(&bob),
            "attribute_contains(region,_)=US; has_group(hr)=false"
        );
        assert_ne!(inputs(&bob), inputs(&principal("bob", &["EU", "US"], &[])));
        assert_ne!(inputs(&bob), inputs(&principal("bob", &["US"], &["hr"])));
    }
}
