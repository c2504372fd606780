//! The key-value view the pure state-machine core reads and writes.
//!
//! The core never touches sled: it reads through [`KvRead`] and records its writes in
//! an [`Overlay`]. The storage layer (`store::state_machine`) then commits the
//! overlay's writes together with `last_applied` as one atomic sled batch. Tests use
//! [`MemKv`].

use std::collections::BTreeMap;
use std::ops::Bound;

pub type Key = Vec<u8>;
pub type Value = Vec<u8>;

/// Read access to the state machine's key space (ordered by key bytes).
pub trait KvRead {
    fn get(&self, key: &[u8]) -> Option<Value>;
    /// All pairs with `start <= key < end`, in key order.
    fn range<'a>(&'a self, start: &[u8], end: &[u8]) -> Box<dyn Iterator<Item = (Key, Value)> + 'a>;
}

/// End bound for a prefix scan: the smallest key greater than every key with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

/// An in-memory key space (tests and pure-core users).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemKv(pub BTreeMap<Key, Value>);

impl MemKv {
    pub fn commit(&mut self, writes: impl IntoIterator<Item = (Key, Option<Value>)>) {
        for (k, v) in writes {
            match v {
                Some(v) => self.0.insert(k, v),
                None => self.0.remove(&k),
            };
        }
    }
}

impl KvRead for MemKv {
    fn get(&self, key: &[u8]) -> Option<Value> {
        self.0.get(key).cloned()
    }
    fn range<'a>(&'a self, start: &[u8], end: &[u8]) -> Box<dyn Iterator<Item = (Key, Value)> + 'a> {
        Box::new(
            self.0
                .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
                .map(|(k, v)| (k.clone(), v.clone())),
        )
    }
}

/// Pending writes over a base view; reads see the pending writes first.
pub struct Overlay<'b> {
    base: &'b dyn KvRead,
    writes: BTreeMap<Key, Option<Value>>,
    /// Compiled triggers kept by the caller between applies (see `super::triggers`).
    triggers: Option<&'b super::triggers::TriggerCache>,
}

impl<'b> Overlay<'b> {
    pub fn new(base: &'b dyn KvRead) -> Self {
        Overlay { base, writes: BTreeMap::new(), triggers: None }
    }
    /// Let `apply` reuse the caller's compiled triggers.
    pub fn with_triggers(mut self, cache: &'b super::triggers::TriggerCache) -> Self {
        self.triggers = Some(cache);
        self
    }
    /// The compiled-trigger cache this overlay carries, if any.
    pub fn trigger_cache(&self) -> Option<&'b super::triggers::TriggerCache> {
        self.triggers
    }
    pub fn put(&mut self, key: Key, value: Value) {
        self.writes.insert(key, Some(value));
    }
    pub fn delete(&mut self, key: Key) {
        self.writes.insert(key, None);
    }
    /// The writes, in key order (`None` = delete).
    pub fn into_writes(self) -> BTreeMap<Key, Option<Value>> {
        self.writes
    }
}

impl KvRead for Overlay<'_> {
    fn get(&self, key: &[u8]) -> Option<Value> {
        match self.writes.get(key) {
            Some(v) => v.clone(),
            None => self.base.get(key),
        }
    }
    fn range<'a>(&'a self, start: &[u8], end: &[u8]) -> Box<dyn Iterator<Item = (Key, Value)> + 'a> {
        let mut base = self.base.range(start, end).peekable();
        let mut over = self
            .writes
            .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
            .peekable();
        Box::new(std::iter::from_fn(move || loop {
            let take_over = match (base.peek(), over.peek()) {
                (None, None) => return None,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((bk, _)), Some((ok, _))) => {
                    if bk.as_slice() == ok.as_slice() {
                        base.next(); // shadowed by the overlay
                        true
                    } else {
                        ok.as_slice() < bk.as_slice()
                    }
                }
            };
            if take_over {
                let (k, v) = over.next().expect("peeked");
                if let Some(v) = v {
                    return Some((k.clone(), v.clone()));
                }
            } else {
                return base.next();
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_merges_and_shadows() {
        let mut base = MemKv::default();
        base.commit([(b"a".to_vec(), Some(b"1".to_vec())), (b"c".to_vec(), Some(b"3".to_vec())), (b"d".to_vec(), Some(b"4".to_vec()))]);
        let mut o = Overlay::new(&base);
        o.put(b"b".to_vec(), b"2".to_vec());
        o.put(b"c".to_vec(), b"33".to_vec());
        o.delete(b"d".to_vec());
        let all: Vec<_> = o.range(b"a", b"z").collect();
        assert_eq!(
            all,
            vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), b"2".to_vec()), (b"c".to_vec(), b"33".to_vec())]
        );
        assert_eq!(o.get(b"d"), None);
        assert_eq!(o.get(b"a"), Some(b"1".to_vec()));
    }

    #[test]
    fn prefix_end_bounds() {
        assert_eq!(prefix_end(b"t/"), b"t0".to_vec());
        assert_eq!(prefix_end(&[1, 0xff]), vec![2]);
    }
}
