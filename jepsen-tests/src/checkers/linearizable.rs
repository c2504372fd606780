//! Linearizability of a compare-and-set register, per key (Knossos-style).
//!
//! The search is Wing & Gong's, with Lowe's memoization (as in Knossos' `wgl` and
//! Porcupine): walk the history's call/return entries in time order; at a call,
//! try to linearize that operation now (if the model allows it and the pair
//! (set of linearized operations, model state) was not explored before), otherwise
//! look further; reaching a return whose operation is not yet linearized means
//! backtracking. The history is linearizable iff every *completed* operation can be
//! linearized.
//!
//! - `ok` operations must take effect between their invocation and completion.
//! - `info` operations (outcome unknown) have no return entry: they may take
//!   effect at any time after their invocation, or never.
//! - `fail` operations did not happen and are dropped; so are reads that did not
//!   return a value (they have no effect).
//!
//! The search is bounded: at most `max_ops` operations per key and `max_steps`
//! search steps. Past a bound the key's verdict is [`Verdict::Unknown`] — neither a
//! proof nor a violation (the run's verdict reports it; see docs/JEPSEN.md).
//!
//! The register model: state `Option<u64>` (absent = `None`); `read(v)` requires
//! state = v; `write(v)` sets v; `cas(from, to)` requires state = from and sets to.
//! Values written by the workload are unique, so a trigger's revision identifies
//! its value and the workload's revision-based `If-Match` CAS is a value CAS.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;
use serde_json::Value;

use crate::history::{pairs, Kind, Op};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum RegOp {
    Read(Option<u64>),
    Write(u64),
    Cas { from: Option<u64>, to: u64 },
}

impl RegOp {
    /// The model's transition, or `None` if the operation is not allowed in `s`.
    pub fn step(&self, s: Option<u64>) -> Option<Option<u64>> {
        match *self {
            RegOp::Read(v) => (v == s).then_some(s),
            RegOp::Write(v) => Some(Some(v)),
            RegOp::Cas { from, to } => (from == s).then_some(Some(to)),
        }
    }
}

/// One operation of one key's history.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Entry {
    pub process: u64,
    pub call: u64,
    /// `None`: info (may take effect at any time after `call`, or never).
    pub ret: Option<u64>,
    pub op: RegOp,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    Linearizable,
    NotLinearizable {
        /// Human-readable explanation: the operation that could not be linearized,
        /// the model states it could have seen, and the operations around it.
        explanation: Vec<String>,
    },
    Unknown {
        reason: String,
    },
}

/// Bounds of the search.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_ops: usize,
    pub max_steps: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_ops: 400,
            max_steps: 5_000_000,
        }
    }
}

#[derive(Clone, Copy)]
struct Node {
    /// Operation index.
    op: usize,
    is_call: bool,
    /// The matching return entry's node (for calls of completed ops).
    ret: Option<usize>,
    prev: Option<usize>,
    next: Option<usize>,
}

fn describe(e: &Entry) -> String {
    let what = match e.op {
        RegOp::Read(v) => format!("read -> {}", show(v)),
        RegOp::Write(v) => format!("write {v}"),
        RegOp::Cas { from, to } => format!("cas {} -> {to}", show(from)),
    };
    let when = match e.ret {
        Some(r) => format!("[{:.3}s, {:.3}s]", e.call as f64 / 1e9, r as f64 / 1e9),
        None => format!("[{:.3}s, info]", e.call as f64 / 1e9),
    };
    format!("process {} {what} {when}", e.process)
}

fn show(v: Option<u64>) -> String {
    v.map_or_else(|| "nil".to_string(), |v| v.to_string())
}

/// Drop `info` writes / CAS whose value nobody ever observed (no read returned
/// it, no CAS expected it). Such an operation never needs to be linearized: in any
/// linearization that contains it, only writes can follow it before the next
/// write (nothing accepts its value), so removing it leaves a linearization. This
/// keeps histories with many indeterminate writes (a leader killed under load)
/// tractable.
pub fn prune_unobserved_info(entries: &[Entry]) -> Vec<Entry> {
    let observed: HashSet<u64> = entries
        .iter()
        .filter_map(|e| match e.op {
            RegOp::Read(v) => v,
            RegOp::Cas { from, .. } => from,
            RegOp::Write(_) => None,
        })
        .collect();
    entries
        .iter()
        .filter(|e| match (e.ret, e.op) {
            (None, RegOp::Write(v)) | (None, RegOp::Cas { to: v, .. }) => observed.contains(&v),
            _ => true,
        })
        .cloned()
        .collect()
}

