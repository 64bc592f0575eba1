//! The whole query statement IoT Hub's `POST /devices/query` takes, beyond the `WHERE` a job
//! target needs: the source (`devices` or `devices.jobs`), `TOP n`, and the select list (`*`, paths
//! with optional `AS` names, `COUNT()`) with `GROUP BY`.
//!
//! Column names follow IoT Hub: a path is named after its last segment
//! (`properties.reported.fw` is `fw`) unless `AS` names it, an unnamed `COUNT()` is `$1` (the
//! next one `$2`), and a path the document does not define is left out of its row. Groups come
//! out ordered by their values' JSON text (a group whose value is missing first), so pages are
//! stable.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use sqlparser::ast::{self as sql, Spanned};

use super::eval::{Operand, Path, Predicate, Truth};
use super::parse::{
    compile_operand, compile_predicate, fragment, location, malformed, parse_single_statement,
    truncate, Scope,
};
use super::{check_text, QueryError};

/// The accepted forms, quoted in error messages.
pub(super) const FULL_FORM: &str = "SELECT [TOP n] * | <path> [AS name], ... | COUNT() [AS name] FROM devices | devices.jobs [WHERE <condition>] [GROUP BY <path>, ...]";

/// What a query reads: device twins, or one row per device and job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `FROM devices`: one document per device twin.
    Devices,
    /// `FROM devices.jobs`: one document per device and job it is part of.
    DeviceJobs,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Column {
    Path(Path),
    Count,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Item {
    pub(super) column: Column,
    pub(super) name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Selection {
    /// `SELECT *`: the whole document.
    Star,
    /// Paths, one row per matching document.
    Project(Vec<Item>),
    /// `COUNT()` and/or `GROUP BY`: one row per group.
    Aggregate {
        items: Vec<Item>,
        group_by: Vec<Path>,
    },
}

/// A parsed query statement. Parsing refuses everything outside the supported language, so
/// evaluating one ([`Statement::page`]) fails only on a continuation token of another query.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    text: String,
    pub(super) source: Source,
    pub(super) selection: Selection,
    pub(super) top: Option<u64>,
    pub(super) predicate: Predicate,
}

impl Statement {
    /// Parses and validates a query statement (see the module docs for the language).
    pub fn parse(text: &str) -> Result<Statement, QueryError> {
        check_text(text)?;
        let statement = parse_single_statement(text)?;
        let sql::Statement::Query(mut query) = statement else {
            return Err(QueryError::new(format!(
                "only queries of the form `{FULL_FORM}` are supported, found `{}`",
                fragment(&statement)
            )));
        };
        if query.with.is_some() {
            return Err(clause("WITH (common table expressions)"));
        }
        if query.order_by.is_some() {
            return Err(clause("ORDER BY"));
        }
        if query.limit_clause.is_some() || query.fetch.is_some() {
            return Err(QueryError::new(
                "LIMIT/OFFSET/FETCH is not supported; write `SELECT TOP n ...` to limit the number of rows",
            ));
        }
        let select = match query.body.as_mut() {
            sql::SetExpr::Select(select) => select,
            sql::SetExpr::SetOperation { op, .. } => return Err(clause(&op.to_string())),
            sql::SetExpr::Query(_) => return Err(clause("a parenthesized subquery")),
            other => {
                return Err(QueryError::new(format!(
                    "only queries of the form `{FULL_FORM}` are supported, found `{}`",
                    fragment(other)
                )))
            }
        };
        if select.distinct.is_some() {
            return Err(clause("DISTINCT"));
        }
        if select.having.is_some() {
            return Err(clause("HAVING"));
        }
        let source = source_of(&select.from)?;
        let scope = match source {
            Source::Devices => Scope::Twin,
            Source::DeviceJobs => Scope::DeviceJob,
        };
        let top = select.top.take().map(top_count).transpose()?;
        let projection = std::mem::replace(
            &mut select.projection,
            vec![sql::SelectItem::Wildcard(
                sql::WildcardAdditionalOptions::default(),
            )],
        );
        select.top_before_distinct = false;
        let group_by = std::mem::replace(
            &mut select.group_by,
            sql::GroupByExpr::Expressions(Vec::new(), Vec::new()),
        );
        let condition = select.selection.take();

        // Whatever is left must print as the bare form: this catches every clause sqlparser
        // knows that muster does not (LATERAL VIEW, QUALIFY, INTO, ...).
        let rest = query.to_string();
        let bare = match source {
            Source::Devices => "SELECT * FROM devices",
            Source::DeviceJobs => "SELECT * FROM devices.jobs",
        };
        if !rest.eq_ignore_ascii_case(bare) {
            return Err(QueryError::new(format!(
                "unsupported query form `{}`; the supported form is `{FULL_FORM}`",
                truncate(&rest)
            )));
        }

        let predicate = match condition {
            None => Predicate::Const(true),
            Some(condition) => compile_predicate(&condition, 0, scope)?,
        };
        let selection = compile_selection(projection, group_by, scope)?;
        if source == Source::DeviceJobs && selection != Selection::Star {
            return Err(QueryError::new(
                "a devices.jobs query returns whole rows: write `SELECT * FROM devices.jobs [WHERE ...]` (IoT Hub supports no projections or aggregations over devices.jobs)",
            ));
        }
        Ok(Statement {
            text: text.to_owned(),
            source,
            selection,
            top,
            predicate,
        })
    }

    /// The text exactly as given to [`Statement::parse`].
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn source(&self) -> Source {
        self.source
    }

    /// Whether each row is a whole document (`SELECT *`), as opposed to a projection or an
    /// aggregate (IoT Hub's `raw` rows).
    pub fn selects_documents(&self) -> bool {
        self.selection == Selection::Star
    }

    /// Whether the rows are groups (`COUNT()` / `GROUP BY`) rather than one per document.
    pub fn is_aggregate(&self) -> bool {
        matches!(self.selection, Selection::Aggregate { .. })
    }

    /// `TOP n`: at most this many rows over all pages.
    pub fn top(&self) -> Option<u64> {
        self.top
    }

    /// Whether the text names `$metadata` or a `$version` (see `Query::names_metadata`).
    pub fn names_metadata(&self) -> bool {
        super::names_metadata(&self.text)
    }

    /// Whether the `WHERE` condition is true (not false, not unknown) for `doc`.
    pub fn matches(&self, doc: &Value) -> bool {
        self.predicate.eval(doc) == Truth::True
    }

    /// The row a matching document contributes: the document itself for `SELECT *`, the
    /// selected paths otherwise. (Aggregates are built by [`Aggregator`] instead.)
    pub fn project(&self, doc: &Value) -> Value {
        match &self.selection {
            Selection::Project(items) => {
                let mut row = Map::new();
                for item in items {
                    if let Column::Path(path) = &item.column {
                        if let Some(value) = path.lookup(doc) {
                            row.insert(item.name.clone(), value.clone());
                        }
                    }
                }
                Value::Object(row)
            }
            Selection::Star | Selection::Aggregate { .. } => doc.clone(),
        }
    }
}

/// A group's values as JSON text (`None`: the document does not define the path).
type GroupKey = Vec<Option<String>>;

/// Counts matching documents per group, keeping only the group's values (never the documents).
pub(super) struct Aggregator<'s> {
    items: &'s [Item],
    group_by: &'s [Path],
    /// Keyed by the group values' JSON text, so groups come out in a stable order.
    groups: BTreeMap<GroupKey, (Vec<Option<Value>>, u64)>,
}

