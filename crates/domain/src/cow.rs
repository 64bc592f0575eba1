//! Copy-on-write containers for the state's large parts, so that cloning a [`crate::State`] is
//! nearly free and a write after the clone copies only what it touches.
//!
//! Why: the store builds a snapshot from a clone of the state taken under the state's lock,
//! and encodes the clone outside it. With plain `BTreeMap`s and `Vec`s that clone copied the
//! whole state (0.7 s and +215 MiB at 100,000 registered devices), stalling every apply
//! (issue 14: "building a snapshot must not stall applying for more than a few milliseconds",
//! "peak extra memory under 25% of the state"). Here a clone shares the maps' tree nodes
//! ([`CowMap`], [`CowSet`], over `imbl`'s B-trees) and a vector's chunks ([`CowVec`]); while a
//! snapshot holds its copy, a write copies the one node, value or chunk it changes.
//!
//! Each type keeps the API of the std container it replaces (ordered iteration included, since
//! order reaches output), and serializes exactly as that container does, so snapshot files and
//! JSON keep their bytes. The only difference a caller sees: `&mut` access needs `V: Clone`.

use std::borrow::Borrow;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Index, IndexMut, RangeBounds};
use std::sync::Arc;

use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An ordered map like `BTreeMap` whose clone is O(1). Values sit behind their own `Arc`, so a
/// write after a clone copies the path's nodes (keys and pointers) and the one value it changes,
/// never a node's worth of values.
pub struct CowMap<K, V>(imbl::OrdMap<K, Arc<V>>);

impl<K, V> Clone for CowMap<K, V> {
    fn clone(&self) -> Self {
        CowMap(self.0.clone())
    }
}

impl<K, V> Default for CowMap<K, V> {
    fn default() -> Self {
        CowMap(imbl::OrdMap::new())
    }
}

impl<K: Ord, V: PartialEq> PartialEq for CowMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().zip(other.iter()).all(|(a, b)| a == b)
    }
}

impl<K: Ord + fmt::Debug, V: fmt::Debug> fmt::Debug for CowMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K, V> CowMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Ord, V> CowMap<K, V> {
    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.0.get(key).map(|v| &**v)
    }

    pub fn get_key_value<Q: Ord + ?Sized>(&self, key: &Q) -> Option<(&K, &V)>
    where
        K: Borrow<Q>,
    {
        self.0.get_key_value(key).map(|(k, v)| (k, &**v))
    }

    pub fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.0.contains_key(key)
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&K, &V)> + ExactSizeIterator + Clone {
        self.0.iter().map(|(k, v)| (k, &**v))
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &K> + ExactSizeIterator + Clone {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator + Clone {
        self.0.iter().map(|(_, v)| &**v)
    }

    pub fn range<Q: Ord + ?Sized, R: RangeBounds<Q>>(
        &self,
        range: R,
    ) -> impl DoubleEndedIterator<Item = (&K, &V)> + Clone
    where
        K: Borrow<Q>,
    {
        self.0.range(range).map(|(k, v)| (k, &**v))
    }

    pub fn first_key_value(&self) -> Option<(&K, &V)> {
        self.iter().next()
    }

    pub fn last_key_value(&self) -> Option<(&K, &V)> {
        self.iter().next_back()
    }
}

impl<K: Ord + Clone, V: Clone> CowMap<K, V> {
    /// The value, unshared first if a clone of the map still holds it.
    pub fn get_mut<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.0.get_mut(key).map(Arc::make_mut)
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.0
            .insert(key, Arc::new(value))
            .map(Arc::unwrap_or_clone)
    }

    pub fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.0.remove(key).map(Arc::unwrap_or_clone)
    }

    /// The value under `key`, inserted from `default` first if there is none.
    pub fn get_or_insert_with(&mut self, key: K, default: impl FnOnce() -> V) -> &mut V {
        Arc::make_mut(self.0.entry(key).or_insert_with(|| Arc::new(default())))
    }

    /// Calls `f` on every value in key order, each unshared first (which copies every value
    /// a clone still holds: for rare whole-state passes, not the apply path).
    pub fn for_each_mut(&mut self, mut f: impl FnMut(&K, &mut V)) {
        let keys: Vec<K> = self.0.keys().cloned().collect();
        for k in keys {
            if let Some(v) = self.0.get_mut(&k) {
                f(&k, Arc::make_mut(v));
            }
        }
    }

    /// Keeps the entries `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        let drop: Vec<K> = self
            .iter()
            .filter(|(k, v)| !keep(k, v))
            .map(|(k, _)| k.clone())
            .collect();
        for k in drop {
            self.0.remove(&k);
        }
    }
}

impl<K: Ord + Borrow<Q>, Q: Ord + ?Sized, V> Index<&Q> for CowMap<K, V> {
    type Output = V;

