//! A small strict reader over `serde_json::Value` that names the offending field in every error.
//!
//! Request bodies are read into a `Value` first and walked by hand instead of being deserialized
//! into structs: serde's messages ("invalid type: string, expected u32 at line 3 column 12") do not
//! name the field the way a caller wrote it, and the shapes need a few rules serde cannot express
//! (an id that must equal the URL's, one of two fields, aliases with a conflict check).

use muster_domain::DomainError;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Largest request body accepted, in bytes. The largest legitimate part of a body is a direct
/// method payload (128 KiB, IoT Hub's limit); the rest is small.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Parses a request body: 413 when too large, 400 naming `body` when not a JSON object.
pub(crate) fn parse_body(body: &str) -> Result<Value, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::too_large("body", body.len(), MAX_BODY_BYTES));
    }
    if body.trim().is_empty() {
        return Err(ApiError::bad_request(
            "body",
            "the request body is empty; send a JSON object",
        ));
    }
    let value: Value = serde_json::from_str(body).map_err(|e| {
        ApiError::bad_request(
            "body",
            format!(
                "not valid JSON (line {}, column {}): {}; send a JSON object with double-quoted field names",
                e.line(),
                e.column(),
                match e.classify() {
                    serde_json::error::Category::Eof => "the document ends too early",
                    serde_json::error::Category::Syntax => "syntax error",
                    serde_json::error::Category::Data => "unexpected data",
                    serde_json::error::Category::Io => "unreadable",
                }
            ),
        )
    })?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "body",
            format!("must be a JSON object, got {}", kind(&value)),
        ));
    }
    if let Some(path) = duplicate_key(body) {
        return Err(duplicate_key_error(&path));
    }
    Ok(value)
}

/// The 400 for a key given twice in one object.
pub(crate) fn duplicate_key_error(path: &str) -> ApiError {
    ApiError::bad_request(
        path,
        format!("{path} appears more than once in the same object; give each field once"),
    )
}

/// The path (`a.b[2].c`, with `body` for the top level) of the first key that appears twice in
/// one object of a valid JSON text, if any. serde_json keeps the last of two equal keys
/// silently, so a body that says two things would be read as the second: refused instead.
pub(crate) fn duplicate_key(text: &str) -> Option<String> {
    let found = std::cell::RefCell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let _ = serde::de::DeserializeSeed::deserialize(
        UniqueKeys {
            path: String::new(),
            found: &found,
        },
        &mut de,
    );
    found.into_inner()
}

/// Walks a JSON document, failing at the first object with a repeated key (its path in `found`).
struct UniqueKeys<'a> {
    path: String,
    found: &'a std::cell::RefCell<Option<String>>,
}

impl<'de> serde::de::DeserializeSeed<'de> for UniqueKeys<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for UniqueKeys<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        while seq
            .next_element_seed(UniqueKeys {
                path: format!("{}[{i}]", self.path),
                found: self.found,
            })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::BTreeSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                join(&self.path, &key)
            };
            if !seen.insert(key) {
                *self.found.borrow_mut() = Some(path);
                return Err(serde::de::Error::custom("duplicate key"));
            }
            map.next_value_seed(UniqueKeys {
                path,
                found: self.found,
            })?;
        }
        Ok(())
    }
}

/// How a JSON value is described in messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Joins a parent path and a key: `("", "group")` -> `group`, `("batch", "value")` -> `batch.value`.
pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// Quotes caller input in a message, bounded so that a huge value cannot bloat an error.
pub(crate) fn quote(s: &str) -> String {
    let short: String = s.chars().take(64).collect();
    if short.len() < s.len() {
        format!("{short:?}...")
    } else {
        format!("{short:?}")
    }
}

/// The fields of one JSON object, with the path it sits at.
#[derive(Debug)]
pub(crate) struct Fields<'a> {
    pub(crate) map: &'a Map<String, Value>,
    pub(crate) at: String,
}

impl<'a> Fields<'a> {
    pub(crate) fn of(v: &'a Value, at: &str) -> Result<Self, ApiError> {
        match v {
            Value::Object(map) => Ok(Fields {
                map,
                at: at.to_string(),
            }),
            other => Err(ApiError::bad_request(
                if at.is_empty() { "body" } else { at },
                format!("must be a JSON object, got {}", kind(other)),
            )),
        }
    }

    pub(crate) fn path(&self, key: &str) -> String {
        join(&self.at, key)
    }

    /// Refuses fields the shape does not have, so a misspelt or unsupported option is reported
    /// instead of silently ignored.
    pub(crate) fn only(&self, allowed: &[&str]) -> Result<(), ApiError> {
        if let Some(k) = self.map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ApiError::bad_request(
                &self.path(&k.chars().take(64).collect::<String>()),
                format!(
                    "unknown field; the fields accepted here are {}",
                    allowed.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// A field's value; JSON `null` counts as absent.
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub(crate) fn str_opt(&self, key: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(ApiError::bad_request(
                &self.path(key),
                format!("must be a string, got {}", kind(other)),
            )),
        }
    }

    pub(crate) fn str_req(&self, key: &str) -> Result<&'a str, ApiError> {
        self.str_opt(key)?.ok_or_else(|| {
            ApiError::bad_request(&self.path(key), "is required and must be a string")
        })
    }

    pub(crate) fn bool_opt(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(ApiError::bad_request(
                &self.path(key),
                format!("must be true or false, got {}", kind(other)),
            )),
        }
    }

