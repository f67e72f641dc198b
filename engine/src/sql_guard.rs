//! Parsing SQL with bounded work and bounded stack.
//!
//! sqlparser 0.62 (the version DataFusion 55 uses) can be made to
//! misbehave by a short statement in four ways, all measured on this
//! version with the generic dialect:
//!
//! - **Exponential time.** On some statements that fail to parse it retries
//!   the same sub-expression from both arms of a speculative parse at every
//!   level of a chain, so the time doubles with each repetition: `SELECT `
//!   followed by n copies of `x-not-b.`, `a.not-b`, `case\t-`, `cast(`,
//!   `interval ` or `if(current_time(` takes about a second at n = 16 and
//!   minutes at n = 24 (upstream fixes: apache/datafusion-sqlparser-rs#2344,
//!   #2350, #2352; none is in a release DataFusion 55 can use).
//! - **Unbounded recursion.** Some paths recurse without its recursion
//!   limit (`interval interval ...`, `FROM ((((...`), so a long enough
//!   chain overflows the thread's stack and aborts the whole server.
//! - **Deep trees.** `1+1+...+1` is parsed in a loop but builds a tree as
//!   deep as the chain is long, and dropping it recurses: 100,000 terms
//!   overflow a 2 MiB stack.
//! - **Padding.** The parser skips whitespace token by token at every
//!   look-ahead, so spaces or comments after a costly shape make each of
//!   its steps as slow as the padding is long.
//!
//! Every parser in Veil (DataFusion's statement parser, the governance
//! statement parser, conditions, row predicates) therefore runs on tokens
//! from [`checked_tokens`] (text at most [`MAX_SQL_BYTES`], each run of
//! whitespace made one token, nesting and name chains checked) and with a
//! [`BoundedDialect`]: the generic dialect plus counters in the hooks
//! sqlparser calls at every expression prefix, infix operator and
//! precedence decision. A statement may take [`STEPS_PER_BYTE`] steps per
//! byte of text, between [`MIN_STEPS`] and [`MAX_STEPS`] (real statements
//! take at most 2 per byte, see `engine/tests/it/sql_guard.rs`), and hold
//! [`MAX_OPERATORS`] operators; a prefix is refused when the stack is
//! nearly used up. Past a limit every hook fails, so any speculation
//! unwinds at once, and the statement is refused with InvalidArgument,
//! whichever shape caused it.

use std::any::TypeId;
use std::cell::Cell;
use std::ops::ControlFlow;

use datafusion::error::DataFusionError;
use datafusion::sql::parser::{DFParser, DFParserBuilder, Statement};
use datafusion::sql::sqlparser::ast::{
    Expr, ExprWithAlias, GroupByExpr, Query, SetExpr, Visit, Visitor,
};
use datafusion::sql::sqlparser::dialect::{Dialect, GenericDialect};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{
    Token, TokenWithSpan, Tokenizer, TokenizerError, Whitespace,
};

use crate::error::{Result, VeilError};

/// Longest statement text accepted (as Snowflake's 1 MB); larger inputs
/// belong in parameters or tables.
pub const MAX_SQL_BYTES: usize = 1 << 20;

/// Parser steps a statement may take per byte of its text.
pub const STEPS_PER_BYTE: u64 = 8;

/// Parser steps any statement may take, however short.
pub const MIN_STEPS: u64 = 4096;

/// Parser steps no statement may exceed, however long: a refused statement
/// costs at most about 1.5 s of one core (release build, 0.75 µs a step on
/// the worst shape found). A 1 MiB IN list takes about 1M steps.
pub const MAX_STEPS: u64 = 2_000_000;

/// Most infix operators (`+`, `AND`, `OR`, `=`, ...) in one statement: a
/// chain of operators is a tree as deep as the chain is long, and
/// DataFusion's planner clones, prints and drops such trees recursively
/// (up to 5.5 KiB of stack per level in a debug build).
pub const MAX_OPERATORS: u64 = 2048;

