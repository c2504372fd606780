//! Delivery recovery: GitHub does not retry a failed webhook delivery, so the leader
//! periodically reads the configured hooks' delivery logs
//! (`GET /repos/{owner}/{repo}/hooks/{id}/deliveries`, `GET /orgs/{org}/hooks/{id}/deliveries`)
//! and ingests every delivery whose GUID the cluster never accepted.
//!
//! * **Fetch and ingest**, not redeliver: the sweep reads the delivery's recorded
//!   request (`GET …/deliveries/{id}`: headers and payload) and proposes the same
//!   `IngestWebhook` the intake proposes, so it works even while GitHub still cannot
//!   reach the public listener. The HMAC over the original body cannot be recomputed
//!   (GitHub returns the payload parsed); the API token authenticates the source
//!   instead. Dedup by GUID makes every delivery accepted once, whichever path wins.
//! * **Checkpoint**: after a sweep the leader proposes `RecoveryCheckpoint` (the newest
//!   delivery id it covered, replicated); the next sweep — on any leader — pages
//!   newest-first only down to it. Without a checkpoint it looks back `since`.
//! * **Rate limits**: a 403/429 with `X-RateLimit-Remaining: 0` or `Retry-After`
//!   waits for the reset (at most `max_rate_limit_wait`), 5xx and transport errors
//!   back off; all counted in [`crate::metrics::Metrics`].
//!
//! The same event names and payload size bound as the intake apply (`ping` is not
//! stored; `spec.gateway.max_body_bytes`).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use crate::config::{parse_duration, DaemonConfig, RecoveryHook};
use crate::metrics::Metrics;
use crate::node::{Consistency, Node};
use crate::types::{Command, Delivery, RecoveryCheckpoint, SignedBy};

/// Why recovery failed, for logs, API answers and `aof_recovery_errors_total{reason}`.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("no GitHub token for {hook}: set the variable named by token_env (needs admin:repo_hook read, or admin:org_hook for organisation hooks)")]
    NoToken { hook: String },
    #[error("no usable GitHub App private key for {hook}: {why}; set private_key_env or private_key_file to the App's PEM key (GitHub: App settings > Private keys)")]
    NoAppKey { hook: String, why: String },
    #[error("GitHub rate limit: reset in {wait_secs}s, more than max_rate_limit_wait; the next sweep continues")]
    RateLimited { wait_secs: u64 },
    #[error("GitHub answered {status} for {url}: {body}; check the hook id and that the token may read the hook (admin:repo_hook / admin:org_hook)")]
    Http {
        status: u16,
        url: String,
        body: String,
    },
    #[error("cannot reach GitHub at {url}: {message}; check spec.platforms.github.api_url and the network")]
    Transport { url: String, message: String },
    #[error("GitHub's answer for {url} is not what was expected: {message}")]
    Invalid { url: String, message: String },
    #[error("the cluster did not accept delivery {guid}: {message}; the next sweep retries it")]
    Ingest { guid: String, message: String },
}

impl RecoveryError {
    pub fn reason(&self) -> &'static str {
        match self {
            RecoveryError::NoToken { .. } => "no_token",
            RecoveryError::NoAppKey { .. } => "no_app_key",
            RecoveryError::RateLimited { .. } => "rate_limited",
            RecoveryError::Http { .. } => "http",
            RecoveryError::Transport { .. } => "transport",
            RecoveryError::Invalid { .. } => "invalid_answer",
            RecoveryError::Ingest { .. } => "ingest",
        }
    }
}

/// One configured hook with its token (or, for a GitHub App, its private key).
struct Hook {
    hook: RecoveryHook,
    token: Option<String>,
    /// An `app_id` hook's key, or why there is none.
    app_key: Option<Result<octocrab::auth::EncodingKey, String>>,
}

impl Hook {
    /// The bearer credential of a request: the token, or a fresh App JWT (RS256,
    /// `iss` = the App id, issued 60 s in the past, valid 9 minutes).
    fn bearer(&self) -> Result<String, RecoveryError> {
        let hook = self.hook.source();
        match (&self.app_key, self.hook.app_id) {
            (Some(Ok(key)), Some(app)) => octocrab::auth::create_jwt(octocrab::models::AppId(app), key)
                .map_err(|e| RecoveryError::NoAppKey { hook, why: format!("cannot sign a JWT: {e}") }),
            (Some(Err(why)), _) => Err(RecoveryError::NoAppKey { hook, why: why.clone() }),
            _ => self.token.clone().ok_or(RecoveryError::NoToken { hook }),
        }
    }
}