    /// Panics if `key` is absent, as `BTreeMap`'s does (for tests; the core uses `get`).
    fn index(&self, key: &Q) -> &V {
        #[allow(clippy::expect_used)]
        self.get(key).expect("no entry for the key")
    }
}

impl<K: Ord + Clone, V: Clone> FromIterator<(K, V)> for CowMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut map = CowMap::new();
        map.extend(iter);
        map
    }
}

impl<K: Ord + Clone, V: Clone> Extend<(K, V)> for CowMap<K, V> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl<K: Ord + Clone, V: Clone> From<std::collections::BTreeMap<K, V>> for CowMap<K, V> {
    fn from(map: std::collections::BTreeMap<K, V>) -> Self {
        map.into_iter().collect()
    }
}

impl<'a, K: Ord, V> IntoIterator for &'a CowMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Box<dyn DoubleEndedIterator<Item = (&'a K, &'a V)> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl<K: Ord + Serialize, V: Serialize> Serialize for CowMap<K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de, K, V> Deserialize<'de> for CowMap<K, V>
where
    K: Ord + Clone + Deserialize<'de>,
    V: Clone + Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MapVisitor<K, V>(PhantomData<(K, V)>);
        impl<'de, K, V> Visitor<'de> for MapVisitor<K, V>
        where
            K: Ord + Clone + Deserialize<'de>,
            V: Clone + Deserialize<'de>,
        {
            type Value = CowMap<K, V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut map = CowMap::new();
                while let Some((k, v)) = a.next_entry()? {
                    map.insert(k, v);
                }
                Ok(map)
            }
        }
        d.deserialize_map(MapVisitor(PhantomData))
    }
}

/// An ordered set like `BTreeSet` whose clone is O(1): a run's `ready`, `deadlines` and
/// `backoff` hold up to one entry per device of a running job.
pub struct CowSet<T>(imbl::OrdSet<T>);

impl<T> Clone for CowSet<T> {
    fn clone(&self) -> Self {
        CowSet(self.0.clone())
    }
}

impl<T> Default for CowSet<T> {
    fn default() -> Self {
        CowSet(imbl::OrdSet::new())
    }
}

impl<T: Ord> PartialEq for CowSet<T> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl<T: Ord> Eq for CowSet<T> {}

impl<T: Ord> PartialEq<std::collections::BTreeSet<T>> for CowSet<T> {
    fn eq(&self, other: &std::collections::BTreeSet<T>) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl<T: Ord + fmt::Debug> fmt::Debug for CowSet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl<T> CowSet<T> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<T: Ord> CowSet<T> {
    pub fn contains<Q: Ord + ?Sized>(&self, value: &Q) -> bool
    where
        T: Borrow<Q>,
    {
        self.0.contains(value)
    }

    /// Values in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + ExactSizeIterator + Clone {
        self.0.iter()
    }

    pub fn range<Q: Ord + ?Sized, R: RangeBounds<Q>>(
        &self,
        range: R,
    ) -> impl DoubleEndedIterator<Item = &T>
    where
        T: Borrow<Q>,
    {
        self.0.range(range)
    }

    pub fn first(&self) -> Option<&T> {
        self.0.get_min()
    }

    pub fn last(&self) -> Option<&T> {
        self.0.get_max()
    }
}

impl<T: Ord + Clone> CowSet<T> {
    /// Whether `value` was new, as `BTreeSet::insert` answers.
    pub fn insert(&mut self, value: T) -> bool {
        self.0.insert(value).is_none()
    }

    /// Whether `value` was there.
    pub fn remove<Q: Ord + ?Sized>(&mut self, value: &Q) -> bool
    where
        T: Borrow<Q>,
    {
        self.0.remove(value).is_some()
    }

    pub fn pop_first(&mut self) -> Option<T> {
        self.0.remove_min()
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// Keeps the values `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let drop: Vec<T> = self.iter().filter(|v| !keep(v)).cloned().collect();
        for v in drop {
            self.0.remove(&v);
        }
    }
}

impl<T: Ord + Clone> FromIterator<T> for CowSet<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        CowSet(iter.into_iter().collect())
    }
}

impl<T: Ord + Clone> Extend<T> for CowSet<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, iter: I) {
        for v in iter {
            self.0.insert(v);
        }
    }
}

impl<'a, T: Ord> IntoIterator for &'a CowSet<T> {
    type Item = &'a T;
    type IntoIter = imbl::ordset::Iter<'a, T, imbl::shared_ptr::DefaultSharedPtr>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<T: Ord + Serialize> Serialize for CowSet<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_seq(s, self.len(), self.iter())
    }
}

impl<'de, T: Ord + Clone + Deserialize<'de>> Deserialize<'de> for CowSet<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(SeqVisitor(PhantomData))
    }
}

