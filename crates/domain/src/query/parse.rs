//! Text to compiled form: sqlparser does the tokenizing and parsing; this module checks the
//! statement's shape and compiles conditions into [`Predicate`]s, with errors that say what to fix.

use std::fmt;

use serde_json::{Number, Value};
use sqlparser::ast::{self as sql, Spanned};
use sqlparser::dialect::GenericDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Span, Token, TokenWithSpan, Tokenizer};

use super::eval::{CompareOp, Operand, Path, Predicate};
use super::{
    QueryError, EXPECTED_FORM, MAX_FRAGMENT_CHARS, MAX_NESTING_DEPTH, OBJECT_ROOTS,
    PARSER_RECURSION_LIMIT, PROPERTY_SECTIONS, SCALAR_ROOTS, SUPPORTED_OPERATORS,
};

pub(super) fn empty_query() -> QueryError {
    QueryError::new(format!("query is empty; expected `{EXPECTED_FORM}`"))
}

pub(super) fn malformed(detail: &str) -> QueryError {
    QueryError::new(format!(
        "malformed query: {detail}; expected `{EXPECTED_FORM}`"
    ))
}

pub(super) fn too_deep(span: Span) -> QueryError {
    QueryError::new(format!(
        "query is nested too deeply{}; at most {MAX_NESTING_DEPTH} levels of parentheses/NOT are allowed",
        location(span)
    ))
}