/// Stack of each thread that plans statements (the `veil` server's runtime
/// workers): room for a tree of [`MAX_OPERATORS`] levels in a debug build,
/// several times over in release. Only the pages a thread touches are
/// resident.
pub const WORKER_STACK_BYTES: usize = 16 << 20;

/// Deepest nesting of parentheses and brackets accepted.
pub const MAX_NESTING: usize = 64;

/// Stack a prefix must leave free; less, and the statement nests too deep.
const STACK_FLOOR: usize = 128 * 1024;

/// Why a statement was refused while parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    Steps,
    Operators,
    Stack,
}

/// The generic dialect with budgets (see the module docs). One instance
/// per statement: the counts are never reset.
#[derive(Debug)]
pub struct BoundedDialect {
    inner: GenericDialect,
    steps: Cell<u64>,
    operators: Cell<u64>,
    budget: u64,
    hit: Cell<Option<Limit>>,
}

impl BoundedDialect {
    /// A dialect whose budget fits `sql`.
    pub fn for_sql(sql: &str) -> Self {
        // Protected recursion in sqlparser and DataFusion (the `recursive`
        // crate) moves to a fresh stack segment below its minimum; keep
        // that minimum above our floor, so only unprotected recursion
        // reaches the floor.
        static RED_ZONE: std::sync::Once = std::sync::Once::new();
        RED_ZONE.call_once(|| {
            if recursive::get_minimum_stack_size() < 2 * STACK_FLOOR {
                recursive::set_minimum_stack_size(2 * STACK_FLOOR);
            }
        });
        let bytes = u64::try_from(sql.len()).unwrap_or(u64::MAX);
        Self {
            inner: GenericDialect {},
            steps: Cell::new(0),
            operators: Cell::new(0),
            budget: bytes
                .saturating_mul(STEPS_PER_BYTE)
                .clamp(MIN_STEPS, MAX_STEPS),
            hit: Cell::new(None),
        }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps.get()
    }

    /// Whether a limit was reached (then any result the parser gave is not
    /// trusted: a failed speculation may have picked another reading).
    pub fn exhausted(&self) -> bool {
        self.hit.get().is_some()
    }

    /// `result`, unless a limit was reached: then the refusal.
    pub fn finish<T>(&self, result: Result<T>) -> Result<T> {
        let why = match self.hit.get() {
            None => return result,
            Some(Limit::Steps) => format!("it needs more than {} parser steps", self.budget),
            Some(Limit::Operators) => format!("it has more than {MAX_OPERATORS} operators"),
            Some(Limit::Stack) => "it nests too deeply".to_string(),
        };
        Err(VeilError::InvalidArgument(format!(
            "statement is too complex to parse: {why}; simplify or split it"
        )))
    }

    fn refuse(&self, limit: Limit) -> Option<ParserError> {
        if self.hit.get().is_none() {
            self.hit.set(Some(limit));
        }
        Some(ParserError::ParserError(
            "statement is too complex to parse".into(),
        ))
    }

    /// Counts a step; an error once any limit is reached.
    fn step(&self) -> Option<ParserError> {
        let n = self.steps.get().saturating_add(1);
        self.steps.set(n);
        (self.hit.get().is_some() || n > self.budget)
            .then(|| self.refuse(Limit::Steps))
            .flatten()
    }
}

/// Forwards the generic dialect's own settings (sqlparser 0.62's
/// `dialect/generic.rs`; every other method keeps the trait's default, as
/// the generic dialect does). `engine/tests/it/sql_guard.rs` checks the list
/// against every statement in the repository.
macro_rules! forward_generic {
    ($($method:ident),* $(,)?) => {
        $(fn $method(&self) -> bool { self.inner.$method() })*
    };
}

