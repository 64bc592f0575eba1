//! The device query language: a small, safe subset of Azure IoT Hub's
//! device query language, used to pick the devices a job targets.
//!
//! ```text
//! SELECT * FROM devices
//! SELECT * FROM devices WHERE tags.location.region = 'us' AND properties.reported.fw != '1.0'
//! SELECT * FROM devices WHERE $template IN ['dtmi:x:y;1', 'dtmi:x:y;2'] OR NOT IS_DEFINED(tags.ring)
//! ```
//!
//! A query is parsed once, with the `sqlparser` crate, and compiled into a
//! small [`Predicate`] tree; [`Query::matches`] then evaluates that tree
//! against a device twin (`serde_json::Value`). Everything here is pure and
//! deterministic: no I/O, no clock, no hashing whose order could leak out.
//!
//! # Semantics
//!
//! Conditions are three-valued (true / false / unknown), as in SQL:
//!
//! * a comparison involving a path that the twin does not define is
//!   *unknown*, and so is `NOT unknown`; `AND` / `OR` follow Kleene logic;
//!   a device matches only when the whole condition is *true*. So
//!   `NOT tags.ring = 'canary'` does **not** match a device without a ring:
//!   nothing is known about it;
//! * `=` compares JSON values: numbers numerically (`1 = 1.0`), strings
//!   exactly, booleans, and `null = null` is true. Two defined scalars of
//!   different types are simply not equal (false). Objects and arrays cannot
//!   be compared: the result is unknown;
//! * `<`, `>`, `<=`, `>=` only order two numbers or two strings (by code
//!   point); any other pair is unknown;
//! * `x IN [a, b]` behaves like `x = a OR x = b`, and `NOT IN` is its negation;
//! * `IS_DEFINED(path)` is true when the path exists (even holding `null`)
//!   and false otherwise: it is never unknown, which makes it the tool for
//!   asking about missing fields.
//!
//! # Limits
//!
//! Queries come from users over the network, so parsing is bounded: the text
//! may be at most [`MAX_QUERY_LEN`] bytes and conditions may nest at most
//! [`MAX_NESTING_DEPTH`] levels deep. Long flat `AND`/`OR` chains do not count
//! as nesting: they are flattened into one list.

use std::cmp::Ordering;
use std::fmt;

use serde_json::{Number, Value};
use sqlparser::ast::{self as sql, Spanned};
use sqlparser::dialect::GenericDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Span, Token, TokenWithSpan, Tokenizer};

/// Longest accepted query text, in bytes. Checked before anything else
/// touches the text, so the parser never sees huge inputs.
const MAX_QUERY_LEN: usize = 8 * 1024;

/// Deepest accepted nesting of conditions and operands (parentheses, `NOT`,
/// alternating `AND`/`OR`). Keeps compilation and evaluation, which recurse,
/// far away from the end of the stack.
const MAX_NESTING_DEPTH: usize = 64;

/// Recursion budget handed to sqlparser. The parser spends roughly one level
/// per parenthesis or `NOT`, plus a few for the statement itself, so this
/// lets our own (clearer) nesting check fire first in most cases while still
/// bounding the parser's recursion.
const PARSER_RECURSION_LIMIT: usize = MAX_NESTING_DEPTH + 16;

/// The one shape of query we accept, quoted in error messages.
const EXPECTED_FORM: &str = "SELECT * FROM devices [WHERE <condition>]";

/// The operators and functions we accept, quoted in error messages.
const SUPPORTED_OPERATORS: &str =
    "=, !=, <>, <, >, <=, >=, AND, OR, NOT, IN [...], NOT IN [...] and IS_DEFINED(path)";

/// Top-level twin fields that hold a single value and have no sub-fields.
const SCALAR_ROOTS: [&str; 6] = [
    "deviceId",
    "modelId",
    "$template",
    "status",
    "connectionState",
    "displayName",
];

/// Top-level twin fields that hold objects and are navigated with dots.
const OBJECT_ROOTS: [&str; 3] = ["tags", "properties", "cloudProperties"];

/// The only sections allowed right below `properties`.
const PROPERTY_SECTIONS: [&str; 2] = ["desired", "reported"];

/// Fragments of the query quoted in error messages are cut to this many
/// characters so a message stays readable.
const MAX_FRAGMENT_CHARS: usize = 80;