/// Tokenizes, rewrites IoT Hub's `IN [...]` into SQL's `IN (...)`, and parses
/// exactly one statement with a bounded recursion budget.
pub(super) fn parse_single_statement(text: &str) -> Result<sql::Statement, QueryError> {
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
pub(super) fn rewrite_in_brackets(tokens: &mut [TokenWithSpan]) -> Result<(), QueryError> {
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
pub(super) fn check_nesting(tokens: &[TokenWithSpan]) -> Result<(), QueryError> {
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
pub(super) fn is_prefix_position(previous: Option<&Token>) -> bool {
    match previous {
        None | Some(Token::LParen | Token::LBracket | Token::Comma) => true,
        Some(Token::Word(word)) => matches!(
            word.keyword,
            Keyword::WHERE | Keyword::AND | Keyword::OR | Keyword::NOT
        ),
        Some(_) => false,
    }
}

pub(super) fn mismatched(opener: &str, start: Span, closer: &str, end: Span) -> QueryError {
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
pub(super) fn check_statement_shape(
    statement: sql::Statement,
) -> Result<Option<sql::Expr>, QueryError> {
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

pub(super) fn check_from(from: &[sql::TableWithJoins]) -> Result<(), QueryError> {
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

pub(super) fn unsupported_clause(what: &str) -> QueryError {
    QueryError::new(format!(
        "{what} is not supported; only `{EXPECTED_FORM}` is accepted"
    ))
}

// ---------------------------------------------------------------------------
// Compilation: sqlparser expression -> Predicate
// ---------------------------------------------------------------------------

/// Counts one more level of nesting, refusing to go past the limit.
pub(super) fn descend(depth: usize) -> Result<usize, QueryError> {
    if depth >= MAX_NESTING_DEPTH {
        Err(too_deep(Span::empty()))
    } else {
        Ok(depth + 1)
    }
}

/// Compiles an expression in condition position (the WHERE clause, an
/// operand of AND/OR/NOT).
pub(super) fn compile_predicate(
    expr: &sql::Expr,
    depth: usize,
    scope: Scope,
) -> Result<Predicate, QueryError> {
    use sql::Expr;
    let depth = descend(depth)?;
    match expr {
        Expr::Nested(inner) => compile_predicate(inner, depth, scope),
        Expr::BinaryOp {
            op: sql::BinaryOperator::And,
            ..
        } => Ok(Predicate::All(compile_chain(
            expr,
            &sql::BinaryOperator::And,
            depth,
            scope,
        )?)),
        Expr::BinaryOp {
            op: sql::BinaryOperator::Or,
            ..
        } => Ok(Predicate::Any(compile_chain(
            expr,
            &sql::BinaryOperator::Or,
            depth,
            scope,
        )?)),
        Expr::BinaryOp { left, op, right } => match compare_op(op) {
            Some(op) => Ok(Predicate::Compare {
                left: compile_operand(left, depth, scope)?,
                op,
                right: compile_operand(right, depth, scope)?,
            }),
            None => Err(binary_operator_error(op, expr)),
        },
        Expr::UnaryOp {
            op: sql::UnaryOperator::Not,
            expr: inner,
        } => Ok(Predicate::Not(Box::new(compile_predicate(
            inner, depth, scope,
        )?))),
        Expr::In {
            expr: needle,
            target,
            negated,
            global: false,
        } => match target {
            sql::InTarget::List(items) => Ok(Predicate::In {
                needle: compile_operand(needle, depth, scope)?,
                haystack: items
                    .iter()
                    .map(|item| compile_operand(item, depth, scope))
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
        Expr::Function(function) => compile_is_defined(function, expr, depth, scope),
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
pub(super) fn compile_chain(
    expr: &sql::Expr,
    op: &sql::BinaryOperator,
    depth: usize,
    scope: Scope,
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
            term => terms.push(compile_predicate(term, depth, scope)?),
        }
    }
    Ok(terms)
}

pub(super) fn compare_op(op: &sql::BinaryOperator) -> Option<CompareOp> {
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
pub(super) fn compile_is_defined(
    function: &sql::Function,
    expr: &sql::Expr,
    depth: usize,
    scope: Scope,
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
    match compile_operand(argument, depth, scope)? {
        Operand::Path(path) => Ok(Predicate::IsDefined(path)),
        Operand::Literal(_) => Err(usage_error()),
    }
}

/// Compiles an expression in value position: a path into the twin or a
/// literal.
pub(super) fn compile_operand(
    expr: &sql::Expr,
    depth: usize,
    scope: Scope,
) -> Result<Operand, QueryError> {
    use sql::Expr;
    let depth = descend(depth)?;
    match expr {
        Expr::Nested(inner) => compile_operand(inner, depth, scope),
        // IoT Hub accepts "double-quoted" strings; sqlparser's generic
        // dialect reads them as quoted identifiers. A lone one is a string;
        // inside a dotted path (tags."my key") it is a key.
        Expr::Identifier(ident) if ident.quote_style == Some('"') => {
            Ok(Operand::Literal(Value::String(ident.value.clone())))
        }
        Expr::Identifier(ident) => path_operand(vec![ident.value.clone()], expr, scope),
        Expr::CompoundIdentifier(idents) => path_operand(
            idents.iter().map(|ident| ident.value.clone()).collect(),
            expr,
            scope,
        ),
        Expr::Value(value) => compile_literal(&value.value, expr, scope),
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

pub(super) fn is_logical(op: &sql::BinaryOperator) -> bool {
    matches!(op, sql::BinaryOperator::And | sql::BinaryOperator::Or)
}

pub(super) fn compile_literal(
    value: &sql::Value,
    expr: &sql::Expr,
    scope: Scope,
) -> Result<Operand, QueryError> {
    match value {
        sql::Value::SingleQuotedString(text) | sql::Value::DoubleQuotedString(text) => {
            Ok(Operand::Literal(Value::String(text.clone())))
        }
        sql::Value::Number(digits, _) => number_literal(digits, false, expr),
        sql::Value::Boolean(value) => Ok(Operand::Literal(Value::Bool(*value))),
        sql::Value::Null => Ok(Operand::Literal(Value::Null)),
        // sqlparser reads `$template` as a `$name` placeholder.
        sql::Value::Placeholder(name) if name.starts_with('$') => {
            path_operand(vec![name.clone()], expr, scope)
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
pub(super) fn number_literal(
    digits: &str,
    negative: bool,
    expr: &sql::Expr,
) -> Result<Operand, QueryError> {
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
pub(super) fn path_operand(
    segments: Vec<String>,
    expr: &sql::Expr,
    scope: Scope,
) -> Result<Operand, QueryError> {
    if scope == Scope::DeviceJob {
        return device_job_path(segments, expr);
    }
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

/// Which document the paths of a query are evaluated against: a device twin (`FROM devices`)
/// or one device's part in one job (`FROM devices.jobs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scope {
    Twin,
    DeviceJob,
}

/// Fields of a `devices.jobs` row that hold a single value.
pub(super) const JOB_SCALAR_ROOTS: [&str; 8] = [
    "deviceId",
    "jobId",
    "jobType",
    "status",
    "startTimeUtc",
    "endTimeUtc",
    "createdDateTimeUtc",
    "lastUpdatedDateTimeUtc",
];

/// Fields of a `devices.jobs` row that hold objects.
pub(super) const JOB_OBJECT_ROOTS: [&str; 2] = ["outcome", "error"];

/// A path into a `devices.jobs` row. IoT Hub writes them `devices.jobs.jobId`; the prefix is
/// optional here. The twin's own fields cannot be reached from a job row (IoT Hub does not join
/// them either), so `tags.x` gets a message saying so.
fn device_job_path(segments: Vec<String>, expr: &sql::Expr) -> Result<Operand, QueryError> {
    let rest: Vec<String> = match segments.as_slice() {
        [devices, jobs, ..] if devices == "devices" && jobs == "jobs" => segments[2..].to_vec(),
        _ => segments,
    };
    let Some(root) = rest.first().map(String::as_str) else {
        return Err(QueryError::new(format!(
            "`{}`{} names the source, not a field; write e.g. `devices.jobs.jobId`",
            fragment(expr),
            location(expr.span())
        )));
    };
    if JOB_SCALAR_ROOTS.contains(&root) {
        if rest.len() > 1 {
            return Err(scalar_has_no_fields(root, expr));
        }
    } else if !JOB_OBJECT_ROOTS.contains(&root) {
        let twin =
            SCALAR_ROOTS.contains(&root) || OBJECT_ROOTS.contains(&root) || root == "devices";
        let hint = if twin {
            " (a devices.jobs query sees only the job's fields, not the device twin's)".to_string()
        } else {
            JOB_SCALAR_ROOTS
                .iter()
                .chain(JOB_OBJECT_ROOTS.iter())
                .find(|known| known.eq_ignore_ascii_case(root))
                .map(|known| format!(" (did you mean `{known}`? field names are case-sensitive)"))
                .unwrap_or_default()
        };
        return Err(QueryError::new(format!(
            "unknown field `{}` in path `{}`{}{hint}; paths of a devices.jobs query are devices.jobs.<field> with <field> one of: {}, outcome.deviceMethodResponse.status, outcome.deviceMethodResponse.payload, error.code, error.description",
            truncate(root),
            fragment(expr),
            location(expr.span()),
            JOB_SCALAR_ROOTS.join(", ")
        )));
    }
    Ok(Operand::Path(Path(rest)))
}

// ---------------------------------------------------------------------------
// Error helpers
// ---------------------------------------------------------------------------

pub(super) fn unsupported_operator(what: &str, expr: &sql::Expr) -> QueryError {
    unsupported(
        what,
        expr,
        &format!("; supported operators are {SUPPORTED_OPERATORS}"),
    )
}

pub(super) fn binary_operator_error(op: &sql::BinaryOperator, expr: &sql::Expr) -> QueryError {
    use sql::BinaryOperator as B;
    let what = match op {
        B::Plus | B::Minus | B::Multiply | B::Divide | B::Modulo | B::StringConcat => {
            format!("arithmetic (`{op}`)")
        }
        _ => format!("operator `{op}`"),
    };
    unsupported_operator(&what, expr)
}

pub(super) fn unsupported(what: &str, expr: &sql::Expr, hint: &str) -> QueryError {
    QueryError::new(format!(
        "{what} is not supported: `{}`{}{hint}",
        fragment(expr),
        location(expr.span())
    ))
}

pub(super) fn not_a_condition(expr: &sql::Expr) -> QueryError {
    QueryError::new(format!(
        "`{}`{} is a value, not a condition; compare it with something, e.g. `{} = true`",
        fragment(expr),
        location(expr.span()),
        fragment(expr)
    ))
}

pub(super) fn expected_value(expr: &sql::Expr) -> QueryError {
    QueryError::new(format!(
        "expected a path (like `tags.region`) or a literal value, found `{}`{}",
        fragment(expr),
        location(expr.span())
    ))
}

pub(super) fn scalar_has_no_fields(root: &str, expr: &sql::Expr) -> QueryError {
    QueryError::new(format!(
        "`{root}` is a single value and has no fields, so `{}`{} is not a valid path",
        fragment(expr),
        location(expr.span())
    ))
}

/// " at line L, column C", or nothing when sqlparser has no position.
pub(super) fn location(span: Span) -> String {
    if span.start.line == 0 {
        String::new()
    } else {
        format!(" at line {}, column {}", span.start.line, span.start.column)
    }
}

/// A piece of the query as sqlparser prints it, cut to a readable length.
pub(super) fn fragment(node: &impl fmt::Display) -> String {
    truncate(&node.to_string())
}

pub(super) fn truncate(text: &str) -> String {
    if text.chars().count() <= MAX_FRAGMENT_CHARS {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(MAX_FRAGMENT_CHARS - 1).collect();
        cut.push('…');
        cut
    }
}