/// A sequence with its length up front, as `Vec` and `BTreeSet` serialize (formats such as
/// CBOR write a known length differently from an unknown one, and snapshots keep their bytes).
fn serialize_seq<'a, S: Serializer, T: Serialize + 'a>(
    s: S,
    len: usize,
    items: impl Iterator<Item = &'a T>,
) -> Result<S::Ok, S::Error> {
    let mut q = s.serialize_seq(Some(len))?;
    for v in items {
        q.serialize_element(v)?;
    }
    q.end()
}

/// Reads a sequence into any container that collects its elements one at a time.
struct SeqVisitor<C, T>(PhantomData<(C, T)>);

impl<'de, C: Default + Extend<T>, T: Deserialize<'de>> Visitor<'de> for SeqVisitor<C, T> {
    type Value = C;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<C, A::Error> {
        let mut c = C::default();
        while let Some(v) = a.next_element()? {
            c.extend(std::iter::once(v));
        }
        Ok(c)
    }
}

/// Rows per chunk of a [`CowVec`]: a write after a clone copies one chunk (~64 KiB of
/// `DeviceRun`s), and a clone copies one pointer per chunk (~2,000 at a million rows).
const CHUNK: usize = 512;

/// A vector like `Vec` in fixed-size chunks behind `Arc`s: a running job's rows (one per
/// device). A clone copies the chunk pointers; a write unshares the one chunk it lands in.
/// Indexing is a division and two loads, as fast as the hot path needs.
pub struct CowVec<T> {
    chunks: Vec<Arc<Vec<T>>>,
    len: usize,
}

impl<T> Clone for CowVec<T> {
    fn clone(&self) -> Self {
        CowVec {
            chunks: self.chunks.clone(),
            len: self.len,
        }
    }
}

impl<T> Default for CowVec<T> {
    fn default() -> Self {
        CowVec {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T: PartialEq> PartialEq for CowVec<T> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl<T: fmt::Debug> fmt::Debug for CowVec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T> CowVec<T> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, i: usize) -> Option<&T> {
        self.chunks.get(i / CHUNK)?.get(i % CHUNK)
    }

    pub fn last(&self) -> Option<&T> {
        self.chunks.last()?.last()
    }

    /// Elements in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + Clone {
        self.chunks.iter().flat_map(|c| c.iter())
    }

    /// Elements from position `start` on, without walking the ones before it.
    pub fn iter_from(&self, start: usize) -> impl Iterator<Item = &T> + Clone {
        let (chunk, offset) = (start / CHUNK, start % CHUNK);
        self.chunks
            .iter()
            .skip(chunk)
            .enumerate()
            .flat_map(move |(n, c)| c.iter().skip(if n == 0 { offset } else { 0 }))
    }

    pub fn clear(&mut self) {
        self.chunks = Vec::new();
        self.len = 0;
    }
}

impl<T: Clone> CowVec<T> {
    /// The element, its chunk unshared first if a clone still holds it.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        Arc::make_mut(self.chunks.get_mut(i / CHUNK)?).get_mut(i % CHUNK)
    }

    pub fn push(&mut self, value: T) {
        match self.chunks.last_mut() {
            Some(c) if c.len() < CHUNK => Arc::make_mut(c).push(value),
            _ => {
                // Chunks after the first are sized for a full chunk: a vector that outgrew one
                // is a large job's rows, and doubling would copy and waste more.
                let mut c = if self.chunks.is_empty() {
                    Vec::new()
                } else {
                    Vec::with_capacity(CHUNK)
                };
                c.push(value);
                self.chunks.push(Arc::new(c));
            }
        }
        self.len += 1;
    }

    /// Every element, each chunk unshared first.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.chunks
            .iter_mut()
            .flat_map(|c| Arc::make_mut(c).iter_mut())
    }

    /// The elements by value (moved out of chunks no clone shares).
    pub fn into_vec(self) -> Vec<T> {
        let mut out = Vec::with_capacity(self.len);
        for c in self.chunks {
            out.extend(Arc::unwrap_or_clone(c));
        }
        out
    }
}

impl<T> Index<usize> for CowVec<T> {
    type Output = T;

    /// Panics out of bounds, as a slice does.
    fn index(&self, i: usize) -> &T {
        &self.chunks[i / CHUNK][i % CHUNK]
    }
}

impl<T: Clone> IndexMut<usize> for CowVec<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        &mut Arc::make_mut(&mut self.chunks[i / CHUNK])[i % CHUNK]
    }
}

