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
//! small predicate tree; [`Query::matches`] then evaluates that tree
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
//! may be at most 8 KiB, and conditions may nest at most 64 levels deep
//! (checked on the tokens, before sqlparser's own recursion limit, which is
//! also set, could trip). Long flat `AND`/`OR` chains do not count as
//! nesting: they are flattened into one list.
//!
//! Other syntax: keywords are case-insensitive, path segments are not (they
//! are JSON keys); strings may use 'single' or "double" quotes; `IN` lists
//! may use `[...]` (IoT Hub) or `(...)` (SQL); `tags."my key"` quotes a key.

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

/// Recursion budget handed to sqlparser, which bounds its stack use whatever
/// the input. The parser spends roughly one level per parenthesis or `NOT`,
/// plus a few for the statement itself; twice our own limit leaves room so
/// that our token-level nesting check (which has a clearer message) fires
/// first.
const PARSER_RECURSION_LIMIT: usize = 2 * MAX_NESTING_DEPTH;

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
        if text.len() > MAX_QUERY_LEN {
            return Err(QueryError::new(format!(
                "query is too long ({} bytes); at most {MAX_QUERY_LEN} bytes are allowed",
                text.len()
            )));
        }
        if text.trim().is_empty() {
            return Err(empty_query());
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

fn too_deep(span: Span) -> QueryError {
    QueryError::new(format!(
        "query is nested too deeply{}; at most {MAX_NESTING_DEPTH} levels of parentheses/NOT are allowed",
        location(span)
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
    check_nesting(&tokens)?;

    let mut statements = Parser::new(&dialect)
        .with_recursion_limit(PARSER_RECURSION_LIMIT)
        .with_tokens_with_locations(tokens)
        .parse_statements()
        .map_err(|err| match err {
            ParserError::RecursionLimitExceeded => too_deep(Span::empty()),
            ParserError::ParserError(detail) | ParserError::TokenizerError(detail) => {
                malformed(&detail.replace("found: EOF", "found: end of query"))
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

/// Rejects deeply nested input from the tokens alone, before the parser
/// runs. The parser has its own recursion limit, but when it trips inside
/// one of sqlparser's speculative parses the error comes out as an unrelated
/// syntax error; this check gives the user a clear message instead.
///
/// The estimate counts each open parenthesis or bracket as one level, and
/// each prefix `NOT` as one level until its operand ends (at the next
/// AND/OR or closing parenthesis). Every one of these is also a level the
/// compiler counts, so the estimate does not reject queries the compiler
/// would accept.
fn check_nesting(tokens: &[TokenWithSpan]) -> Result<(), QueryError> {
    // Pending prefix NOTs, one entry per open parenthesis (plus the top level).
    let mut pending_nots: Vec<usize> = vec![0];
    let mut depth: usize = 0;
    let mut previous: Option<&Token> = None;
    for token in tokens {
        match &token.token {
            Token::Whitespace(_) => continue,
            Token::LParen | Token::LBracket => {
                pending_nots.push(0);
                depth = depth.saturating_add(1);
            }
            // An unbalanced closer is left for the parser to report.
            Token::RParen | Token::RBracket if pending_nots.len() > 1 => {
                let nots = pending_nots.pop().unwrap_or_default();
                depth = depth.saturating_sub(nots.saturating_add(1));
            }
            Token::Word(word) if word.keyword == Keyword::NOT && is_prefix_position(previous) => {
                if let Some(nots) = pending_nots.last_mut() {
                    *nots = nots.saturating_add(1);
                    depth = depth.saturating_add(1);
                }
            }
            Token::Word(word) if matches!(word.keyword, Keyword::AND | Keyword::OR) => {
                if let Some(nots) = pending_nots.last_mut() {
                    depth = depth.saturating_sub(*nots);
                    *nots = 0;
                }
            }
            _ => {}
        }
        if depth > MAX_NESTING_DEPTH {
            return Err(too_deep(token.span));
        }
        previous = Some(&token.token);
    }
    Ok(())
}

/// Whether a `NOT` after `previous` starts a negated condition, as opposed
/// to being part of `NOT IN`, `NOT LIKE`, `IS NOT NULL` and the like.
fn is_prefix_position(previous: Option<&Token>) -> bool {
    match previous {
        None | Some(Token::LParen | Token::LBracket | Token::Comma) => true,
        Some(Token::Word(word)) => matches!(
            word.keyword,
            Keyword::WHERE | Keyword::AND | Keyword::OR | Keyword::NOT
        ),
        Some(_) => false,
    }
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
        Err(too_deep(Span::empty()))
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
            None => Err(binary_operator_error(op, expr)),
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
            sql::InTarget::Subquery(_) => Err(unsupported("a subquery", expr, "")),
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
        Expr::Exists { .. } | Expr::Subquery(_) => Err(unsupported("a subquery", expr, "")),
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
            Err(binary_operator_error(op, expr))
        }
        Expr::Function(_) => Err(QueryError::new(format!(
            "functions cannot be used as values: `{}`{}; the only supported function is IS_DEFINED(path), used as a condition",
            fragment(expr),
            location(expr.span())
        ))),
        Expr::Array(_) => Err(unsupported(
            "an array value",
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

fn binary_operator_error(op: &sql::BinaryOperator, expr: &sql::Expr) -> QueryError {
    use sql::BinaryOperator as B;
    let what = match op {
        B::Plus | B::Minus | B::Multiply | B::Divide | B::Modulo | B::StringConcat => {
            format!("arithmetic (`{op}`)")
        }
        _ => format!("operator `{op}`"),
    };
    unsupported_operator(&what, expr)
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn twin() -> Value {
        json!({
            "deviceId": "dev-1",
            "$template": "dtmi:x:y;1",
            "modelId": "dtmi:x:y;1",
            "status": "enabled",
            "connectionState": "Connected",
            "displayName": "Boiler room sensor",
            "tags": {
                "location": {"building": 43, "region": "us"},
                "ring": null,
                "weight": 1.0,
                "big": u64::MAX,
                "online": true,
                "list": [1, 2],
                "my key": "spaced",
                "odd": "[a], b]"
            },
            "properties": {
                "desired": {"fw": "1.0"},
                "reported": {"fw": "0.9", "temp": 21.5, "$metadata": {"x": 1}}
            },
            "cloudProperties": {"owner": "ops"}
        })
    }

    fn parse(text: &str) -> Query {
        match Query::parse(text) {
            Ok(query) => query,
            Err(err) => panic!("`{text}` should parse, got: {err}"),
        }
    }

    /// Whether `SELECT * FROM devices WHERE <condition>` matches the test twin.
    fn matches(condition: &str) -> bool {
        parse(&format!("SELECT * FROM devices WHERE {condition}")).matches(&twin())
    }

    /// The error message for a query that must be rejected.
    fn error(text: &str) -> String {
        match Query::parse(text) {
            Ok(query) => panic!("`{text}` should be rejected, parsed as {query:?}"),
            Err(err) => err.to_string(),
        }
    }

    fn where_error(condition: &str) -> String {
        error(&format!("SELECT * FROM devices WHERE {condition}"))
    }

    fn assert_contains(message: &str, fragments: &[&str]) {
        for fragment in fragments {
            assert!(
                message.contains(fragment),
                "message {message:?} should contain {fragment:?}"
            );
        }
    }

    // --- shape -----------------------------------------------------------

    #[test]
    fn select_without_where_matches_everything() {
        let query = parse("SELECT * FROM devices");
        assert!(query.matches(&twin()));
        assert!(query.matches(&json!({})));
        assert!(query.matches(&json!(null)));
    }

    #[test]
    fn keywords_and_source_are_case_insensitive() {
        assert!(parse("select * from DEVICES where deviceId = 'dev-1'").matches(&twin()));
        assert!(
            parse("SeLeCt * FrOm Devices WhErE deviceId = 'dev-1' AnD NoT status = 'x'")
                .matches(&twin())
        );
        assert!(parse("  SELECT * FROM devices ;  ").matches(&twin()));
    }

    #[test]
    fn text_is_kept_verbatim() {
        let text = "  select *\n  from devices where tags.location.region IN ['us']  ";
        assert_eq!(parse(text).text(), text);
    }

    #[test]
    fn queries_compare_equal_by_content() {
        assert_eq!(
            parse("SELECT * FROM devices"),
            parse("SELECT * FROM devices")
        );
        assert_ne!(
            parse("SELECT * FROM devices"),
            parse("select * from devices")
        );
    }

    #[test]
    fn where_true_and_false() {
        assert!(matches("true"));
        assert!(!matches("false"));
        assert!(matches("NOT false"));
    }

    // --- comparison operators ----------------------------------------------

    #[test]
    fn equality_and_inequality() {
        assert!(matches("deviceId = 'dev-1'"));
        assert!(!matches("deviceId = 'dev-2'"));
        assert!(!matches("deviceId = 'DEV-1'"), "strings compare exactly");
        assert!(matches("deviceId != 'dev-2'"));
        assert!(matches("deviceId <> 'dev-2'"));
        assert!(!matches("deviceId != 'dev-1'"));
        assert!(!matches("deviceId <> 'dev-1'"));
        assert!(matches("tags.online = true"));
        assert!(!matches("tags.online = false"));
        assert!(matches("tags.online != false"));
    }

    #[test]
    fn numeric_ordering() {
        assert!(matches("tags.location.building > 42"));
        assert!(!matches("tags.location.building > 43"));
        assert!(matches("tags.location.building >= 43"));
        assert!(matches("tags.location.building < 43.5"));
        assert!(!matches("tags.location.building < 43"));
        assert!(matches("tags.location.building <= 43"));
        assert!(matches("properties.reported.temp > -10"));
        assert!(matches("properties.reported.temp < 2.16e1"));
        assert!(!matches("properties.reported.temp < 2.15e1"));
    }

    #[test]
    fn string_ordering_is_lexicographic() {
        assert!(matches("properties.reported.fw < properties.desired.fw"));
        assert!(matches("status > 'a'"));
        assert!(matches("status >= 'enabled'"));
        assert!(matches("status <= 'enabled'"));
        assert!(!matches("status < 'enabled'"));
        assert!(matches("'10' < '9'"), "strings are not compared as numbers");
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(matches("tags.location.building = 43.0"));
        assert!(matches("tags.weight = 1"));
        assert!(matches("tags.weight = 1.0"));
        assert!(matches("tags.weight = 1e0"));
        assert!(matches("1 = 1.0"));
        assert!(matches("-1 < 0"));
        assert!(matches("-0.5 < 0"));
        assert!(matches("+2 = 2"));
        assert!(matches("1e3 = 1000"));
        assert!(matches("tags.big = 18446744073709551615"));
        assert!(!matches("tags.big = 18446744073709551614"));
        assert!(matches("tags.big > 18446744073709551614"));
        assert!(matches("-9223372036854775808 < 0"));
    }

    #[test]
    fn literals_on_either_side() {
        assert!(matches("'us' = tags.location.region"));
        assert!(matches("43 <= tags.location.building"));
        assert!(!matches("44 <= tags.location.building"));
        assert!(matches("1 = 1"));
        assert!(!matches("1 = 2"));
        assert!(matches("'a' != 'b'"));
        assert!(matches("null = null"));
    }

    #[test]
    fn double_quoted_strings_are_literals() {
        assert!(matches("deviceId = \"dev-1\""));
        assert!(matches("tags.location.region IN [\"eu\", \"us\"]"));
    }

    #[test]
    fn quoted_path_segments_and_escaped_quotes() {
        assert!(matches("tags.\"my key\" = 'spaced'"));
        assert!(matches("tags.odd = '[a], b]'"));
        let doc = json!({"tags": {"name": "it's"}});
        assert!(parse("SELECT * FROM devices WHERE tags.name = 'it''s'").matches(&doc));
    }

    #[test]
    fn path_segments_are_case_sensitive() {
        assert!(!matches("tags.Location.region = 'us'"));
        assert!(!matches("IS_DEFINED(tags.location.Region)"));
    }

    #[test]
    fn reported_metadata_keys_are_reachable() {
        assert!(matches("properties.reported.$metadata.x = 1"));
    }

    #[test]
    fn null_values() {
        assert!(matches("tags.ring = null"));
        assert!(
            !matches("tags.ring = 'canary'"),
            "null is not equal to a string"
        );
        assert!(matches("tags.ring != 'canary'"));
        assert!(!matches("tags.ring < 'a'"), "null is unordered");
        assert!(!matches("NOT tags.ring < 'a'"));
        assert!(!matches("deviceId = null"));
        assert!(matches("deviceId != null"));
    }

    #[test]
    fn mixed_types_are_unequal_and_unordered() {
        assert!(!matches("tags.location.building = '43'"));
        assert!(matches("tags.location.building != '43'"));
        assert!(!matches("tags.location.building > 'a'"));
        assert!(!matches("NOT tags.location.building > 'a'"));
        assert!(!matches("tags.online > false"));
        assert!(!matches("NOT tags.online > false"));
    }

    #[test]
    fn objects_and_arrays_do_not_compare() {
        assert!(!matches("tags.location = 1"));
        assert!(!matches("tags.location != 1"));
        assert!(!matches("tags.list = 1"));
        assert!(!matches("NOT tags.list = 1"));
        assert!(!matches("tags.list IN [1, 2]"));
        assert!(!matches("tags.list NOT IN [1, 2]"));
    }

    // --- logic and three-valued semantics ----------------------------------

    #[test]
    fn and_or_not_and_parentheses() {
        assert!(matches("deviceId = 'dev-1' AND status = 'enabled'"));
        assert!(!matches("deviceId = 'dev-1' AND status = 'disabled'"));
        assert!(matches("deviceId = 'dev-2' OR status = 'enabled'"));
        assert!(!matches("deviceId = 'dev-2' OR status = 'disabled'"));
        assert!(matches("NOT deviceId = 'dev-2'"));
        assert!(matches("NOT (deviceId = 'dev-2')"));
        // AND binds tighter than OR ...
        assert!(matches(
            "deviceId = 'dev-1' OR status = 'x' AND status = 'y'"
        ));
        // ... unless parentheses say otherwise.
        assert!(!matches(
            "(deviceId = 'dev-1' OR status = 'x') AND status = 'y'"
        ));
        assert!(matches("((((deviceId = 'dev-1'))))"));
        assert!(matches("NOT NOT deviceId = 'dev-1'"));
    }

    #[test]
    fn missing_paths_are_unknown() {
        // Neither the comparison nor its negation matches.
        assert!(!matches("tags.missing = 1"));
        assert!(!matches("tags.missing != 1"));
        assert!(!matches("NOT tags.missing = 1"));
        assert!(!matches("NOT (tags.missing = 1)"));
        assert!(!matches("tags.missing > 1"));
        assert!(!matches("NOT tags.missing > 1"));
        assert!(!matches("1 = tags.missing"));
        assert!(!matches("tags.location.building.deeper = 1"));
        assert!(!matches("deviceId = tags.missing"));
    }

    #[test]
    fn kleene_logic() {
        let unknown = "tags.missing = 1";
        let t = "deviceId = 'dev-1'";
        let f = "deviceId = 'dev-2'";
        // OR: true wins over unknown; unknown OR false is unknown.
        assert!(matches(&format!("{unknown} OR {t}")));
        assert!(matches(&format!("{t} OR {unknown}")));
        assert!(!matches(&format!("{unknown} OR {f}")));
        assert!(!matches(&format!("NOT ({unknown} OR {f})")));
        // AND: false wins over unknown; unknown AND true is unknown.
        assert!(!matches(&format!("{unknown} AND {t}")));
        assert!(!matches(&format!("NOT ({unknown} AND {t})")));
        assert!(matches(&format!("NOT ({unknown} AND {f})")));
        assert!(matches(&format!("NOT ({f} AND {unknown})")));
    }

    #[test]
    fn missing_paths_on_other_documents() {
        let query = parse("SELECT * FROM devices WHERE tags.location.region = 'us'");
        assert!(!query.matches(&json!({})));
        assert!(!query.matches(&json!(null)));
        assert!(!query.matches(&json!([1, 2])));
        assert!(!query.matches(&json!({"tags": "not an object"})));
        assert!(!query.matches(&json!({"tags": {"location": ["us"]}})));
        assert!(query.matches(&json!({"tags": {"location": {"region": "us"}}})));
    }

    // --- IN ----------------------------------------------------------------

    #[test]
    fn in_with_brackets_and_parentheses() {
        assert!(matches("tags.location.region IN ['eu', 'us']"));
        assert!(matches("tags.location.region in ['us']"));
        assert!(matches("tags.location.region IN ('eu', 'us')"));
        assert!(!matches("tags.location.region IN ['eu', 'asia']"));
        assert!(matches("tags.location.building IN [1, 43.0, 'x']"));
        assert!(matches("tags.location.region IN[ 'us' ]"));
        assert!(matches("tags.location.region IN /* note */ ['us']"));
        assert!(matches("tags.location.region IN ['[', ']', 'us']"));
        assert!(matches("'us' IN [tags.location.region, deviceId]"));
        assert!(matches("tags.location.region IN [('us')]"));
    }

    #[test]
    fn not_in() {
        assert!(matches("tags.location.region NOT IN ['eu', 'asia']"));
        assert!(!matches("tags.location.region NOT IN ['eu', 'us']"));
        assert!(matches("tags.location.region NOT IN ('eu')"));
        assert!(matches("NOT tags.location.region IN ['eu']"));
    }

    #[test]
    fn in_with_missing_values_is_unknown() {
        assert!(!matches("tags.missing IN ['us']"));
        assert!(!matches("tags.missing NOT IN ['us']"));
        // An unknown element only matters when nothing else is equal.
        assert!(matches("tags.location.region IN [tags.missing, 'us']"));
        assert!(!matches("tags.location.region IN [tags.missing, 'eu']"));
        assert!(!matches("tags.location.region NOT IN [tags.missing, 'eu']"));
    }

    #[test]
    fn in_with_nested_brackets_and_parens() {
        assert!(matches(
            "(tags.location.region IN ['us'] AND (deviceId IN ('dev-1')))"
        ));
    }

    // --- IS_DEFINED --------------------------------------------------------

    #[test]
    fn is_defined() {
        assert!(matches("IS_DEFINED(tags.location)"));
        assert!(matches("IS_DEFINED(tags.location.region)"));
        assert!(matches("is_defined(deviceId)"));
        assert!(matches("Is_Defined(cloudProperties.owner)"));
        assert!(matches("IS_DEFINED(tags.ring)"), "null is defined");
        assert!(matches("IS_DEFINED(tags)"));
        assert!(matches("IS_DEFINED(properties.reported)"));
        assert!(!matches("IS_DEFINED(tags.missing)"));
        assert!(!matches("IS_DEFINED(tags.location.region.deeper)"));
        assert!(matches("NOT IS_DEFINED(tags.missing)"));
        assert!(!matches("NOT IS_DEFINED(tags.location)"));
        assert!(matches("IS_DEFINED((tags.location))"));
        assert!(matches("NOT IS_DEFINED(tags.missing) OR tags.missing = 1"));
        assert!(!parse("SELECT * FROM devices WHERE IS_DEFINED(tags.x)").matches(&json!({})));
    }

    // --- $template ---------------------------------------------------------

    #[test]
    fn template_path() {
        assert!(matches("$template = 'dtmi:x:y;1'"));
        assert!(matches("$template IN ['dtmi:x:y;1', 'dtmi:x:y;2']"));
        assert!(!matches("$template = 'dtmi:x:y;2'"));
        assert!(matches("IS_DEFINED($template)"));
        assert!(matches("$template = modelId"));
        assert!(!parse("SELECT * FROM devices WHERE $template = 'a'").matches(&json!({})));
        assert!(!parse("SELECT * FROM devices WHERE IS_DEFINED($template)").matches(&json!({})));
    }

    #[test]
    fn every_documented_root_resolves() {
        assert!(matches("deviceId = 'dev-1'"));
        assert!(matches("modelId = 'dtmi:x:y;1'"));
        assert!(matches("status = 'enabled'"));
        assert!(matches("connectionState = 'Connected'"));
        assert!(matches("displayName = 'Boiler room sensor'"));
        assert!(matches("properties.desired.fw = '1.0'"));
        assert!(matches("properties.reported.fw = '0.9'"));
        assert!(matches("cloudProperties.owner = 'ops'"));
    }

    #[test]
    fn long_flat_chains_are_not_nesting() {
        let condition = vec!["deviceId = 'dev-1'"; 300].join(" AND ");
        assert!(matches(&condition));
        let condition = vec!["deviceId = 'x'"; 300].join(" OR ") + " OR status = 'enabled'";
        assert!(matches(&condition));
    }

    #[test]
    fn moderate_nesting_is_accepted() {
        let depth = 30;
        let condition = format!(
            "{}deviceId = 'dev-1'{}",
            "(".repeat(depth),
            ")".repeat(depth)
        );
        assert!(matches(&condition));
        let condition = format!("{}deviceId = 'dev-1'", "NOT ".repeat(30));
        assert!(matches(&condition));
    }

    // --- errors ------------------------------------------------------------

    #[test]
    fn empty_queries_are_rejected() {
        for text in [
            "",
            "   ",
            "\n\t",
            ";",
            " ; ; ",
            "-- just a comment",
            "/* nothing */",
        ] {
            let message = error(text);
            assert_contains(&message, &["empty", "SELECT * FROM devices"]);
        }
    }

    #[test]
    fn malformed_queries_pass_the_parser_message_along() {
        let message = error("SELECT * FROM devices WHERE");
        assert_contains(
            &message,
            &["malformed query", "Expected", "SELECT * FROM devices"],
        );
        let message = error("SELECT * FROM devices WHERE deviceId = ");
        assert_contains(&message, &["malformed query", "expression"]);
        let message = error("SELECT * FROM devices WHERE (deviceId = 'x'");
        assert_contains(&message, &["malformed query"]);
        let message = error("devices where x = 1");
        assert_contains(&message, &["malformed query", "SELECT * FROM devices"]);
        let message = error("SELECT * FROM devices WHERE deviceId = 'unterminated");
        assert_contains(&message, &["malformed query", "Unterminated"]);
        let message = error("SELECT * FROM devices WHERE x IN []");
        assert_contains(&message, &["malformed query"]);
        let message = error("SELECT * FROM devices WHERE deviceId = 'a' status = 'b'");
        assert_contains(&message, &["malformed query", "Line: 1"]);
    }

    #[test]
    fn mismatched_in_brackets_are_rejected() {
        let message = where_error("deviceId IN ['a', 'b')");
        assert_contains(&message, &["`[`", "`)`", "column"]);
        let message = where_error("deviceId IN ('a', 'b']");
        assert_contains(&message, &["`(`", "`]`"]);
    }

    #[test]
    fn other_sources_are_rejected() {
        let message = error("SELECT * FROM modules");
        assert_contains(&message, &["unsupported source `modules`", "FROM devices"]);
        let message = error("SELECT * FROM devices.modules");
        assert_contains(&message, &["unsupported source"]);
        let message = error("SELECT * FROM devices JOIN jobs ON devices.id = jobs.id");
        assert_contains(&message, &["JOIN is not supported"]);
        let message = error("SELECT * FROM devices, jobs");
        assert_contains(&message, &["several sources"]);
        let message = error("SELECT * FROM devices d");
        assert_contains(&message, &["alias"]);
        let message = error("SELECT * FROM (SELECT * FROM devices)");
        assert_contains(&message, &["subquery"]);
        let message = error("SELECT *");
        assert_contains(&message, &["missing `FROM devices`"]);
    }

    #[test]
    fn unsupported_clauses_are_named() {
        let cases = [
            ("SELECT * FROM devices GROUP BY status", "GROUP BY"),
            ("SELECT * FROM devices ORDER BY deviceId", "ORDER BY"),
            ("SELECT * FROM devices LIMIT 10", "LIMIT"),
            ("SELECT TOP 10 * FROM devices", "TOP"),
            ("SELECT DISTINCT * FROM devices", "DISTINCT"),
            ("SELECT deviceId FROM devices", "only `SELECT *`"),
            ("SELECT *, deviceId FROM devices", "only `SELECT *`"),
            ("SELECT COUNT(*) FROM devices", "only `SELECT *`"),
            ("SELECT * FROM devices UNION SELECT * FROM devices", "UNION"),
            (
                "WITH d AS (SELECT * FROM devices) SELECT * FROM devices",
                "WITH",
            ),
            (
                "SELECT * FROM devices GROUP BY status HAVING 1 = 1",
                "GROUP BY",
            ),
            (
                "SELECT * EXCEPT (deviceId) FROM devices",
                "unsupported query form",
            ),
            ("DELETE FROM devices", "found `DELETE FROM devices`"),
            ("UPDATE devices SET status = 'x'", "only queries"),
        ];
        for (text, fragment) in cases {
            let message = error(text);
            assert_contains(&message, &[fragment]);
        }
    }

    #[test]
    fn multiple_statements_are_rejected() {
        let message = error("SELECT * FROM devices; SELECT * FROM devices");
        assert_contains(&message, &["2 statements", "exactly one"]);
        let message = error("SELECT * FROM devices; DROP TABLE devices");
        assert_contains(&message, &["2 statements"]);
    }

    #[test]
    fn unsupported_operators_are_rejected() {
        let cases = [
            ("deviceId LIKE 'dev-%'", "LIKE is not supported"),
            ("deviceId ILIKE 'dev-%'", "LIKE is not supported"),
            ("tags.location.building + 1 = 44", "arithmetic"),
            ("tags.location.building = 40 + 3", "arithmetic"),
            ("tags.location.building * 2 > 1", "arithmetic"),
            ("-tags.location.building < 0", "arithmetic"),
            ("tags.location.building BETWEEN 1 AND 50", "BETWEEN"),
            ("tags.ring IS NULL", "IS NULL"),
            ("tags.ring IS NOT NULL", "IS_DEFINED"),
            ("deviceId IN (SELECT deviceId FROM devices)", "subquery"),
            ("EXISTS (SELECT * FROM devices)", "subquery"),
            ("deviceId = (SELECT 1)", "expected a path"),
            ("deviceId || 'x' = 'y'", "arithmetic"),
            (
                "deviceId = 'a' XOR status",
                "operator `XOR` is not supported",
            ),
            ("deviceId = 'a' XOR status = 'b'", "expected a path"),
        ];
        for (condition, fragment) in cases {
            let message = where_error(condition);
            assert_contains(&message, &[fragment]);
        }
        let message = where_error("deviceId LIKE 'dev-%'");
        assert_contains(
            &message,
            &["`deviceId LIKE 'dev-%'`", "line 1, column 29", "IS_DEFINED"],
        );
    }

    #[test]
    fn unsupported_functions_are_rejected() {
        let message = where_error("STARTSWITH(deviceId, 'dev')");
        assert_contains(
            &message,
            &["unsupported function `STARTSWITH`", "IS_DEFINED(path)"],
        );
        let message = where_error("LOWER(deviceId) = 'dev-1'");
        assert_contains(&message, &["functions cannot be used as values"]);
        let message = where_error("IS_DEFINED('tags')");
        assert_contains(&message, &["IS_DEFINED takes exactly one path"]);
        let message = where_error("IS_DEFINED(tags.a, tags.b)");
        assert_contains(&message, &["IS_DEFINED takes exactly one path"]);
        let message = where_error("IS_DEFINED()");
        assert_contains(&message, &["IS_DEFINED takes exactly one path"]);
        let message = where_error("IS_DEFINED(*)");
        assert_contains(&message, &["IS_DEFINED takes exactly one path"]);
        let message = where_error("IS_DEFINED(DISTINCT tags.a)");
        assert_contains(&message, &["IS_DEFINED takes exactly one path"]);
        let message = where_error("IS_DEFINED(foo.bar)");
        assert_contains(&message, &["unknown field `foo`"]);
    }

    #[test]
    fn unknown_roots_are_rejected_with_the_allowed_list() {
        let message = where_error("foo.bar = 1");
        assert_contains(
            &message,
            &[
                "unknown field `foo` in path `foo.bar`",
                "line 1, column 29",
                "deviceId",
                "$template",
                "tags.",
                "properties.desired.",
                "properties.reported.",
                "cloudProperties.",
            ],
        );
        let message = where_error("DeviceId = 'dev-1'");
        assert_contains(&message, &["did you mean `deviceId`?"]);
        let message = where_error("'x' = region");
        assert_contains(&message, &["unknown field `region`"]);
        let message = where_error("$foo = 1");
        assert_contains(&message, &["unknown field `$foo`"]);
    }

    #[test]
    fn invalid_paths_below_known_roots_are_rejected() {
        let message = where_error("properties.fw = '1.0'");
        assert_contains(&message, &["`.desired` or `.reported`"]);
        let message = where_error("deviceId.x = 1");
        assert_contains(&message, &["`deviceId` is a single value"]);
        let message = where_error("$template.x = 1");
        assert_contains(&message, &["`$template` is a single value"]);
        let message = where_error("tags.list[0] = 1");
        assert_contains(&message, &["indexing with [...]"]);
    }

    #[test]
    fn values_are_not_conditions() {
        let message = where_error("tags.online");
        assert_contains(
            &message,
            &["is a value, not a condition", "tags.online = true"],
        );
        let message = where_error("deviceId = 'a' AND 'b'");
        assert_contains(&message, &["is a value, not a condition"]);
        let message = where_error("null");
        assert_contains(&message, &["not a condition"]);
        let message = where_error("(deviceId = 'a') = true");
        assert_contains(&message, &["expected a path"]);
    }

    #[test]
    fn unsupported_literals_are_rejected() {
        let message = where_error("deviceId = X'1F'");
        assert_contains(&message, &["unsupported literal"]);
        let message = where_error("tags.location.building = 1e999");
        assert_contains(&message, &["out-of-range number"]);
        let message = where_error("deviceId = ?");
        assert_contains(&message, &["unsupported literal"]);
        let message = where_error("deviceId = [1, 2]");
        assert_contains(&message, &["an array value is not supported"]);
    }

    #[test]
    fn overly_long_queries_are_rejected_before_parsing() {
        let filler = "x".repeat(MAX_QUERY_LEN);
        let message = error(&format!(
            "SELECT * FROM devices WHERE deviceId = '{filler}'"
        ));
        assert_contains(&message, &["too long", "8192"]);
        // Right at the limit is fine.
        let prefix = "SELECT * FROM devices WHERE deviceId = '";
        let padding = "x".repeat(MAX_QUERY_LEN - prefix.len() - 1);
        let text = format!("{prefix}{padding}'");
        assert_eq!(text.len(), MAX_QUERY_LEN);
        assert!(Query::parse(&text).is_ok());
    }

    #[test]
    fn deep_nesting_is_rejected_without_overflowing() {
        for depth in [65, 100, 1000, 4000] {
            let text = format!(
                "SELECT * FROM devices WHERE {}deviceId = 'dev-1'{}",
                "(".repeat(depth),
                ")".repeat(depth)
            );
            assert_contains(&error(&text), &["nested too deeply"]);
        }
        let text = format!(
            "SELECT * FROM devices WHERE {}deviceId = 'x'",
            "NOT ".repeat(500)
        );
        assert_contains(&error(&text), &["nested too deeply"]);
        let text = format!(
            "SELECT * FROM devices WHERE deviceId IN {}'x'{}",
            "[".repeat(2000),
            "]".repeat(2000)
        );
        assert!(Query::parse(&text).is_err());
        // Prefix operators and other nestable syntax the token check does
        // not count are still bounded by the parser's own recursion limit.
        for prefix in [
            "- ",
            "+ ",
            "~ ",
            "{",
            "CASE WHEN ",
            "CAST(",
            "ARRAY[",
            "EXISTS (",
        ] {
            let text = format!("SELECT * FROM devices WHERE {}1 = 1", prefix.repeat(2000));
            assert!(Query::parse(&text).is_err(), "{prefix}");
        }
        // Alternating AND/OR in parentheses really is nesting.
        let mut condition = String::from("deviceId = 'x'");
        for i in 0..200 {
            let op = if i % 2 == 0 { "AND" } else { "OR" };
            condition = format!("(deviceId = 'x' {op} {condition})");
        }
        assert_contains(&where_error(&condition), &["nested too deeply"]);
    }

    #[test]
    fn errors_are_displayed_as_their_message() {
        let err = Query::parse("").unwrap_err();
        assert_eq!(err.to_string(), err.message());
    }

    // --- property tests ----------------------------------------------------

    /// Arbitrary JSON, biased towards the keys the generated queries use.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            prop::sample::select(vec!["us", "eu", "dev-1", "", "1.0"]).prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop::sample::select(vec!["a", "b", "region", "fw", "x"])
                        .prop_map(String::from),
                    inner,
                    0..4
                )
                .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    fn twin_doc() -> impl Strategy<Value = Value> {
        (
            json_value(),
            json_value(),
            json_value(),
            json_value(),
            prop::option::of(json_value()),
        )
            .prop_map(|(tags, desired, reported, cloud, device_id)| {
                let mut doc = json!({
                    "tags": tags,
                    "properties": {"desired": desired, "reported": reported},
                    "cloudProperties": cloud,
                    "$template": "dtmi:x:y;1",
                });
                if let (Some(id), Some(object)) = (device_id, doc.as_object_mut()) {
                    object.insert("deviceId".into(), id);
                }
                doc
            })
    }

    fn path_text() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "deviceId",
            "$template",
            "tags",
            "tags.a",
            "tags.a.b",
            "tags.region",
            "properties.desired.fw",
            "properties.reported.x",
            "properties.reported.a.region",
            "cloudProperties.b",
        ])
        .prop_map(String::from)
    }

    fn literal_text() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "'us'",
            "'eu'",
            "''",
            "\"dev-1\"",
            "1",
            "1.0",
            "-3",
            "2.5e3",
            "true",
            "false",
            "null",
            "18446744073709551615",
        ])
        .prop_map(String::from)
    }

    fn operand_text() -> impl Strategy<Value = String> {
        prop_oneof![path_text(), literal_text()]
    }

    /// Random *valid* conditions.
    fn condition_text() -> impl Strategy<Value = String> {
        let op = prop::sample::select(vec!["=", "!=", "<>", "<", ">", "<=", ">="]);
        let leaf = prop_oneof![
            (operand_text(), op, operand_text()).prop_map(|(l, op, r)| format!("{l} {op} {r}")),
            path_text().prop_map(|p| format!("IS_DEFINED({p})")),
            (
                operand_text(),
                any::<bool>(),
                any::<bool>(),
                prop::collection::vec(operand_text(), 1..4)
            )
                .prop_map(|(needle, negated, brackets, list)| {
                    let not = if negated { "NOT " } else { "" };
                    let (open, close) = if brackets { ("[", "]") } else { ("(", ")") };
                    format!("{needle} {not}IN {open}{}{close}", list.join(", "))
                }),
        ];
        leaf.prop_recursive(4, 32, 3, |inner| {
            prop_oneof![
                inner.clone().prop_map(|c| format!("NOT ({c})")),
                inner.clone().prop_map(|c| format!("({c})")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} AND {b}")),
                (inner.clone(), inner).prop_map(|(a, b)| format!("{a} OR {b}")),
            ]
        })
    }

    /// Soup of query-ish tokens, to reach deeper than random bytes do.
    fn token_soup() -> impl Strategy<Value = String> {
        let token = prop::sample::select(vec![
            "SELECT",
            "*",
            "FROM",
            "devices",
            "WHERE",
            "AND",
            "OR",
            "NOT",
            "IN",
            "[",
            "]",
            "(",
            ")",
            ",",
            "=",
            "!=",
            "<",
            ">=",
            "IS_DEFINED",
            "tags.a",
            "$template",
            "'x'",
            "\"y\"",
            "1",
            "-",
            "1.5",
            "null",
            "true",
            ";",
            ".",
            "$",
            "'",
            "LIKE",
            "+",
            "?",
            "::",
            "[0]",
            "SELECT * FROM devices WHERE",
        ]);
        prop::collection::vec(token, 0..24).prop_map(|tokens| tokens.join(" "))
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_text(text in any::<String>()) {
            let _ = Query::parse(&text);
        }

        #[test]
        fn parse_never_panics_on_token_soup(soup in token_soup(), doc in twin_doc()) {
            if let Ok(query) = Query::parse(&soup) {
                let _ = query.matches(&doc);
            }
            if let Ok(query) = Query::parse(&format!("SELECT * FROM devices WHERE {soup}")) {
                let _ = query.matches(&doc);
            }
        }

        #[test]
        fn valid_conditions_parse_and_evaluate(condition in condition_text(), doc in twin_doc()) {
            let query = Query::parse(&format!("SELECT * FROM devices WHERE {condition}"));
            prop_assert!(query.is_ok(), "{condition}: {:?}", query.err());
            let negated = Query::parse(&format!("SELECT * FROM devices WHERE NOT ({condition})"));
            prop_assert!(negated.is_ok());
            if let (Ok(query), Ok(negated)) = (query, negated) {
                // Three-valued logic: a condition and its negation never both hold.
                prop_assert!(!(query.matches(&doc) && negated.matches(&doc)));
                prop_assert_eq!(query.text(), format!("SELECT * FROM devices WHERE {condition}"));
            }
        }

        #[test]
        fn is_defined_is_never_unknown(path in path_text(), doc in twin_doc()) {
            let defined = Query::parse(&format!("SELECT * FROM devices WHERE IS_DEFINED({path})"));
            let undefined = Query::parse(&format!("SELECT * FROM devices WHERE NOT IS_DEFINED({path})"));
            prop_assert!(defined.is_ok() && undefined.is_ok());
            if let (Ok(defined), Ok(undefined)) = (defined, undefined) {
                prop_assert!(defined.matches(&doc) != undefined.matches(&doc));
            }
        }
    }
}
