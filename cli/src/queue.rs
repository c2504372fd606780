//! `aofctl queue stats` (limits: see [`crate::jobs`]) and `aofctl dlq list|redrive|purge`: the work queue's
//! depth per target and its dead-letter queue.
//!
//! `dlq purge` drops jobs for good, so it asks for confirmation on a terminal
//! unless `--yes`; without a terminal it needs `--yes`.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::time::Duration;

use anyhow::{bail, Context as _};
use aof_client::{DeadJob, DeadJobList, DlqResult, DlqSelector, QueueDepth, QueueStats};
use clap::{Args, Subcommand};

use crate::output::{age_since_ms, human_age, now_ms, print_list, print_structured, ListFormat, OutputFormat, Table};
use crate::{ConsistencyArg, GlobalArgs};

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Jobs per target and priority: ready, delayed (backoff), leased, dead.
    Stats(QueueStatsArgs),
    /// Per-target limits: most jobs in flight, longest wait (ttl).
    Limits(crate::jobs::LimitsArgs),
    /// Set a target's limits (0 / no --ttl removes them).
    SetLimits(crate::jobs::SetLimitsArgs),
}

#[derive(Debug, Args)]
pub struct QueueStatsArgs {
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
    #[command(flatten)]
    pub watch: crate::watch::WatchArgs,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead-lettered jobs (retries used up, or failed as not retryable).
    List(DlqListArgs),
    /// Put dead jobs back in the queue (their attempts start over).
    ///
    /// `--all` redrives the jobs listed in the dead-letter queue one by one (a bar
    /// shows how many of them are back, on a terminal), then any beyond the first
    /// 10 000 in one go.
    #[command(after_help = "Examples:\n  aofctl dlq redrive 7-0\n  aofctl dlq redrive --all\n  aofctl dlq redrive --all -o json   # {\"jobs\": [...]}")]
    Redrive(DlqRedriveArgs),
    /// Drop dead jobs for good (their events stay, as `failed`).
    Purge(DlqPurgeArgs),
}

#[derive(Debug, Args)]
pub struct DlqListArgs {
    #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
    pub output: ListFormat,
    /// At most this many jobs, oldest first.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub limit: u64,
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
}

#[derive(Debug, Args)]
pub struct DlqSelectArgs {
    /// The dead job's id (see `aofctl dlq list`).
    #[arg(
        required_unless_present = "all",
        conflicts_with = "all",
        value_name = "JOB_ID"
    )]
    pub job_id: Option<String>,
    /// Every job in the dead-letter queue.
    #[arg(long)]
    pub all: bool,
}

impl DlqSelectArgs {
    fn selector(&self) -> DlqSelector {
        match &self.job_id {
            Some(id) => DlqSelector::Job(id.clone()),
            None => DlqSelector::All,
        }
    }

    fn describe(&self) -> String {
        match &self.job_id {
            Some(id) => format!("dead job {id}"),
            None => "every job in the dead-letter queue".into(),
        }
    }
}