    /// A whole number within `min..=max`; negatives, fractions and strings are refused with the
    /// accepted range in the message.
    pub(crate) fn u64_opt(&self, key: &str, min: u64, max: u64) -> Result<Option<u64>, ApiError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let field = self.path(key);
        let range = || format!("a whole number from {min} to {max}");
        let Value::Number(n) = v else {
            return Err(ApiError::bad_request(
                &field,
                format!("must be {}, got {}", range(), kind(v)),
            ));
        };
        match n.as_u64() {
            Some(x) if (min..=max).contains(&x) => Ok(Some(x)),
            _ => Err(ApiError::bad_request(
                &field,
                format!("must be {}, got {n}", range()),
            )),
        }
    }

    pub(crate) fn u32_opt(&self, key: &str, min: u32, max: u32) -> Result<Option<u32>, ApiError> {
        Ok(self
            .u64_opt(key, u64::from(min), u64::from(max))?
            .and_then(|x| u32::try_from(x).ok()))
    }

    pub(crate) fn u32_req(&self, key: &str, min: u32, max: u32) -> Result<u32, ApiError> {
        self.u32_opt(key, min, max)?.ok_or_else(|| {
            ApiError::bad_request(
                &self.path(key),
                format!("is required: a whole number from {min} to {max}"),
            )
        })
    }
}

/// Display names and descriptions: bounded, no control characters.
pub(crate) fn check_text(field: &str, s: &str, max: usize) -> Result<(), ApiError> {
    let len = s.chars().count();
    if len > max {
        return Err(ApiError::bad_request(
            field,
            format!("is {len} characters long; at most {max} are allowed"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            field,
            "must not contain control characters such as newlines or tabs",
        ));
    }
    Ok(())
}

/// Property and method names, with the IoT Hub seed's rule: printable US-ASCII without spaces or
/// separators. The same rule the domain applies, checked here to name the caller's field.
pub(crate) fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    const FORBIDDEN: &str = "$()<>@,;:\\\"/[]?={}";
    if name.is_empty() {
        return Err(ApiError::bad_request(field, "must not be empty"));
    }
    if name.len() > 128 {
        return Err(ApiError::bad_request(
            field,
            format!("is {} characters long; at most 128 are allowed", name.len()),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !c.is_ascii_graphic() || FORBIDDEN.contains(*c))
    {
        return Err(ApiError::bad_request(
            field,
            format!(
                "{} contains {c:?}; names are printable US-ASCII without spaces or any of $ ( ) < > @ , ; : \\ \" / [ ] ? = {{ }}",
                quote(name)
            ),
        ));
    }
    Ok(())
}

/// Turns a domain validation error into a 400/413 whose field is named as the caller wrote it.
/// `rename` maps the domain's field path (`operations[0].payload`, `target.query`) to the shape's.
pub(crate) fn domain_error(e: DomainError, rename: impl Fn(&str) -> String) -> ApiError {
    match &e {
        DomainError::Invalid { field, message } => ApiError::bad_request(&rename(field), message),
        DomainError::TooLarge { field, size, max } => {
            ApiError::too_large(&rename(field), *size, *max)
        }
        _ => ApiError::from(&e),
    }
}

/// Splits `operations[3].rest` into `(3, "rest")`.
pub(crate) fn operation_field(field: &str) -> Option<(usize, &str)> {
    let rest = field.strip_prefix("operations[")?;
    let (idx, rest) = rest.split_once(']')?;
    let idx = idx.parse().ok()?;
    Some((idx, rest.strip_prefix('.').unwrap_or(rest)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_are_checked_with_the_field_named() {
        let v = json!({"a": -1, "b": 2.5, "c": "3", "d": 7, "e": null});
        let f = Fields::of(&v, "x").unwrap();
        for k in ["a", "b", "c"] {
            let e = f.u32_opt(k, 1, 10).unwrap_err();
            assert!(e.message.starts_with(&format!("x.{k}: ")), "{}", e.message);
        }
        assert_eq!(f.u32_opt("d", 1, 10).unwrap(), Some(7));
        assert_eq!(f.u32_opt("e", 1, 10).unwrap(), None);
        assert!(f.u32_opt("d", 8, 10).is_err());
    }

    /// Issue 18: a key given twice was read as its last value, silently.
    #[test]
    fn duplicate_keys_are_refused_naming_the_key() {
        assert_eq!(
            duplicate_key(r#"{"a":1,"b":{"c":[{"d":1,"d":2}]}}"#).as_deref(),
            Some("b.c[0].d")
        );
        assert_eq!(duplicate_key(r#"{"a":1,"a":2}"#).as_deref(), Some("a"));
        assert_eq!(
            duplicate_key(r#"{"a":{"x":1},"b":{"x":1},"c":[1,1]}"#),
            None
        );
        let e = parse_body(r#"{"displayName":"x","displayName":"y"}"#).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("displayName"), "{}", e.message);
    }

    #[test]
    fn operation_fields_split() {
        assert_eq!(
            operation_field("operations[2].payload"),
            Some((2, "payload"))
        );
        assert_eq!(
            operation_field("operations[0].patch.a"),
            Some((0, "patch.a"))
        );
        assert_eq!(operation_field("operations"), None);
    }
}
