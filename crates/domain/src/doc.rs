//! A device's JSON sections (tags, desired, reported, their metadata) at one pointer each while
//! empty, as most devices' are: `serde_json::Value` is 72 bytes inline (objects keep their key
//! order), and a registry of a million devices held seven of them per device.
//!
//! A section that is not empty is shared between devices that hold an equal one: devices of a
//! fleet are mostly registered with the same few tag sets (`{"site": "b43"}`), and a small parsed
//! object costs ~300 bytes. [`Doc::from`] looks among the last few small documents built on its
//! thread for an equal one; writing through `DerefMut` copies a shared document first. Sharing is
//! invisible to everything but the allocator.

use std::fmt;
use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, LazyLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// A JSON value that reads and writes as a [`Value`] (through `Deref`), serializes exactly as
/// one, and stores an empty object as no allocation at all.
#[derive(Clone, Default)]
pub struct Doc(Option<Arc<Value>>);

/// Documents with more top-level entries than this are not looked up for sharing: comparing
/// them costs more than they are likely to save.
const SHARED_MAX_ENTRIES: usize = 16;
/// How many recent small documents each thread remembers.
const RECENT_DOCS: usize = 8;

thread_local! {
    /// Recently built small documents, with the next slot to overwrite.
    static RECENT: RefCell<(Vec<Arc<Value>>, usize)> = const { RefCell::new((Vec::new(), 0)) };
}

/// `v` in an `Arc`, shared with an equal recent document when it is small.
fn shared(v: Value) -> Arc<Value> {
    let small = match &v {
        Value::Object(m) => m.len() <= SHARED_MAX_ENTRIES,
        Value::Array(a) => a.len() <= SHARED_MAX_ENTRIES,
        _ => true,
    };
    if !small {
        return Arc::new(v);
    }
    RECENT.with(|cell| {
        let mut recent = cell.borrow_mut();
        if let Some(known) = recent.0.iter().find(|d| ***d == v) {
            return Arc::clone(known);
        }
        let doc = Arc::new(v);
        let (list, next) = &mut *recent;
        if list.len() < RECENT_DOCS {
            list.push(Arc::clone(&doc));
        } else {
            list[*next] = Arc::clone(&doc);
            *next = (*next + 1) % RECENT_DOCS;
        }
        doc
    })
}

static EMPTY_OBJECT: LazyLock<Value> = LazyLock::new(|| Value::Object(Map::new()));

impl Doc {
    /// An empty object.
    pub fn empty() -> Doc {
        Doc(None)
    }

    /// `null` (what a section missing from an older snapshot decodes to).
    pub fn null() -> Doc {
        Doc(Some(shared(Value::Null)))
    }

    /// A copy as a plain [`Value`] (`clone` copies the `Doc`).
    pub fn to_value(&self) -> Value {
        (**self).clone()
    }

    pub fn into_value(self) -> Value {
        self.0.map_or_else(
            || Value::Object(Map::new()),
            |d| Arc::try_unwrap(d).unwrap_or_else(|d| (*d).clone()),
        )
    }
}

impl From<Value> for Doc {
    fn from(v: Value) -> Doc {
        if v.as_object().is_some_and(Map::is_empty) {
            Doc(None)
        } else {
            Doc(Some(shared(v)))
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
        Arc::make_mut(
            self.0
                .get_or_insert_with(|| Arc::new(Value::Object(Map::new()))),
        )
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

    #[test]
    fn equal_small_documents_are_shared_and_copied_before_a_write() {
        let tags = || json!({"site": "b43", "ring": 2});
        let a = Doc::from(tags());
        let mut b = Doc::from(tags());
        let (Some(pa), Some(pb)) = (&a.0, &b.0) else {
            panic!("not empty")
        };
        assert!(Arc::ptr_eq(pa, pb), "equal tags share one document");
        b["ring"] = json!(3);
        assert_eq!(*a, tags(), "writing one device's tags leaves the other's");
        assert_eq!(*b, json!({"site": "b43", "ring": 3}));
        let big: Map<String, Value> = (0..=SHARED_MAX_ENTRIES)
            .map(|i| (format!("k{i}"), json!(i)))
            .collect();
        let (c, d) = (Doc::from(Value::Object(big.clone())), Doc::from(Value::Object(big)));
        let (Some(pc), Some(pd)) = (&c.0, &d.0) else {
            panic!("not empty")
        };
        assert!(!Arc::ptr_eq(pc, pd), "large documents are not compared");
        assert_eq!(c, d);
    }
}
