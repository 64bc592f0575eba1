//! The compiled form of a condition and its three-valued evaluation against a JSON document.

use std::cmp::Ordering;
use std::fmt;

use serde_json::{Number, Value};

// ---------------------------------------------------------------------------
// Compiled form
// ---------------------------------------------------------------------------

/// The compiled condition. Kept separate from sqlparser's AST so evaluation
/// only has to handle what we support, and so `Query` stays cheap to clone.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Predicate {
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
pub(super) enum Operand {
    Literal(Value),
    Path(Path),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CompareOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

/// A validated dotted path into the twin, one JSON key per segment.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Path(pub(super) Vec<String>);

impl Path {
    /// The value at this path, or `None` when the twin does not define it.
    /// Walking through anything that is not an object ends in `None`.
    pub(super) fn lookup<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
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
pub(super) enum Truth {
    True,
    False,
    Unknown,
}

impl Truth {
    pub(super) fn from_bool(value: bool) -> Truth {
        if value {
            Truth::True
        } else {
            Truth::False
        }
    }

    pub(super) fn not(self) -> Truth {
        match self {
            Truth::True => Truth::False,
            Truth::False => Truth::True,
            Truth::Unknown => Truth::Unknown,
        }
    }

    /// Kleene AND over any number of terms: false wins, then unknown.
    pub(super) fn all(terms: impl IntoIterator<Item = Truth>) -> Truth {
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
    pub(super) fn any(terms: impl IntoIterator<Item = Truth>) -> Truth {
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
    pub(super) fn eval(&self, doc: &Value) -> Truth {
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

impl Predicate {
    /// The string a top-level `field = 'value'` (alone or as a term of the top-level AND)
    /// requires `field` to equal: no document with another value can match, so a scan can be
    /// narrowed to it.
    pub(super) fn pinned(&self, field: &str) -> Option<&str> {
        match self {
            Predicate::Compare {
                left,
                op: CompareOp::Eq,
                right,
            } => match (left, right) {
                (Operand::Path(path), Operand::Literal(Value::String(value)))
                | (Operand::Literal(Value::String(value)), Operand::Path(path))
                    if path.0.len() == 1 && path.0[0] == field =>
                {
                    Some(value)
                }
                _ => None,
            },
            Predicate::All(terms) => terms.iter().find_map(|term| term.pinned(field)),
            _ => None,
        }
    }
}

impl Operand {
    pub(super) fn resolve<'a>(&'a self, doc: &'a Value) -> Option<&'a Value> {
        match self {
            Operand::Literal(value) => Some(value),
            Operand::Path(path) => path.lookup(doc),
        }
    }
}

pub(super) fn compare(left: &Value, op: CompareOp, right: &Value) -> Truth {
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
pub(super) fn equals(left: &Value, right: &Value) -> Truth {
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
pub(super) fn order(left: &Value, right: &Value) -> Option<Ordering> {
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
pub(super) fn compare_numbers(a: &Number, b: &Number) -> Option<Ordering> {
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
