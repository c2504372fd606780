//! Status reads: after a delivery is acknowledged by one node, a linearizable
//! `GET /v1/deliveries/{id}` on *another* node must find it (checked by
//! `checkers::status`). Also used to poll a job's history (zombie workers, drain).

use serde_json::{json, Value};

use super::Ctx;
use crate::history::Kind;

/// The jobs of a delivery as `[{job_id, state}]`, plus their full views.
fn jobs_summary(body: &Value) -> Vec<Value> {
    body["jobs"]
        .as_array()
        .map(|js| {
            js.iter()
                .map(|j| json!({ "job_id": j["job_id"], "state": j["state"] }))
                .collect()
        })
        .unwrap_or_default()
}

/// A recorded `status-read` of `delivery` on `slot`.
pub async fn status_read(ctx: &Ctx, process: u64, delivery: &str, slot: usize) -> Kind {
    let node = ctx.db.name(slot);
    let inv = ctx.rec.invoke(
        process,
        "status-read",
        None,
        json!({ "delivery": delivery }),
        Some(&node),
    );
    let res = ctx
        .db
        .http(
            slot,
            "GET",
            &format!("/v1/deliveries/{delivery}"),
            &[],
            b"",
            ctx.timeout,
        )
        .await;
    let (kind, value, err) = match res {
        Ok(r) if r.status == 200 => {
            let b = r.json();
            (
                Kind::Ok,
                json!({ "found": true, "status": b["status"], "jobs": jobs_summary(&b) }),
                None,
            )
        }
        Ok(r) if r.status == 404 => (Kind::Ok, json!({ "found": false }), None),
        Ok(r) => (
            Kind::Fail,
            Value::Null,
            Some(format!(
                "{} {}",
                r.status,
                super::register::short(&r.text())
            )),
        ),
        Err(e) => (Kind::Fail, Value::Null, Some(e.to_string())),
    };
    ctx.rec.complete(&inv, kind, value, err);
    kind
}

/// An unrecorded linearizable read of a delivery (`None` on any failure).
pub async fn delivery(ctx: &Ctx, delivery: &str, slot: usize) -> Option<Option<Value>> {
    match ctx
        .db
        .http(
            slot,
            "GET",
            &format!("/v1/deliveries/{delivery}"),
            &[],
            b"",
            ctx.timeout,
        )
        .await
    {
        Ok(r) if r.status == 200 => Some(Some(r.json())),
        Ok(r) if r.status == 404 => Some(None),
        _ => None,
    }
}