impl<'s> Aggregator<'s> {
    pub(super) fn new(statement: &'s Statement) -> Option<Self> {
        match &statement.selection {
            Selection::Aggregate { items, group_by } => {
                let mut groups = BTreeMap::new();
                if group_by.is_empty() {
                    // COUNT() over no documents is still one row (of 0).
                    groups.insert(Vec::new(), (Vec::new(), 0));
                }
                Some(Aggregator {
                    items,
                    group_by,
                    groups,
                })
            }
            _ => None,
        }
    }

    pub(super) fn add(&mut self, doc: &Value) {
        let values: Vec<Option<&Value>> = self.group_by.iter().map(|p| p.lookup(doc)).collect();
        let key: GroupKey = values.iter().map(|v| v.map(Value::to_string)).collect();
        let entry = self
            .groups
            .entry(key)
            .or_insert_with(|| (values.iter().map(|v| v.cloned()).collect(), 0));
        entry.1 += 1;
    }

    /// The rows, one per group, in group order.
    pub(super) fn rows(self) -> Vec<Value> {
        self.groups
            .into_values()
            .map(|(values, count)| {
                let mut row = Map::new();
                for item in self.items {
                    match &item.column {
                        Column::Count => {
                            row.insert(item.name.clone(), Value::from(count));
                        }
                        Column::Path(path) => {
                            let value = self
                                .group_by
                                .iter()
                                .position(|g| g == path)
                                .and_then(|i| values.get(i).cloned().flatten());
                            if let Some(value) = value {
                                row.insert(item.name.clone(), value);
                            }
                        }
                    }
                }
                Value::Object(row)
            })
            .collect()
    }
}