impl Dialect for BoundedDialect {
    /// Parses exactly as the generic dialect: sqlparser's `dialect_of!`
    /// checks see a `GenericDialect`.
    fn dialect(&self) -> TypeId {
        TypeId::of::<GenericDialect>()
    }

    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        self.inner.is_delimited_identifier_start(ch)
    }

    fn is_identifier_start(&self, ch: char) -> bool {
        self.inner.is_identifier_start(ch)
    }

    fn is_identifier_part(&self, ch: char) -> bool {
        self.inner.is_identifier_part(ch)
    }

    fn parse_prefix(&self, _parser: &mut Parser) -> Option<std::result::Result<Expr, ParserError>> {
        if stacker::remaining_stack().is_some_and(|left| left < STACK_FLOOR) {
            return self.refuse(Limit::Stack).map(Err);
        }
        self.step().map(Err)
    }

    fn parse_infix(
        &self,
        _parser: &mut Parser,
        _expr: &Expr,
        _precedence: u8,
    ) -> Option<std::result::Result<Expr, ParserError>> {
        let n = self.operators.get().saturating_add(1);
        self.operators.set(n);
        if n > MAX_OPERATORS {
            return self.refuse(Limit::Operators).map(Err);
        }
        self.step().map(Err)
    }

    fn get_next_precedence(
        &self,
        _parser: &Parser,
    ) -> Option<std::result::Result<u8, ParserError>> {
        self.step().map(Err)
    }

    forward_generic!(
        supports_unicode_string_literal,
        supports_partition_by_after_order_by,
        supports_array_join_syntax,
        supports_group_by_expr,
        supports_group_by_with_modifier,
        supports_left_associative_joins_without_parens,
        supports_connect_by,
        supports_match_recognize,
        supports_pipe_operator,
        supports_start_transaction_modifier,
        supports_window_function_null_treatment_arg,
        supports_dictionary_syntax,
        supports_window_clause_named_window_reference,
        supports_parenthesized_set_variables,
        supports_select_wildcard_except,
        support_map_literal_syntax,
        allow_extract_custom,
        allow_extract_single_quotes,
        supports_extract_comma_syntax,
        supports_create_view_comment_syntax,
        supports_parens_around_table_factor,
        supports_values_as_table_factor,
        supports_create_index_with_clause,
        supports_explain_with_utility_options,
        supports_limit_comma,
        supports_update_order_by,
        supports_from_first_select,
        supports_projection_trailing_commas,
        supports_asc_desc_in_column_definition,
        supports_try_convert,
        supports_bitwise_shift_operators,
        supports_comment_on,
        supports_load_extension,
        supports_named_fn_args_with_assignment_operator,
        supports_struct_literal,
        supports_empty_projections,
        supports_nested_comments,
        supports_multiline_comment_hints,
        supports_user_host_grantee,
        supports_string_escape_constant,
        supports_array_typedef_with_brackets,
        supports_match_against,
        supports_set_names,
        supports_comma_separated_set_assignments,
        supports_filter_during_aggregation,
        supports_select_wildcard_exclude,
        supports_data_type_signed_suffix,
        supports_interval_options,
        supports_quote_delimited_string,
        supports_select_wildcard_replace,
        supports_select_wildcard_ilike,
        supports_select_wildcard_rename,
        supports_optimize_table,
        supports_install,
        supports_detach,
        supports_prewhere,
        supports_with_fill,
        supports_limit_by,
        supports_interpolate,
        supports_settings,
        supports_select_format,
        supports_comment_optimizer_hint,
        supports_constraint_keyword_without_name,
        supports_key_column_option,
        supports_comma_separated_trim,
        supports_cte_without_as,
        supports_select_item_multi_column_alias,
        supports_xml_expressions,
    );
}

/// Parses one SQL statement for DataFusion, the way
/// `SessionState::create_logical_plan` does with the generic dialect, on
/// checked tokens with a [`BoundedDialect`].
pub fn parse_statement(sql: &str, recursion_limit: usize) -> Result<Statement> {
    let mut statements = with_df_parser(sql, recursion_limit, |p| p.parse_statements())?;
    if statements.len() > 1 {
        return Err(VeilError::InvalidArgument(
            "only one SQL statement may be run at a time".into(),
        ));
    }
    let statement = statements
        .pop_front()
        .ok_or_else(|| VeilError::InvalidArgument("no SQL statement was given".into()))?;
    check_shape(&statement)?;
    Ok(statement)
}

