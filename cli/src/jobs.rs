//! Queue controls: `aofctl get jobs`, `aofctl cancel job ID`, `aofctl rerun event ID`,
//! `aofctl queue limits` and `aofctl queue set-limits TARGET`.

use std::collections::BTreeMap;

use anyhow::Context as _;
use aof_client::{JobFilter, JobPage, ListedJob, TargetLimitsList};
use clap::{Args, Subcommand, ValueEnum};

use crate::output::{
    age_since_ms, now_ms, print_list, print_structured, ListFormat, OutputFormat, Table,
};
use crate::{ConsistencyArg, GlobalArgs};

#[derive(Debug, Args)]
pub struct GetJobsArgs {
    /// Only jobs in this state.
    #[arg(long, value_enum)]
    pub state: Option<JobStateArg>,
    /// Only jobs of this target (agent, fleet or flow name).
    #[arg(long, value_name = "TARGET")]
    pub target: Option<String>,
    /// Only jobs of events of this GitHub event type (e.g. pull_request).
    #[arg(long, value_name = "EVENT")]
    pub event: Option<String>,
    /// At most this many jobs (1-1000), oldest first.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub limit: u64,
    /// Only jobs after this job id (the next page).
    #[arg(long, value_name = "JOB_ID")]
    pub after: Option<String>,
    #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
    pub output: ListFormat,
    /// `stale` reads the answering node's local copy (works without a leader).
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
    #[command(flatten)]
    pub watch: crate::watch::WatchArgs,
}

/// `--state` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum JobStateArg {
    Ready,
    Delayed,
    Leased,
    Dead,
    #[value(name = "completed", alias = "done")]
    Completed,
    Cancelled,
    Purged,
}

