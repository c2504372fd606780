//! The history: every client operation as an `invoke` followed by exactly one
//! completion — `ok` (it happened), `fail` (it certainly did not happen) or `info`
//! (unknown: it may have happened, at any time after its invocation) — with the
//! process that ran it and monotonic times (nanoseconds since the start of the run).
//! Nemesis actions are recorded too (process [`NEMESIS`]), as in Jepsen.
//!
//! Written as JSON lines (`history.jsonl`), one [`Op`] per line.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The process id of the nemesis.
pub const NEMESIS: u64 = u64::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// One history event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history.
    pub index: u64,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub process: u64,
    /// The operation: `read`, `write`, `cas` (register); `post`, `status-read`,
    /// `lease`, `extend`, `complete`, `fail-job` (queue); `start`/`stop` + nemesis name.
    pub f: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default)]
    pub value: Value,
    /// Nanoseconds since the start of the run (monotonic clock).
    pub time: u64,
    /// Node the client talked to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Op {
    pub fn is_invoke(&self) -> bool {
        self.kind == Kind::Invoke
    }
}

/// A completed operation: its invocation paired with its completion.
#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    pub invoke: Op,
    /// `None` when the history ends with the operation still open (treated as info).
    pub complete: Option<Op>,
}

impl Pair {
    pub fn kind(&self) -> Kind {
        self.complete.as_ref().map_or(Kind::Info, |c| c.kind)
    }
    pub fn invoke_time(&self) -> u64 {
        self.invoke.time
    }
    /// Completion time, `None` for info (never known to have finished).
    pub fn complete_time(&self) -> Option<u64> {
        match &self.complete {
            Some(c) if c.kind != Kind::Info => Some(c.time),
            _ => None,
        }
    }
    /// The completion's value if any, else the invocation's.
    pub fn value(&self) -> &Value {
        match &self.complete {
            Some(c) if !c.value.is_null() => &c.value,
            _ => &self.invoke.value,
        }
    }
}

/// Pair every invocation with the next completion of the same process (and the
/// same `f`, which a completion always repeats). Operations of the nemesis are
/// skipped. Completions without an invocation are ignored.
pub fn pairs(ops: &[Op]) -> Vec<Pair> {
    let mut open: std::collections::HashMap<(u64, &str), usize> = std::collections::HashMap::new();
    let mut out: Vec<Pair> = Vec::new();
    for op in ops {
        if op.process == NEMESIS {
            continue;
        }
        if op.kind == Kind::Invoke {
            open.insert((op.process, op.f.as_str()), out.len());
            out.push(Pair {
                invoke: op.clone(),
                complete: None,
            });
        } else if let Some(i) = open.remove(&(op.process, op.f.as_str())) {
            out[i].complete = Some(op.clone());
        }
    }
    out
}

struct Inner {
    ops: Vec<Op>,
    file: Option<std::io::BufWriter<std::fs::File>>,
}

/// Thread-safe recorder of a history; streams it to a JSONL file as it goes.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    inner: Arc<Mutex<Inner>>,
}

impl Recorder {
    pub fn new(path: Option<&std::path::Path>) -> std::io::Result<Self> {
        let file = match path {
            Some(p) => Some(std::io::BufWriter::new(std::fs::File::create(p)?)),
            None => None,
        };
        Ok(Recorder {
            start: Instant::now(),
            inner: Arc::new(Mutex::new(Inner {
                ops: Vec::new(),
                file,
            })),
        })
    }