/// Why a query text was rejected. The message is meant for the person who
/// wrote the query: it says what is wrong, where (when known), and what is
/// accepted instead.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct QueryError {
    message: String,
}

impl QueryError {
    fn new(message: impl Into<String>) -> Self {
        QueryError {
            message: message.into(),
        }
    }

    /// The human-readable explanation (same text as `Display`).
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// A parsed device query: the text as the user wrote it, plus the compiled
/// condition that [`Query::matches`] evaluates.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    text: String,
    predicate: Predicate,
}

impl Query {
    /// Parses and validates `text`. Every construct outside the supported
    /// subset is rejected here, so [`Query::matches`] cannot fail later.
    pub fn parse(text: &str) -> Result<Query, QueryError> {
        if text.trim().is_empty() {
            return Err(empty_query());
        }
        if text.len() > MAX_QUERY_LEN {
            return Err(QueryError::new(format!(
                "query is too long ({} bytes); at most {MAX_QUERY_LEN} bytes are allowed",
                text.len()
            )));
        }
        let statement = parse_single_statement(text)?;
        let selection = check_statement_shape(statement)?;
        let predicate = match selection {
            None => Predicate::Const(true),
            Some(condition) => compile_predicate(&condition, 0)?,
        };
        Ok(Query {
            text: text.to_owned(),
            predicate,
        })
    }

    /// The query text exactly as given to [`Query::parse`].
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether the device twin `doc` is selected: true only when the
    /// condition evaluates to *true* (not false, not unknown).
    pub fn matches(&self, doc: &Value) -> bool {
        self.predicate.eval(doc) == Truth::True
    }
}

// ---------------------------------------------------------------------------
// Compiled form
// ---------------------------------------------------------------------------

/// The compiled condition. Kept separate from sqlparser's AST so evaluation
/// only has to handle what we support, and so `Query` stays cheap to clone.
#[derive(Debug, Clone, PartialEq)]
enum Predicate {
    /// `WHERE true`, `WHERE false`, or no `WHERE` at all (true).
    Const(bool),
    Compare {
        left: Operand,
        op: CompareOp,
        right: Operand,
    },
    In {
        needle: Operand,
        haystack: Vec<Operand>,
        negated: bool,
    },
    IsDefined(Path),
    Not(Box<Predicate>),
    /// A flattened `a AND b AND c ...` chain.
    All(Vec<Predicate>),
    /// A flattened `a OR b OR c ...` chain.
    Any(Vec<Predicate>),
}

/// Something that yields a JSON value (or nothing) for a given twin.
#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Literal(Value),
    Path(Path),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CompareOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

/// A validated dotted path into the twin, one JSON key per segment.
#[derive(Debug, Clone, PartialEq)]
struct Path(Vec<String>);

impl Path {
    /// The value at this path, or `None` when the twin does not define it.
    /// Walking through anything that is not an object ends in `None`.
    fn lookup<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        self.0
            .iter()
            .try_fold(doc, |value, key| value.as_object()?.get(key))
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// SQL's three truth values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Truth {
    True,
    False,
    Unknown,
}

impl Truth {
    fn from_bool(value: bool) -> Truth {
        if value {
            Truth::True
        } else {
            Truth::False
        }
    }

    fn not(self) -> Truth {
        match self {
            Truth::True => Truth::False,
            Truth::False => Truth::True,
            Truth::Unknown => Truth::Unknown,
        }
    }

    /// Kleene AND over any number of terms: false wins, then unknown.
    fn all(terms: impl IntoIterator<Item = Truth>) -> Truth {
        let mut result = Truth::True;
        for term in terms {
            match term {
                Truth::False => return Truth::False,
                Truth::Unknown => result = Truth::Unknown,
                Truth::True => {}
            }
        }
        result
    }

    /// Kleene OR over any number of terms: true wins, then unknown.
    fn any(terms: impl IntoIterator<Item = Truth>) -> Truth {
        let mut result = Truth::False;
        for term in terms {
            match term {
                Truth::True => return Truth::True,
                Truth::Unknown => result = Truth::Unknown,
                Truth::False => {}
            }
        }
        result
    }
}

// ---------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------