/// Check one key's history, starting from `initial`.
pub fn check_entries(entries: &[Entry], initial: Option<u64>, limits: Limits) -> Verdict {
    let pruned = prune_unobserved_info(entries);
    let entries = &pruned[..];
    let n = entries.len();
    if n > limits.max_ops {
        return Verdict::Unknown {
            reason: format!(
                "{n} operations exceed the bound of {} per key",
                limits.max_ops
            ),
        };
    }
    // Quick necessary condition: every value read was written by some operation
    // (or is the initial state).
    let written: HashSet<Option<u64>> = entries
        .iter()
        .filter_map(|e| match e.op {
            RegOp::Write(v) | RegOp::Cas { to: v, .. } => Some(Some(v)),
            RegOp::Read(_) => None,
        })
        .chain(std::iter::once(initial))
        .collect();
    for e in entries {
        if let RegOp::Read(v) = e.op {
            if !written.contains(&v) {
                return Verdict::NotLinearizable {
                    explanation: vec![format!("{} read a value no operation wrote", describe(e))],
                };
            }
        }
    }

    // Entries in time order; at equal times calls come first (treated as concurrent).
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, e) in entries.iter().enumerate() {
        events.push((e.call, 0, i));
        if let Some(r) = e.ret {
            events.push((r.max(e.call), 1, i));
        }
    }
    events.sort();
    let mut nodes: Vec<Node> = Vec::with_capacity(events.len());
    let mut call_node = vec![usize::MAX; n];
    for (k, &(_, kind, i)) in events.iter().enumerate() {
        nodes.push(Node {
            op: i,
            is_call: kind == 0,
            ret: None,
            prev: k.checked_sub(1),
            next: None,
        });
        if k > 0 {
            nodes[k - 1].next = Some(k);
        }
        if kind == 0 {
            call_node[i] = k;
        } else {
            let c = call_node[i];
            nodes[c].ret = Some(k);
        }
    }
    let mut head: Option<usize> = if nodes.is_empty() { None } else { Some(0) };
    let mut returns_left = entries.iter().filter(|e| e.ret.is_some()).count();

    let words = n.div_ceil(64).max(1);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<u64>)> = Vec::new();
    let mut state = initial;
    let mut entry = head;
    let mut steps: u64 = 0;
    // Diagnostics: the deepest point reached.
    let mut best: (usize, Option<usize>, Option<u64>) = (0, None, initial);

    // Unlink / relink a call node and its return node.
    fn lift(nodes: &mut [Node], head: &mut Option<usize>, k: usize) {
        let remove = |nodes: &mut [Node], head: &mut Option<usize>, x: usize| {
            let (p, nx) = (nodes[x].prev, nodes[x].next);
            match p {
                Some(p) => nodes[p].next = nx,
                None => *head = nx,
            }
            if let Some(nx) = nx {
                nodes[nx].prev = p;
            }
        };
        remove(nodes, head, k);
        if let Some(r) = nodes[k].ret {
            remove(nodes, head, r);
        }
    }
    fn unlift(nodes: &mut [Node], head: &mut Option<usize>, k: usize) {
        let insert = |nodes: &mut [Node], head: &mut Option<usize>, x: usize| {
            let (p, nx) = (nodes[x].prev, nodes[x].next);
            match p {
                Some(p) => nodes[p].next = Some(x),
                None => *head = Some(x),
            }
            if let Some(nx) = nx {
                nodes[nx].prev = Some(x);
            }
        };
        // Reverse order of removal.
        if let Some(r) = nodes[k].ret {
            insert(nodes, head, r);
        }
        insert(nodes, head, k);
    }

    loop {
        if returns_left == 0 {
            return Verdict::Linearizable;
        }
        steps += 1;
        if steps > limits.max_steps {
            return Verdict::Unknown {
                reason: format!(
                    "search exceeded {} steps over {n} operations",
                    limits.max_steps
                ),
            };
        }
        let Some(k) = entry else {
            // Only calls of info operations are left after this point, and no
            // return entry was met: impossible while returns_left > 0, since
            // every return follows its call. Treat as backtrack for safety.
            match stack.pop() {
                Some((c, s)) => {
                    let op = nodes[c].op;
                    linearized[op / 64] &= !(1 << (op % 64));
                    if nodes[c].ret.is_some() {
                        returns_left += 1;
                    }
                    unlift(&mut nodes, &mut head, c);
                    state = s;
                    entry = nodes[c].next;
                    continue;
                }
                None => break,
            }
        };
        let node = nodes[k];
        if node.is_call {
            let op = node.op;
            if let Some(next_state) = entries[op].op.step(state) {
                linearized[op / 64] |= 1 << (op % 64);
                if cache.insert((linearized.clone(), next_state)) {
                    stack.push((k, state));
                    state = next_state;
                    if node.ret.is_some() {
                        returns_left -= 1;
                    }
                    lift(&mut nodes, &mut head, k);
                    if stack.len() > best.0 {
                        best = (stack.len(), None, state);
                    }
                    entry = head;
                    continue;
                }
                linearized[op / 64] &= !(1 << (op % 64));
            }
            entry = node.next;
        } else {
            // A return whose operation is not linearized: backtrack.
            if stack.len() >= best.0 {
                best = (stack.len(), Some(node.op), state);
            }
            match stack.pop() {
                Some((c, s)) => {
                    let op = nodes[c].op;
                    linearized[op / 64] &= !(1 << (op % 64));
                    if nodes[c].ret.is_some() {
                        returns_left += 1;
                    }
                    unlift(&mut nodes, &mut head, c);
                    state = s;
                    entry = nodes[c].next;
                }
                None => break,
            }
        }
    }

    // Not linearizable: explain around the deepest blocking operation.
    let mut explanation = Vec::new();
    match best.1 {
        Some(op) => {
            let e = &entries[op];
            explanation.push(format!(
                "after linearizing {} operations (register = {}), no order can fit: {}",
                best.0,
                show(best.2),
                describe(e)
            ));
            // The writes known to have completed just before it.
            let mut before: Vec<&Entry> = entries
                .iter()
                .filter(|o| !matches!(o.op, RegOp::Read(_)) && o.ret.is_some_and(|r| r < e.call))
                .collect();
            before.sort_by_key(|o| std::cmp::Reverse(o.ret));
            explanation.extend(
                before
                    .iter()
                    .take(3)
                    .map(|o| format!("  completed before it: {}", describe(o))),
            );
            let ret = e.ret.unwrap_or(u64::MAX);
            let around: Vec<String> = entries
                .iter()
                .filter(|o| o.call <= ret && o.ret.is_none_or(|r| r >= e.call) && *o != e)
                .take(12)
                .map(|o| format!("  concurrent or overlapping: {}", describe(o)))
                .collect();
            explanation.extend(around);
        }
        None => explanation.push("no linearization exists".to_string()),
    }
    Verdict::NotLinearizable { explanation }
}