/// Most grouping sets one `GROUP BY` may stand for: DataFusion's own limit
/// for crossed grouping sets, which it does not apply to a single `CUBE`.
pub const MAX_GROUPING_SETS: u64 = 4096;

/// Most tables, subqueries and CTE references one statement may read
/// (every `FROM` item and every `JOIN`, counted over the whole statement).
/// DataFusion plans n joins as a tree n deep whose every level carries the
/// schema of all tables below it, and its optimizer passes walk it again
/// and again: a 5,000-table `FROM` held a core and 7.8 GB of memory for
/// minutes before it was killed. Planning time grows about as the cube of
/// the join count (a debug build: 2 s at 64 tables, 15 s at 128, 144 s at
/// 256). TPC-H reads at most 8 tables in a query.
pub const MAX_RELATIONS: u64 = 128;

/// Most bytes one value of a type named in `arrow_cast` may take: a
/// fixed-size type (`FixedSizeBinary(n)`, `FixedSizeList(n, T)`) holds its
/// whole width in every row, NULL included, so
/// `arrow_cast(NULL, 'FixedSizeList(1000000000, Int64)')` allocated 8 GB
/// while planning and the allocation's failure aborted the server; copied
/// to a batch of 8,192 rows, 64 KiB is 512 MiB. An embedding of 16,384
/// `Float32` fits.
pub const MAX_FIXED_WIDTH: u64 = 64 << 10;

/// The type named by `arrow_cast(x, 'type')` / `arrow_try_cast`, and the
/// bytes one value of it takes at least ([`fixed_width`]).
fn cast_target(expr: &Expr) -> Option<(String, u64)> {
    use datafusion::sql::sqlparser::ast::{FunctionArg, FunctionArgExpr, FunctionArguments, Value};
    let Expr::Function(f) = expr else {
        return None;
    };
    let name = f.name.0.last()?.as_ident()?.value.to_ascii_lowercase();
    if name != "arrow_cast" && name != "arrow_try_cast" {
        return None;
    }
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v)))) = list.args.get(1) else {
        return None;
    };
    let Value::SingleQuotedString(text) = &v.value else {
        return None;
    };
    let data_type: datafusion::arrow::datatypes::DataType = text.parse().ok()?;
    Some((text.clone(), fixed_width(&data_type)))
}

/// Bytes one value of `t` takes whatever it holds: a fixed-size binary its
/// width, a fixed-size list its length times its element's, a struct the
/// sum of its fields', a variable-size type its offset or view (16), and
/// the widest nested fixed-size type of a list, map or dictionary (a NULL
/// element of it takes its whole width too).
pub fn fixed_width(t: &datafusion::arrow::datatypes::DataType) -> u64 {
    use datafusion::arrow::datatypes::DataType as T;
    match t {
        T::FixedSizeBinary(n) => u64::try_from(*n).unwrap_or(0),
        T::FixedSizeList(f, n) => u64::try_from(*n)
            .unwrap_or(0)
            .saturating_mul(fixed_width(f.data_type())),
        T::Struct(fields) => fields.iter().fold(0u64, |sum, f| {
            sum.saturating_add(fixed_width(f.data_type()))
        }),
        T::Union(fields, _) => fields.iter().fold(0u64, |sum, (_, f)| {
            sum.saturating_add(fixed_width(f.data_type()))
        }),
        T::List(f) | T::LargeList(f) | T::ListView(f) | T::LargeListView(f) | T::Map(f, _) => {
            fixed_width(f.data_type()).max(16)
        }
        T::Dictionary(_, v) => fixed_width(v),
        T::RunEndEncoded(_, v) => fixed_width(v.data_type()),
        other => other.primitive_width().map_or(16, |w| w as u64),
    }
}

