//! Results: `results.json` (everything the checkers found), `results.txt` (the
//! summary table) in the run's store directory, and the table on stdout.

use serde::Serialize;

use crate::checkers::linearizable::RegisterReport;
use crate::checkers::queue::QueueReport;
use crate::checkers::status::StatusReport;
use crate::history::{Op, NEMESIS};

/// Recovery times of one nemesis: from the end of each fault (its undo starting)
/// until every node it touched answered `/ready` again.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RecoveryStats {
    /// Faults with a recovery measurement (a fault that did nothing has none).
    pub cycles: usize,
    /// Of those, how many were not ready within the nemesis's wait (excluded from
    /// the percentiles).
    pub not_ready: usize,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Per nemesis, from the history's `recovered-<nemesis>` events.
pub fn recovery_stats(ops: &[Op]) -> std::collections::BTreeMap<String, RecoveryStats> {
    let mut times: std::collections::BTreeMap<String, (Vec<u64>, usize)> = Default::default();
    for o in ops.iter().filter(|o| o.process == NEMESIS) {
        let Some(name) = o.f.strip_prefix("recovered-") else { continue };
        let e = times.entry(name.to_string()).or_default();
        match (o.value["ready"].as_bool(), o.value["ms"].as_u64()) {
            (Some(true), Some(ms)) => e.0.push(ms),
            _ => e.1 += 1,
        }
    }
    times
        .into_iter()
        .map(|(name, (mut v, not_ready))| {
            v.sort_unstable();
            let stats = RecoveryStats {
                cycles: v.len() + not_ready,
                not_ready,
                p50_ms: percentile(&v, 0.50),
                p99_ms: percentile(&v, 0.99),
                max_ms: v.last().copied().unwrap_or(0),
            };
            (name, stats)
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Every checker proved its property.
    Valid,
    /// An anomaly was found.
    Invalid,
    /// No anomaly, but something could not be decided (search bound, incomplete
    /// final read, cluster did not recover).
    Unknown,
}

impl Verdict {
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Valid => 0,
            Verdict::Invalid => 1,
            Verdict::Unknown => 2,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Results {
    pub run: String,
    pub dir: String,
    pub seed: u64,
    pub workloads: Vec<String>,
    pub nemeses: Vec<String>,
    pub nodes: usize,
    pub network: String,
    pub planted_bug: Option<String>,
    pub time_limit_s: u64,
    pub operations: usize,
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
    pub nemesis_events: usize,
    pub recovered: bool,
    pub recovery: String,
    pub drain: Option<String>,
    pub register: Option<RegisterReport>,
    pub queue: Option<QueueReport>,
    pub status: Option<StatusReport>,
    pub problems: Vec<String>,
    pub verdict: Verdict,
    /// Recovery time per nemesis (see [`recovery_stats`]).
    pub recovery_ms: std::collections::BTreeMap<String, RecoveryStats>,
}

impl Results {
    /// Derive the verdict from the checkers' reports and the run's problems.
    pub fn decide(&mut self) {
        let mut invalid = false;
        let mut unknown = !self.recovered;
        if let Some(r) = &self.register {
            match r.valid() {
                Some(false) => invalid = true,
                None => unknown = true,
                _ => {}
            }
        }
        if let Some(q) = &self.queue {
            match q.valid() {
                Some(false) => invalid = true,
                None => unknown = true,
                _ => {}
            }
        }
        if let Some(s) = &self.status {
            match s.valid() {
                Some(false) => invalid = true,
                None => unknown = true,
                _ => {}
            }
        }
        self.verdict = if invalid {
            Verdict::Invalid
        } else if unknown {
            Verdict::Unknown
        } else {
            Verdict::Valid
        };
    }

    /// An empty result (nothing run, nothing found), for unit tests.
    #[cfg(test)]
    pub fn for_tests() -> Results {
        Results {
            run: String::new(),
            dir: String::new(),
            seed: 0,
            workloads: vec![],
            nemeses: vec![],
            nodes: 3,
            network: String::new(),
            planted_bug: None,
            time_limit_s: 0,
            operations: 0,
            ok: 0,
            fail: 0,
            info: 0,
            nemesis_events: 0,
            recovered: true,
            recovery: String::new(),
            drain: None,
            register: None,
            queue: None,
            status: None,
            problems: vec![],
            verdict: Verdict::Valid,
            recovery_ms: Default::default(),
        }
    }

    pub fn stale_reads(&self) -> usize {
        self.status.as_ref().map_or(0, |s| s.stale_reads.len())
    }

    /// The summary table.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = vec![
            ("run".into(), self.run.clone()),
            ("seed".into(), self.seed.to_string()),
            ("workloads".into(), self.workloads.join(",")),
            (
                "nemeses".into(),
                if self.nemeses.is_empty() {
                    "none".into()
                } else {
                    self.nemeses.join(",")
                },
            ),
            (
                "nodes / network".into(),
                format!("{} / {}", self.nodes, self.network),
            ),
        ];
        if let Some(b) = &self.planted_bug {
            rows.push(("planted bug".into(), b.clone()));
        }
        rows.push((
            "operations (ok/fail/info)".into(),
            format!(
                "{} ({}/{}/{})",
                self.operations, self.ok, self.fail, self.info
            ),
        ));
        rows.push(("nemesis events".into(), self.nemesis_events.to_string()));
        rows.push(("recovery".into(), self.recovery.clone()));
        if let Some(d) = &self.drain {
            rows.push(("drain".into(), d.clone()));
        }
        if let Some(r) = &self.register {
            rows.push(("register keys".into(), r.keys.to_string()));
            rows.push((
                "register ops (ok/fail/info)".into(),
                format!("{} ({}/{}/{})", r.ops, r.ok, r.fail, r.info),
            ));
            rows.push((
                "linearizable".into(),
                match r.valid() {
                    Some(true) => format!("yes ({} keys)", r.linearizable_keys),
                    Some(false) => format!(
                        "NO: {} key(s) not linearizable, {} double-applied value(s)",
                        r.non_linearizable.len(),
                        r.double_applied.len()
                    ),
                    None => format!("unknown: {} key(s) past the search bound", r.unknown.len()),
                },
            ));
        }
        if let Some(q) = &self.queue {
            rows.push(("deliveries attempted".into(), q.attempted.to_string()));
            rows.push(("acked".into(), q.acked.to_string()));
            rows.push((
                "lost".into(),
                format!(
                    "{} (missing {}, unfinished {}, lost completions {})",
                    q.lost(),
                    q.missing.len(),
                    q.unfinished.len(),
                    q.lost_completions.len()
                ),
            ));
            rows.push(("duplicated".into(), q.duplicated.len().to_string()));
            rows.push(("unexpected".into(), q.unexpected.len().to_string()));
            if !q.final_unparsed.is_empty() {
                rows.push((
                    "final items unparsed".into(),
                    format!("{} (the final read counts as incomplete)", q.final_unparsed.len()),
                ));
            }
            rows.push((
                "stale tokens accepted".into(),
                q.stale_token_accepted.len().to_string(),
            ));
            rows.push((
                "jobs completed / retried / dead".into(),
                format!("{} / {} / {}", q.completed, q.retried, q.dead_lettered),
            ));
            rows.push((
                "leases / completes ok / rejected".into(),
                format!(
                    "{} / {} / {}",
                    q.leases, q.completes_ok, q.completes_rejected
                ),
            ));
        }
        if let Some(s) = &self.status {
            rows.push((
                "status reads (ok)".into(),
                format!("{} ({})", s.reads, s.reads_ok),
            ));
            rows.push((
                "stale reads".into(),
                match s.valid() {
                    None => "unknown: no status read succeeded".into(),
                    _ => s.stale_reads.len().to_string(),
                },
            ));
        }
        for (name, r) in &self.recovery_ms {
            rows.push((
                format!("recovery {name}"),
                format!(
                    "{} faults: p50 {} ms, p99 {} ms, max {} ms{}",
                    r.cycles,
                    r.p50_ms,
                    r.p99_ms,
                    r.max_ms,
                    if r.not_ready > 0 { format!(", {} not ready within 30 s", r.not_ready) } else { String::new() }
                ),
            ));
        }
        for p in &self.problems {
            rows.push(("problem".into(), p.clone()));
        }
        rows.push((
            "verdict".into(),
            match self.verdict {
                Verdict::Valid => "VALID".into(),
                Verdict::Invalid => "INVALID (anomalies found)".into(),
                Verdict::Unknown => "UNKNOWN (see problems)".into(),
            },
        ));
        let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        let line = format!("+{}+{}+\n", "-".repeat(w + 2), "-".repeat(62));
        out.push_str(&line);
        for (k, v) in rows {
            // Wrap long values (at commas, else hard) so the table stays aligned.
            let mut first = true;
            let mut rest = v.as_str();
            loop {
                let (chunk, tail) = if rest.chars().count() <= 60 {
                    (rest, "")
                } else {
                    let cut = rest.char_indices().nth(60).map_or(rest.len(), |(i, _)| i);
                    let at = rest[..cut]
                        .rfind(',')
                        .map(|i| i + 1)
                        .filter(|&i| i > 20)
                        .unwrap_or(cut);
                    (&rest[..at], &rest[at..])
                };
                let key = if first { k.as_str() } else { "" };
                out.push_str(&format!("| {key:<w$} | {chunk:<60} |\n"));
                first = false;
                rest = tail;
                if rest.is_empty() {
                    break;
                }
            }
        }
        out.push_str(&line);
        out
    }

    /// The first few anomalies of each kind, for the console.
    pub fn anomalies(&self, max: usize) -> String {
        let mut out = String::new();
        let mut section = |title: &str, items: &[String]| {
            if items.is_empty() {
                return;
            }
            out.push_str(&format!("{title} ({}):\n", items.len()));
            for i in items.iter().take(max) {
                out.push_str(&format!("  - {i}\n"));
            }
        };
        if let Some(r) = &self.register {
            let lines: Vec<String> = r
                .non_linearizable
                .iter()
                .map(|k| {
                    format!(
                        "{}: {}",
                        k.key,
                        serde_json::to_string(&k.verdict).unwrap_or_default()
                    )
                })
                .collect();
            section("non-linearizable keys", &lines);
            section("double-applied values", &r.double_applied);
        }
        if let Some(q) = &self.queue {
            section("lost (missing)", &q.missing);
            section("lost (unfinished)", &q.unfinished);
            section("lost completions", &q.lost_completions);
            section("duplicated", &q.duplicated);
            section("unexpected", &q.unexpected);
            section("stale tokens accepted", &q.stale_token_accepted);
            section("final items that did not parse", &q.final_unparsed);
        }
        if let Some(s) = &self.status {
            section("stale reads", &s.stale_reads);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn recovery_times_per_nemesis() {
        let rec = crate::history::Recorder::new(None).unwrap();
        rec.nemesis("start-lose-unsynced", json!({}));
        rec.nemesis("stop-lose-unsynced", json!({}));
        for ms in [400, 100, 300, 200] {
            rec.nemesis("recovered-lose-unsynced", json!({"nodes": ["n1"], "ready": true, "ms": ms}));
        }
        rec.nemesis("recovered-lose-unsynced", json!({"nodes": ["n2"], "ready": false, "ms": 30000}));
        rec.nemesis("recovered-disk-full", json!({"nodes": ["n3"], "ready": true, "ms": 1500}));
        let stats = recovery_stats(&rec.ops());
        assert_eq!(
            stats["lose-unsynced"],
            RecoveryStats { cycles: 5, not_ready: 1, p50_ms: 200, p99_ms: 400, max_ms: 400 }
        );
        assert_eq!(stats["disk-full"].p50_ms, 1500);
        assert_eq!(stats.len(), 2);
        let mut r = Results::for_tests();
        r.recovery_ms = stats;
        assert!(r.table().contains("5 faults: p50 200 ms, p99 400 ms"), "{}", r.table());
    }
}