impl JobStateArg {
    fn as_str(self) -> &'static str {
        match self {
            JobStateArg::Ready => "ready",
            JobStateArg::Delayed => "delayed",
            JobStateArg::Leased => "leased",
            JobStateArg::Dead => "dead",
            JobStateArg::Completed => "completed",
            JobStateArg::Cancelled => "cancelled",
            JobStateArg::Purged => "purged",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum CancelCommand {
    /// Cancel a ready, delayed or leased job: it is not run (again), and a worker
    /// holding it is refused its next heartbeat or result.
    #[command(visible_alias = "jobs")]
    Job(CancelJobArgs),
}

#[derive(Debug, Args)]
pub struct CancelJobArgs {
    /// The job id (see `aofctl get jobs`).
    pub id: String,
    /// Why, for the job's history (one line).
    #[arg(long)]
    pub reason: Option<String>,
    /// `json`/`yaml` print the API's answer.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table, hide_possible_values = true)]
    pub output: OutputFormat,
}

#[derive(Debug, Subcommand)]
pub enum RerunCommand {
    /// Run an event again: new jobs for the routes it matched, from its stored
    /// payload (while the event is retained).
    #[command(visible_alias = "events")]
    Event(RerunEventArgs),
}

#[derive(Debug, Args)]
pub struct RerunEventArgs {
    /// The event id (see `aofctl get events`).
    pub id: u64,
    /// `json`/`yaml` print the API's answer.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table, hide_possible_values = true)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct LimitsArgs {
    #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
    pub output: ListFormat,
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
}

#[derive(Debug, Args)]
pub struct SetLimitsArgs {
    /// The target (agent, fleet or flow name).
    pub target: String,
    /// Most jobs of the target leased at once across the cluster (0 = no limit).
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub max_in_flight: u32,
    /// A job waiting longer than this (ready or delayed) goes to the dead-letter
    /// queue, e.g. 30m, 1h, 2d (default: no limit).
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    /// `json`/`yaml` print the API's answer.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table, hide_possible_values = true)]
    pub output: OutputFormat,
}

pub async fn get(args: GetJobsArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let filter = JobFilter {
        state: args.state.map(|s| s.as_str().to_string()),
        target: args.target.clone(),
        event: args.event.clone(),
        limit: Some(args.limit as usize),
        after: args.after.clone(),
    };
    let client = global.client();
    let page: JobPage = client
        .list_jobs(&filter, args.consistency.into())
        .await
        .context("listing jobs")?;
    if print_list(args.output, &page, || {
        page.items
            .iter()
            .map(|j| format!("job/{}", j.job.job_id))
            .collect()
    })? {
        if !args.watch.watch {
            return Ok(());
        }
    } else if page.items.is_empty() {
        eprintln!("No jobs found.");
    } else {
        print!(
            "{}",
            render_jobs(&page.items, args.output == ListFormat::Wide, now_ms())
        );
    }
    if !args.watch.watch {
        if let Some(next) = &page.next_after {
            eprintln!("(more jobs: add --after {next})");
        }
        return Ok(());
    }
    // Watch: re-list and print the jobs that are new or changed state.
    let seen = std::cell::RefCell::new(fingerprints(&page.items));
    let header_shown = std::cell::Cell::new(!page.items.is_empty());
    let (client, filter, args, seen, header_shown) =
        (&client, &filter, &args, &seen, &header_shown);
    crate::watch::run(&args.watch, move || async move {
        let page = client
            .list_jobs(filter, args.consistency.into())
            .await
            .context("listing jobs")?;
        let now = fingerprints(&page.items);
        let changed: Vec<ListedJob> = page
            .items
            .into_iter()
            .filter(|j| seen.borrow().get(&j.job.job_id) != now.get(&j.job.job_id))
            .collect();
        *seen.borrow_mut() = now;
        if changed.is_empty() {
            return Ok(());
        }
        match args.output {
            ListFormat::Table | ListFormat::Wide => {
                let table = render_jobs(&changed, args.output == ListFormat::Wide, now_ms());
                if header_shown.replace(true) {
                    print!("{}", crate::watch::rows_only(&table));
                } else {
                    print!("{table}");
                }
            }
            ListFormat::Name => changed
                .iter()
                .for_each(|j| println!("job/{}", j.job.job_id)),
            ListFormat::Json => {
                for j in &changed {
                    println!("{}", serde_json::to_string(j)?);
                }
            }
            ListFormat::Yaml => {
                for j in &changed {
                    print!("---\n{}", crate::output::to_yaml(j)?);
                }
            }
        }
        Ok(())
    })
    .await
}

/// Job id → (state, attempts): what a watch compares.
fn fingerprints(items: &[ListedJob]) -> BTreeMap<String, (String, u32)> {
    items
        .iter()
        .map(|j| {
            (
                j.job.job_id.clone(),
                (j.job.state.to_string(), j.job.attempts),
            )
        })
        .collect()
}

/// The `get jobs` table; `wide` adds the delivery, trigger, worker and last note.
pub fn render_jobs(items: &[ListedJob], wide: bool, now_ms: u64) -> String {
    let mut t = if wide {
        Table::new([
            "JOB", "EVENT", "TYPE", "DELIVERY", "TARGET", "TRIGGER", "STATE", "ATTEMPTS", "WORKER",
            "AGE", "LAST",
        ])
    } else {
        Table::new(["JOB", "EVENT", "TYPE", "TARGET", "STATE", "ATTEMPTS", "AGE"])
    };
    for j in items {
        let created = j.job.history.first().map_or(j.enqueued_ms, |h| h.at_ms);
        let mut row = vec![
            j.job.job_id.clone(),
            j.event_id.to_string(),
            if j.event.is_empty() {
                "-".into()
            } else {
                j.event.clone()
            },
        ];
        if wide {
            row.push(j.delivery_id.clone());
        }
        row.push(j.job.target.to_string());
        if wide {
            row.push(if j.trigger.is_empty() {
                "-".into()
            } else {
                j.trigger.clone()
            });
        }
        row.push(j.job.state.to_string());
        row.push(j.job.attempts.to_string());
        if wide {
            row.push(j.lease.as_ref().map_or("-".into(), |l| l.worker_id.clone()));
        }
        row.push(age_since_ms(created, now_ms));
        if wide {
            let note = j
                .job
                .history
                .last()
                .and_then(|h| h.note.clone())
                .unwrap_or_else(|| "-".into());
            row.push(note.split_whitespace().collect::<Vec<_>>().join(" "));
        }
        t.row(row);
    }
    t.render()
}

pub async fn cancel(cmd: CancelCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    let CancelCommand::Job(args) = cmd;
    let r = global
        .client()
        .cancel_job(&args.id, args.reason.as_deref().unwrap_or(""))
        .await
        .with_context(|| format!("cancelling job {}", args.id))?;
    if !print_structured(args.output, &r)? {
        println!("job {} cancelled (was {})", r.job_id, r.was);
    }
    Ok(())
}

pub async fn rerun(cmd: RerunCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    let RerunCommand::Event(args) = cmd;
    let r = global
        .client()
        .rerun_event(args.id)
        .await
        .with_context(|| format!("re-running event {}", args.id))?;
    if !print_structured(args.output, &r)? {
        println!(
            "event {} re-run: new job(s) {}",
            r.event_id,
            r.jobs.join(", ")
        );
    }
    Ok(())
}

pub async fn limits(args: LimitsArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let list: TargetLimitsList = global
        .client()
        .target_limits(args.consistency.into())
        .await
        .context("reading the queue limits")?;
    if print_list(args.output, &list, || {
        list.items
            .iter()
            .map(|l| format!("target/{}", l.target))
            .collect()
    })? {
        return Ok(());
    }
    if list.items.is_empty() {
        eprintln!("No target has limits (set them with `aofctl queue set-limits TARGET --max-in-flight N --ttl 1h`).");
        return Ok(());
    }
    let mut t = Table::new(["TARGET", "MAX IN FLIGHT", "LEASED", "TTL"]);
    for l in &list.items {
        t.row([
            l.target.clone(),
            if l.max_in_flight == 0 {
                "-".into()
            } else {
                l.max_in_flight.to_string()
            },
            l.leased.map_or("-".into(), |n| n.to_string()),
            l.ttl.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

pub async fn set_limits(args: SetLimitsArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let r = global
        .client()
        .set_target_limits(&args.target, args.max_in_flight, args.ttl.as_deref())
        .await
        .with_context(|| format!("setting the limits of target {:?}", args.target))?;
    if !print_structured(args.output, &r)? {
        if r.max_in_flight == 0 && r.ttl.is_none() {
            println!("target {}: no limits", r.target);
        } else {
            let max = if r.max_in_flight == 0 {
                "unlimited".to_string()
            } else {
                r.max_in_flight.to_string()
            };
            println!(
                "target {}: max in flight {max}, ttl {}",
                r.target,
                r.ttl.as_deref().unwrap_or("none")
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_table_has_the_documented_columns() {
        let j: ListedJob = serde_json::from_value(serde_json::json!({
            "job_id": "7-0", "target": {"kind": "agent", "name": "helper"}, "params": null, "priority": "normal",
            "state": "cancelled", "attempts": 1,
            "history": [{"state": "ready", "at_ms": 1000, "index": 7, "note": null},
                        {"state": "cancelled", "at_ms": 2000, "index": 9, "note": "cancelled by token ops: wrong repo"}],
            "event_id": 7, "event": "push", "delivery_id": "d-7", "trigger": "all", "enqueued_ms": 1000, "lease": null
        }))
        .unwrap();
        assert_eq!(
            render_jobs(std::slice::from_ref(&j), false, 61_000),
            "JOB   EVENT   TYPE   TARGET         STATE       ATTEMPTS   AGE\n\
             7-0   7       push   agent/helper   cancelled   1          60s\n"
        );
        assert!(render_jobs(&[j], true, 61_000).contains("cancelled by token ops: wrong repo"));
    }
}
