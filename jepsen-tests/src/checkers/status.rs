//! The status checker: `GET /v1/deliveries/{id}` is linearizable, so a read
//! invoked after a delivery was acknowledged (by any node) must find it, and a read
//! invoked after a `Complete` of its job was acknowledged must show the job
//! completed. Anything else is a stale read.
//!
//! History ops: `post` (invoke `{"delivery"}`) and `complete` (invoke `{"job",
//! "token"}`) as for the queue checker; `status-read` invoke `{"delivery"}`, ok
//! `{"found": bool, "jobs": [{"job_id", "state"}]}`. Failed reads (503) are not
//! anomalies.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::history::{pairs, Kind, Op};

#[derive(Clone, Debug, Default, Serialize)]
pub struct StatusReport {
    pub reads: usize,
    pub reads_ok: usize,
    pub reads_failed: usize,
    pub stale_reads: Vec<String>,
}

impl StatusReport {
    /// `Some(false)`: stale reads; `None` (unknown): no status read succeeded, so
    /// nothing was checked (a run whose every read failed proves nothing);
    /// `Some(true)` otherwise.
    pub fn valid(&self) -> Option<bool> {
        if !self.stale_reads.is_empty() {
            Some(false)
        } else if self.reads_ok == 0 {
            None
        } else {
            Some(true)
        }
    }
}

pub fn check(ops: &[Op]) -> StatusReport {
    let ps = pairs(ops);
    let mut r = StatusReport::default();
    // delivery -> earliest acknowledgement time
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    // job -> earliest acknowledged Complete time
    let mut completed: BTreeMap<String, u64> = BTreeMap::new();
    for p in &ps {
        let Some(t) = p.complete_time() else { continue };
        if p.kind() != Kind::Ok {
            continue;
        }
        match p.invoke.f.as_str() {
            "post" => {
                if let Some(d) = p.invoke.value.get("delivery").and_then(Value::as_str) {
                    let e = acked.entry(d.to_string()).or_insert(t);
                    *e = (*e).min(t);
                }
            }
            "complete" => {
                if let Some(j) = p.invoke.value.get("job").and_then(Value::as_str) {
                    let e = completed.entry(j.to_string()).or_insert(t);
                    *e = (*e).min(t);
                }
            }
            _ => {}
        }
    }
    for p in ps.iter().filter(|p| p.invoke.f == "status-read") {
        r.reads += 1;
        if p.kind() != Kind::Ok {
            r.reads_failed += 1;
            continue;
        }
        r.reads_ok += 1;
        let Some(d) = p.invoke.value.get("delivery").and_then(Value::as_str) else {
            continue;
        };
        let v = p.value();
        let invoked = p.invoke.time;
        let node = p.invoke.node.clone().unwrap_or_default();
        let found = v.get("found").and_then(Value::as_bool).unwrap_or(false);
        if !found {
            if let Some(&at) = acked.get(d) {
                if at < invoked {
                    r.stale_reads.push(format!(
                        "delivery {d}: acknowledged at {:.3}s, but a read on {node} invoked at {:.3}s did not find it",
                        at as f64 / 1e9,
                        invoked as f64 / 1e9
                    ));
                }
            }
            continue;
        }
        for j in v
            .get("jobs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (Some(id), Some(state)) = (
                j.get("job_id").and_then(Value::as_str),
                j.get("state").and_then(Value::as_str),
            ) else {
                continue;
            };
            if let Some(&at) = completed.get(id) {
                if at < invoked && state != "completed" && state != "purged" {
                    r.stale_reads.push(format!(
                        "job {id} (delivery {d}): Complete acknowledged at {:.3}s, but a read on {node} invoked at {:.3}s shows it {state}",
                        at as f64 / 1e9,
                        invoked as f64 / 1e9
                    ));
                }
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::build::H;
    use serde_json::json;

    #[test]
    fn reads_after_the_ack_must_see_the_delivery() {
        let ops = H::new()
            .invoke(1, "post", "", json!({"delivery": "d1"}))
            // a read concurrent with the post may miss it
            .invoke(2, "status-read", "", json!({"delivery": "d1"}))
            .ok(2, "status-read", "", json!({"found": false}))
            .ok(1, "post", "", json!({"code": 202}))
            .invoke(2, "status-read", "", json!({"delivery": "d1"}))
            .ok(
                2,
                "status-read",
                "",
                json!({"found": true, "jobs": [{"job_id": "j1", "state": "ready"}]}),
            )
            .invoke(3, "status-read", "", json!({"delivery": "d1"}))
            .fail(3, "status-read", "", Value::Null, "503")
            .done();
        let r = check(&ops);
        assert_eq!(r.valid(), Some(true), "{r:?}");
        assert_eq!((r.reads, r.reads_ok, r.reads_failed), (3, 2, 1));

        let ops = H::new()
            .invoke(1, "post", "", json!({"delivery": "d1"}))
            .ok(1, "post", "", json!({"code": 202}))
            .invoke(2, "status-read", "", json!({"delivery": "d1"}))
            .ok(2, "status-read", "", json!({"found": false}))
            .done();
        let r = check(&ops);
        assert_eq!(r.valid(), Some(false));
        assert!(r.stale_reads[0].contains("did not find it"));
    }

    #[test]
    fn a_run_whose_status_reads_all_failed_is_unknown_not_valid() {
        let ops = H::new()
            .invoke(1, "post", "", json!({"delivery": "d1"}))
            .ok(1, "post", "", json!({"code": 202}))
            .invoke(2, "status-read", "", json!({"delivery": "d1"}))
            .fail(2, "status-read", "", Value::Null, "503")
            .invoke(3, "status-read", "", json!({"delivery": "d1"}))
            .fail(3, "status-read", "", Value::Null, "503")
            .done();
        let r = check(&ops);
        assert_eq!((r.reads, r.reads_ok, r.reads_failed), (2, 0, 2));
        assert_eq!(r.valid(), None, "{r:?}");
        let mut results = crate::report::Results::for_tests();
        results.status = Some(r);
        results.decide();
        assert_eq!(results.verdict, crate::report::Verdict::Unknown);
    }

    #[test]
    fn reads_after_a_complete_must_see_it_completed() {
        let ops = H::new()
            .invoke(1, "post", "", json!({"delivery": "d1"}))
            .ok(1, "post", "", json!({"code": 202}))
            .invoke(7, "complete", "", json!({"job": "j1", "token": 4}))
            .ok(7, "complete", "", Value::Null)
            .invoke(2, "status-read", "", json!({"delivery": "d1"}))
            .ok(
                2,
                "status-read",
                "",
                json!({"found": true, "jobs": [{"job_id": "j1", "state": "leased"}]}),
            )
            .done();
        let r = check(&ops);
        assert_eq!(r.stale_reads.len(), 1, "{r:?}");
    }
}