/// Refuses a statement shaped to cost far more to plan than its text:
/// a `GROUP BY` whose `CUBE`, `ROLLUP` and `GROUPING SETS` stand for more
/// than [`MAX_GROUPING_SETS`] grouping sets (DataFusion lists a `CUBE` of n
/// expressions as all 2^n sets while planning, so `CUBE` of 35 columns held
/// a planning thread and memory until the process died), or one that reads
/// more than [`MAX_RELATIONS`] relations, or one naming in `arrow_cast` a
/// type wider than [`MAX_FIXED_WIDTH`]. Set operations are counted on the
/// tokens (see [`MAX_SET_OPERATIONS`]), so the tree walked here is shallow.
fn check_shape(statement: &Statement) -> Result<()> {
    enum Refusal {
        GroupingSets(u64),
        Relations,
        Width(String, u64),
    }
    #[derive(Default)]
    struct Counter {
        relations: u64,
    }
    impl Visitor for Counter {
        type Break = Refusal;
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<Refusal> {
            match cast_target(expr) {
                Some((name, width)) if width > MAX_FIXED_WIDTH => {
                    ControlFlow::Break(Refusal::Width(name, width))
                }
                _ => ControlFlow::Continue(()),
            }
        }
        fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<Refusal> {
            let mut bodies = vec![query.body.as_ref()];
            while let Some(body) = bodies.pop() {
                match body {
                    SetExpr::Select(select) => {
                        let joins: usize = select.from.iter().map(|t| 1 + t.joins.len()).sum();
                        self.relations = self.relations.saturating_add(joins as u64);
                        if self.relations > MAX_RELATIONS {
                            return ControlFlow::Break(Refusal::Relations);
                        }
                        if let GroupByExpr::Expressions(exprs, _) = &select.group_by {
                            let sets = exprs.iter().fold(1u64, |n, e| {
                                let sets = match e {
                                    Expr::Cube(v) => u32::try_from(v.len())
                                        .ok()
                                        .and_then(|len| 1u64.checked_shl(len))
                                        .unwrap_or(u64::MAX),
                                    Expr::Rollup(v) => v.len() as u64 + 1,
                                    Expr::GroupingSets(v) => v.len() as u64,
                                    _ => 1,
                                };
                                n.saturating_mul(sets)
                            });
                            if sets > MAX_GROUPING_SETS {
                                return ControlFlow::Break(Refusal::GroupingSets(sets));
                            }
                        }
                    }
                    SetExpr::SetOperation { left, right, .. } => {
                        bodies.push(left);
                        bodies.push(right);
                    }
                    _ => {}
                }
            }
            ControlFlow::Continue(())
        }
    }
    let found = match statement {
        Statement::Statement(s) => s.visit(&mut Counter::default()),
        Statement::Explain(e) => return check_shape(&e.statement),
        _ => ControlFlow::Continue(()),
    };
    match found {
        ControlFlow::Break(Refusal::GroupingSets(sets)) => {
            Err(VeilError::InvalidArgument(format!(
                "GROUP BY stands for {} grouping sets, more than {MAX_GROUPING_SETS}: \
             CUBE of n expressions is 2^n sets; use fewer expressions or list the \
             GROUPING SETS needed",
                if sets == u64::MAX {
                    "2^64 or more".to_string()
                } else {
                    sets.to_string()
                }
            )))
        }
        ControlFlow::Break(Refusal::Width(name, width)) => {
            Err(VeilError::InvalidArgument(format!(
            "type {name} takes {width} bytes per value, more than {MAX_FIXED_WIDTH}: every row \
             of a fixed-size type holds its whole width, NULL included"
        )))
        }
        ControlFlow::Break(Refusal::Relations) => Err(VeilError::InvalidArgument(format!(
            "statement reads more than {MAX_RELATIONS} tables, subqueries and CTE references \
             (FROM items and JOINs); split it, or stage intermediate results in a workspace"
        ))),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// Parses one SQL expression (a row policy's predicate) for DataFusion,
/// on checked tokens with a [`BoundedDialect`].
pub fn parse_expr(sql: &str, recursion_limit: usize) -> Result<ExprWithAlias> {
    with_df_parser(sql, recursion_limit, |p| p.parse_into_expr())
}

/// Runs `parse` on DataFusion's parser over checked tokens of `sql`, with a
/// [`BoundedDialect`].
fn with_df_parser<T>(
    sql: &str,
    recursion_limit: usize,
    parse: impl FnOnce(&mut DFParser) -> std::result::Result<T, DataFusionError>,
) -> Result<T> {
    let dialect = BoundedDialect::for_sql(sql);
    let parsed = checked_tokens(&dialect, sql).and_then(|tokens| {
        let tokens = tokens.map_err(|e| DataFusionError::from(ParserError::from(e)))?;
        DFParserBuilder::new(tokens)
            .with_dialect(&dialect)
            .with_recursion_limit(recursion_limit)
            .build()
            .and_then(|mut p| parse(&mut p))
            .map_err(VeilError::from)
    });
    dialect.finish(parsed)
}

/// A sqlparser `Parser` over checked tokens: unlike
/// `Parser::try_with_sql` it logs nothing, so statement text (a password in
/// `CREATE USER`) never reaches a debug log. The caller passes its result
/// through [`BoundedDialect::finish`].
pub(crate) fn quiet_parser(dialect: &BoundedDialect, tokens: Vec<TokenWithSpan>) -> Parser<'_> {
    Parser::new(dialect).with_tokens_with_locations(tokens)
}

/// The tokens of `sql` (sqlparser's tokenizer: linear, logs nothing).
/// The outer error refuses text over [`MAX_SQL_BYTES`] or tokens
/// [`check_tokens`] refuses; the inner one is the tokenizer's syntax error,
/// for the caller to word.
pub(crate) fn checked_tokens(
    dialect: &BoundedDialect,
    sql: &str,
) -> Result<std::result::Result<Vec<TokenWithSpan>, TokenizerError>> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(VeilError::InvalidArgument(format!(
            "statement text is {} bytes; at most {MAX_SQL_BYTES} are accepted \
             (pass large inputs as parameters or tables)",
            sql.len()
        )));
    }
    let tokens = Tokenizer::new(dialect, sql)
        .with_unescape(true)
        .tokenize_with_location()
        .map(compact_whitespace);
    if let Ok(tokens) = &tokens {
        check_tokens(tokens)?;
    }
    Ok(tokens)
}