/// Read an `app_id` hook's private key (PEM) from its variable or file.
fn app_key(h: &RecoveryHook) -> Option<Result<octocrab::auth::EncodingKey, String>> {
    h.app_id?;
    let pem = match (&h.private_key_env, &h.private_key_file) {
        (Some(var), _) => std::env::var(var).ok().filter(|v| !v.trim().is_empty()).ok_or_else(|| format!("the variable {var} is not set")),
        (None, Some(file)) => std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display())),
        (None, None) => Err("neither private_key_env nor private_key_file is set".into()),
    };
    Some(pem.and_then(|p| {
        octocrab::auth::EncodingKey::from_rsa_pem(p.as_bytes()).map_err(|e| format!("not an RSA private key in PEM: {e}"))
    }))
}

/// The recovery settings and client of one node.
pub struct Recovery {
    http: reqwest::Client,
    api_url: String,
    hooks: Vec<Hook>,
    pub enabled: bool,
    pub interval: Duration,
    pub since: Duration,
    per_page: u32,
    max_pages: u32,
    max_wait: Duration,
    max_body_bytes: usize,
    retention_ms: u64,
    metrics: Arc<Metrics>,
    /// One sweep at a time on this node (periodic and manual).
    lock: tokio::sync::Mutex<()>,
}

/// What one sweep did, per hook.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SweepReport {
    pub dry_run: bool,
    pub sources: Vec<SourceReport>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SourceReport {
    pub source: String,
    /// Deliveries listed newer than the checkpoint / lookback.
    pub listed: u64,
    /// Deliveries the cluster had not accepted (in a dry run: would be recovered).
    pub missing: Vec<MissingDelivery>,
    pub recovered: u64,
    /// Deliveries skipped (ping, too large, not a valid delivery), with why.
    pub skipped: Vec<String>,
    /// The checkpoint the sweep started from (GitHub delivery id).
    pub from_checkpoint: Option<u64>,
    /// The checkpoint proposed at the end.
    pub checkpoint: Option<u64>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MissingDelivery {
    pub id: u64,
    pub guid: String,
    pub event: String,
    pub action: Option<String>,
    pub delivered_at: String,
    pub status_code: i64,
}

/// One entry of GitHub's delivery list.
#[derive(Clone, Debug)]
struct Listed {
    id: u64,
    guid: String,
    event: String,
    action: Option<String>,
    delivered_at: String,
    delivered_at_ms: u64,
    status_code: i64,
}

/// How a sweep runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct SweepOptions {
    /// Look back this far, ignoring (and not moving) the checkpoints: a manual sweep.
    pub since: Option<Duration>,
    /// List what would be recovered; change nothing.
    pub dry_run: bool,
}

/// Hooks with their checkpoints, for `GET /v1/github/recovery`.
#[derive(Debug, Serialize)]
pub struct RecoveryStatus {
    pub enabled: bool,
    pub interval_secs: u64,
    pub since_secs: u64,
    pub hooks: Vec<Value>,
}

