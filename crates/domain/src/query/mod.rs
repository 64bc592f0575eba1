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

mod eval;
mod parse;
mod run;
mod select;
#[cfg(test)]
mod tests;

pub use run::{device_job_document, Cursor, Page, Row};
pub use select::{Source, Statement};

use eval::{Predicate, Truth};
use parse::{check_statement_shape, compile_predicate, empty_query, parse_single_statement, Scope};
use serde_json::Value;

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

/// Top-level twin fields that hold a single value and have no sub-fields: those
/// `GET /twins/{id}` renders (`Device::twin_identity_fields`, the one rendering) and muster's
/// `$template` and `displayName`.
const SCALAR_ROOTS: [&str; 14] = [
    "deviceId",
    "modelId",
    "$template",
    "status",
    "connectionState",
    "displayName",
    "etag",
    "deviceEtag",
    "statusReason",
    "statusUpdateTime",
    "lastActivityTime",
    "cloudToDeviceMessageCount",
    "authenticationType",
    "version",
];

/// Top-level twin fields that hold objects and are navigated with dots.
const OBJECT_ROOTS: [&str; 5] = [
    "tags",
    "properties",
    "cloudProperties",
    "capabilities",
    "x509Thumbprint",
];

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
        check_text(text)?;
        let statement = parse_single_statement(text)?;
        let selection = check_statement_shape(statement)?;
        let predicate = match selection {
            None => Predicate::Const(true),
            Some(condition) => compile_predicate(&condition, 0, Scope::Twin)?,
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

    /// Whether the text names the twin's `$metadata` or a `$version`, so the document it is
    /// evaluated on must hold them ([`crate::Device::query_document`]).
    pub fn names_metadata(&self) -> bool {
        names_metadata(&self.text)
    }

    /// Whether the device twin `doc` is selected: true only when the
    /// condition evaluates to *true* (not false, not unknown).
    pub fn matches(&self, doc: &Value) -> bool {
        self.predicate.eval(doc) == Truth::True
    }
}

/// The checks every query text passes before the parser sees it.
fn check_text(text: &str) -> Result<(), QueryError> {
    if text.len() > MAX_QUERY_LEN {
        return Err(QueryError::new(format!(
            "query is too long ({} bytes); at most {MAX_QUERY_LEN} bytes are allowed",
            text.len()
        )));
    }
    if text.trim().is_empty() {
        return Err(empty_query());
    }
    Ok(())
}

/// Whether a query text names `$metadata` or `$version` (conservatively: anywhere in it).
pub(crate) fn names_metadata(text: &str) -> bool {
    text.contains("$metadata") || text.contains("$version")
}