/// Replaces each run of whitespace and comment tokens by one space. The
/// parser skips whitespace token by token at every look-ahead, so a
/// statement padded with spaces or comments made each of its steps cost
/// as much as the padding: a 16 KiB `cast(` chain took 7 s before the step
/// budget ran out, 6 minutes at 64 KiB. Only the presence of whitespace
/// matters to the parser; comments matter only as optimizer hints, which
/// DataFusion does not use.
fn compact_whitespace(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let mut out: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len());
    for t in tokens {
        let Token::Whitespace(_) = t.token else {
            out.push(t);
            continue;
        };
        if !matches!(out.last().map(|l| &l.token), Some(Token::Whitespace(_))) {
            out.push(TokenWithSpan::new(
                Token::Whitespace(Whitespace::Space),
                t.span,
            ));
        }
    }
    out
}

/// Most `UNION`, `INTERSECT` and `EXCEPT` operations one statement may
/// hold. sqlparser builds a chain of them as a tree as deep as the chain is
/// long, and DataFusion's planner walks it recursively without growing its
/// stack: 40,000 `UNION ALL SELECT 1` (800 KB of text) overflowed a worker's
/// stack and aborted the server. Counted on the tokens, before any parser
/// or tree walk.
pub const MAX_SET_OPERATIONS: usize = 1024;

