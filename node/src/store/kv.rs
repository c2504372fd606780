//! [`KvRead`] over the sled `sm` tree, the base view the pure state-machine core
//! reads through.
//!
//! [`KvRead`] is infallible (the core does no IO and handles no IO errors), while sled
//! reads can fail. [`SledKv`] therefore remembers the first sled error and answers
//! "absent" from then on; the caller must check [`SledKv::take_error`] before trusting
//! (or committing) anything computed from the view.

use std::cell::RefCell;
use std::ops::Bound;

use crate::sm::kv::{Key, KvRead, Value};

/// A read view of a sled tree for the state-machine core.
pub struct SledKv<'t> {
    tree: &'t sled::Tree,
    error: RefCell<Option<sled::Error>>,
}

impl<'t> SledKv<'t> {
    pub fn new(tree: &'t sled::Tree) -> Self {
        SledKv { tree, error: RefCell::new(None) }
    }

    /// The first sled error met by a read through this view, if any.
    pub fn take_error(&self) -> Option<sled::Error> {
        self.error.borrow_mut().take()
    }

    fn record(&self, e: sled::Error) {
        let mut slot = self.error.borrow_mut();
        if slot.is_none() {
            *slot = Some(e);
        }
    }
}

impl KvRead for SledKv<'_> {
    fn get(&self, key: &[u8]) -> Option<Value> {
        match self.tree.get(key) {
            Ok(v) => v.map(|v| v.to_vec()),
            Err(e) => {
                self.record(e);
                None
            }
        }
    }

    fn range<'a>(&'a self, start: &[u8], end: &[u8]) -> Box<dyn Iterator<Item = (Key, Value)> + 'a> {
        if start >= end {
            return Box::new(std::iter::empty());
        }
        let bounds = (Bound::Included(start.to_vec()), Bound::Excluded(end.to_vec()));
        let mut iter = self.tree.range::<Vec<u8>, _>(bounds);
        Box::new(std::iter::from_fn(move || match iter.next()? {
            Ok((k, v)) => Some((k.to_vec(), v.to_vec())),
            Err(e) => {
                self.record(e);
                None
            }
        }))
    }
}
