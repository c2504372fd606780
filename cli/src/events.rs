//! `aofctl get events` and `aofctl describe event ID | --delivery ID`: what
//! happened to webhook deliveries — the event, its context variables, and each
//! job with its target, state and state history.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use aof_client::{Event, EventFilter, EventPage, EventStatus, JobState};
use clap::{Args, Subcommand, ValueEnum};

use crate::output::{age_since_ms, human_age, now_ms, print_list, print_structured, ListFormat, OutputFormat, Table};
use crate::{ConsistencyArg, GlobalArgs};

#[derive(Debug, Args)]
pub struct GetEventsArgs {
    /// Only events of this repository (owner/name).
    #[arg(long, value_name = "OWNER/NAME")]
    pub repo: Option<String>,
    /// Only events in this status.
    #[arg(long, value_enum)]
    pub status: Option<StatusArg>,
    /// Only events of this GitHub event type (e.g. pull_request).
    #[arg(long, value_name = "EVENT")]
    pub event: Option<String>,
    /// At most this many events (1-1000), oldest first.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub limit: u64,
    /// Only events with a larger id (the next page).
    #[arg(long, value_name = "EVENT_ID")]
    pub after: Option<u64>,
    #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
    pub output: ListFormat,
    /// `stale` reads the answering node's local copy (works without a leader).
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
    #[command(flatten)]
    pub watch: crate::watch::WatchArgs,
}

/// `--status` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StatusArg {
    Queued,
    Unmatched,
    #[value(name = "no_route", alias = "no-route")]
    NoRoute,
    Completed,
    Failed,
}

impl From<StatusArg> for EventStatus {
    fn from(s: StatusArg) -> Self {
        match s {
            StatusArg::Queued => EventStatus::Queued,
            StatusArg::Unmatched => EventStatus::Unmatched,
            StatusArg::NoRoute => EventStatus::NoRoute,
            StatusArg::Completed => EventStatus::Completed,
            StatusArg::Failed => EventStatus::Failed,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum DescribeCommand {
    /// Show one event: its fields, context variables, and each job's history.
    #[command(visible_alias = "events")]
    Event(DescribeEventArgs),
    /// Show one trigger: what it matches, where matches go, and its document
    /// (secrets redacted as the API returns them).
    #[command(
        visible_alias = "triggers",
        after_help = "Examples:\n  aofctl describe trigger pr-bot\n  aofctl describe trigger pr-bot -o yaml"
    )]
    Trigger(crate::triggers::DescribeTriggerArgs),
}

#[derive(Debug, Args)]
pub struct DescribeEventArgs {
    /// The event id (as answered by the webhook, or shown by `get events`).
    #[arg(required_unless_present = "delivery", conflicts_with = "delivery")]
    pub id: Option<u64>,
    /// Find the event by GitHub's delivery id (X-GitHub-Delivery) instead.
    #[arg(long, value_name = "DELIVERY_ID")]
    pub delivery: Option<String>,
    /// `json`/`yaml` print the event as the API returns it.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table, hide_possible_values = true)]
    pub output: OutputFormat,
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
}

pub async fn get(args: GetEventsArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let filter = EventFilter {
        repo: args.repo.clone(),
        status: args.status.map(Into::into),
        event: args.event.clone(),
        limit: Some(args.limit as usize),
        after: args.after,
    };
    let page: EventPage = global
        .client()
        .list_events(&filter, args.consistency.into())
        .await
        .context("listing events")?;
    if print_list(args.output, &page, || page.items.iter().map(|e| format!("event/{}", e.event_id)).collect())? {
        return Ok(());
    }
    if page.items.is_empty() && page.next_after.is_some() {
        eprintln!("No matching events in this part of the log (one request scans a bounded number of events).");
    } else if page.items.is_empty() {
        eprintln!("No events found.");
    } else {
        print!(
            "{}",
            render_events(&page.items, args.output == ListFormat::Wide, now_ms())
        );
    }
    if !args.watch.watch {
        if let Some(next) = page.next_after {
            eprintln!("(more events: add --after {next})");
        }
        return Ok(());
    }
    // Watch: follow the log from where the first listing stopped.
    let cursor = std::cell::Cell::new(
        page.next_after
            .or(page.items.last().map(|e| e.event_id))
            .or(args.after),
    );
    let header_shown = std::cell::Cell::new(!page.items.is_empty());
    let client = global.client();
    let (client, cursor, filter, args, header_shown) = (&client, &cursor, &filter, &args, &header_shown);
    crate::watch::run(&args.watch, move || async move {
        // Bounded catch-up per poll; the next poll goes on from the cursor.
        for _ in 0..20 {
            let f = EventFilter { after: cursor.get(), ..filter.clone() };
            let page = client
                .list_events(&f, args.consistency.into())
                .await
                .context("listing new events")?;
            print_new_events(args.output, &page.items, header_shown)?;
            let next = page.next_after.or(page.items.last().map(|e| e.event_id));
            if next.is_some() {
                cursor.set(next);
            }
            if page.next_after.is_none() {
                break;
            }
        }
        Ok(())
    })
    .await
}

/// The events a watch found since its last poll: table rows without the header,
/// `event/<id>` lines, or one JSON object (YAML document) per event.
fn print_new_events(format: ListFormat, items: &[Event], header_shown: &std::cell::Cell<bool>) -> anyhow::Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    match format {
        ListFormat::Table | ListFormat::Wide => {
            let table = render_events(items, format == ListFormat::Wide, now_ms());
            if header_shown.replace(true) {
                print!("{}", crate::watch::rows_only(&table));
            } else {
                print!("{table}");
            }
        }
        ListFormat::Name => {
            for e in items {
                println!("event/{}", e.event_id);
            }
        }
        ListFormat::Json => {
            for e in items {
                println!("{}", serde_json::to_string(e)?);
            }
        }
        ListFormat::Yaml => {
            for e in items {
                print!("---\n{}", crate::output::to_yaml(e)?);
            }
        }
    }
    Ok(())
}

