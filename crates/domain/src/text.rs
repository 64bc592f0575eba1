//! Short registry texts that many devices share: a device's display name is usually its id,
//! and a fleet has a handful of model ids. As `String`s each device held its own copy of both
//! (two allocations per device, ~80 bytes at a million devices' scale, copied again by every
//! copy-on-write of the device); a [`Text`] shares one allocation among equal values.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use muster_types::DeviceId;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An immutable string whose clones share one allocation. Serializes as a plain string.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Text(Arc<str>);

/// Interned texts are kept while fewer than this many distinct ones were seen on the thread
/// (then the table starts over: sharing is an economy, never a rule).
const INTERNED_MAX: usize = 1024;
/// Longer texts are not interned: the table must stay small.
const INTERNED_LEN: usize = 256;

thread_local! {
    static INTERNED: RefCell<HashSet<Arc<str>>> = RefCell::new(HashSet::new());
}

impl Text {
    pub fn new(s: &str) -> Self {
        Text(Arc::from(s))
    }

    /// `s`, sharing the allocation of `id`'s text when they are equal (a display name that is
    /// the id costs nothing).
    pub fn or_id(s: &str, id: &DeviceId) -> Self {
        if s == id.as_str() {
            Text(id.shared_text())
        } else {
            Text::new(s)
        }
    }

    /// `s`, sharing one allocation with every equal text interned on this thread (model ids).
    pub fn interned(s: &str) -> Self {
        if s.len() > INTERNED_LEN {
            return Text::new(s);
        }
        INTERNED.with(|t| {
            let mut t = t.borrow_mut();
            if let Some(found) = t.get(s) {
                return Text(found.clone());
            }
            if t.len() >= INTERNED_MAX {
                t.clear();
            }
            let text: Arc<str> = Arc::from(s);
            t.insert(text.clone());
            Text(text)
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the two share one allocation.
    pub fn same_allocation(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Default for Text {
    fn default() -> Self {
        Text::new("")
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text::new(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text(Arc::from(s))
    }
}

impl From<&Text> for String {
    fn from(t: &Text) -> Self {
        t.0.to_string()
    }
}

impl From<Text> for String {
    fn from(t: Text) -> Self {
        t.0.to_string()
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for Text {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Text::from(String::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_interned_texts_share_and_the_id_is_shared_with_its_name() {
        let a = Text::interned("dtmi:x;1");
        let b = Text::interned(&String::from("dtmi:x;1"));
        assert!(a.same_allocation(&b));
        assert!(!a.same_allocation(&Text::new("dtmi:x;1")));
        let id = DeviceId::new("d1").unwrap();
        let name = Text::or_id("d1", &id);
        assert!(name.same_allocation(&Text::or_id("d1", &id)));
        assert_eq!(Text::or_id("other", &id), "other");
        assert_eq!(serde_json::to_string(&name).unwrap(), "\"d1\"");
        let back: Text = serde_json::from_str("\"d1\"").unwrap();
        assert_eq!(back, name);
    }
}
