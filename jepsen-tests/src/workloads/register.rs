//! The register workload: each trigger is a compare-and-set register; its value
//! is encoded in `spec.default_agent` (`v<N>`), and every written value is unique.
//!
//! - `write v`: `PUT /v1/triggers/{key}` → ok `{value, rev}`;
//! - `cas from→to`: the same with `If-Match: <revision the process last saw with
//!   value from>` (`0`, create-only, when it has seen none) — 412 is a `fail`;
//! - `read`: linearizable `GET /v1/triggers/{key}` → ok `{value, rev}` (404: nil).
//!
//! Writes answered 503, timed out or cut off are `info` (may have happened); a
//! refused connection is a `fail` (nothing was sent). Reads that do not return a
//! value are `fail`. After an `info` the process is considered crashed and
//! continues under a new process id, as in Jepsen.
//!
//! Registers are disabled triggers (`enabled: false`), so webhook matching never
//! uses them. Keys are retired after `ops_per_key` operations, which keeps every
//! key's history within the checker's bounds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use super::Ctx;
use crate::history::Kind;

#[derive(Clone, Debug)]
pub struct RegisterOpts {
    /// Client processes.
    pub concurrency: usize,
    /// Operations per second, all processes together.
    pub rate: f64,
    /// Keys in use at once.
    pub active_keys: usize,
    /// Operations on one key before it is retired.
    pub ops_per_key: usize,
}

impl Default for RegisterOpts {
    fn default() -> Self {
        RegisterOpts {
            concurrency: 6,
            rate: 50.0,
            active_keys: 3,
            ops_per_key: 150,
        }
    }
}

struct Keys {
    active: Vec<(String, usize)>,
    next: u64,
    all: Vec<String>,
}

/// The trigger document holding value `v`.
pub fn trigger_doc(v: u64) -> String {
    format!("apiVersion: aof.dev/v1\nkind: Trigger\nspec:\n  type: GitHub\n  enabled: false\n  config: {{}}\n  default_agent: v{v}\n")
}

/// The register value in a `GET /v1/triggers/{name}` answer.
pub fn value_of(body: &Value) -> Option<u64> {
    body.pointer("/trigger/spec/default_agent")?
        .as_str()?
        .strip_prefix('v')?
        .parse()
        .ok()
}

pub struct Register {
    ctx: Ctx,
    opts: RegisterOpts,
    keys: Mutex<Keys>,
    values: AtomicU64,
}

impl Register {
    pub fn new(ctx: Ctx, opts: RegisterOpts) -> Arc<Self> {
        let active = (0..opts.active_keys.max(1))
            .map(|i| (format!("{}-r{i}", ctx.run), 0))
            .collect::<Vec<_>>();
        let all = active.iter().map(|(k, _)| k.clone()).collect();
        let next = active.len() as u64;
        Arc::new(Register {
            ctx,
            opts,
            keys: Mutex::new(Keys { active, next, all }),
            values: AtomicU64::new(1),
        })
    }

    /// Every key used so far.
    pub fn keys(&self) -> Vec<String> {
        self.keys.lock().unwrap().all.clone()
    }

    fn pick_key(&self, rng: &mut ChaCha8Rng) -> String {
        let mut k = self.keys.lock().unwrap();
        let i = rng.random_range(0..k.active.len());
        k.active[i].1 += 1;
        let key = k.active[i].0.clone();
        if k.active[i].1 >= self.opts.ops_per_key {
            let fresh = format!("{}-r{}", self.ctx.run, k.next);
            k.next += 1;
            k.all.push(fresh.clone());
            k.active[i] = (fresh, 0);
        }
        key
    }

