//! Completion callbacks: the leader sends the notices in the replicated outbox
//! (`sm::outbox`) to the URL their trigger's `spec.callback` names.
//!
//! * **Signed**: `X-AOF-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`, with
//!   the secret read from the variable `spec.callback.secret_env` on this node at send
//!   time (the same signer as GitHub's webhooks, [`aof_contract::signature::sign`]);
//!   `X-AOF-Idempotency-Key` carries the notice's stable key. A missing variable fails
//!   the attempt with a reason that says so.
//! * **Retries**: a non-2xx answer, a transport error or a timeout fails the attempt;
//!   the next one follows after an exponential backoff (`initial_backoff_ms` doubled
//!   per attempt, capped at `max_backoff_ms`, with up to 25 % random jitter), counted
//!   from the replicated time of the last attempt. After `max_attempts` the notice is
//!   dead (kept with the event retention, listed by `GET /v1/callbacks?state=dead`).
//! * **Confirmed through Raft**: every attempt's outcome is proposed as
//!   `CallbackAttempt`; a delivered notice leaves the outbox only once that commits.
//!   A new leader starts from the replicated outbox, so whatever was not confirmed is
//!   sent again (at least once; a receiver dedups by the idempotency key).
//!
//! Only the leader sends; followers only keep `aof_callbacks_pending` current.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::CallbacksConfig;
use crate::node::{leader_clock_ms, Consistency, Node};
use crate::sm::outbox::{self, NoticeRecord};
use crate::types::{CallbackAttempt, Command, Response};

/// The signature header of a notice.
pub const SIGNATURE_HEADER: &str = "X-AOF-Signature-256";
/// The idempotency-key header of a notice.
pub const IDEMPOTENCY_HEADER: &str = "X-AOF-Idempotency-Key";
/// How often the sender looks at the outbox.
const POLL: Duration = Duration::from_millis(200);
/// Pending notices looked at per round.
const SCAN: usize = 1000;
/// Longest part of a receiver's error answer kept in the reason.
const MAX_ANSWER_BYTES: usize = 200;

/// Delay before the attempt after `attempts` failed ones: exponential, capped,
/// `jitter` (0.0–1.0) adds up to 25 %.
pub fn backoff_ms(cfg: &CallbacksConfig, attempts: u32, jitter: f64) -> u64 {
    let base = cfg
        .initial_backoff_ms
        .max(1)
        .saturating_mul(1u64 << attempts.saturating_sub(1).min(40))
        .min(cfg.max_backoff_ms.max(1));
    let extra = (base as f64 * 0.25 * jitter.clamp(0.0, 1.0)) as u64;
    base.saturating_add(extra).min(cfg.max_backoff_ms.max(1))
}

fn random_unit() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(leader_clock_ms());
    (h.finish() % 10_000) as f64 / 10_000.0
}

/// POST one notice; `Err` says why the attempt failed.
async fn send(
    http: &reqwest::Client,
    node_id: u64,
    n: &NoticeRecord,
    timeout: Duration,
) -> Result<(), String> {
    let secret = std::env::var(&n.secret_env).ok().filter(|s| !s.is_empty()).ok_or_else(|| {
        format!(
            "the callback secret variable {} is not set on node {node_id}: set it on every node (the receiver verifies {SIGNATURE_HEADER} with it)",
            n.secret_env
        )
    })?;
    let signature = aof_contract::signature::sign(secret.as_bytes(), n.body.as_bytes());
    let r = http
        .post(&n.url)
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature)
        .header(IDEMPOTENCY_HEADER, &n.idempotency_key)
        .header("X-AOF-Notice-Id", &n.id)
        .header("X-AOF-Attempt", (n.attempts + 1).to_string())
        .body(n.body.clone())
        .send()
        .await;
    match r {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            let mut end = text.len().min(MAX_ANSWER_BYTES);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            Err(format!(
                "{} answered {status}: {}",
                n.url,
                text[..end].trim()
            ))
        }
        Err(e) if e.is_timeout() => Err(format!(
            "{} did not answer within {} ms",
            n.url,
            timeout.as_millis()
        )),
        Err(e) => Err(format!("cannot reach {}: {e}", n.url)),
    }
}

