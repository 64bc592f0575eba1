//! A device's JSON sections (tags, desired, reported, their metadata) at one pointer each while
//! empty, as most devices' are: `serde_json::Value` is 72 bytes inline (objects keep their key
//! order), and a registry of a million devices held seven of them per device.
//!
//! A section that is not empty is shared between devices that hold an equal one: devices of a
//! fleet are mostly registered with the same few tag sets (`{"site": "b43"}`), and a small parsed
//! object costs ~300 bytes. [`Doc::from`] looks among the small documents (at most 16 entries
//! and ~1 KB) recently built on its thread for an equal one, by a hash of the content; writing
//! through `DerefMut` copies a shared document first. Sharing is invisible to everything but
//! the allocator.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, LazyLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// A JSON value that reads and writes as a [`Value`] (through `Deref`), serializes exactly as
/// one, and stores an empty object as no allocation at all.
#[derive(Clone, Default)]
pub struct Doc(Option<Arc<Value>>);

/// Documents with more top-level entries than this are not looked up for sharing: hashing and
/// comparing them costs more than they are likely to save.
const SHARED_MAX_ENTRIES: usize = 16;
/// Nor are documents heavier than this (bytes of text plus 16 a value, roughly): the threads'
/// tables would otherwise keep up to [`RECENT_DOCS`] large twins each alive.
const SHARED_MAX_WEIGHT: usize = 1024;
/// How many distinct small documents each thread remembers (then it starts again): a fleet's
/// tag sets, cycling through a few hundred sites, still meet their twin.
const RECENT_DOCS: usize = 4096;

thread_local! {
    /// Recently built small documents by their [`hash`].
    static RECENT: RefCell<HashMap<u64, Arc<Value>>> = RefCell::new(HashMap::new());
}

/// Hashes a document's content, keys in their order, and returns its weight (see
/// [`SHARED_MAX_WEIGHT`]).
fn hash(v: &Value, h: &mut impl Hasher) -> usize {
    16 + match v {
        Value::Null => {
            h.write_u8(0);
            0
        }
        Value::Bool(b) => {
            h.write_u8(1 + u8::from(*b));
            0
        }
        Value::Number(n) => {
            h.write_u8(3);
            n.hash(h);
            0
        }
        Value::String(s) => {
            h.write_u8(4);
            s.hash(h);
            s.len()
        }
        Value::Array(a) => {
            h.write_u8(5);
            h.write_usize(a.len());
            a.iter().map(|x| hash(x, h)).sum()
        }
        Value::Object(m) => {
            h.write_u8(6);
            h.write_usize(m.len());
            m.iter()
                .map(|(k, x)| {
                    k.hash(h);
                    k.len() + hash(x, h)
                })
                .sum()
        }
    }
}

/// Equal, and with every object's keys in the same order (`Value`'s `==` ignores the order,
/// which serialization shows).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|((k, p), (l, q))| k == l && same(p, q))
        }
        _ => a == b,
    }
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
    let mut h = std::collections::hash_map::DefaultHasher::new();
    if hash(&v, &mut h) > SHARED_MAX_WEIGHT {
        return Arc::new(v);
    }
    let key = h.finish();
    RECENT.with(|cell| {
        let mut recent = cell.borrow_mut();
        if let Some(known) = recent.get(&key).filter(|d| same(d, &v)) {
            return Arc::clone(known);
        }
        if recent.len() >= RECENT_DOCS {
            recent.clear();
        }
        let doc = Arc::new(v);
        recent.insert(key, Arc::clone(&doc));
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
        let (c, d) = (
            Doc::from(Value::Object(big.clone())),
            Doc::from(Value::Object(big)),
        );
        let (Some(pc), Some(pd)) = (&c.0, &d.0) else {
            panic!("not empty")
        };
        assert!(!Arc::ptr_eq(pc, pd), "large documents are not compared");
        assert_eq!(c, d);
        let heavy = || json!({"log": "x".repeat(SHARED_MAX_WEIGHT)});
        let (e, f) = (Doc::from(heavy()), Doc::from(heavy()));
        let (Some(pe), Some(pf)) = (&e.0, &f.0) else {
            panic!("not empty")
        };
        assert!(
            !Arc::ptr_eq(pe, pf),
            "heavy documents are not kept for sharing"
        );
    }

    #[test]
    fn tags_cycling_through_many_sites_are_still_shared() {
        let site = |i: usize| Doc::from(json!({"site": format!("b{i}"), "floor": i % 7}));
        let first: Vec<Doc> = (0..500).map(site).collect();
        for (i, d) in first.iter().enumerate() {
            let again = site(i);
            let (Some(a), Some(b)) = (&d.0, &again.0) else {
                panic!("not empty")
            };
            assert!(Arc::ptr_eq(a, b), "site {i} is shared");
        }
        // Equal content in another key order is another document: the order is shown.
        let a = Doc::from(json!({"x": 1, "y": 2}));
        let b = Doc::from(json!({"y": 2, "x": 1}));
        assert_eq!(serde_json::to_string(&a).unwrap(), r#"{"x":1,"y":2}"#);
        assert_eq!(serde_json::to_string(&b).unwrap(), r#"{"y":2,"x":1}"#);
        assert!(!same(&a, &b));
    }
}
