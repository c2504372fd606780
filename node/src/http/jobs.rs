//! Queue controls over HTTP: list and cancel jobs, re-run an event, per-target limits.
//!
//! * `GET /v1/jobs?state=&target=&event=&limit=&after=` — jobs in id order, one page
//!   (cursor `next_after`); linearizable unless `consistency=stale`.
//! * `POST /v1/jobs/{id}/cancel` (body `{"reason": "..."}`, optional) — a ready,
//!   delayed or leased job ends `cancelled`; a finished job answers 409.
//! * `POST /v1/events/{id}/rerun` — new jobs for the event's routes; 404 when the
//!   event (and its payload) is gone, 409 when there is nothing to re-run.
//! * `GET /v1/queue/limits`, `PUT /v1/targets/{target}/limits` (body
//!   `{"max_in_flight": N, "ttl": "1h"}`; zeros remove the limit).
//!
//! Writes need an admin token (the API's auth layer); the caller's token name is
//! recorded in the job history. Input is checked here, before anything is proposed.

use std::sync::Arc;

use aof_core::answers::{Cancel, LimitsSet, Rerun};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult, ReadParams};
use crate::auth::Principal;
use crate::sm::controls::{self, JobFilter};
use crate::sm::events::{self, JobRecord, JobState};
use crate::node::Node;
use crate::types::{Command, TargetLimits};

/// Largest page of `GET /v1/jobs`.
pub const MAX_PAGE: usize = 1000;
/// Longest cancel reason.
pub const MAX_REASON_BYTES: usize = 1024;
/// Longest job id (`<event id>-<n>`).
pub const MAX_JOB_ID_BYTES: usize = 64;
/// Longest target name (a DNS-label-like name, as in Trigger documents).
pub const MAX_TARGET_BYTES: usize = 253;
/// Largest `max_in_flight`.
pub const MAX_IN_FLIGHT: u32 = 100_000;
/// Longest pending TTL: 30 days.
pub const MAX_TTL_MS: u64 = 30 * 24 * 3_600_000;

fn job_json(j: &JobRecord, event: &str) -> Value {
    let mut v = super::events::job_view(j);
    if let Some(o) = v.as_object_mut() {
        o.insert("event_id".into(), json!(j.event_id));
        o.insert("event".into(), json!(event));
        o.insert("delivery_id".into(), json!(j.delivery_id));
        o.insert("trigger".into(), json!(j.trigger));
        o.insert("enqueued_ms".into(), json!(j.enqueued_ms));
        o.insert(
            "lease".into(),
            j.lease.as_ref().map_or(Value::Null, |l| json!({ "worker_id": l.worker_id, "deadline_ms": l.deadline_ms })),
        );
    }
    v
}

#[derive(Deserialize)]
pub struct ListParams {
    consistency: Option<String>,
    state: Option<String>,
    target: Option<String>,
    event: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

pub async fn list_jobs(State(node): State<Arc<Node>>, Query(p): Query<ListParams>) -> ApiResult<Json<Value>> {
    let consistency = ReadParams { consistency: p.consistency.clone() }.consistency()?;
    let state = match p.state.as_deref() {
        None => None,
        Some(s) => Some(JobState::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_state",
                format!("state={s:?}; use ready, delayed, leased, dead, completed, cancelled or purged"),
            )
        })?),
    };
    let after = match p.after.as_deref() {
        None => None,
        Some(a) => Some(parse_job_id(a).map_err(|m| ApiError::bad_request("invalid_after", format!("after: {m}")))?),
    };
    if let Some(t) = &p.target {
        check_target(t)?;
    }
    if p.event.as_ref().is_some_and(|e| e.len() > 64) {
        return Err(ApiError::bad_request("invalid_event", "event: at most 64 bytes (a GitHub event name such as push)"));
    }
    let filter = JobFilter { state, target: p.target, event: p.event, after, limit: p.limit.unwrap_or(100).clamp(1, MAX_PAGE) };
    let (items, next) = node
        .read(consistency, |kv| {
            let page = controls::list_jobs(kv, &filter);
            (page.items.iter().map(|(j, e)| job_json(j, e)).collect::<Vec<_>>(), page.next_after)
        })
        .await?;
    Ok(Json(json!({ "items": items, "next_after": next })))
}

fn parse_job_id(id: &str) -> Result<(u64, u8), String> {
    if id.len() > MAX_JOB_ID_BYTES {
        return Err(format!("{} bytes, at most {MAX_JOB_ID_BYTES} allowed", id.len()));
    }
    events::parse_job_id(id).ok_or_else(|| format!("{id:?} is not a job id (like 1234-0, see `aofctl get jobs`)"))
}

fn check_target(t: &str) -> ApiResult<()> {
    if t.is_empty() || t.len() > MAX_TARGET_BYTES || t.chars().any(|c| c.is_control() || c == '/') {
        return Err(ApiError::bad_request(
            "invalid_target",
            format!("target {t:?}: give a target name of 1 to {MAX_TARGET_BYTES} bytes, without '/' or control characters"),
        ));
    }
    Ok(())
}

fn who(p: Option<Extension<Principal>>) -> String {
    p.map_or_else(|| "an unauthenticated caller".to_string(), |Extension(p)| format!("token {}", p.name))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    #[serde(default)]
    reason: String,
}