/// One key's result.
#[derive(Clone, Debug, Serialize)]
pub struct KeyResult {
    pub key: String,
    pub ops: usize,
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// The register checker's result over all keys.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RegisterReport {
    pub keys: usize,
    pub ops: usize,
    pub ok: usize,
    pub info: usize,
    pub fail: usize,
    pub linearizable_keys: usize,
    pub non_linearizable: Vec<KeyResult>,
    pub unknown: Vec<KeyResult>,
    /// One value seen with two different revisions: a write applied twice.
    pub double_applied: Vec<String>,
}

impl RegisterReport {
    /// `Some(true)`: proved linearizable; `Some(false)`: a violation; `None`:
    /// no violation found but some key could not be decided.
    pub fn valid(&self) -> Option<bool> {
        if !self.non_linearizable.is_empty() || !self.double_applied.is_empty() {
            Some(false)
        } else if !self.unknown.is_empty() {
            None
        } else {
            Some(true)
        }
    }
}

fn opt_u64(v: &Value, k: &str) -> Option<Option<u64>> {
    match v.get(k) {
        Some(Value::Null) => Some(None),
        Some(x) => x.as_u64().map(Some),
        None => None,
    }
}

/// Extract the register operations of a history, by key. Values are read from the
/// ops' `value`: `read` ok `{"value": v|null, "rev"}`; `write` `{"value": v}`;
/// `cas` `{"from": v|null, "to": v}`.
pub fn entries_by_key(ops: &[Op]) -> (BTreeMap<String, Vec<Entry>>, RegisterReport) {
    let mut by_key: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    let mut rep = RegisterReport::default();
    let mut revs: BTreeMap<(String, u64), u64> = BTreeMap::new();
    for p in pairs(ops) {
        let f = p.invoke.f.as_str();
        if !matches!(f, "read" | "write" | "cas") {
            continue;
        }
        let Some(key) = p.invoke.key.clone() else {
            continue;
        };
        rep.ops += 1;
        let kind = p.kind();
        match kind {
            Kind::Ok => rep.ok += 1,
            Kind::Fail => rep.fail += 1,
            _ => rep.info += 1,
        }
        // Value ↔ revision must be a function (unique values).
        if kind == Kind::Ok {
            let v = p.value();
            if let (Some(Some(val)), Some(rev)) = (
                opt_u64(v, "value").or_else(|| opt_u64(v, "to")),
                v.get("rev").and_then(Value::as_u64),
            ) {
                if let Some(prev) = revs.insert((key.clone(), val), rev) {
                    if prev != rev {
                        rep.double_applied.push(format!(
                            "key {key}: value {val} seen at revisions {prev} and {rev}"
                        ));
                    }
                }
            }
        }
        let entry = |op: RegOp, ret: Option<u64>| Entry {
            process: p.invoke.process,
            call: p.invoke.time,
            ret,
            op,
        };
        let e = match (f, kind) {
            (_, Kind::Fail) | ("read", Kind::Info) | ("read", Kind::Invoke) => continue,
            ("read", _) => match opt_u64(p.value(), "value") {
                Some(v) => entry(RegOp::Read(v), p.complete_time()),
                None => continue,
            },
            ("write", _) => match opt_u64(&p.invoke.value, "value") {
                Some(Some(v)) => entry(RegOp::Write(v), p.complete_time()),
                _ => continue,
            },
            ("cas", _) => match (
                opt_u64(&p.invoke.value, "from"),
                opt_u64(&p.invoke.value, "to"),
            ) {
                (Some(from), Some(Some(to))) => entry(RegOp::Cas { from, to }, p.complete_time()),
                _ => continue,
            },
            _ => continue,
        };
        by_key.entry(key).or_default().push(e);
    }
    rep.keys = by_key.len();
    rep.double_applied.sort();
    rep.double_applied.dedup();
    (by_key, rep)
}

