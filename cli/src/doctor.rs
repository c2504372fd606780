//! `aofctl doctor`: is the cluster healthy, and if not, what to do.
//!
//! Prints one `OK` / `WARN` / `FAIL` line per check with the next step, and exits
//! non-zero when any check FAILs. Checks: quorum and leader, each member's
//! public listener (`/health`, where GitHub delivers) and API listener
//! (`/metrics`, with the token), replication lag, webhook freshness (a silent
//! webhook usually means a broken GitHub hook), delivery recovery (last sweep,
//! errors, each hook's checkpoint), the dead-letter queue's size and
//! growth, the expired-lease ratio, and free disk space on each node.

use std::time::Duration;

use aof_client::Consistency;
use clap::Args;

use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Replication lag (log entries) above which a member is reported.
    #[arg(long, default_value_t = 1000)]
    pub max_lag: u64,
    /// Warn when no webhook has arrived for this long (e.g. 30m, 2h).
    #[arg(long, default_value = "1h", value_parser = crate::parse_duration)]
    pub webhook_silence: Duration,
    /// Warn below this much free disk (MiB) on a node; FAIL below a tenth of it.
    #[arg(long, default_value_t = 1024)]
    pub min_free_disk_mb: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Ok,
    Warn,
    Fail,
}

struct Report {
    worst: Level,
}

impl Report {
    fn line(&mut self, level: Level, check: &str, msg: impl AsRef<str>) {
        let tag = match level {
            Level::Ok => "OK  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        println!("{tag} {check}: {}", msg.as_ref());
        self.worst = self.worst.max(level);
    }
}

/// A metric's value summed over the lines of one exposition (all label sets).
/// When any node last accepted a webhook, Unix ms (0 = none): the newest
/// `aof_last_webhook_timestamp_seconds` (seconds, float) of the nodes' metrics.
fn last_webhook_ms<'a>(texts: impl Iterator<Item = &'a str>) -> u64 {
    let secs = texts.filter_map(|t| metric(t, "aof_last_webhook_timestamp_seconds")).fold(0.0f64, f64::max);
    (secs * 1000.0).round() as u64
}

fn metric(text: &str, name: &str) -> Option<f64> {
    let mut sum = None;
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (key, value) = l.rsplit_once(' ')?;
        let bare = key.split('{').next().unwrap_or(key);
        if bare == name {
            *sum.get_or_insert(0.0) += value.parse::<f64>().ok()?;
        }
    }
    sum
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