fn clause(what: &str) -> QueryError {
    QueryError::new(format!(
        "{what} is not supported; the supported form is `{FULL_FORM}`"
    ))
}

/// `FROM devices` or `FROM devices.jobs` (case-insensitive, no alias, no join).
fn source_of(from: &[sql::TableWithJoins]) -> Result<Source, QueryError> {
    let table = match from {
        [] => {
            return Err(QueryError::new(format!(
                "missing `FROM devices` (or `FROM devices.jobs`); expected `{FULL_FORM}`"
            )))
        }
        [table] => table,
        [..] => return Err(clause("selecting from several sources")),
    };
    if !table.joins.is_empty() {
        return Err(clause("JOIN"));
    }
    let sql::TableFactor::Table { name, alias, .. } = &table.relation else {
        return Err(QueryError::new(format!(
            "unsupported source `{}`; queries select FROM devices or FROM devices.jobs",
            fragment(&table.relation)
        )));
    };
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|part| match part {
            sql::ObjectNamePart::Identifier(ident) => ident.value.to_ascii_lowercase(),
            other => other.to_string(),
        })
        .collect();
    let source = match parts.as_slice() {
        [d] if d == "devices" => Source::Devices,
        [d, j] if d == "devices" && j == "jobs" => Source::DeviceJobs,
        _ => {
            return Err(QueryError::new(format!(
                "unsupported source `{}`{}; queries select FROM devices or FROM devices.jobs",
                fragment(name),
                location(name.span())
            )))
        }
    };
    if alias.is_some() {
        return Err(clause("a source alias"));
    }
    Ok(source)
}

/// `TOP n` with a whole number n >= 1.
fn top_count(top: sql::Top) -> Result<u64, QueryError> {
    match top {
        sql::Top {
            with_ties: false,
            percent: false,
            quantity: Some(sql::TopQuantity::Constant(n)),
        } if n >= 1 => Ok(n),
        other => Err(QueryError::new(format!(
            "`{}` is not supported; write `TOP n` with a whole number n >= 1, e.g. `SELECT TOP 10 * FROM devices`",
            truncate(&other.to_string())
        ))),
    }
}