impl<'a, T> IntoIterator for &'a CowVec<T> {
    type Item = &'a T;
    type IntoIter = std::iter::FlatMap<
        std::slice::Iter<'a, Arc<Vec<T>>>,
        std::slice::Iter<'a, T>,
        fn(&'a Arc<Vec<T>>) -> std::slice::Iter<'a, T>,
    >;

    fn into_iter(self) -> Self::IntoIter {
        fn chunk<T>(c: &Arc<Vec<T>>) -> std::slice::Iter<'_, T> {
            c.iter()
        }
        self.chunks
            .iter()
            .flat_map(chunk as fn(&'a Arc<Vec<T>>) -> _)
    }
}

impl<'a, T: Clone> IntoIterator for &'a mut CowVec<T> {
    type Item = &'a mut T;
    type IntoIter = std::iter::FlatMap<
        std::slice::IterMut<'a, Arc<Vec<T>>>,
        std::slice::IterMut<'a, T>,
        fn(&'a mut Arc<Vec<T>>) -> std::slice::IterMut<'a, T>,
    >;

    /// Every element, each chunk unshared first.
    fn into_iter(self) -> Self::IntoIter {
        fn chunk<T: Clone>(c: &mut Arc<Vec<T>>) -> std::slice::IterMut<'_, T> {
            Arc::make_mut(c).iter_mut()
        }
        self.chunks
            .iter_mut()
            .flat_map(chunk as fn(&'a mut Arc<Vec<T>>) -> _)
    }
}

impl<T: Clone> FromIterator<T> for CowVec<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut v = CowVec::new();
        v.extend(iter);
        v
    }
}

impl<T: Clone> Extend<T> for CowVec<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, iter: I) {
        for x in iter {
            self.push(x);
        }
    }
}

impl<T: Clone> From<Vec<T>> for CowVec<T> {
    fn from(v: Vec<T>) -> Self {
        v.into_iter().collect()
    }
}

impl<T: Serialize> Serialize for CowVec<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_seq(s, self.len, self.iter())
    }
}

impl<'de, T: Clone + Deserialize<'de>> Deserialize<'de> for CowVec<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(SeqVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vec_clone_shares_chunks_until_a_write() {
        let mut a: CowVec<u32> = (0..(CHUNK as u32 * 3 + 7)).collect();
        assert_eq!(a.len(), CHUNK * 3 + 7);
        assert_eq!(a[CHUNK + 1], CHUNK as u32 + 1);
        let b = a.clone();
        a[5] = 99;
        *a.get_mut(CHUNK * 3).unwrap() = 100;
        assert_eq!(b[5], 5);
        assert_eq!(a[5], 99);
        assert!(Arc::ptr_eq(&a.chunks[1], &b.chunks[1]));
        assert!(!Arc::ptr_eq(&a.chunks[0], &b.chunks[0]));
        assert_eq!(
            a.iter_from(CHUNK * 3).copied().collect::<Vec<_>>()[..2],
            [100, CHUNK as u32 * 3 + 1]
        );
        assert_eq!(a.iter_from(a.len()).count(), 0);
        assert_eq!(
            b.clone().into_vec(),
            (0..b.len() as u32).collect::<Vec<_>>()
        );
        assert_eq!(a.get(a.len()), None);
    }

    #[test]
    fn containers_serialize_as_the_std_ones() {
        let map: CowMap<String, u32> = [("b".to_string(), 2), ("a".to_string(), 1)]
            .into_iter()
            .collect();
        let std: std::collections::BTreeMap<String, u32> =
            map.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let json = serde_json::to_string(&map).unwrap();
        assert_eq!(json, serde_json::to_string(&std).unwrap());
        assert_eq!(
            serde_json::from_str::<CowMap<String, u32>>(&json).unwrap(),
            map
        );

        let set: CowSet<(u64, u32)> = [(3, 1), (1, 2)].into_iter().collect();
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(json, "[[1,2],[3,1]]");
        assert_eq!(
            serde_json::from_str::<CowSet<(u64, u32)>>(&json).unwrap(),
            set
        );

        let v: CowVec<u8> = vec![1, 2, 3].into();
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(json, "[1,2,3]");
        assert_eq!(serde_json::from_str::<CowVec<u8>>(&json).unwrap(), v);
    }

    #[test]
    fn a_map_write_after_a_clone_leaves_the_clone_alone() {
        let mut a: CowMap<u32, String> = (0..1000).map(|i| (i, i.to_string())).collect();
        let b = a.clone();
        a.get_mut(&7).unwrap().push('!');
        a.remove(&8);
        a.insert(2000, "new".into());
        assert_eq!(b[&7], "7");
        assert_eq!(a[&7], "7!");
        assert!(b.contains_key(&8) && !a.contains_key(&8));
        assert_eq!(a.range(998..).count(), 3);
        a.retain(|k, _| k % 2 == 0);
        assert_eq!(a.len(), 500);
        assert_eq!(b.len(), 1000);
    }
}