impl Predicate {
    fn eval(&self, doc: &Value) -> Truth {
        match self {
            Predicate::Const(value) => Truth::from_bool(*value),
            Predicate::Compare { left, op, right } => {
                match (left.resolve(doc), right.resolve(doc)) {
                    (Some(left), Some(right)) => compare(left, *op, right),
                    _ => Truth::Unknown,
                }
            }
            Predicate::In {
                needle,
                haystack,
                negated,
            } => {
                let found = match needle.resolve(doc) {
                    None => Truth::Unknown,
                    Some(needle) => Truth::any(haystack.iter().map(|candidate| {
                        candidate
                            .resolve(doc)
                            .map_or(Truth::Unknown, |candidate| equals(needle, candidate))
                    })),
                };
                if *negated {
                    found.not()
                } else {
                    found
                }
            }
            Predicate::IsDefined(path) => Truth::from_bool(path.lookup(doc).is_some()),
            Predicate::Not(inner) => inner.eval(doc).not(),
            Predicate::All(terms) => Truth::all(terms.iter().map(|term| term.eval(doc))),
            Predicate::Any(terms) => Truth::any(terms.iter().map(|term| term.eval(doc))),
        }
    }
}

impl Operand {
    fn resolve<'a>(&'a self, doc: &'a Value) -> Option<&'a Value> {
        match self {
            Operand::Literal(value) => Some(value),
            Operand::Path(path) => path.lookup(doc),
        }
    }
}

fn compare(left: &Value, op: CompareOp, right: &Value) -> Truth {
    match op {
        CompareOp::Eq => equals(left, right),
        CompareOp::NotEq => equals(left, right).not(),
        CompareOp::Lt => order(left, right).map_or(Truth::Unknown, |o| Truth::from_bool(o.is_lt())),
        CompareOp::LtEq => {
            order(left, right).map_or(Truth::Unknown, |o| Truth::from_bool(o.is_le()))
        }
        CompareOp::Gt => order(left, right).map_or(Truth::Unknown, |o| Truth::from_bool(o.is_gt())),
        CompareOp::GtEq => {
            order(left, right).map_or(Truth::Unknown, |o| Truth::from_bool(o.is_ge()))
        }
    }
}

/// JSON equality for the query language (see the module docs).
fn equals(left: &Value, right: &Value) -> Truth {
    match (left, right) {
        (Value::Array(_) | Value::Object(_), _) | (_, Value::Array(_) | Value::Object(_)) => {
            Truth::Unknown
        }
        (Value::Number(a), Value::Number(b)) => {
            compare_numbers(a, b).map_or(Truth::Unknown, |o| Truth::from_bool(o.is_eq()))
        }
        (Value::String(a), Value::String(b)) => Truth::from_bool(a == b),
        (Value::Bool(a), Value::Bool(b)) => Truth::from_bool(a == b),
        (Value::Null, Value::Null) => Truth::True,
        _ => Truth::False,
    }
}