    /// Nanoseconds since the recorder was created.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    fn push(&self, mut op: Op) -> Op {
        let mut g = self.inner.lock().unwrap();
        // Time is taken under the lock, so history order and time order agree.
        op.time = self.now();
        op.index = g.ops.len() as u64;
        if let Some(f) = g.file.as_mut() {
            let _ = serde_json::to_writer(&mut *f, &op);
            let _ = f.write_all(b"\n");
        }
        g.ops.push(op.clone());
        op
    }

    /// Record an invocation.
    pub fn invoke(
        &self,
        process: u64,
        f: &str,
        key: Option<&str>,
        value: Value,
        node: Option<&str>,
    ) -> Op {
        self.push(Op {
            index: 0,
            kind: Kind::Invoke,
            process,
            f: f.to_string(),
            key: key.map(str::to_string),
            value,
            time: 0,
            node: node.map(str::to_string),
            error: None,
        })
    }

    /// Record the completion of `inv`.
    pub fn complete(&self, inv: &Op, kind: Kind, value: Value, error: Option<String>) -> Op {
        self.push(Op {
            index: 0,
            kind,
            process: inv.process,
            f: inv.f.clone(),
            key: inv.key.clone(),
            value,
            time: 0,
            node: inv.node.clone(),
            error,
        })
    }

    /// Record a nemesis action (an `info` event of process [`NEMESIS`]).
    pub fn nemesis(&self, f: &str, value: Value) -> Op {
        self.push(Op {
            index: 0,
            kind: Kind::Info,
            process: NEMESIS,
            f: f.to_string(),
            key: None,
            value,
            time: 0,
            node: None,
            error: None,
        })
    }

    pub fn ops(&self) -> Vec<Op> {
        self.inner.lock().unwrap().ops.clone()
    }

    pub fn flush(&self) {
        if let Some(f) = self.inner.lock().unwrap().file.as_mut() {
            let _ = f.flush();
        }
    }
}

/// Read a `history.jsonl` file.
pub fn read_jsonl(path: &std::path::Path) -> anyhow::Result<Vec<Op>> {
    let text = std::fs::read_to_string(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(line)
                .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), i + 1))?,
        );
    }
    Ok(out)
}

/// Helpers to write small histories by hand (checker unit tests).
pub mod build {
    use super::*;

    /// A history under construction; `t` advances by one on every event.
    #[derive(Default)]
    pub struct H {
        pub ops: Vec<Op>,
        t: u64,
    }

    impl H {
        pub fn new() -> Self {
            H::default()
        }
        fn push(
            &mut self,
            kind: Kind,
            p: u64,
            f: &str,
            key: Option<&str>,
            value: Value,
            error: Option<&str>,
        ) -> &mut Self {
            self.t += 1;
            self.ops.push(Op {
                index: self.ops.len() as u64,
                kind,
                process: p,
                f: f.into(),
                key: key.map(Into::into),
                value,
                time: self.t,
                node: None,
                error: error.map(Into::into),
            });
            self
        }
        pub fn invoke(&mut self, p: u64, f: &str, key: &str, value: Value) -> &mut Self {
            self.push(Kind::Invoke, p, f, Some(key), value, None)
        }
        pub fn ok(&mut self, p: u64, f: &str, key: &str, value: Value) -> &mut Self {
            self.push(Kind::Ok, p, f, Some(key), value, None)
        }
        pub fn fail(&mut self, p: u64, f: &str, key: &str, value: Value, error: &str) -> &mut Self {
            self.push(Kind::Fail, p, f, Some(key), value, Some(error))
        }
        pub fn info(&mut self, p: u64, f: &str, key: &str, value: Value) -> &mut Self {
            self.push(Kind::Info, p, f, Some(key), value, Some("timeout"))
        }
        pub fn done(&mut self) -> Vec<Op> {
            std::mem::take(&mut self.ops)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pairs_match_invocations_with_completions_per_process() {
        let ops = build::H::new()
            .invoke(1, "write", "k", json!({"value": 1}))
            .invoke(2, "read", "k", Value::Null)
            .ok(2, "read", "k", json!({"value": null}))
            .info(1, "write", "k", Value::Null)
            .invoke(3, "read", "k", Value::Null)
            .done();
        let p = pairs(&ops);
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].kind(), Kind::Info);
        assert_eq!(p[0].value(), &json!({"value": 1}));
        assert_eq!(p[1].kind(), Kind::Ok);
        assert_eq!(p[1].complete_time(), Some(3));
        assert_eq!(p[2].complete, None);
        assert_eq!(p[2].kind(), Kind::Info);
    }

    #[test]
    fn recorder_streams_jsonl_that_reads_back() {
        let dir = std::env::temp_dir().join(format!("jt-hist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("h.jsonl");
        let r = Recorder::new(Some(&path)).unwrap();
        let i = r.invoke(0, "write", Some("k"), json!({"value": 3}), Some("n1"));
        r.complete(&i, Kind::Ok, json!({"value": 3, "rev": 7}), None);
        r.nemesis("start-kill", json!({"nodes": ["n2"]}));
        r.flush();
        let back = read_jsonl(&path).unwrap();
        assert_eq!(back, r.ops());
        assert!(back[0].time <= back[1].time && back[1].time <= back[2].time);
        assert_eq!(back[2].process, NEMESIS);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