fn dash(s: Option<&str>) -> String {
    match s {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => "-".into(),
    }
}

/// `completed/total` jobs.
fn jobs_summary(e: &Event) -> String {
    let done = e
        .jobs
        .iter()
        .filter(|j| j.state == JobState::Completed)
        .count();
    format!("{done}/{}", e.jobs.len())
}

/// The `get events` table; `wide` adds SENDER, COMMAND, TARGETS and NODE.
pub fn render_events(items: &[Event], wide: bool, now_ms: u64) -> String {
    let mut t = if wide {
        Table::new([
            "ID", "DELIVERY", "EVENT", "ACTION", "REPO", "SENDER", "STATUS", "TRIGGER", "COMMAND",
            "JOBS", "TARGETS", "NODE", "AGE",
        ])
    } else {
        Table::new([
            "ID", "DELIVERY", "EVENT", "ACTION", "REPO", "STATUS", "TRIGGER", "JOBS", "AGE",
        ])
    };
    for e in items {
        let mut row = vec![
            e.event_id.to_string(),
            e.delivery_id.clone(),
            e.event.clone(),
            dash(e.action.as_deref()),
            dash(e.repo.as_deref()),
        ];
        if wide {
            row.push(dash(e.sender.as_deref()));
        }
        row.push(e.status.to_string());
        row.push(dash(e.trigger.as_deref()));
        if wide {
            row.push(dash(e.command.as_deref()));
        }
        row.push(jobs_summary(e));
        if wide {
            let targets: Vec<String> = e.jobs.iter().map(|j| j.target.to_string()).collect();
            row.push(crate::output::join_list(&targets, 0));
            row.push(e.received_by.to_string());
        }
        row.push(age_since_ms(e.received_ms, now_ms));
        t.row(row);
    }
    t.render()
}

pub async fn describe(cmd: DescribeCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    let args = match cmd {
        DescribeCommand::Event(args) => args,
        DescribeCommand::Trigger(args) => return crate::triggers::describe(args, global).await,
    };
    let client = global.client();
    let consistency = args.consistency.into();
    let event = match (&args.delivery, args.id) {
        (Some(d), _) => client
            .get_delivery(d, consistency)
            .await
            .with_context(|| format!("getting delivery {d:?}"))?,
        (None, Some(id)) => client
            .get_event(id, consistency)
            .await
            .with_context(|| format!("getting event {id}"))?,
        (None, None) => unreachable!("clap requires an id or --delivery"),
    };
    if print_structured(args.output, &event)? {
        return Ok(());
    }
    print!("{}", render_event(&event, now_ms()));
    Ok(())
}

/// Days since 1970-01-01 → (year, month, day) (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `2025-01-02T03:04:05Z` (UTC).
pub fn rfc3339(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        (s / 60) % 60,
        s % 60
    )
}

/// `2025-01-02T03:04:05Z (5m ago)` / `(in 7d)`; `-` if unknown.
fn when(ms: Option<u64>, now_ms: u64) -> String {
    match ms {
        None | Some(0) => "-".into(),
        Some(t) if t > now_ms => format!(
            "{} (in {})",
            rfc3339(t),
            human_age(Duration::from_millis(t - now_ms))
        ),
        Some(t) => format!("{} ({} ago)", rfc3339(t), age_since_ms(t, now_ms)),
    }
}

fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `describe event`: kubectl-describe-like text.
pub fn render_event(e: &Event, now_ms: u64) -> String {
    let mut out = String::new();
    let field = |out: &mut String, k: &str, v: String| {
        let _ = writeln!(out, "{:<13}{v}", format!("{k}:"));
    };
    field(&mut out, "Event", e.event_id.to_string());
    field(&mut out, "Delivery", e.delivery_id.clone());
    field(&mut out, "Type", e.event.clone());
    field(&mut out, "Action", dash(e.action.as_deref()));
    field(&mut out, "Repository", dash(e.repo.as_deref()));
    field(&mut out, "Sender", dash(e.sender.as_deref()));
    field(&mut out, "Status", e.status.to_string());
    field(&mut out, "Trigger", dash(e.trigger.as_deref()));
    field(&mut out, "Command", dash(e.command.as_deref()));
    field(
        &mut out,
        "Received",
        format!(
            "{} by node {}",
            when(Some(e.received_ms), now_ms),
            e.received_by
        ),
    );
    field(&mut out, "Finished", when(e.finished_ms, now_ms));
    field(&mut out, "Expires", when(e.expires_ms, now_ms));
    field(&mut out, "Payload", format!("{} bytes", e.payload_bytes));

    out.push_str("Context:\n");
    if e.context.is_empty() {
        out.push_str("  (none)\n");
    } else {
        let width = e.context.keys().map(|k| k.len()).max().unwrap_or(0);
        for (k, v) in &e.context {
            let _ = writeln!(out, "  {k:<width$}  {}", json_text(v));
        }
    }

    out.push_str("Jobs:\n");
    if e.jobs.is_empty() {
        let why = match e.status {
            EventStatus::Unmatched => " — no trigger matched this event",
            EventStatus::NoRoute => " — the trigger routed it to no agent, fleet or flow",
            _ => "",
        };
        let _ = writeln!(out, "  (none){why}");
    }
    for j in &e.jobs {
        let _ = writeln!(out, "  {}:", j.job_id);
        let _ = writeln!(out, "    Target:    {}", j.target);
        let _ = writeln!(out, "    State:     {}", j.state);
        let _ = writeln!(out, "    Attempts:  {}", j.attempts);
        if !j.priority.is_empty() {
            let _ = writeln!(out, "    Priority:  {}", j.priority);
        }
        if !j.params.is_null() {
            let _ = writeln!(out, "    Params:    {}", j.params);
        }
        out.push_str("    History:\n");
        let mut t = Table::new(["AGE", "STATE", "INDEX", "NOTE"]);
        for h in &j.history {
            t.row([
                age_since_ms(h.at_ms, now_ms),
                h.state.to_string(),
                h.index.to_string(),
                h.note.clone().unwrap_or_default(),
            ]);
        }
        for line in t.render().lines() {
            let _ = writeln!(out, "      {line}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        serde_json::from_value(serde_json::json!({
            "event_id": 12, "delivery_id": "d-1", "event": "push", "action": null,
            "repo": "myorg/api", "sender": "alice", "status": "completed", "trigger": "all",
            "command": null, "received_ms": 1_000_000, "received_by": 2, "finished_ms": 1_003_000,
            "expires_ms": 2_000_000, "payload_bytes": 99,
            "context": {"event_type": "push", "repo_full_name": "myorg/api", "commit_count": 2},
            "jobs": [{"job_id": "12-0", "target": {"kind": "agent", "name": "worker"}, "params": null,
                      "priority": "normal", "state": "completed", "attempts": 1,
                      "history": [
                        {"state": "ready", "at_ms": 1_000_000, "index": 12, "note": null},
                        {"state": "leased", "at_ms": 1_001_000, "index": 14, "note": "leased to w-1 (attempt 1, token 14)"},
                        {"state": "completed", "at_ms": 1_003_000, "index": 20, "note": "completed by w-1"}]}]
        }))
        .unwrap()
    }

    #[test]
    fn timestamps_are_utc_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn the_events_table_has_the_documented_columns() {
        let text = render_events(&[sample()], false, 1_005_000);
        assert_eq!(
            text,
            "ID   DELIVERY   EVENT   ACTION   REPO        STATUS      TRIGGER   JOBS   AGE\n\
             12   d-1        push    -        myorg/api   completed   all       1/1    5s\n"
        );
        let wide = render_events(&[sample()], true, 1_005_000);
        assert!(
            wide.starts_with("ID   DELIVERY   EVENT   ACTION   REPO        SENDER   STATUS"),
            "{wide}"
        );
        assert!(wide.contains("agent/worker"), "{wide}");
    }

    #[test]
    fn describe_shows_fields_context_and_job_history() {
        let text = render_event(&sample(), 1_005_000);
        assert!(
            text.starts_with("Event:       12\nDelivery:    d-1\n"),
            "{text}"
        );
        assert!(text.contains("Status:      completed\n"), "{text}");
        assert!(
            text.contains("Received:    1970-01-01T00:16:40Z (5s ago) by node 2\n"),
            "{text}"
        );
        assert!(
            text.contains("Expires:     1970-01-01T00:33:20Z (in 16m)\n"),
            "{text}"
        );
        assert!(text.contains("  commit_count    2\n"), "{text}");
        assert!(text.contains("  repo_full_name  myorg/api\n"), "{text}");
        assert!(
            text.contains("  12-0:\n    Target:    agent/worker\n    State:     completed\n"),
            "{text}"
        );
        assert!(
            text.contains("      AGE   STATE       INDEX   NOTE\n"),
            "{text}"
        );
        assert!(
            text.contains("      4s    leased      14      leased to w-1 (attempt 1, token 14)\n"),
            "{text}"
        );
    }

    #[test]
    fn an_unmatched_event_says_why_it_has_no_jobs() {
        let mut e = sample();
        e.jobs.clear();
        e.status = EventStatus::Unmatched;
        assert!(render_event(&e, 0).contains("(none) — no trigger matched this event"));
    }
}