/// Send one notice and propose the outcome of the attempt.
async fn attempt(
    node: Arc<Node>,
    http: reqwest::Client,
    cfg: CallbacksConfig,
    n: NoticeRecord,
) -> String {
    let outcome = send(
        &http,
        node.id(),
        &n,
        Duration::from_millis(cfg.timeout_ms.max(1)),
    )
    .await;
    let report = CallbackAttempt {
        id: n.id.clone(),
        attempt: n.attempts + 1,
        delivered: outcome.is_ok(),
        error: outcome.as_ref().err().cloned().unwrap_or_default(),
        max_attempts: cfg.max_attempts.max(1),
    };
    if let Err(e) = &outcome {
        node.metrics().callbacks_failed.inc();
        tracing::info!(notice = %n.id, attempt = report.attempt, "callback attempt failed: {e}");
    } else {
        node.metrics().callbacks_sent.inc();
    }
    match node.write(Command::CallbackAttempt(report)).await {
        Ok((
            Response::CallbackRecorded {
                state,
                changed: true,
                ..
            },
            _,
        )) if state == "dead" => {
            node.metrics().callbacks_dead.inc();
            tracing::warn!(notice = %n.id, url = %n.url, "callback notice is dead after {} attempts", cfg.max_attempts.max(1));
        }
        Ok(_) => {}
        // Not recorded: the notice stays pending and is sent again (at least once).
        Err(e) => tracing::debug!(notice = %n.id, "callback attempt not recorded: {e}"),
    }
    n.id
}

/// The sender: runs on every node, sends while this node leads.
pub async fn run(node: Arc<Node>, cfg: CallbacksConfig, mut stop: watch::Receiver<bool>) {
    let http = match reqwest::Client::builder()
        .user_agent(concat!("aof-cluster/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_millis(cfg.timeout_ms.clamp(1, 10_000)))
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(h) => h,
        Err(e) => {
            tracing::error!("completion callbacks disabled: cannot build an HTTP client: {e}");
            return;
        }
    };
    let mut in_flight: HashSet<String> = HashSet::new();
    let mut tasks: JoinSet<String> = JoinSet::new();
    // Jitter drawn once per (notice, attempts), so a notice's next time is stable.
    let mut jitter: HashMap<String, (u32, f64)> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(id) = done {
                    in_flight.remove(&id);
                }
                continue;
            }
            _ = stop.wait_for(|s| *s) => return,
        }
        let leader = node.current_leader() == Some(node.id());
        let Ok((count, due)) = node
            .read(Consistency::Stale, |kv| {
                (
                    outbox::pending_count(kv),
                    if leader {
                        outbox::pending(kv, SCAN)
                    } else {
                        Vec::new()
                    },
                )
            })
            .await
        else {
            continue;
        };
        node.metrics().callbacks_pending.set(count as i64);
        if !leader || !cfg.enabled {
            jitter.clear();
            continue;
        }
        let now = leader_clock_ms();
        jitter.retain(|id, _| in_flight.contains(id) || due.iter().any(|n| &n.id == id));
        for n in due {
            if in_flight.len() >= cfg.concurrency.max(1) {
                break;
            }
            if in_flight.contains(&n.id) {
                continue;
            }
            if n.attempts > 0 {
                let j = jitter
                    .entry(n.id.clone())
                    .or_insert((n.attempts, random_unit()));
                if j.0 != n.attempts {
                    *j = (n.attempts, random_unit());
                }
                let next = n
                    .last_attempt_ms
                    .unwrap_or(0)
                    .saturating_add(backoff_ms(&cfg, n.attempts, j.1));
                if next > now {
                    continue;
                }
            }
            in_flight.insert(n.id.clone());
            tasks.spawn(attempt(node.clone(), http.clone(), cfg.clone(), n));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let cfg = CallbacksConfig {
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
            ..Default::default()
        };
        let plain: Vec<u64> = (1..=6).map(|a| backoff_ms(&cfg, a, 0.0)).collect();
        assert_eq!(plain, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff_ms(&cfg, 1, 1.0), 125);
        assert_eq!(
            backoff_ms(&cfg, 6, 1.0),
            1000,
            "jitter never passes the cap"
        );
        let u = random_unit();
        assert!((0.0..1.0).contains(&u));
    }
}