/// Run the checks; `Ok(true)` when nothing FAILed.
pub async fn run(args: DoctorArgs, global: &GlobalArgs) -> anyhow::Result<bool> {
    let mut r = Report { worst: Level::Ok };
    let client = global.client_for(global.conn.api.clone(), Duration::from_secs(5));

    // Quorum and leader: a linearizable status needs the leader to confirm with a majority.
    let status = match client.cluster_status(Consistency::Linearizable).await {
        Ok(s) => s,
        Err(e) => {
            r.line(Level::Fail, "quorum", format!("no leader can confirm a majority ({e}); check that most nodes are running and can reach each other (`aofctl cluster status --consistency stale` shows each node's own view)"));
            // Still report what each reachable endpoint says about itself.
            for ep in &global.conn.api {
                match global.client_for(vec![ep.clone()], Duration::from_secs(3)).health().await {
                    Ok(_) => r.line(Level::Warn, "node", format!("{ep} is up but cannot reach a quorum")),
                    Err(_) => r.line(Level::Fail, "node", format!("{ep} is unreachable; start it or check its log")),
                }
            }
            return Ok(false);
        }
    };
    let leader = status.leader_id.unwrap_or(0);
    r.line(Level::Ok, "quorum", format!("leader is node {leader}, term {}, commit index {}", status.term, status.commit_index));

    // Members: reachable on their public and API listeners? lagging?
    let mut metrics_texts = Vec::new();
    for m in &status.members {
        let public = format!("http://{}", m.http_addr);
        match global.public_client(vec![public.clone()], Duration::from_secs(3)).health().await {
            Ok(h) if h.node_id == m.id => {}
            Ok(h) => r.line(Level::Warn, "public", format!("{public} answers as node {}, not node {}; check spec.server of both and the members' advertised addresses", h.node_id, m.id)),
            Err(e) => r.line(Level::Warn, "public", format!("node {}'s public listener {public} does not answer /health ({e}); GitHub's deliveries sent there fail", m.id)),
        }
        let api = global.api_url(&m.api_addr);
        match global.client_for(vec![api.clone()], Duration::from_secs(3)).metrics_text().await {
            Ok(t) => metrics_texts.push((m.id, t)),
            Err(e) if e.is_unauthenticated() || e.is_forbidden() => {
                r.line(Level::Warn, "metrics", format!("cannot read node {}'s /metrics at {api}: {e}", m.id));
            }
            Err(e) => {
                r.line(Level::Warn, "member", format!("node {}'s API {api} is unreachable ({e}); the cluster runs without it but tolerates one failure less", m.id));
                continue;
            }
        }
        let lag = m.matched_index.map(|x| status.commit_index.saturating_sub(x));
        match lag {
            Some(l) if l > args.max_lag => r.line(Level::Warn, "replication", format!("node {} is {l} entries behind the leader; check its disk and network", m.id)),
            Some(l) => r.line(Level::Ok, "replication", format!("node {} ({:?}) lag {l}", m.id, m.role)),
            None => r.line(Level::Warn, "replication", format!("node {}: replication progress unknown", m.id)),
        }
    }

    // Webhook freshness.
    let last = last_webhook_ms(metrics_texts.iter().map(|(_, t)| t.as_str()));
    if last == 0 {
        r.line(Level::Warn, "webhooks", "no webhook accepted since the nodes started; check the GitHub hook's Recent Deliveries (URL, secret, content type application/json)");
    } else {
        let silent = now_ms().saturating_sub(last);
        if silent > args.webhook_silence.as_millis() as u64 {
            r.line(Level::Warn, "webhooks", format!("last webhook {} ago; a silent hook usually means it is broken — check Recent Deliveries in GitHub", ago(silent)));
        } else {
            r.line(Level::Ok, "webhooks", format!("last webhook {} ago", ago(silent)));
        }
    }
    let bad_sig = metrics_texts.iter().filter_map(|(_, t)| t.lines().find(|l| l.starts_with("aof_webhook_requests_total{outcome=\"bad_signature\"}")).and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())).sum::<f64>();
    if bad_sig > 0.0 {
        r.line(Level::Warn, "webhooks", format!("{bad_sig} deliveries rejected for bad signatures; check the webhook secret (GITHUB_WEBHOOK_SECRET) matches GitHub's"));
    }

    // Delivery recovery (only when the nodes configure it).
    match client.recovery_status(Consistency::Linearizable).await {
        Ok(rs) => {
            let last_sweep_ms = (metrics_texts.iter().filter_map(|(_, t)| metric(t, "aof_recovery_last_sweep_timestamp_seconds")).fold(0.0f64, f64::max) * 1000.0) as u64;
            let errors: f64 = metrics_texts.iter().filter_map(|(_, t)| metric(t, "aof_recovery_errors_total")).sum();
            let recovered: f64 = metrics_texts.iter().filter_map(|(_, t)| metric(t, "aof_recovery_recovered_total")).sum();
            let waits: f64 = metrics_texts.iter().filter_map(|(_, t)| metric(t, "aof_recovery_rate_limit_waits_total")).sum();
            let due = rs.interval_secs.saturating_mul(3000).max(60_000);
            if !rs.enabled {
                r.line(Level::Ok, "recovery", "periodic sweep disabled (spec.platforms.github.recovery.enabled: false); `aofctl github recover` still works");
            } else if last_sweep_ms == 0 || now_ms().saturating_sub(last_sweep_ms) > due {
                r.line(Level::Warn, "recovery", format!("no delivery recovery sweep in the last {}; check the leader's log for `delivery recovery`", ago(due)));
            } else {
                r.line(Level::Ok, "recovery", format!("last sweep {} ago; {recovered} deliveries recovered, {waits} rate-limit waits since the nodes started", ago(now_ms().saturating_sub(last_sweep_ms))));
            }
            if errors > 0.0 {
                r.line(Level::Warn, "recovery", format!("{errors} recovery errors (aof_recovery_errors_total by reason); check the token (admin:repo_hook / admin:org_hook) and hook ids"));
            }
            for h in &rs.hooks {
                let msg = match &h.checkpoint {
                    Some(c) => format!("{}: checkpoint at delivery {} (moved {} ago), {} recovered in total", h.source, c.last_delivery_id, ago(now_ms().saturating_sub(c.at_ms)), c.recovered_total),
                    None => format!("{}: no checkpoint yet (no delivery swept)", h.source),
                };
                r.line(if h.token { Level::Ok } else { Level::Warn }, "recovery", if h.token { msg } else { format!("{msg}; the answering node has no token for it") });
            }
        }
        Err(e) if e.is_not_found() => {}
        Err(e) => r.line(Level::Warn, "recovery", format!("cannot read the delivery recovery status: {e}")),
    }

    // Dead-letter queue.
    match client.list_dlq(Some(10_000), Consistency::Linearizable).await {
        Ok(dlq) => {
            let n = dlq.items.len();
            let hour_ago = now_ms().saturating_sub(3_600_000);
            let recent = dlq.items.iter().filter(|j| j.dead_since_ms.is_some_and(|t| t >= hour_ago)).count();
            if n == 0 {
                r.line(Level::Ok, "dead letters", "none");
            } else {
                r.line(Level::Warn, "dead letters", format!("{n} job(s), {recent} in the last hour; inspect with `aofctl dlq list`, retry with `aofctl dlq redrive --all`"));
            }
        }
        Err(e) => r.line(Level::Warn, "dead letters", format!("cannot read the dead-letter queue: {e}")),
    }

    // Expired leases relative to grants.
    let grants: f64 = metrics_texts.iter().filter_map(|(_, t)| metric(t, "aof_lease_grants_total")).sum();
    let expiries: f64 = metrics_texts.iter().filter_map(|(_, t)| metric(t, "aof_lease_expiries_total")).sum();
    if grants > 0.0 && expiries / grants > 0.1 {
        r.line(Level::Warn, "leases", format!("{expiries} of {grants} leases expired; workers are dying or too slow — raise spec.queue.lease_timeout_ms or extend more often"));
    } else {
        r.line(Level::Ok, "leases", format!("{expiries} expired of {grants} granted"));
    }

    // Disk space.
    let min = args.min_free_disk_mb * 1024 * 1024;
    for (id, t) in &metrics_texts {
        let Some(free) = metric(t, "aof_disk_free_bytes") else { continue };
        let free = free as u64;
        let level = if free < min / 10 { Level::Fail } else if free < min { Level::Warn } else { Level::Ok };
        r.line(level, "disk", format!("node {id}: {} MiB free in its data dir's file system{}", free / (1024 * 1024), if level == Level::Ok { "" } else { "; free space or move the data dir — sled stops when the disk is full" }));
    }
    Ok(r.worst < Level::Fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_metric_lines() {
        let text = "# HELP x y\naof_lease_grants_total 3\naof_queue_jobs{target=\"a\"} 2\naof_queue_jobs{target=\"b\"} 5\n# EOF\n";
        assert_eq!(metric(text, "aof_lease_grants_total"), Some(3.0));
        assert_eq!(metric(text, "aof_queue_jobs"), Some(7.0));
        assert_eq!(metric(text, "missing"), None);
    }

    #[test]
    fn last_webhook_is_the_newest_node_timestamp_in_ms() {
        let a = "aof_last_webhook_timestamp_seconds 1764770000.25\n";
        let b = "aof_last_webhook_timestamp_seconds 1764770001.5\n";
        let none = "aof_last_webhook_timestamp_seconds 0\n";
        assert_eq!(last_webhook_ms([a, b, none].into_iter()), 1_764_770_001_500);
        assert_eq!(last_webhook_ms([none].into_iter()), 0);
    }
}