/// Refuses, before any parser sees them, tokens nested more than
/// [`MAX_NESTING`] parentheses or brackets deep, more than
/// [`MAX_SET_OPERATIONS`] set operations, and chains of names longer than
/// [`MAX_NAME_PARTS`].
pub fn check_tokens(tokens: &[TokenWithSpan]) -> Result<()> {
    let mut depth = 0usize;
    let mut set_operations = 0usize;
    for t in tokens {
        match &t.token {
            Token::Word(w)
                if w.quote_style.is_none()
                    && matches!(
                        w.keyword,
                        Keyword::UNION | Keyword::INTERSECT | Keyword::EXCEPT | Keyword::MINUS
                    ) =>
            {
                set_operations += 1;
                if set_operations > MAX_SET_OPERATIONS {
                    return Err(VeilError::InvalidArgument(format!(
                        "statement has more than {MAX_SET_OPERATIONS} UNION, INTERSECT and \
                         EXCEPT operations; split it, or stage intermediate results in a \
                         workspace"
                    )));
                }
            }
            Token::LParen | Token::LBracket | Token::LBrace => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(VeilError::InvalidArgument(format!(
                        "statement nests parentheses or brackets more than {MAX_NESTING} deep \
                         (near line {}, column {})",
                        t.span.start.line, t.span.start.column
                    )));
                }
            }
            Token::RParen | Token::RBracket | Token::RBrace => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    check_name_chains(tokens)
}

/// The most `.` one chain of names and subscripts may hold (`a.b[1].c`
/// holds two). A chain is names, numbers, subscripts and whitespace; any
/// other token ends it, and so does a keyword that does not follow a `.`
/// (`CASE WHEN t.a THEN t.b ...` is many short chains). Real names have at
/// most catalog, schema, table, column and a few struct fields.
pub const MAX_NAME_PARTS: usize = 16;