#[derive(Debug, Args)]
pub struct DlqRedriveArgs {
    #[command(flatten)]
    pub select: DlqSelectArgs,
    /// `json`/`yaml`: the redriven job ids as `{"jobs": [...]}`.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct DlqPurgeArgs {
    #[command(flatten)]
    pub select: DlqSelectArgs,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

pub async fn queue(cmd: QueueCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    let args = match cmd {
        QueueCommand::Stats(args) => args,
        QueueCommand::Limits(args) => return crate::jobs::limits(args, global).await,
        QueueCommand::SetLimits(args) => return crate::jobs::set_limits(args, global).await,
    };
    let client = global.client();
    let stats: QueueStats = client
        .queue_stats(args.consistency.into())
        .await
        .context("reading the queue statistics")?;
    if !print_structured(args.output, &stats)? {
        if stats.items.is_empty() {
            eprintln!("The queue is empty: no ready, delayed, leased or dead jobs.");
        } else {
            print!("{}", render_stats(&stats.items));
        }
    }
    if !args.watch.watch {
        return Ok(());
    }
    let header_shown = std::cell::Cell::new(!stats.items.is_empty());
    let last = std::cell::RefCell::new(stats.items);
    let (client, args, last, header_shown) = (&client, &args, &last, &header_shown);
    crate::watch::run(&args.watch, move || async move {
        let now = client
            .queue_stats(args.consistency.into())
            .await
            .context("reading the queue statistics")?;
        let changed = changed_depths(&last.borrow(), &now.items);
        if !changed.is_empty() && !print_structured(args.output, &now)? {
            let table = render_stats(&changed);
            if header_shown.replace(true) {
                print!("{}", crate::watch::rows_only(&table));
            } else {
                print!("{table}");
            }
        }
        *last.borrow_mut() = now.items;
        Ok(())
    })
    .await
}

/// The rows of `now` whose counts differ from `before` (new rows included), and
/// rows gone since `before` with zero counts. The oldest age alone, which grows
/// with every poll, is not a change.
pub fn changed_depths(before: &[QueueDepth], now: &[QueueDepth]) -> Vec<QueueDepth> {
    let key = |d: &QueueDepth| (d.target_kind.clone(), d.target.clone(), d.priority.clone());
    let counts = |d: &QueueDepth| (d.ready, d.delayed, d.leased, d.dead);
    let mut out: Vec<QueueDepth> = now
        .iter()
        .filter(|d| !before.iter().any(|b| key(b) == key(d) && counts(b) == counts(d)))
        .cloned()
        .collect();
    for gone in before.iter().filter(|b| !now.iter().any(|d| key(d) == key(b))) {
        out.push(QueueDepth {
            ready: 0,
            delayed: 0,
            leased: 0,
            dead: 0,
            oldest_ready_age_ms: None,
            ..gone.clone()
        });
    }
    out
}

/// The `queue stats` table.
pub fn render_stats(items: &[QueueDepth]) -> String {
    let mut t = Table::new([
        "TARGET", "KIND", "PRIORITY", "READY", "DELAYED", "LEASED", "DEAD", "OLDEST",
    ]);
    for d in items {
        t.row([
            d.target.clone(),
            d.target_kind.clone(),
            d.priority.clone(),
            d.ready.to_string(),
            d.delayed.to_string(),
            d.leased.to_string(),
            d.dead.to_string(),
            d.oldest_ready_age_ms
                .map_or("-".into(), |ms| human_age(Duration::from_millis(ms))),
        ]);
    }
    t.render()
}

pub async fn dlq(cmd: DlqCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    let client = global.client();
    match cmd {
        DlqCommand::List(args) => {
            let list: DeadJobList = client
                .list_dlq(Some(args.limit as usize), args.consistency.into())
                .await
                .context("listing the dead-letter queue")?;
            if print_list(args.output, &list, || list.items.iter().map(|j| format!("job/{}", j.job_id)).collect())? {
                return Ok(());
            }
            if list.items.is_empty() {
                eprintln!("The dead-letter queue is empty.");
                return Ok(());
            }
            print!(
                "{}",
                render_dead(&list.items, args.output == ListFormat::Wide, now_ms())
            );
            eprintln!("(redrive with `aofctl dlq redrive JOB_ID|--all`, drop with `aofctl dlq purge JOB_ID|--all`)");
        }
        DlqCommand::Redrive(args) => {
            let r = redrive(&client, &args.select, args.output)
                .await
                .with_context(|| format!("redriving {}", args.select.describe()))?;
            if !print_structured(args.output, &r)? {
                println!("{}", done_message("redriven", "back in the queue", &r));
            }
        }
        DlqCommand::Purge(args) => {
            if !args.yes {
                confirm_purge(&args.select)?;
            }
            let r = client
                .purge_dlq(&args.select.selector())
                .await
                .with_context(|| format!("purging {}", args.select.describe()))?;
            println!("{}", done_message("purged", "dropped", &r));
        }
    }
    Ok(())
}

/// Most dead jobs `dlq redrive --all` lists and redrives one by one; the rest go in
/// one `{"all": true}` request.
const REDRIVE_LISTED: usize = 10_000;

/// Redrives in flight at once (the leader batches them into few log entries).
const REDRIVE_PARALLEL: usize = 8;

/// `dlq redrive`: one job, or every dead job — those listed one by one, with a
/// progress bar of how many of them are back in the queue, then whatever lay
/// beyond the listing in one request. A listed job that is no longer dead when its
/// turn comes (redriven or purged meanwhile) is skipped.
async fn redrive(client: &aof_client::Client, select: &DlqSelectArgs, output: OutputFormat) -> anyhow::Result<DlqResult> {
    if select.job_id.is_some() {
        return Ok(client.redrive_dlq(&select.selector()).await?);
    }
    let listed = client
        .list_dlq(Some(REDRIVE_LISTED), aof_client::Consistency::Linearizable)
        .await
        .context("listing the dead-letter queue")?
        .items;
    let structured = matches!(output, OutputFormat::Json | OutputFormat::Yaml);
    let bar = crate::progress::bar(listed.len() as u64, "redriving dead jobs", structured);
    let mut done: Vec<Option<Vec<String>>> = vec![None; listed.len()];
    let mut running = tokio::task::JoinSet::new();
    let mut next = 0;
    while next < listed.len() || !running.is_empty() {
        while next < listed.len() && running.len() < REDRIVE_PARALLEL {
            let (client, i, id) = (client.clone(), next, listed[next].job_id.clone());
            running.spawn(async move { (i, client.redrive_dlq(&DlqSelector::Job(id.clone())).await, id) });
            next += 1;
        }
        let Some(joined) = running.join_next().await else { break };
        let (i, r, id) = joined.context("a redrive task failed")?;
        done[i] = Some(match r {
            Ok(r) => r.jobs,
            Err(e) if e.is_not_found() => Vec::new(), // no longer dead: skipped
            Err(e) => {
                let back = done.iter().flatten().map(Vec::len).sum::<usize>();
                return Err(anyhow::Error::new(e).context(format!(
                    "redriving job {id} ({back} of {} listed jobs are back in the queue; run the command again for the rest)",
                    listed.len()
                )));
            }
        });
        if let Some(pb) = &bar {
            pb.inc(1);
        }
    }
    drop(bar);
    let mut jobs: Vec<String> = done.into_iter().flatten().flatten().collect();
    if listed.len() >= REDRIVE_LISTED {
        jobs.extend(client.redrive_dlq(&DlqSelector::All).await?.jobs);
    }
    Ok(DlqResult { jobs })
}

/// `redriven 2 jobs (back in the queue): 7-0, 9-0`.
pub fn done_message(verb: &str, what: &str, r: &DlqResult) -> String {
    match r.jobs.len() {
        0 => format!("nothing {verb}: the dead-letter queue is empty"),
        1 => format!("{verb} job {} ({what})", r.jobs[0]),
        n => format!("{verb} {n} jobs ({what}): {}", r.jobs.join(", ")),
    }
}

/// Asks on the terminal; refuses without one.
fn confirm_purge(select: &DlqSelectArgs) -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "refusing to purge {} without confirmation: stdin is not a terminal; pass --yes to purge anyway (this cannot be undone)",
            select.describe()
        );
    }
    eprint!(
        "Purge {}? Purged jobs are not run again; this cannot be undone. [y/N] ",
        select.describe()
    );
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("reading the answer")?;
    if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        bail!("purge cancelled; nothing was changed");
    }
    Ok(())
}