fn compile_selection(
    projection: Vec<sql::SelectItem>,
    group_by: sql::GroupByExpr,
    scope: Scope,
) -> Result<Selection, QueryError> {
    let group_by = match group_by {
        sql::GroupByExpr::Expressions(exprs, modifiers) if modifiers.is_empty() => exprs
            .iter()
            .map(|expr| column_path(expr, scope, "GROUP BY"))
            .collect::<Result<Vec<Path>, QueryError>>()?,
        other => {
            return Err(QueryError::new(format!(
                "`{}` is not supported; write `GROUP BY <path>, ...`",
                fragment(&other)
            )))
        }
    };
    if let [sql::SelectItem::Wildcard(options)] = projection.as_slice() {
        let plain = options.opt_ilike.is_none()
            && options.opt_exclude.is_none()
            && options.opt_except.is_none()
            && options.opt_replace.is_none()
            && options.opt_rename.is_none()
            && options.opt_alias.is_none();
        if !plain {
            return Err(malformed(&format!(
                "`{}` is not supported after `*`",
                truncate(&options.to_string())
            )));
        }
        if !group_by.is_empty() {
            return Err(QueryError::new(
                "`SELECT *` cannot be grouped; select the grouped paths and COUNT(), e.g. `SELECT properties.reported.fw AS fw, COUNT() AS n FROM devices GROUP BY properties.reported.fw`",
            ));
        }
        return Ok(Selection::Star);
    }

    let mut items = Vec::with_capacity(projection.len());
    let mut unnamed = 0;
    for select_item in &projection {
        let (expr, alias) = match select_item {
            sql::SelectItem::UnnamedExpr(expr) => (expr, None),
            sql::SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias.value.clone())),
            sql::SelectItem::Wildcard(_) => {
                return Err(QueryError::new(
                    "`*` cannot be combined with other columns; select either `*` or a list of paths",
                ))
            }
            other => {
                return Err(QueryError::new(format!(
                    "`{}` is not supported in the select list; select `*`, paths (optionally `AS name`) or COUNT()",
                    fragment(other)
                )))
            }
        };
        let column = if let sql::Expr::Function(function) = expr {
            count_column(function, expr)?
        } else {
            Column::Path(column_path(expr, scope, "SELECT")?)
        };
        let name = match (alias, &column) {
            (Some(alias), _) => alias,
            (None, Column::Path(path)) => path.0.last().cloned().unwrap_or_default(),
            (None, Column::Count) => {
                unnamed += 1;
                format!("${unnamed}")
            }
        };
        if items.iter().any(|item: &Item| item.name == name) {
            return Err(QueryError::new(format!(
                "two columns are named `{}`; give one of them another name with `AS`",
                truncate(&name)
            )));
        }
        items.push(Item { column, name });
    }

    let counts = items.iter().any(|item| item.column == Column::Count);
    if group_by.is_empty() && !counts {
        return Ok(Selection::Project(items));
    }
    for item in &items {
        if let Column::Path(path) = &item.column {
            if !group_by.contains(path) {
                let hint = if group_by.is_empty() {
                    "; with COUNT() and no GROUP BY every column must be an aggregate: add `GROUP BY` the path, or remove it"
                } else {
                    "; add it to GROUP BY or remove it from the select list"
                };
                return Err(QueryError::new(format!(
                    "`{path}` is neither grouped nor aggregated{hint}"
                )));
            }
        }
    }
    Ok(Selection::Aggregate { items, group_by })
}

/// `COUNT()` (or `COUNT(*)`), the one aggregate supported.
fn count_column(function: &sql::Function, expr: &sql::Expr) -> Result<Column, QueryError> {
    let name = function.name.to_string();
    if !name.eq_ignore_ascii_case("COUNT") {
        let aggregate = ["SUM", "AVG", "MIN", "MAX"]
            .iter()
            .any(|a| a.eq_ignore_ascii_case(&name));
        let hint = if aggregate {
            "; of IoT Hub's aggregates muster supports COUNT()"
        } else {
            "; select paths or COUNT()"
        };
        return Err(QueryError::new(format!(
            "function `{}`{} is not supported in the select list{hint}",
            truncate(&name),
            location(expr.span())
        )));
    }
    let no_arguments = match &function.args {
        sql::FunctionArguments::None => true,
        sql::FunctionArguments::List(list) => {
            list.duplicate_treatment.is_none()
                && list.clauses.is_empty()
                && matches!(
                    list.args.as_slice(),
                    [] | [sql::FunctionArg::Unnamed(sql::FunctionArgExpr::Wildcard)]
                )
        }
        sql::FunctionArguments::Subquery(_) => false,
    };
    let plain = function.filter.is_none()
        && function.over.is_none()
        && function.null_treatment.is_none()
        && function.within_group.is_empty();
    if no_arguments && plain {
        Ok(Column::Count)
    } else {
        Err(QueryError::new(format!(
            "`{}`{} is not supported; write `COUNT()`, which counts the matching documents",
            fragment(expr),
            location(expr.span())
        )))
    }
}

/// A path in the select list or GROUP BY (a literal is refused).
fn column_path(expr: &sql::Expr, scope: Scope, clause: &str) -> Result<Path, QueryError> {
    match compile_operand(expr, 0, scope)? {
        Operand::Path(path) => Ok(path),
        Operand::Literal(_) => Err(QueryError::new(format!(
            "{clause} takes paths such as `properties.reported.fw`, found the value `{}`{}",
            fragment(expr),
            location(expr.span())
        ))),
    }
}