/// Ordering is only defined between two numbers or two strings.
fn order(left: &Value, right: &Value) -> Option<Ordering> {
    match (left, right) {
        (Value::Number(a), Value::Number(b)) => compare_numbers(a, b),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

/// Compares two JSON numbers by value. Integers are compared exactly (so
/// large ids near `u64::MAX` do not collapse together as they would in
/// `f64`); anything involving a float is compared as `f64`, which makes
/// `1 = 1.0` hold.
fn compare_numbers(a: &Number, b: &Number) -> Option<Ordering> {
    fn as_integer(n: &Number) -> Option<i128> {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    }
    match (as_integer(a), as_integer(b)) {
        (Some(a), Some(b)) => Some(a.cmp(&b)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

// ---------------------------------------------------------------------------
// Parsing: text -> one sqlparser statement
// ---------------------------------------------------------------------------

fn empty_query() -> QueryError {
    QueryError::new(format!("query is empty; expected `{EXPECTED_FORM}`"))
}

fn malformed(detail: &str) -> QueryError {
    QueryError::new(format!(
        "malformed query: {detail}; expected `{EXPECTED_FORM}`"
    ))
}

fn too_deep() -> QueryError {
    QueryError::new(format!(
        "query is nested too deeply; at most {MAX_NESTING_DEPTH} levels of parentheses/NOT are allowed"
    ))
}

/// Tokenizes, rewrites IoT Hub's `IN [...]` into SQL's `IN (...)`, and parses
/// exactly one statement with a bounded recursion budget.
fn parse_single_statement(text: &str) -> Result<sql::Statement, QueryError> {
    let dialect = GenericDialect {};
    let mut tokens = Tokenizer::new(&dialect, text)
        .tokenize_with_location()
        .map_err(|err| malformed(&err.to_string()))?;
    rewrite_in_brackets(&mut tokens)?;

    let mut statements = Parser::new(&dialect)
        .with_recursion_limit(PARSER_RECURSION_LIMIT)
        .with_tokens_with_locations(tokens)
        .parse_statements()
        .map_err(|err| match err {
            ParserError::RecursionLimitExceeded => too_deep(),
            ParserError::ParserError(detail) | ParserError::TokenizerError(detail) => {
                malformed(&detail)
            }
        })?;

    match statements.len() {
        0 => Err(empty_query()),
        1 => statements.pop().ok_or_else(empty_query),
        n => Err(QueryError::new(format!(
            "found {n} statements; exactly one query of the form `{EXPECTED_FORM}` is supported"
        ))),
    }
}

/// IoT Hub writes lists in square brackets (`x IN ['a', 'b']`), which is not
/// SQL. Working on tokens rather than text means brackets inside string
/// literals are never touched. Only a `[` directly after `IN` (comments and
/// whitespace aside) and its matching `]` are turned into parentheses; a
/// rewritten `[` closed by `)` (or the reverse) is reported here, since after
/// the rewrite the parser could no longer tell.
fn rewrite_in_brackets(tokens: &mut [TokenWithSpan]) -> Result<(), QueryError> {
    #[derive(PartialEq)]
    enum Open {
        Paren,
        Bracket { rewritten: bool },
    }
    let mut open: Vec<(Open, Span)> = Vec::new();
    let mut after_in = false;
    for token in tokens.iter_mut() {
        match &token.token {
            Token::Whitespace(_) => continue,
            Token::LParen => open.push((Open::Paren, token.span)),
            Token::LBracket => {
                open.push((
                    Open::Bracket {
                        rewritten: after_in,
                    },
                    token.span,
                ));
                if after_in {
                    token.token = Token::LParen;
                }
            }
            Token::RParen => {
                if let Some((Open::Bracket { .. }, start)) = open.pop() {
                    return Err(mismatched("[", start, ")", token.span));
                }
            }
            Token::RBracket => match open.pop() {
                Some((Open::Paren, start)) => return Err(mismatched("(", start, "]", token.span)),
                Some((Open::Bracket { rewritten: true }, _)) => token.token = Token::RParen,
                _ => {}
            },
            _ => {}
        }
        after_in = matches!(&token.token, Token::Word(word) if word.keyword == Keyword::IN);
    }
    Ok(())
}

fn mismatched(opener: &str, start: Span, closer: &str, end: Span) -> QueryError {
    malformed(&format!(
        "`{opener}`{} is closed by `{closer}`{}",
        location(start),
        location(end)
    ))
}

/// Checks that the statement is `SELECT * FROM devices [WHERE ...]` and
/// hands back the WHERE condition. The common unsupported clauses get a
/// message naming them; anything more exotic is caught by the final check,
/// which compares the statement (minus WHERE) with the one accepted form.
fn check_statement_shape(statement: sql::Statement) -> Result<Option<sql::Expr>, QueryError> {
    let sql::Statement::Query(mut query) = statement else {
        return Err(QueryError::new(format!(
            "only queries of the form `{EXPECTED_FORM}` are supported, found `{}`",
            fragment(&statement)
        )));
    };
    if query.with.is_some() {
        return Err(unsupported_clause("WITH (common table expressions)"));
    }
    if query.order_by.is_some() {
        return Err(unsupported_clause("ORDER BY"));
    }
    if query.limit_clause.is_some() || query.fetch.is_some() {
        return Err(unsupported_clause("LIMIT/OFFSET/FETCH"));
    }
    let select = match query.body.as_mut() {
        sql::SetExpr::Select(select) => select,
        sql::SetExpr::SetOperation { op, .. } => {
            return Err(unsupported_clause(&op.to_string()));
        }
        sql::SetExpr::Query(_) => return Err(unsupported_clause("a parenthesized subquery")),
        other => {
            return Err(QueryError::new(format!(
                "only queries of the form `{EXPECTED_FORM}` are supported, found `{}`",
                fragment(other)
            )))
        }
    };
    if select.distinct.is_some() {
        return Err(unsupported_clause("DISTINCT"));
    }
    if select.top.is_some() {
        return Err(unsupported_clause("TOP"));
    }
    if !matches!(select.projection.as_slice(), [sql::SelectItem::Wildcard(_)]) {
        let projection: Vec<String> = select
            .projection
            .iter()
            .map(|item| item.to_string())
            .collect();
        return Err(QueryError::new(format!(
            "only `SELECT *` is supported, found `SELECT {}`",
            truncate(&projection.join(", "))
        )));
    }
    check_from(&select.from)?;
    if !matches!(&select.group_by, sql::GroupByExpr::Expressions(exprs, modifiers) if exprs.is_empty() && modifiers.is_empty())
    {
        return Err(unsupported_clause("GROUP BY"));
    }
    if select.having.is_some() {
        return Err(unsupported_clause("HAVING"));
    }

    let selection = select.selection.take();
    let rest = query.to_string();
    if !rest.eq_ignore_ascii_case("SELECT * FROM devices") {
        return Err(QueryError::new(format!(
            "unsupported query form `{}`; only `{EXPECTED_FORM}` is supported",
            truncate(&rest)
        )));
    }
    Ok(selection)
}

fn check_from(from: &[sql::TableWithJoins]) -> Result<(), QueryError> {
    let source = match from {
        [] => {
            return Err(QueryError::new(format!(
                "missing `FROM devices`; expected `{EXPECTED_FORM}`"
            )))
        }
        [source] => source,
        [..] => return Err(unsupported_clause("selecting from several sources")),
    };
    if !source.joins.is_empty() {
        return Err(unsupported_clause("JOIN"));
    }
    match &source.relation {
        sql::TableFactor::Table { name, alias, .. } => {
            let is_devices = matches!(
                name.0.as_slice(),
                [sql::ObjectNamePart::Identifier(ident)] if ident.value.eq_ignore_ascii_case("devices")
            );
            if !is_devices {
                return Err(QueryError::new(format!(
                    "unsupported source `{}`{}; queries must select FROM devices",
                    fragment(name),
                    location(name.span())
                )));
            }
            if alias.is_some() {
                return Err(unsupported_clause("a table alias"));
            }
            Ok(())
        }
        sql::TableFactor::Derived { .. } => Err(unsupported_clause("a subquery in FROM")),
        other => Err(QueryError::new(format!(
            "unsupported source `{}`; queries must select FROM devices",
            fragment(other)
        ))),
    }
}

fn unsupported_clause(what: &str) -> QueryError {
    QueryError::new(format!(
        "{what} is not supported; only `{EXPECTED_FORM}` is accepted"
    ))
}

// ---------------------------------------------------------------------------
// Compilation: sqlparser expression -> Predicate
// ---------------------------------------------------------------------------

/// Counts one more level of nesting, refusing to go past the limit.
fn descend(depth: usize) -> Result<usize, QueryError> {
    if depth >= MAX_NESTING_DEPTH {
        Err(too_deep())
    } else {
        Ok(depth + 1)
    }
}

/// Compiles an expression in condition position (the WHERE clause, an
/// operand of AND/OR/NOT).
fn compile_predicate(expr: &sql::Expr, depth: usize) -> Result<Predicate, QueryError> {
    use sql::Expr;
    let depth = descend(depth)?;
    match expr {
        Expr::Nested(inner) => compile_predicate(inner, depth),
        Expr::BinaryOp {
            op: sql::BinaryOperator::And,
            ..
        } => Ok(Predicate::All(compile_chain(
            expr,
            &sql::BinaryOperator::And,
            depth,
        )?)),
        Expr::BinaryOp {
            op: sql::BinaryOperator::Or,
            ..
        } => Ok(Predicate::Any(compile_chain(
            expr,
            &sql::BinaryOperator::Or,
            depth,
        )?)),
        Expr::BinaryOp { left, op, right } => match compare_op(op) {
            Some(op) => Ok(Predicate::Compare {
                left: compile_operand(left, depth)?,
                op,
                right: compile_operand(right, depth)?,
            }),
            None => Err(unsupported_operator(&op.to_string(), expr)),
        },
        Expr::UnaryOp {
            op: sql::UnaryOperator::Not,
            expr: inner,
        } => Ok(Predicate::Not(Box::new(compile_predicate(inner, depth)?))),
        Expr::In {
            expr: needle,
            target,
            negated,
            global: false,
        } => match target {
            sql::InTarget::List(items) => Ok(Predicate::In {
                needle: compile_operand(needle, depth)?,
                haystack: items
                    .iter()
                    .map(|item| compile_operand(item, depth))
                    .collect::<Result<_, _>>()?,
                negated: *negated,
            }),
            sql::InTarget::Subquery(_) => Err(unsupported("subqueries", expr, "")),
            _ => Err(unsupported(
                "this form of IN",
                expr,
                "; write `x IN [value, ...]`",
            )),
        },
        Expr::Function(function) => compile_is_defined(function, expr, depth),
        Expr::Value(value) => match value.value {
            sql::Value::Boolean(constant) => Ok(Predicate::Const(constant)),
            _ => Err(not_a_condition(expr)),
        },
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) | Expr::CompoundFieldAccess { .. } => {
            Err(not_a_condition(expr))
        }
        Expr::Like { .. } | Expr::ILike { .. } => Err(unsupported_operator("LIKE", expr)),
        Expr::SimilarTo { .. } | Expr::RLike { .. } => {
            Err(unsupported_operator("pattern matching", expr))
        }
        Expr::IsNull(_) | Expr::IsNotNull(_) => Err(unsupported(
            "IS NULL / IS NOT NULL",
            expr,
            "; write `path = null`, or IS_DEFINED(path) to test whether a field exists",
        )),
        Expr::Between { .. } => Err(unsupported(
            "BETWEEN",
            expr,
            "; write `x >= low AND x <= high`",
        )),
        Expr::Exists { .. } | Expr::Subquery(_) => Err(unsupported("subqueries", expr, "")),
        _ => Err(unsupported_operator("this expression", expr)),
    }
}

/// Compiles a left-deep chain `a OP b OP c ...` of one operator into a flat
/// list, iteratively: a long list of conditions is common and must not be
/// mistaken for deep nesting (or recurse once per term).
fn compile_chain(
    expr: &sql::Expr,
    op: &sql::BinaryOperator,
    depth: usize,
) -> Result<Vec<Predicate>, QueryError> {
    let mut terms = Vec::new();
    let mut pending = vec![expr];
    while let Some(next) = pending.pop() {
        match next {
            sql::Expr::BinaryOp {
                left,
                op: next_op,
                right,
            } if next_op == op => {
                // Pushed right first so the left term is compiled first and
                // the terms keep their written order.
                pending.push(right);
                pending.push(left);
            }
            term => terms.push(compile_predicate(term, depth)?),
        }
    }
    Ok(terms)
}

fn compare_op(op: &sql::BinaryOperator) -> Option<CompareOp> {
    use sql::BinaryOperator as B;
    match op {
        B::Eq => Some(CompareOp::Eq),
        B::NotEq => Some(CompareOp::NotEq),
        B::Lt => Some(CompareOp::Lt),
        B::LtEq => Some(CompareOp::LtEq),
        B::Gt => Some(CompareOp::Gt),
        B::GtEq => Some(CompareOp::GtEq),
        _ => None,
    }
}

/// `IS_DEFINED(path)`, the one supported function (name case-insensitive).
fn compile_is_defined(
    function: &sql::Function,
    expr: &sql::Expr,
    depth: usize,
) -> Result<Predicate, QueryError> {
    let name = function.name.to_string();
    if !name.eq_ignore_ascii_case("IS_DEFINED") {
        return Err(QueryError::new(format!(
            "unsupported function `{}`{}; the only supported function is IS_DEFINED(path)",
            truncate(&name),
            location(expr.span())
        )));
    }
    let usage_error = || {
        QueryError::new(format!(
            "IS_DEFINED takes exactly one path, e.g. `IS_DEFINED(tags.location)`; found `{}`{}",
            fragment(expr),
            location(expr.span())
        ))
    };
    let plain_call = !function.uses_odbc_syntax
        && matches!(function.parameters, sql::FunctionArguments::None)
        && function.filter.is_none()
        && function.null_treatment.is_none()
        && function.over.is_none()
        && function.within_group.is_empty();
    let sql::FunctionArguments::List(arguments) = &function.args else {
        return Err(usage_error());
    };
    if !plain_call || arguments.duplicate_treatment.is_some() || !arguments.clauses.is_empty() {
        return Err(usage_error());
    }
    let [sql::FunctionArg::Unnamed(sql::FunctionArgExpr::Expr(argument))] =
        arguments.args.as_slice()
    else {
        return Err(usage_error());
    };
    match compile_operand(argument, depth)? {
        Operand::Path(path) => Ok(Predicate::IsDefined(path)),
        Operand::Literal(_) => Err(usage_error()),
    }
}

/// Compiles an expression in value position: a path into the twin or a
/// literal.
fn compile_operand(expr: &sql::Expr, depth: usize) -> Result<Operand, QueryError> {
    use sql::Expr;
    let depth = descend(depth)?;
    match expr {
        Expr::Nested(inner) => compile_operand(inner, depth),
        // IoT Hub accepts "double-quoted" strings; sqlparser's generic
        // dialect reads them as quoted identifiers. A lone one is a string;
        // inside a dotted path (tags."my key") it is a key.
        Expr::Identifier(ident) if ident.quote_style == Some('"') => {
            Ok(Operand::Literal(Value::String(ident.value.clone())))
        }
        Expr::Identifier(ident) => path_operand(vec![ident.value.clone()], expr),
        Expr::CompoundIdentifier(idents) => path_operand(
            idents.iter().map(|ident| ident.value.clone()).collect(),
            expr,
        ),
        Expr::Value(value) => compile_literal(&value.value, expr),
        Expr::UnaryOp {
            op: op @ (sql::UnaryOperator::Minus | sql::UnaryOperator::Plus),
            expr: inner,
        } => match inner.as_ref() {
            Expr::Value(sql::ValueWithSpan {
                value: sql::Value::Number(digits, _),
                ..
            }) => number_literal(digits, *op == sql::UnaryOperator::Minus, expr),
            _ => Err(unsupported_operator("arithmetic", expr)),
        },
        Expr::CompoundFieldAccess { root, access_chain } => {
            let on_template = matches!(
                root.as_ref(),
                Expr::Value(sql::ValueWithSpan { value: sql::Value::Placeholder(name), .. }) if name == "$template"
            );
            if on_template {
                Err(scalar_has_no_fields("$template", expr))
            } else if access_chain
                .iter()
                .any(|access| matches!(access, sql::AccessExpr::Subscript(_)))
            {
                Err(unsupported(
                    "indexing with [...]",
                    expr,
                    "; paths are written with dots, e.g. `tags.location.region`",
                ))
            } else {
                Err(expected_value(expr))
            }
        }
        Expr::BinaryOp { op, .. } if compare_op(op).is_none() && !is_logical(op) => {
            Err(unsupported_operator("arithmetic", expr))
        }
        Expr::Function(_) => Err(QueryError::new(format!(
            "functions cannot be used as values: `{}`{}; the only supported function is IS_DEFINED(path), used as a condition",
            fragment(expr),
            location(expr.span())
        ))),
        Expr::Array(_) => Err(unsupported(
            "array values",
            expr,
            "; to test membership write `x IN [value, ...]`",
        )),
        _ => Err(expected_value(expr)),
    }
}

fn is_logical(op: &sql::BinaryOperator) -> bool {
    matches!(op, sql::BinaryOperator::And | sql::BinaryOperator::Or)
}

fn compile_literal(value: &sql::Value, expr: &sql::Expr) -> Result<Operand, QueryError> {
    match value {
        sql::Value::SingleQuotedString(text) | sql::Value::DoubleQuotedString(text) => {
            Ok(Operand::Literal(Value::String(text.clone())))
        }
        sql::Value::Number(digits, _) => number_literal(digits, false, expr),
        sql::Value::Boolean(value) => Ok(Operand::Literal(Value::Bool(*value))),
        sql::Value::Null => Ok(Operand::Literal(Value::Null)),
        // sqlparser reads `$template` as a `$name` placeholder.
        sql::Value::Placeholder(name) if name.starts_with('$') => {
            path_operand(vec![name.clone()], expr)
        }
        _ => Err(QueryError::new(format!(
            "unsupported literal `{}`{}; use 'single-quoted strings', numbers, true, false or null",
            fragment(expr),
            location(expr.span())
        ))),
    }
}

/// Turns the digits sqlparser kept as text into a JSON number, preferring an
/// exact integer and falling back to a (finite) float.
fn number_literal(digits: &str, negative: bool, expr: &sql::Expr) -> Result<Operand, QueryError> {
    let text = if negative {
        format!("-{digits}")
    } else {
        digits.to_owned()
    };
    let number = if let Ok(int) = text.parse::<i64>() {
        Some(Number::from(int))
    } else if let Ok(uint) = text.parse::<u64>() {
        Some(Number::from(uint))
    } else {
        text.parse::<f64>().ok().and_then(Number::from_f64)
    };
    number
        .map(|n| Operand::Literal(Value::Number(n)))
        .ok_or_else(|| {
            QueryError::new(format!(
                "invalid or out-of-range number `{}`{}",
                fragment(expr),
                location(expr.span())
            ))
        })
}

/// Validates the path's root against the fields a device twin has. Keys are
/// matched exactly (JSON is case-sensitive), so a wrongly-cased root gets a
/// "did you mean" hint instead of silently matching nothing.
fn path_operand(segments: Vec<String>, expr: &sql::Expr) -> Result<Operand, QueryError> {
    let root = segments.first().map(String::as_str).unwrap_or_default();
    if SCALAR_ROOTS.contains(&root) {
        if segments.len() > 1 {
            return Err(scalar_has_no_fields(root, expr));
        }
    } else if OBJECT_ROOTS.contains(&root) {
        if root == "properties" {
            if let Some(section) = segments.get(1) {
                if !PROPERTY_SECTIONS.contains(&section.as_str()) {
                    return Err(QueryError::new(format!(
                        "unknown path `{}`{}: `properties` must be followed by `.desired` or `.reported`",
                        fragment(expr),
                        location(expr.span())
                    )));
                }
            }
        }
    } else {
        let hint = SCALAR_ROOTS
            .iter()
            .chain(OBJECT_ROOTS.iter())
            .find(|known| known.eq_ignore_ascii_case(root))
            .map(|known| format!(" (did you mean `{known}`? field names are case-sensitive)"))
            .unwrap_or_default();
        return Err(QueryError::new(format!(
            "unknown field `{}` in path `{}`{}{hint}; paths must start with one of: {}, tags., properties.desired., properties.reported., cloudProperties.",
            truncate(root),
            fragment(expr),
            location(expr.span()),
            SCALAR_ROOTS.join(", ")
        )));
    }
    Ok(Operand::Path(Path(segments)))
}

// ---------------------------------------------------------------------------
// Error helpers
// ---------------------------------------------------------------------------

fn unsupported_operator(what: &str, expr: &sql::Expr) -> QueryError {
    unsupported(
        what,
        expr,
        &format!("; supported operators are {SUPPORTED_OPERATORS}"),
    )
}

fn unsupported(what: &str, expr: &sql::Expr, hint: &str) -> QueryError {
    QueryError::new(format!(
        "{what} is not supported: `{}`{}{hint}",
        fragment(expr),
        location(expr.span())
    ))
}

fn not_a_condition(expr: &sql::Expr) -> QueryError {
    QueryError::new(format!(
        "`{}`{} is a value, not a condition; compare it with something, e.g. `{} = true`",
        fragment(expr),
        location(expr.span()),
        fragment(expr)
    ))
}

fn expected_value(expr: &sql::Expr) -> QueryError {
    QueryError::new(format!(
        "expected a path (like `tags.region`) or a literal value, found `{}`{}",
        fragment(expr),
        location(expr.span())
    ))
}

fn scalar_has_no_fields(root: &str, expr: &sql::Expr) -> QueryError {
    QueryError::new(format!(
        "`{root}` is a single value and has no fields, so `{}`{} is not a valid path",
        fragment(expr),
        location(expr.span())
    ))
}

/// " at line L, column C", or nothing when sqlparser has no position.
fn location(span: Span) -> String {
    if span.start.line == 0 {
        String::new()
    } else {
        format!(" at line {}, column {}", span.start.line, span.start.column)
    }
}

/// A piece of the query as sqlparser prints it, cut to a readable length.
fn fragment(node: &impl fmt::Display) -> String {
    truncate(&node.to_string())
}

fn truncate(text: &str) -> String {
    if text.chars().count() <= MAX_FRAGMENT_CHARS {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(MAX_FRAGMENT_CHARS - 1).collect();
        cut.push('…');
        cut
    }
}