/// Refuses a longer chain than [`MAX_NAME_PARTS`] before any parser sees
/// the text: a chain that fails to parse takes time exponential in its
/// length (fixed upstream in apache/datafusion-sqlparser-rs#2344). The
/// `policy_expression` fuzz target found a 71-byte statement that took 4 s
/// in a release build. The step budget catches this shape too; this check
/// refuses it earlier, with an error that says what is wrong.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_size_types_wider_than_the_limit_are_refused_in_arrow_cast() {
        let width = |t: &str| fixed_width(&t.parse().unwrap());
        assert_eq!(width("FixedSizeBinary(16)"), 16);
        assert_eq!(width("FixedSizeList(1536, Float32)"), 1536 * 4);
        assert_eq!(width("Struct(\"a\": Int64, \"b\": FixedSizeBinary(8))"), 16);
        assert_eq!(width("List(FixedSizeBinary(100))"), 100);
        assert_eq!(width("Utf8"), 16);
        assert_eq!(
            width("FixedSizeList(2147483647, FixedSizeList(2147483647, FixedSizeList(2147483647, Int64)))"),
            u64::MAX
        );
        let parse = |sql: &str| parse_statement(sql, 50);
        // An embedding, a UUID and any variable-size type are fine.
        for ok in [
            "SELECT arrow_cast(NULL, 'FixedSizeList(16384, Float32)')",
            "SELECT arrow_try_cast(x, 'FixedSizeBinary(16)') FROM t",
            "SELECT arrow_cast(x, 'not a type') FROM t",
            "SELECT cast(x AS VARCHAR) FROM t",
        ] {
            assert!(parse(ok).is_ok(), "{ok}");
        }
        for refused in [
            "SELECT arrow_cast(NULL, 'FixedSizeList(16385, Float32)')",
            "SELECT ARROW_CAST(NULL, 'FixedSizeBinary(2000000000)')",
            "EXPLAIN SELECT x FROM t WHERE arrow_try_cast(x, 'List(FixedSizeBinary(70000))') IS NULL",
        ] {
            let e = parse(refused).unwrap_err().to_string();
            assert!(e.contains("bytes per value, more than 65536"), "{refused}: {e}");
        }
    }

    fn chains(sql: &str) -> Result<()> {
        checked_tokens(&BoundedDialect::for_sql(sql), sql).map(|t| assert!(t.is_ok()))
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

    /// Shapes on which sqlparser 0.62 takes exponential time; at 30
    /// repetitions each would run for hours without the budget (and each
    /// stays within the nesting limit).
    fn exponential_shapes(n: usize) -> Vec<String> {
        vec![
            format!("SELECT {}", "x-not-b.".repeat(n)),
            format!("SELECT a{}", ".not-b".repeat(n)),
            format!("SELECT {}", "case\t-".repeat(n)),
            format!("SELECT {}x", "if(current_time(".repeat(n)),
            format!("SELECT {}", "interval ".repeat(n)),
            format!("SELECT {}", "cast(".repeat(n)),
        ]
    }

    #[test]
    fn exponential_shapes_are_refused_at_once() {
        for sql in exponential_shapes(30) {
            let e = parse_statement(&sql, 50).unwrap_err();
            assert!(
                matches!(&e, VeilError::InvalidArgument(m) if m.contains("too complex to parse")),
                "{sql}: {e}"
            );
            // The same text inside a governance statement and a condition.
            let policy = format!("CREATE ROW POLICY p ON s.t USING {}", &sql[7..]);
            let e = crate::statement::parse(&policy).unwrap_err();
            assert!(
                e.to_string().contains("too complex to parse"),
                "{policy}: {e}"
            );
            let e = crate::condition::parse_condition(&sql[7..]).unwrap_err();
            assert!(e.to_string().contains("too complex to parse"), "{sql}: {e}");
            let e = parse_expr(&sql[7..], 50).unwrap_err();
            assert!(e.to_string().contains("too complex to parse"), "{sql}: {e}");
        }
    }

    /// Runs `f` on a thread with a 2 MiB stack (tokio's default for
    /// workers, smaller than the `veil` server's).
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn deep_or_long_statements_are_refused_without_overflowing_the_stack() {
        let refused = |sql: String, why: &'static str| {
            on_small_stack(move || {
                let e = parse_statement(&sql, 50).unwrap_err().to_string();
                assert!(e.contains(why), "{sql:.40}: {e}");
                let gov = format!("CREATE ROW POLICY p ON s.t USING {}", &sql[7..]);
                let e = crate::statement::parse(&gov).unwrap_err().to_string();
                assert!(e.contains(why), "{gov:.40}: {e}");
                let e = crate::condition::parse_condition(&sql[7..])
                    .unwrap_err()
                    .to_string();
                assert!(e.contains(why), "{sql:.40}: {e}");
            })
        };
        // Unprotected recursion in sqlparser: each would abort the process.
        refused(
            format!("SELECT {}1", "interval ".repeat(5000)),
            "nests too deeply",
        );
        refused(
            format!("SELECT 1 FROM {}t", "(".repeat(5000)),
            "more than 64 deep",
        );
        refused(format!("SELECT {}1", "[".repeat(100)), "more than 64 deep");
        // A tree as deep as the chain: dropping it used to overflow.
        refused(
            format!("SELECT {}", vec!["1"; 100_000].join("+")),
            "more than 2048 operators",
        );
        refused(
            format!("SELECT {}", vec!["a = 1"; 20_000].join(" OR ")),
            "more than 2048 operators",
        );
        // Text over 1 MiB.
        refused(
            format!("SELECT '{}'", "x".repeat(MAX_SQL_BYTES)),
            "at most 1048576",
        );
        // Within the limits: parsed.
        on_small_stack(|| {
            parse_statement(&format!("SELECT {}", vec!["1"; 2000].join("+")), 50).unwrap();
            parse_statement(
                &format!("SELECT x IN ({})", vec!["1"; 100_000].join(",")),
                50,
            )
            .unwrap();
            parse_statement(&format!("SELECT {}1{}", "(".repeat(40), ")".repeat(40)), 50).unwrap();
        });
    }

    #[test]
    fn short_exponential_shapes_are_parsed_as_before() {
        // Within the budget: the parser's own answer (some of these are
        // valid SQL, the others get the parser's own error).
        for sql in exponential_shapes(3) {
            if let Err(e) = parse_statement(&sql, 50) {
                assert!(!e.to_string().contains("too complex"), "{sql}: {e}");
            }
        }
    }
}
