//! A device's JSON sections (tags, desired, reported, their metadata) at one pointer each while
//! empty, as most devices' are: `serde_json::Value` is 72 bytes inline (objects keep their key
//! order), and a registry of a million devices held seven of them per device.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::LazyLock;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// A JSON value that reads and writes as a [`Value`] (through `Deref`), serializes exactly as
/// one, and stores an empty object as no allocation at all.
#[derive(Clone, Default)]
pub struct Doc(Option<Box<Value>>);

static EMPTY_OBJECT: LazyLock<Value> = LazyLock::new(|| Value::Object(Map::new()));

impl Doc {
    /// An empty object.
    pub fn empty() -> Doc {
        Doc(None)
    }

    /// `null` (what a section missing from an older snapshot decodes to).
    pub fn null() -> Doc {
        Doc(Some(Box::new(Value::Null)))
    }

    /// A copy as a plain [`Value`] (`clone` copies the `Doc`).
    pub fn to_value(&self) -> Value {
        (**self).clone()
    }

    pub fn into_value(self) -> Value {
        self.0.map_or_else(|| Value::Object(Map::new()), |b| *b)
    }
}

impl From<Value> for Doc {
    fn from(v: Value) -> Doc {
        if v.as_object().is_some_and(Map::is_empty) {
            Doc(None)
        } else {
            Doc(Some(Box::new(v)))
        }
    }
}

impl Deref for Doc {
    type Target = Value;

    fn deref(&self) -> &Value {
        self.0.as_deref().unwrap_or(&EMPTY_OBJECT)
    }
}

impl DerefMut for Doc {
    fn deref_mut(&mut self) -> &mut Value {
        self.0
            .get_or_insert_with(|| Box::new(Value::Object(Map::new())))
    }
}

impl PartialEq for Doc {
    fn eq(&self, other: &Doc) -> bool {
        **self == **other
    }
}

impl PartialEq<Value> for Doc {
    fn eq(&self, other: &Value) -> bool {
        **self == *other
    }
}

impl PartialEq<Doc> for Value {
    fn eq(&self, other: &Doc) -> bool {
        *self == **other
    }
}

impl fmt::Debug for Doc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl Serialize for Doc {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Doc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Doc, D::Error> {
        Value::deserialize(d).map(Doc::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_writes_and_serializes_as_the_value_it_holds() {
        for v in [json!({}), json!({"a": 1}), Value::Null, json!([1])] {
            let d = Doc::from(v.clone());
            assert_eq!(*d, v);
            assert_eq!(serde_json::to_string(&d).unwrap(), v.to_string());
            let back: Doc = serde_json::from_str(&v.to_string()).unwrap();
            assert_eq!(back, d);
            assert_eq!(d.clone().into_value(), v);
        }
        let mut d = Doc::empty();
        assert!(d.0.is_none());
        d["k"] = json!("v");
        assert_eq!(*d, json!({"k": "v"}));
        assert_eq!(std::mem::size_of::<Doc>(), 8);
    }
}
