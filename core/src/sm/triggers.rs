//! The replicated trigger registry: `t/<name>` → [`TriggerRecord`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::kv::{prefix_end, KvRead, Overlay};
use crate::github::trigger::Trigger;
use crate::codec;
use crate::types::{Response, TriggerRecord};

const PREFIX: &[u8] = b"t/";

fn key(name: &str) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

/// Read one trigger.
pub fn get(state: &dyn KvRead, name: &str) -> Option<TriggerRecord> {
    state.get(&key(name)).map(|v| <TriggerRecord as codec::Record>::decode_record(&v).expect("trigger record of a known layout"))
}

/// Compiled triggers, memoized by (name, document): a value its owner holds (the
/// node's state machine store for `apply`, the node for its gateway and executor), not
/// process-global state. Compiling is a pure function of the stored document, so a
/// memo hit changes no outcome; it only saves re-parsing every trigger per event.
/// (Keyed by the document, not the revision: revisions of different clusters or
/// across a data-dir swap may coincide.)
#[derive(Default)]
pub struct TriggerCache {
    memo: Mutex<HashMap<(String, String), Arc<Trigger>>>,
}

impl std::fmt::Debug for TriggerCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = self.memo.lock().map_or(0, |m| m.len());
        f.debug_struct("TriggerCache").field("entries", &len).finish()
    }
}

impl TriggerCache {
    /// Memo entries kept before the memo is cleared.
    pub const CAP: usize = 4096;

    /// The registry's triggers, compiled, in name order (see [`compiled`]).
    pub fn compiled(&self, state: &dyn KvRead) -> Vec<Arc<Trigger>> {
        compile_all(state, Some(self))
    }

    /// Entries held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.memo.lock().map_or(0, |m| m.len())
    }

    /// Whether the memo is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get_or_compile(&self, r: &TriggerRecord) -> Option<Arc<Trigger>> {
        let key = (r.name.clone(), r.doc_json.clone());
        if let Some(t) = self.memo.lock().ok()?.get(&key) {
            return Some(t.clone());
        }
        let t = Arc::new(compile(r)?);
        let mut memo = self.memo.lock().ok()?;
        if memo.len() >= Self::CAP {
            memo.clear();
        }
        memo.insert(key, t.clone());
        Some(t)
    }
}

fn compile(r: &TriggerRecord) -> Option<Trigger> {
    let doc: serde_json::Value = serde_json::from_str(&r.doc_json).ok()?;
    crate::github::trigger::parse_trigger(&r.name, &doc).ok()
}

fn compile_all(state: &dyn KvRead, cache: Option<&TriggerCache>) -> Vec<Arc<Trigger>> {
    list(state)
        .iter()
        .filter_map(|r| match cache {
            Some(c) => c.get_or_compile(r),
            None => compile(r).map(Arc::new),
        })
        .collect()
}

/// The registry's triggers as `apply` sees them, compiled, in name order, through the
/// [`TriggerCache`] the overlay carries (compiled afresh when it carries none). A
/// stored document that no longer compiles (it passed validation when written) is
/// skipped — on every replica alike.
pub fn compiled(state: &Overlay<'_>) -> Vec<Arc<Trigger>> {
    compile_all(state, state.trigger_cache())
}

/// All triggers, in name order (AOF's stable matching order).
pub fn list(state: &dyn KvRead) -> Vec<TriggerRecord> {
    state
        .range(PREFIX, &prefix_end(PREFIX))
        .map(|(_, v)| <TriggerRecord as codec::Record>::decode_record(&v).expect("trigger record of a known layout"))
        .collect()
}

pub(super) fn put(
    state: &mut Overlay<'_>,
    index: u64,
    now: u64,
    name: &str,
    doc_json: &str,
    if_match: Option<u64>,
) -> Response {
    let current = get(state, name);
    let actual = current.as_ref().map_or(0, |r| r.revision);
    if let Some(expected) = if_match {
        if expected != actual {
            return Response::RevisionMismatch { name: name.to_string(), expected, actual };
        }
    }
    if let Some(cur) = &current {
        if cur.doc_json == doc_json {
            return Response::TriggerPut { name: name.to_string(), revision: cur.revision, created: false, unchanged: true };
        }
    }
    let rec = TriggerRecord {
        name: name.to_string(),
        revision: index,
        created_revision: current.as_ref().map_or(index, |r| r.created_revision),
        updated_ms: now,
        doc_json: doc_json.to_string(),
    };
    state.put(key(name), codec::Record::encode_record(&rec));
    Response::TriggerPut { name: name.to_string(), revision: index, created: current.is_none(), unchanged: false }
}