fn shorten(s: &str, max: usize) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if max == 0 || one_line.chars().count() <= max {
        return one_line;
    }
    let cut: String = one_line.chars().take(max.saturating_sub(3)).collect();
    format!("{cut}...")
}

/// The `dlq list` table; `wide` adds the delivery id and shows errors in full.
pub fn render_dead(items: &[DeadJob], wide: bool, now_ms: u64) -> String {
    let mut t = if wide {
        Table::new([
            "JOB",
            "EVENT",
            "DELIVERY",
            "TARGET",
            "TRIGGER",
            "ATTEMPTS",
            "DEAD",
            "LAST ERROR",
        ])
    } else {
        Table::new([
            "JOB",
            "EVENT",
            "TARGET",
            "TRIGGER",
            "ATTEMPTS",
            "DEAD",
            "LAST ERROR",
        ])
    };
    for j in items {
        let error = shorten(
            j.last_error.as_deref().unwrap_or("-"),
            if wide { 0 } else { 60 },
        );
        let mut row = vec![j.job_id.clone(), j.event_id.to_string()];
        if wide {
            row.push(j.delivery_id.clone());
        }
        row.extend([
            j.target.to_string(),
            if j.trigger.is_empty() {
                "-".into()
            } else {
                j.trigger.clone()
            },
            j.attempts.to_string(),
            age_since_ms(j.dead_since_ms.unwrap_or(0), now_ms),
            error,
        ]);
        t.row(row);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_table_has_the_documented_columns() {
        let d = QueueDepth {
            target_kind: "agent".into(),
            target: "helper".into(),
            priority: "normal".into(),
            ready: 2,
            delayed: 1,
            leased: 3,
            dead: 0,
            oldest_ready_age_ms: Some(90_000),
        };
        let none = QueueDepth {
            oldest_ready_age_ms: None,
            ..d.clone()
        };
        assert_eq!(
            render_stats(&[d, none]),
            "TARGET   KIND    PRIORITY   READY   DELAYED   LEASED   DEAD   OLDEST\n\
             helper   agent   normal     2       1         3        0      90s\n\
             helper   agent   normal     2       1         3        0      -\n"
        );
    }

    #[test]
    fn a_watch_prints_rows_whose_counts_changed() {
        let d = |target: &str, ready: u64, age: Option<u64>| QueueDepth {
            target_kind: "agent".into(),
            target: target.into(),
            priority: "normal".into(),
            ready,
            delayed: 0,
            leased: 0,
            dead: 0,
            oldest_ready_age_ms: age,
        };
        let before = vec![d("a", 1, Some(1000)), d("b", 2, Some(1000))];
        // Only the age grew: nothing to print.
        assert!(changed_depths(&before, &[d("a", 1, Some(3000)), d("b", 2, Some(3000))]).is_empty());
        // b changed, c is new, a is gone (printed with zero counts).
        let changed = changed_depths(&before, &[d("b", 3, Some(10)), d("c", 1, None)]);
        assert_eq!(changed, vec![d("b", 3, Some(10)), d("c", 1, None), d("a", 0, None)]);
    }

    #[test]
    fn dead_jobs_show_a_one_line_error() {
        let j: DeadJob = serde_json::from_value(serde_json::json!({
            "job_id": "7-0", "event_id": 7, "delivery_id": "d-7",
            "target": {"kind": "flow", "name": "deploy"}, "trigger": "push-main",
            "attempts": 2, "last_error": "exit status 3; stderr: line one\nline two", "dead_since_ms": 1000
        }))
        .unwrap();
        let text = render_dead(std::slice::from_ref(&j), false, 61_000);
        assert_eq!(
            text,
            "JOB   EVENT   TARGET        TRIGGER     ATTEMPTS   DEAD   LAST ERROR\n\
             7-0   7       flow/deploy   push-main   2          60s    exit status 3; stderr: line one line two\n"
        );
        assert!(render_dead(&[j], true, 61_000).contains("d-7"));
    }

    #[test]
    fn results_name_the_jobs() {
        let r = |jobs: &[&str]| DlqResult {
            jobs: jobs.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(
            done_message("redriven", "back in the queue", &r(&[])),
            "nothing redriven: the dead-letter queue is empty"
        );
        assert_eq!(
            done_message("purged", "dropped", &r(&["7-0"])),
            "purged job 7-0 (dropped)"
        );
        assert_eq!(
            done_message("redriven", "back in the queue", &r(&["7-0", "9-0"])),
            "redriven 2 jobs (back in the queue): 7-0, 9-0"
        );
    }
}
