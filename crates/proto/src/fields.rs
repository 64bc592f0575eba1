//! Small checks shared by every conversion from protobuf to the domain. Each returns an error that
//! names the field it was given.

use muster_types::{IdError, Timestamp};
use serde_json::Value;

use crate::error::ProtoError;

/// Validates an identifier through its constructor. All id newtypes implement
/// `TryFrom<String>` by calling their `new`, so a log can never hold an id the API would refuse.
pub(crate) fn id<T>(field: &str, value: String) -> Result<T, ProtoError>
where
    T: TryFrom<String, Error = IdError>,
{
    T::try_from(value).map_err(|error| ProtoError::InvalidId {
        field: field.to_string(),
        error,
    })
}

/// Validates a list of identifiers; the error names the index of the first bad one.
pub(crate) fn ids<T>(field: &str, values: Vec<String>) -> Result<Vec<T>, ProtoError>
where
    T: TryFrom<String, Error = IdError>,
{
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| id(&format!("{field}[{i}]"), v))
        .collect()
}

/// The string form of a list of identifiers, for encoding.
pub(crate) fn id_strings<T: AsRef<str>>(values: &[T]) -> Vec<String> {
    values.iter().map(|v| v.as_ref().to_string()).collect()
}

/// Parses the JSON text of a `_json` field. An empty string is not JSON and is refused: every
/// encoder writes at least `null`.
pub(crate) fn json(field: &str, text: &str) -> Result<Value, ProtoError> {
    serde_json::from_str(text).map_err(|error| ProtoError::InvalidJson {
        field: field.to_string(),
        error,
    })
}

/// The JSON text of a value, for encoding. Compact, and in the object's key order.
pub(crate) fn json_text(value: &Value) -> String {
    value.to_string()
}

/// A message field or oneof the domain cannot do without.
pub(crate) fn required<T>(field: &str, value: Option<T>) -> Result<T, ProtoError> {
    value.ok_or_else(|| ProtoError::Missing {
        field: field.to_string(),
    })
}

pub(crate) fn time(ms: i64) -> Timestamp {
    Timestamp::from_millis(ms)
}

/// A required nested message, converted with its own `TryFrom`; errors inside it get this
/// field's name in front of their path.
pub(crate) fn message<T, U>(field: &str, value: Option<T>) -> Result<U, ProtoError>
where
    U: TryFrom<T, Error = ProtoError>,
{
    U::try_from(required(field, value)?).map_err(|e| e.within(field))
}

/// An optional nested message: absent stays `None`, present must convert.
pub(crate) fn optional_message<T, U>(field: &str, value: Option<T>) -> Result<Option<U>, ProtoError>
where
    U: TryFrom<T, Error = ProtoError>,
{
    value
        .map(U::try_from)
        .transpose()
        .map_err(|e| e.within(field))
}

/// A repeated nested message; the error names the index of the first bad element.
pub(crate) fn messages<T, U>(field: &str, values: Vec<T>) -> Result<Vec<U>, ProtoError>
where
    U: TryFrom<T, Error = ProtoError>,
{
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| U::try_from(v).map_err(|e| e.within(&format!("{field}[{i}]"))))
        .collect()
}