    /// Run the client processes until stopped.
    pub async fn run(self: Arc<Self>) {
        let n = self.opts.concurrency.max(1);
        let interval = Duration::from_secs_f64(n as f64 / self.opts.rate.max(0.1));
        let mut tasks = tokio::task::JoinSet::new();
        for p in 0..n {
            let me = self.clone();
            tasks.spawn(async move {
                me.process(super::REGISTER_PROCESSES + p as u64, n as u64, interval)
                    .await
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn process(&self, first: u64, stride: u64, interval: Duration) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.ctx.seed ^ (0x7265_6700 + first));
        let mut process = first;
        // key -> (value, revision) this process saw last
        let mut seen: HashMap<String, (Option<u64>, u64)> = HashMap::new();
        let mut next = Instant::now()
            + Duration::from_millis(rng.random_range(0..=interval.as_millis() as u64));
        while !self.ctx.stopped() {
            self.ctx.pace(&mut next, interval).await;
            if self.ctx.stopped() {
                break;
            }
            let key = self.pick_key(&mut rng);
            let slot = rng.random_range(0..self.ctx.db.len());
            let r: f64 = rng.random();
            let kind = if r < 0.4 {
                self.read(process, &key, slot, &mut seen).await
            } else if r < 0.7 {
                self.write(process, &key, slot, &mut seen).await
            } else {
                self.cas(process, &key, slot, &mut seen).await
            };
            if kind == Kind::Info {
                process += stride;
            }
        }
    }

    /// A linearizable read of `key` on `slot`, recorded.
    pub async fn read(
        &self,
        process: u64,
        key: &str,
        slot: usize,
        seen: &mut HashMap<String, (Option<u64>, u64)>,
    ) -> Kind {
        let db = &self.ctx.db;
        let node = db.name(slot);
        let inv = self
            .ctx
            .rec
            .invoke(process, "read", Some(key), Value::Null, Some(&node));
        let res = db
            .http(
                slot,
                "GET",
                &format!("/v1/triggers/{key}"),
                &[],
                b"",
                self.ctx.timeout,
            )
            .await;
        let (kind, value, err) = match res {
            Ok(r) if r.status == 200 => {
                let b = r.json();
                match (value_of(&b), b["revision"].as_u64()) {
                    (Some(v), Some(rev)) => {
                        seen.insert(key.to_string(), (Some(v), rev));
                        (Kind::Ok, json!({ "value": v, "rev": rev }), None)
                    }
                    _ => (
                        Kind::Fail,
                        Value::Null,
                        Some(format!("unparseable answer: {}", r.text())),
                    ),
                }
            }
            Ok(r) if r.status == 404 => {
                seen.insert(key.to_string(), (None, 0));
                (Kind::Ok, json!({ "value": null }), None)
            }
            Ok(r) => (
                Kind::Fail,
                Value::Null,
                Some(format!("{} {}", r.status, short(&r.text()))),
            ),
            Err(e) => (Kind::Fail, Value::Null, Some(e.to_string())),
        };
        self.ctx.rec.complete(&inv, kind, value, err);
        kind
    }

    async fn put(
        &self,
        process: u64,
        f: &str,
        key: &str,
        slot: usize,
        v: u64,
        if_match: Option<(Option<u64>, u64)>,
    ) -> (Kind, Option<u64>) {
        let db = &self.ctx.db;
        let node = db.name(slot);
        let inv_value = match if_match {
            None => json!({ "value": v }),
            Some((from, rev)) => json!({ "from": from, "to": v, "if_match": rev }),
        };
        let inv = self
            .ctx
            .rec
            .invoke(process, f, Some(key), inv_value, Some(&node));
        let mut headers = vec![("content-type", "application/yaml".to_string())];
        if let Some((_, rev)) = if_match {
            headers.push(("if-match", rev.to_string()));
        }
        let res = db
            .http(
                slot,
                "PUT",
                &format!("/v1/triggers/{key}"),
                &headers,
                trigger_doc(v).as_bytes(),
                self.ctx.timeout,
            )
            .await;
        let (kind, value, err, rev) = match res {
            Ok(r) if r.status == 200 || r.status == 201 => {
                let rev = r.json()["revision"].as_u64();
                (Kind::Ok, json!({ "value": v, "rev": rev }), None, rev)
            }
            Ok(r) if r.status == 412 => (
                Kind::Fail,
                json!({ "current_revision": r.json()["current_revision"] }),
                Some("revision_mismatch".into()),
                None,
            ),
            Ok(r) if r.status == 503 || r.status >= 500 => (
                Kind::Info,
                Value::Null,
                Some(format!("{} {}", r.status, short(&r.text()))),
                None,
            ),
            Ok(r) => (
                Kind::Fail,
                Value::Null,
                Some(format!("{} {}", r.status, short(&r.text()))),
                None,
            ),
            Err(e) if e.is_connect() => (Kind::Fail, Value::Null, Some(e.to_string()), None),
            Err(e) => (Kind::Info, Value::Null, Some(e.to_string()), None),
        };
        self.ctx.rec.complete(&inv, kind, value, err);
        (kind, rev)
    }

    async fn write(
        &self,
        process: u64,
        key: &str,
        slot: usize,
        seen: &mut HashMap<String, (Option<u64>, u64)>,
    ) -> Kind {
        let v = self.values.fetch_add(1, Ordering::SeqCst);
        let (kind, rev) = self.put(process, "write", key, slot, v, None).await;
        if let (Kind::Ok, Some(rev)) = (kind, rev) {
            seen.insert(key.to_string(), (Some(v), rev));
        }
        kind
    }

    async fn cas(
        &self,
        process: u64,
        key: &str,
        slot: usize,
        seen: &mut HashMap<String, (Option<u64>, u64)>,
    ) -> Kind {
        let v = self.values.fetch_add(1, Ordering::SeqCst);
        let expect = seen.get(key).copied().unwrap_or((None, 0));
        let (kind, rev) = self.put(process, "cas", key, slot, v, Some(expect)).await;
        if let (Kind::Ok, Some(rev)) = (kind, rev) {
            seen.insert(key.to_string(), (Some(v), rev));
        }
        kind
    }

    /// After the fault phase: one read of every key, through rotating nodes.
    pub async fn final_reads(&self, process: u64) {
        let mut seen = HashMap::new();
        for (i, key) in self.keys().iter().enumerate() {
            // A failed read is retried (bounded) on the next node.
            for attempt in 0..self.ctx.db.len() * 2 {
                let slot = (i + attempt) % self.ctx.db.len();
                if self.read(process, key, slot, &mut seen).await == Kind::Ok {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

pub fn short(s: &str) -> String {
    let s = s.trim();
    if s.len() > 200 {
        format!(
            "{}…",
            &s[..s
                .char_indices()
                .take_while(|(i, _)| *i < 200)
                .last()
                .map_or(0, |(i, c)| i + c.len_utf8())]
        )
    } else {
        s.to_string()
    }
}