pub(super) fn delete(state: &mut Overlay<'_>, index: u64, name: &str, if_match: Option<u64>) -> Response {
    let Some(current) = get(state, name) else {
        return match if_match {
            Some(expected) if expected != 0 => {
                Response::RevisionMismatch { name: name.to_string(), expected, actual: 0 }
            }
            _ => Response::NotFound { name: name.to_string() },
        };
    };
    if let Some(expected) = if_match {
        if expected != current.revision {
            return Response::RevisionMismatch { name: name.to_string(), expected, actual: current.revision };
        }
    }
    state.delete(key(name));
    Response::TriggerDeleted { name: name.to_string(), revision: index }
}

#[cfg(test)]
mod tests {
    use super::super::{apply, MemKv, Overlay};
    use super::*;
    use crate::types::{Command, Request};

    fn run(base: &mut MemKv, index: u64, cmd: Command) -> Response {
        let mut o = Overlay::new(base);
        let r = apply(&mut o, index, &Request { time_ms: 1000 + index, cmd }, Default::default());
        let w = o.into_writes();
        base.commit(w);
        r
    }
    fn put(name: &str, doc: &str, if_match: Option<u64>) -> Command {
        Command::PutTrigger { name: name.into(), doc_json: doc.into(), if_match }
    }

    #[test]
    fn put_get_cas_delete() {
        let mut s = MemKv::default();
        assert_eq!(
            run(&mut s, 5, put("a", "{}", None)),
            Response::TriggerPut { name: "a".into(), revision: 5, created: true, unchanged: false }
        );
        // same document again: unchanged, revision kept
        assert_eq!(
            run(&mut s, 6, put("a", "{}", None)),
            Response::TriggerPut { name: "a".into(), revision: 5, created: false, unchanged: true }
        );
        // CAS with a stale revision changes nothing
        let before = s.clone();
        assert_eq!(
            run(&mut s, 7, put("a", "{\"x\":1}", Some(4))),
            Response::RevisionMismatch { name: "a".into(), expected: 4, actual: 5 }
        );
        assert_eq!(before.0.len(), s.0.len());
        assert_eq!(get(&s, "a").unwrap().doc_json, "{}");
        // CAS with the current revision succeeds
        assert_eq!(
            run(&mut s, 8, put("a", "{\"x\":1}", Some(5))),
            Response::TriggerPut { name: "a".into(), revision: 8, created: false, unchanged: false }
        );
        let rec = get(&s, "a").unwrap();
        assert_eq!((rec.revision, rec.created_revision, rec.updated_ms), (8, 5, 1008));
        // create-only (If-Match: 0) on an existing trigger fails
        assert!(matches!(run(&mut s, 9, put("a", "{}", Some(0))), Response::RevisionMismatch { .. }));
        run(&mut s, 10, put("b", "{}", Some(0)));
        assert_eq!(list(&s).iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(
            run(&mut s, 11, Command::DeleteTrigger { name: "a".into(), if_match: Some(3) }),
            Response::RevisionMismatch { name: "a".into(), expected: 3, actual: 8 }
        );
        assert_eq!(
            run(&mut s, 12, Command::DeleteTrigger { name: "a".into(), if_match: None }),
            Response::TriggerDeleted { name: "a".into(), revision: 12 }
        );
        assert_eq!(run(&mut s, 13, Command::DeleteTrigger { name: "a".into(), if_match: None }), Response::NotFound { name: "a".into() });
        assert!(get(&s, "a").is_none());
    }

    #[test]
    fn the_cache_is_a_value_its_owner_holds() {
        let mut s = MemKv::default();
        let doc = r#"{"apiVersion":"aof.dev/v1","kind":"Trigger","spec":{"type":"GitHub"}}"#;
        run(&mut s, 1, put("a", doc, None));
        run(&mut s, 2, put("bad", "not json", None));
        let cache = TriggerCache::default();
        let first = cache.compiled(&s);
        assert_eq!(first.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["a"]);
        assert_eq!(cache.len(), 1);
        // apply's view shares the same compiled trigger through the overlay.
        let overlay = Overlay::new(&s).with_triggers(&cache);
        assert!(Arc::ptr_eq(&compiled(&overlay)[0], &first[0]));
        // Without a cache: compiled afresh, same meaning.
        let fresh = compiled(&Overlay::new(&s));
        assert!(!Arc::ptr_eq(&fresh[0], &first[0]));
        assert_eq!(format!("{:?}", fresh[0]), format!("{:?}", first[0]));
        // Another owner's cache starts empty: nothing is shared through the process.
        assert!(TriggerCache::default().is_empty());
        // A changed document is compiled again.
        run(&mut s, 3, put("a", &doc.replace("GitHub", "Slack"), None));
        assert!(!cache.compiled(&s)[0].is_github());
    }
}