impl Recovery {
    /// The node's recovery, if `spec.platforms.github.recovery` lists hooks. Tokens are
    /// read from the environment here (at start).
    pub fn from_config(cfg: &DaemonConfig, metrics: Arc<Metrics>) -> Option<Recovery> {
        let gh = cfg.github()?;
        let rc = gh.recovery.as_ref()?;
        if rc.hooks.is_empty() {
            return None;
        }
        let env = |name: &Option<String>| {
            name.as_ref()
                .and_then(|n| std::env::var(n).ok())
                .filter(|v| !v.is_empty())
        };
        let hooks = rc
            .hooks
            .iter()
            .map(|h| {
                let org = h.org.clone().or_else(|| h.repo.as_ref().and_then(|r| r.split_once('/').map(|(o, _)| o.to_string())));
                let token = env(&h.token_env)
                    .or_else(|| org.and_then(|o| gh.org(&o).and_then(|oc| env(&oc.token_env))))
                    .or_else(|| env(&gh.token_env))
                    .or_else(|| gh.token.as_ref().map(|t| t.expose().to_string()));
                let app_key = app_key(h);
                match &app_key {
                    Some(Err(why)) => tracing::warn!(source = %h.source(), "delivery recovery: no usable GitHub App key: {why}"),
                    None if token.is_none() => {
                        tracing::warn!(source = %h.source(), "delivery recovery: no GitHub token for this hook; set token_env")
                    }
                    _ => {}
                }
                Hook { hook: h.clone(), token, app_key }
            })
            .collect();
        let dur = |s: &str, d: u64| parse_duration(s).unwrap_or(Duration::from_secs(d));
        let http = reqwest::Client::builder()
            .user_agent(concat!("aof-cluster/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .ok()?;
        Some(Recovery {
            http,
            api_url: gh.api_url.trim_end_matches('/').to_string(),
            hooks,
            enabled: rc.enabled,
            interval: dur(&rc.interval, 300),
            since: dur(&rc.since, 7200),
            per_page: rc.per_page.clamp(1, 100),
            max_pages: rc.max_pages.max(1),
            max_wait: dur(&rc.max_rate_limit_wait, 300),
            max_body_bytes: cfg.spec.gateway.max_body_bytes,
            retention_ms: cfg.spec.queue.retention_secs.saturating_mul(1000),
            metrics,
            lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The hooks and their replicated checkpoints.
    pub async fn status(
        &self,
        node: &Node,
        consistency: Consistency,
    ) -> Result<RecoveryStatus, crate::node::NodeError> {
        let sources: Vec<String> = self.hooks.iter().map(|h| h.hook.source()).collect();
        let cps = node
            .read(consistency, |kv| {
                sources
                    .iter()
                    .map(|s| crate::sm::recovery::get(kv, s))
                    .collect::<Vec<_>>()
            })
            .await?;
        let hooks = self
            .hooks
            .iter()
            .zip(cps)
            .map(|(h, cp)| {
                serde_json::json!({
                    "source": h.hook.source(),
                    "token": h.bearer().is_ok(),
                    "checkpoint": cp.map(|c| serde_json::json!({
                        "last_delivery_id": c.last_delivery_id,
                        "last_delivered_at_ms": c.last_delivered_at_ms,
                        "at_ms": c.at_ms,
                        "recovered_total": c.recovered_total,
                        "sweeps": c.sweeps,
                    })),
                })
            })
            .collect();
        Ok(RecoveryStatus {
            enabled: self.enabled,
            interval_secs: self.interval.as_secs(),
            since_secs: self.since.as_secs(),
            hooks,
        })
    }

    /// Sweep every hook once.
    pub async fn sweep(&self, node: &Node, opts: SweepOptions) -> SweepReport {
        let _one = self.lock.lock().await;
        let mut report = SweepReport {
            dry_run: opts.dry_run,
            sources: Vec::new(),
        };
        for h in &self.hooks {
            let mut sr = SourceReport {
                source: h.hook.source(),
                ..Default::default()
            };
            if let Err(e) = self.sweep_hook(node, h, opts, &mut sr).await {
                self.metrics.recovery_error(e.reason());
                tracing::warn!(source = %sr.source, reason = e.reason(), "delivery recovery: {e}");
                sr.error = Some(e.to_string());
            }
            self.metrics.recovery_recovered.inc_by(sr.recovered);
            report.sources.push(sr);
        }
        self.metrics.recovery_sweeps.inc();
        self.metrics
            .recovery_last_sweep_timestamp_seconds
            .set(crate::node::leader_clock_ms() as f64 / 1000.0);
        report
    }

    async fn sweep_hook(
        &self,
        node: &Node,
        h: &Hook,
        opts: SweepOptions,
        sr: &mut SourceReport,
    ) -> Result<(), RecoveryError> {
        let source = h.hook.source();
        h.bearer()?;
        let now = crate::node::leader_clock_ms();
        let checkpoint = match opts.since {
            Some(_) => None,
            None => node
                .read(Consistency::Linearizable, |kv| {
                    crate::sm::recovery::get(kv, &source)
                })
                .await
                .map_err(|e| RecoveryError::Ingest {
                    guid: "-".into(),
                    message: e.to_string(),
                })?,
        };
        sr.from_checkpoint = checkpoint.as_ref().map(|c| c.last_delivery_id);
        let floor_ms = match &checkpoint {
            Some(_) => 0,
            None => now.saturating_sub(opts.since.unwrap_or(self.since).as_millis() as u64),
        };
        let stop_at = checkpoint.as_ref().map_or(0, |c| c.last_delivery_id);

        // Newest first, down to the checkpoint (or the lookback).
        let base = format!("{}/{}/deliveries", self.api_url, h.hook.api_path());
        let mut url = Some(format!("{base}?per_page={}", self.per_page));
        let mut listed: Vec<Listed> = Vec::new();
        let mut reached = false;
        for _ in 0..self.max_pages {
            let Some(u) = url.take() else { break };
            let (body, next) = self.get(&u, &h.bearer()?).await?;
            let items = body.as_array().ok_or_else(|| RecoveryError::Invalid {
                url: u.clone(),
                message: "not a JSON array".into(),
            })?;
            for it in items {
                let d = parse_listed(it).ok_or_else(|| RecoveryError::Invalid {
                    url: u.clone(),
                    message: format!("bad delivery entry {it}"),
                })?;
                if d.id <= stop_at || d.delivered_at_ms < floor_ms {
                    reached = true;
                    break;
                }
                listed.push(d);
            }
            if reached {
                break;
            }
            url = next;
            if url.is_none() {
                reached = true;
            }
        }
        if !reached {
            self.metrics.recovery_error("max_pages");
            tracing::warn!(source = %source, max_pages = self.max_pages, "delivery recovery: more deliveries than max_pages pages since the checkpoint; older ones are not swept");
        }
        sr.listed = listed.len() as u64;

        // Oldest first, so the checkpoint can follow the last delivery handled.
        listed.reverse();
        let mut seen = std::collections::BTreeSet::new();
        let mut done_upto: Option<&Listed> = None;
        let mut result = Ok(());
        for d in &listed {
            if let Err(e) = self.handle(node, h, d, opts.dry_run, &mut seen, sr).await {
                result = Err(e);
                break;
            }
            done_upto = Some(d);
        }
        if opts.dry_run || opts.since.is_some() {
            return result;
        }
        if let Some(last) = done_upto {
            let cmd = Command::recovery_checkpoint(RecoveryCheckpoint {
                source: source.clone(),
                last_delivery_id: last.id,
                last_delivered_at_ms: last.delivered_at_ms,
                recovered: sr.recovered,
            });
            match node.propose(cmd).await {
                Ok(_) => sr.checkpoint = Some(last.id),
                Err(e) => {
                    if result.is_ok() {
                        result = Err(RecoveryError::Ingest {
                            guid: "-".into(),
                            message: format!("checkpoint not committed: {e}"),
                        });
                    }
                }
            }
        }
        result
    }

    /// One listed delivery: skip it if the cluster has it, else fetch and ingest it.
    async fn handle(
        &self,
        node: &Node,
        h: &Hook,
        d: &Listed,
        dry_run: bool,
        seen: &mut std::collections::BTreeSet<String>,
        sr: &mut SourceReport,
    ) -> Result<(), RecoveryError> {
        // Redeliveries share their GUID: one lookup per GUID.
        if !seen.insert(d.guid.clone()) {
            return Ok(());
        }
        if d.event == "ping" {
            return Ok(()); // the intake does not store pings either
        }
        if let Err(m) = check_names(&d.event, &d.guid) {
            sr.skipped.push(format!("{} ({}): {m}", d.guid, d.id));
            self.metrics.recovery_error("invalid_delivery");
            return Ok(());
        }
        let known = node
            .read(Consistency::Linearizable, |kv| {
                crate::sm::events::event_by_delivery(kv, &d.guid).is_some()
            })
            .await
            .map_err(|e| RecoveryError::Ingest {
                guid: d.guid.clone(),
                message: e.to_string(),
            })?;
        if known {
            return Ok(());
        }
        sr.missing.push(MissingDelivery {
            id: d.id,
            guid: d.guid.clone(),
            event: d.event.clone(),
            action: d.action.clone(),
            delivered_at: d.delivered_at.clone(),
            status_code: d.status_code,
        });
        if dry_run {
            return Ok(());
        }
        let url = format!("{}/{}/deliveries/{}", self.api_url, h.hook.api_path(), d.id);
        let detail = match self.get(&url, &h.bearer()?).await {
            Ok((detail, _)) => detail,
            // Gone from GitHub's log since it was listed: nothing left to recover, and
            // the sweep must not stall on it.
            Err(RecoveryError::Http {
                status: 404 | 410, ..
            }) => {
                sr.skipped.push(format!(
                    "{} ({}): no longer in GitHub's delivery log",
                    d.guid, d.id
                ));
                self.metrics.recovery_error("gone");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let header = |name: &str| {
            detail
                .pointer("/request/headers")
                .and_then(Value::as_object)
                .and_then(|m| {
                    m.iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .and_then(|(_, v)| v.as_str())
                        .map(str::to_string)
                })
        };
        let event = header("x-github-event").unwrap_or_else(|| d.event.clone());
        let guid = header("x-github-delivery").unwrap_or_else(|| d.guid.clone());
        let payload = detail.pointer("/request/payload").filter(|p| p.is_object());
        let Some(payload) = payload else {
            sr.skipped
                .push(format!("{guid} ({}): GitHub returned no payload", d.id));
            self.metrics.recovery_error("invalid_delivery");
            return Ok(());
        };
        if guid != d.guid || event != d.event || check_names(&event, &guid).is_err() {
            sr.skipped.push(format!(
                "{} ({}): the recorded request does not match the listing",
                d.guid, d.id
            ));
            self.metrics.recovery_error("invalid_delivery");
            return Ok(());
        }
        let body = serde_json::to_vec(payload).map_err(|e| RecoveryError::Invalid {
            url: url.clone(),
            message: e.to_string(),
        })?;
        if body.len() > self.max_body_bytes {
            sr.skipped.push(format!(
                "{guid} ({}): payload larger than spec.gateway.max_body_bytes ({})",
                d.id, self.max_body_bytes
            ));
            self.metrics.recovery_error("too_large");
            return Ok(());
        }
        let signed_by = match &h.hook.org {
            Some(org) if h.hook.repo.is_none() => SignedBy::Org(org.to_ascii_lowercase()),
            _ => SignedBy::Daemon,
        };
        if let Err(m) = crate::http::webhook::check_scope(&signed_by, payload) {
            sr.skipped.push(format!("{guid} ({}): {m}", d.id));
            self.metrics.recovery_error("invalid_delivery");
            return Ok(());
        }
        let cmd = Command::ingest(Delivery {
            delivery_id: guid.clone(),
            facts: crate::github::facts::extract(&event, payload),
            payload: body,
            received_by: node.id(),
            retention_ms: self.retention_ms,
            traceparent: String::new(),
            signed_by,
        });
        match node.propose(cmd).await {
            Ok(r) => {
                if !r.duplicate {
                    sr.recovered += 1;
                    tracing::info!(source = %sr.source, delivery_id = %guid, event = %event, event_id = r.event_id, "delivery recovered");
                }
                Ok(())
            }
            Err(e) => Err(RecoveryError::Ingest {
                guid,
                message: e.to_string(),
            }),
        }
    }

    /// GET a GitHub API URL: the JSON body and the `rel="next"` link. Waits out rate
    /// limits (bounded), backs off on 5xx and transport errors (3 retries).
    async fn get(&self, url: &str, token: &str) -> Result<(Value, Option<String>), RecoveryError> {
        let mut failures = 0u32;
        let mut waits = 0u32;
        loop {
            let sent = self
                .http
                .get(url)
                .bearer_auth(token)
                .header("accept", "application/vnd.github+json")
                .header("x-github-api-version", "2022-11-28")
                .send()
                .await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    failures += 1;
                    if failures > 3 {
                        return Err(RecoveryError::Transport {
                            url: url.into(),
                            message: e.to_string(),
                        });
                    }
                    tokio::time::sleep(backoff(failures)).await;
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let hv = |n: &str| {
                headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .map(str::trim)
                    .map(str::to_string)
            };
            if status == 200 {
                let next = hv("link").and_then(|l| next_link(&l));
                let body = resp.bytes().await.map_err(|e| RecoveryError::Transport {
                    url: url.into(),
                    message: e.to_string(),
                })?;
                let json = serde_json::from_slice(&body).map_err(|e| RecoveryError::Invalid {
                    url: url.into(),
                    message: e.to_string(),
                })?;
                return Ok((json, next));
            }
            let limited = (status == 403 || status == 429)
                && (hv("x-ratelimit-remaining").as_deref() == Some("0")
                    || hv("retry-after").is_some());
            if limited && waits < 3 {
                let now_s = crate::node::leader_clock_ms() / 1000;
                let wait = match hv("retry-after").and_then(|v| v.parse::<u64>().ok()) {
                    Some(s) => s,
                    None => hv("x-ratelimit-reset")
                        .and_then(|v| v.parse::<u64>().ok())
                        .map_or(60, |r| r.saturating_sub(now_s) + 1),
                };
                if wait > self.max_wait.as_secs() {
                    return Err(RecoveryError::RateLimited { wait_secs: wait });
                }
                waits += 1;
                self.metrics.recovery_rate_limit_waits.inc();
                tracing::info!(
                    url,
                    wait_secs = wait,
                    "delivery recovery: GitHub rate limit, waiting for the reset"
                );
                tokio::time::sleep(Duration::from_secs(wait)).await;
                continue;
            }
            if limited {
                return Err(RecoveryError::RateLimited { wait_secs: 0 });
            }
            if status >= 500 && failures < 3 {
                failures += 1;
                tokio::time::sleep(backoff(failures)).await;
                continue;
            }
            let body = resp.text().await.unwrap_or_default();
            return Err(RecoveryError::Http {
                status,
                url: url.into(),
                body: body.chars().take(200).collect(),
            });
        }
    }
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(500u64 << failures.min(5))
}

/// The intake's rules for `X-GitHub-Event` and `X-GitHub-Delivery`.
fn check_names(event: &str, guid: &str) -> Result<(), String> {
    if event.is_empty()
        || event.len() > 64
        || !event
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!("{event:?} is not a GitHub event name"));
    }
    if guid.is_empty() || guid.len() > 128 || !guid.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the GUID must be 1-128 printable characters".into());
    }
    Ok(())
}

fn parse_listed(v: &Value) -> Option<Listed> {
    let delivered_at = v.get("delivered_at")?.as_str()?.to_string();
    let t = time::OffsetDateTime::parse(
        &delivered_at,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()?;
    Some(Listed {
        id: v.get("id")?.as_u64()?,
        guid: v.get("guid")?.as_str()?.to_string(),
        event: v.get("event")?.as_str()?.to_string(),
        action: v.get("action").and_then(Value::as_str).map(str::to_string),
        delivered_at_ms: (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64,
        delivered_at,
        status_code: v.get("status_code").and_then(Value::as_i64).unwrap_or(0),
    })
}

/// The `rel="next"` URL of a `Link` header.
fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim() == "rel=\"next\"")
            .then(|| {
                url.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
    })
}

/// On the leader: sweep every `interval` (the first soon after it becomes leader).
pub async fn run(rec: Arc<Recovery>, node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let poll = rec.interval.min(Duration::from_secs(1));
    let mut last: Option<tokio::time::Instant> = None;
    let mut was_leader = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let leader = node.current_leader() == Some(node.id());
        if leader && !was_leader {
            last = None; // a new leader sweeps right away, from the replicated checkpoint
        }
        was_leader = leader;
        if !leader || !rec.enabled || last.is_some_and(|l| l.elapsed() < rec.interval) {
            continue;
        }
        last = Some(tokio::time::Instant::now());
        let report = tokio::select! {
            r = rec.sweep(&node, SweepOptions::default()) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let recovered: u64 = report.sources.iter().map(|s| s.recovered).sum();
        tracing::debug!(recovered, "delivery recovery sweep done");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_header_next() {
        let l = r#"<https://api.github.com/repos/a/b/hooks/1/deliveries?per_page=2&cursor=v1_9>; rel="next", <https://x/prev>; rel="prev""#;
        assert_eq!(
            next_link(l).as_deref(),
            Some("https://api.github.com/repos/a/b/hooks/1/deliveries?per_page=2&cursor=v1_9")
        );
        assert_eq!(next_link(r#"<https://x/prev>; rel="prev""#), None);
    }

    #[test]
    fn listed_entries_parse() {
        let v = serde_json::json!({"id": 7, "guid": "g-1", "delivered_at": "2019-06-03T00:57:16Z", "event": "issues", "action": "opened", "status_code": 502});
        let d = parse_listed(&v).unwrap();
        assert_eq!(
            (d.id, d.delivered_at_ms, d.status_code),
            (7, 1_559_523_436_000, 502)
        );
    }
}