/// Check every key of a register history (keys start absent).
pub fn check(ops: &[Op], limits: Limits) -> RegisterReport {
    let (by_key, mut rep) = entries_by_key(ops);
    for (key, entries) in by_key {
        let verdict = check_entries(&entries, None, limits);
        let r = KeyResult {
            key,
            ops: entries.len(),
            verdict,
        };
        match r.verdict {
            Verdict::Linearizable => rep.linearizable_keys += 1,
            Verdict::NotLinearizable { .. } => rep.non_linearizable.push(r),
            Verdict::Unknown { .. } => rep.unknown.push(r),
        }
    }
    rep
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::build::H;
    use serde_json::json;

    fn e(process: u64, call: u64, ret: Option<u64>, op: RegOp) -> Entry {
        Entry {
            process,
            call,
            ret,
            op,
        }
    }
    fn lin(es: &[Entry]) -> Verdict {
        check_entries(es, None, Limits::default())
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = [
            e(0, 1, Some(2), RegOp::Read(None)),
            e(0, 3, Some(4), RegOp::Write(1)),
            e(0, 5, Some(6), RegOp::Read(Some(1))),
            e(
                0,
                7,
                Some(8),
                RegOp::Cas {
                    from: Some(1),
                    to: 2,
                },
            ),
            e(0, 9, Some(10), RegOp::Read(Some(2))),
        ];
        assert_eq!(lin(&h), Verdict::Linearizable);
    }

    #[test]
    fn stale_read_after_a_completed_write_is_not_linearizable() {
        let h = [
            e(0, 1, Some(2), RegOp::Write(1)),
            e(0, 3, Some(4), RegOp::Write(2)),
            // Starts after write 2 completed, but sees 1.
            e(1, 5, Some(6), RegOp::Read(Some(1))),
        ];
        match lin(&h) {
            Verdict::NotLinearizable { explanation } => {
                assert!(explanation[0].contains("read -> 1"), "{explanation:?}")
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn concurrent_reads_may_see_either_order() {
        // write 1 concurrent with two reads that see nil then 1: fine.
        let h = [
            e(0, 1, Some(10), RegOp::Write(1)),
            e(1, 2, Some(3), RegOp::Read(None)),
            e(2, 4, Some(5), RegOp::Read(Some(1))),
        ];
        assert_eq!(lin(&h), Verdict::Linearizable);
        // ... but not 1 then nil (a read may not go back in time).
        let h = [
            e(0, 1, Some(10), RegOp::Write(1)),
            e(1, 2, Some(3), RegOp::Read(Some(1))),
            e(2, 4, Some(5), RegOp::Read(None)),
        ];
        assert!(matches!(lin(&h), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn info_writes_may_apply_late_or_never() {
        // The info write of 5 shows up long after it was invoked: allowed.
        let h = [
            e(0, 1, None, RegOp::Write(5)),
            e(1, 2, Some(3), RegOp::Write(1)),
            e(1, 4, Some(5), RegOp::Read(Some(1))),
            e(1, 6, Some(7), RegOp::Read(Some(5))),
        ];
        assert_eq!(lin(&h), Verdict::Linearizable);
        // ... or never.
        let h = [
            e(0, 1, None, RegOp::Write(5)),
            e(1, 2, Some(3), RegOp::Read(None)),
        ];
        assert_eq!(lin(&h), Verdict::Linearizable);
        // but not before it was invoked
        let h = [
            e(1, 1, Some(2), RegOp::Read(Some(5))),
            e(0, 3, None, RegOp::Write(5)),
        ];
        assert!(matches!(lin(&h), Verdict::NotLinearizable { .. }));
        // and not twice (5, then 1, then 5 again needs two applications)
        let h = [
            e(0, 1, None, RegOp::Write(5)),
            e(1, 2, Some(3), RegOp::Read(Some(5))),
            e(1, 4, Some(5), RegOp::Write(1)),
            e(1, 6, Some(7), RegOp::Read(Some(5))),
        ];
        assert!(matches!(lin(&h), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn cas_must_see_its_expected_value() {
        // Two CAS from the same value cannot both succeed.
        let h = [
            e(0, 1, Some(2), RegOp::Write(1)),
            e(
                1,
                3,
                Some(6),
                RegOp::Cas {
                    from: Some(1),
                    to: 2,
                },
            ),
            e(
                2,
                4,
                Some(7),
                RegOp::Cas {
                    from: Some(1),
                    to: 3,
                },
            ),
        ];
        assert!(matches!(lin(&h), Verdict::NotLinearizable { .. }));
        // Chained CAS is fine.
        let h = [
            e(0, 1, Some(2), RegOp::Write(1)),
            e(
                1,
                3,
                Some(6),
                RegOp::Cas {
                    from: Some(1),
                    to: 2,
                },
            ),
            e(
                2,
                4,
                Some(7),
                RegOp::Cas {
                    from: Some(2),
                    to: 3,
                },
            ),
            e(2, 8, Some(9), RegOp::Read(Some(3))),
        ];
        assert_eq!(lin(&h), Verdict::Linearizable);
        // Create-only (from nil) after the key exists fails.
        let h = [
            e(0, 1, Some(2), RegOp::Write(1)),
            e(1, 3, Some(4), RegOp::Cas { from: None, to: 2 }),
        ];
        assert!(matches!(lin(&h), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn read_of_a_never_written_value_is_caught_early() {
        let h = [e(0, 1, Some(2), RegOp::Read(Some(42)))];
        match lin(&h) {
            Verdict::NotLinearizable { explanation } => {
                assert!(explanation[0].contains("no operation wrote"))
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn bounds_give_unknown() {
        let h: Vec<Entry> = (0..10)
            .map(|i| e(i, 1, Some(50), RegOp::Write(i)))
            .collect();
        let v = check_entries(
            &h,
            None,
            Limits {
                max_ops: 5,
                max_steps: 1000,
            },
        );
        assert!(matches!(v, Verdict::Unknown { .. }), "{v:?}");
        let mut h: Vec<Entry> = (0..10)
            .map(|i| e(i, 1, Some(50), RegOp::Write(i)))
            .collect();
        h.push(e(20, 60, Some(61), RegOp::Read(Some(3))));
        let v = check_entries(
            &h,
            None,
            Limits {
                max_ops: 100,
                max_steps: 5,
            },
        );
        assert!(matches!(v, Verdict::Unknown { .. }), "{v:?}");
        // Many concurrent info writes and a final read: within bounds, decided.
        let mut h: Vec<Entry> = (0..12).map(|i| e(i, 1, None, RegOp::Write(i))).collect();
        h.push(e(99, 2, Some(3), RegOp::Read(Some(7))));
        assert_eq!(
            check_entries(&h, None, Limits::default()),
            Verdict::Linearizable
        );
    }

    #[test]
    fn many_unobserved_info_writes_are_pruned() {
        // A leader dies under load: 40 writes and CAS end in info, then one read
        // sees one of them. Without pruning this explodes; with it, it is instant.
        let mut h: Vec<Entry> = vec![e(0, 1, Some(2), RegOp::Write(1))];
        for i in 0..40u64 {
            let op = if i % 2 == 0 {
                RegOp::Write(100 + i)
            } else {
                RegOp::Cas {
                    from: Some(1),
                    to: 100 + i,
                }
            };
            h.push(e(10 + i, 3 + i, None, op));
        }
        h.push(e(99, 100, Some(101), RegOp::Read(Some(117))));
        let v = check_entries(
            &h,
            None,
            Limits {
                max_ops: 400,
                max_steps: 10_000,
            },
        );
        assert_eq!(v, Verdict::Linearizable);
        assert_eq!(prune_unobserved_info(&h).len(), 3);
        // ...and a read of a value only an info CAS from a value never current wrote fails.
        let h = vec![
            e(0, 1, Some(2), RegOp::Write(1)),
            e(
                1,
                3,
                None,
                RegOp::Cas {
                    from: Some(7),
                    to: 8,
                },
            ),
            e(2, 4, Some(5), RegOp::Read(Some(8))),
        ];
        assert!(matches!(
            check_entries(&h, None, Limits::default()),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn larger_concurrent_history_terminates_quickly() {
        // 5 processes, 300 ops, every write later read: linearizable by construction
        // (each op is concurrent only with its neighbours).
        let mut h = Vec::new();
        let mut t = 0;
        let mut cur = None;
        for i in 0..300u64 {
            let p = i % 5;
            let op = match i % 3 {
                0 => {
                    cur = Some(i);
                    RegOp::Write(i)
                }
                1 => RegOp::Read(cur),
                _ => {
                    let from = cur;
                    cur = Some(i);
                    RegOp::Cas { from, to: i }
                }
            };
            h.push(e(p, t, Some(t + 3), op));
            t += 2;
        }
        assert_eq!(
            check_entries(&h, None, Limits::default()),
            Verdict::Linearizable
        );
    }

    #[test]
    fn history_level_check_pairs_ops_and_drops_failures() {
        let ops = H::new()
            .invoke(0, "write", "a", json!({"value": 1}))
            .ok(0, "write", "a", json!({"value": 1, "rev": 10}))
            .invoke(1, "cas", "a", json!({"from": 7, "to": 2}))
            .fail(1, "cas", "a", Value::Null, "revision_mismatch")
            .invoke(1, "read", "a", Value::Null)
            .ok(1, "read", "a", json!({"value": 1, "rev": 10}))
            .invoke(2, "read", "b", Value::Null)
            .ok(2, "read", "b", json!({"value": null}))
            .done();
        let rep = check(&ops, Limits::default());
        assert_eq!((rep.keys, rep.ops, rep.ok, rep.fail), (2, 4, 3, 1));
        assert_eq!(rep.valid(), Some(true), "{rep:?}");

        // A stale read on key a.
        let ops = H::new()
            .invoke(0, "write", "a", json!({"value": 1}))
            .ok(0, "write", "a", json!({"value": 1, "rev": 10}))
            .invoke(0, "write", "a", json!({"value": 2}))
            .ok(0, "write", "a", json!({"value": 2, "rev": 12}))
            .invoke(1, "read", "a", Value::Null)
            .ok(1, "read", "a", json!({"value": 1, "rev": 10}))
            .done();
        let rep = check(&ops, Limits::default());
        assert_eq!(rep.valid(), Some(false));
        assert_eq!(rep.non_linearizable[0].key, "a");
    }

    #[test]
    fn a_value_at_two_revisions_is_a_double_apply() {
        let ops = H::new()
            .invoke(0, "write", "a", json!({"value": 1}))
            .ok(0, "write", "a", json!({"value": 1, "rev": 10}))
            .invoke(1, "read", "a", Value::Null)
            .ok(1, "read", "a", json!({"value": 1, "rev": 14}))
            .done();
        let rep = check(&ops, Limits::default());
        assert_eq!(rep.valid(), Some(false));
        assert_eq!(rep.double_applied.len(), 1);
    }
}