pub async fn cancel_job(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    principal: Option<Extension<Principal>>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    parse_job_id(&id).map_err(|m| ApiError::bad_request("invalid_job_id", m))?;
    let b: CancelBody = if body.iter().all(u8::is_ascii_whitespace) {
        CancelBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request("invalid_body", format!("expected {{\"reason\": TEXT}} (optional): {e}")))?
    };
    if b.reason.len() > MAX_REASON_BYTES || b.reason.chars().any(|c| c.is_control()) {
        return Err(ApiError::bad_request(
            "invalid_reason",
            format!("reason: one line of at most {MAX_REASON_BYTES} bytes ({} given)", b.reason.len()),
        ));
    }
    match node.propose(Command::cancel_job(id, who(principal), b.reason)).await? {
        Cancel::Cancelled { job_id, was } => Ok(Json(json!({ "job_id": job_id, "state": "cancelled", "was": was }))),
        Cancel::NotCancellable { job_id, state } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_cancellable",
            format!("job {job_id} is already {state}: only ready, delayed or leased jobs can be cancelled; nothing changed"),
        )),
        Cancel::JobNotFound { job_id } => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no job {job_id} (never existed, or removed with its event after retention; see `aofctl get jobs`)"),
        )),
    }
}

pub async fn rerun_event(State(node): State<Arc<Node>>, Path(id): Path<String>, principal: Option<Extension<Principal>>) -> ApiResult<Json<Value>> {
    let event_id: u64 = id
        .parse()
        .map_err(|_| ApiError::bad_request("invalid_event_id", format!("{id:?} is not an event id (a number, see `aofctl get events`)")))?;
    match node.propose(Command::rerun_event(event_id, who(principal))).await? {
        Rerun::Rerun { event_id, jobs } => Ok(Json(json!({ "event_id": event_id, "jobs": jobs }))),
        Rerun::EventNotFound { event_id } => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no event {event_id}: never received, or expired after its retention together with its payload, so it cannot be re-run; redeliver it from the webhook's Recent Deliveries in GitHub"),
        )),
        Rerun::Refused { reason, .. } => Err(ApiError::new(StatusCode::CONFLICT, "not_rerunnable", format!("{reason}; nothing changed"))),
    }
}

fn limits_json(target: &str, l: &TargetLimits) -> Value {
    json!({
        "target": target,
        "max_in_flight": l.max_in_flight,
        "ttl": if l.pending_ttl_ms == 0 { Value::Null } else { json!(controls::human_ms(l.pending_ttl_ms)) },
        "ttl_ms": l.pending_ttl_ms,
    })
}

pub async fn list_limits(State(node): State<Arc<Node>>, Query(p): Query<ReadParams>) -> ApiResult<Json<Value>> {
    let items = node
        .read(p.consistency()?, |kv| {
            controls::all_limits(kv)
                .iter()
                .map(|(t, l)| {
                    let mut v = limits_json(t, l);
                    v["leased"] = json!(controls::leased_count(kv, t));
                    v
                })
                .collect::<Vec<_>>()
        })
        .await?;
    Ok(Json(json!({ "items": items })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsBody {
    #[serde(default)]
    max_in_flight: u32,
    /// `1h`, `30m`, `90s`, `500ms`; absent, empty or `0` = none.
    #[serde(default)]
    ttl: Option<String>,
}

/// `1h`, `30m`, `90s`, `500ms` or a bare number of seconds.
fn parse_ttl(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("ttl {s:?}: expected e.g. 1h, 30m, 90s or 500ms"))?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(24 * 3_600_000),
        _ => return Err(format!("ttl {s:?}: unknown unit {unit:?}; use ms, s, m, h or d")),
    };
    match ms {
        Some(ms) if ms <= MAX_TTL_MS => Ok(ms),
        _ => Err(format!("ttl {s:?}: at most 30d")),
    }
}

pub async fn put_limits(State(node): State<Arc<Node>>, Path(target): Path<String>, body: axum::body::Bytes) -> ApiResult<Json<Value>> {
    check_target(&target)?;
    let b: LimitsBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request("invalid_limits", format!("expected {{\"max_in_flight\": N, \"ttl\": \"1h\"}} (0 / absent = no limit): {e}"))
    })?;
    if b.max_in_flight > MAX_IN_FLIGHT {
        return Err(ApiError::bad_request("invalid_limits", format!("max_in_flight: at most {MAX_IN_FLIGHT}")));
    }
    let pending_ttl_ms = match b.ttl.as_deref() {
        None | Some("") => 0,
        Some(s) => parse_ttl(s).map_err(|m| ApiError::bad_request("invalid_limits", m))?,
    };
    let limits = TargetLimits { max_in_flight: b.max_in_flight, pending_ttl_ms };
    match node.propose(Command::set_target_limits(target, limits)).await? {
        LimitsSet::Set { target, limits } => Ok(Json(limits_json(&target, &limits))),
        LimitsSet::Refused { reason } => Err(ApiError::new(StatusCode::CONFLICT, "too_many_limits", reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_parse_and_are_bounded() {
        assert_eq!(parse_ttl("1h"), Ok(3_600_000));
        assert_eq!(parse_ttl("90s"), Ok(90_000));
        assert_eq!(parse_ttl("500ms"), Ok(500));
        assert_eq!(parse_ttl("0"), Ok(0));
        assert!(parse_ttl("31d").is_err());
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("99999999999999999999h").is_err());
        assert!(parse_ttl("-1h").is_err());
    }
}
