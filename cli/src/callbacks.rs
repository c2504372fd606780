//! `aofctl get callbacks`: completion notices in the replicated outbox — pending
//! (being sent, with their last error) and dead (gave up after `max_attempts`).

use anyhow::Context as _;
use aof_client::{CallbackList, CallbackNotice};
use clap::{Args, ValueEnum};

use crate::output::{age_since_ms, now_ms, print_list, ListFormat, Table};
use crate::{ConsistencyArg, GlobalArgs};

#[derive(Debug, Args)]
pub struct GetCallbacksArgs {
    /// Only notices in this state (delivered notices leave the outbox).
    #[arg(long, value_enum)]
    pub state: Option<CallbackStateArg>,
    /// At most this many notices (1-1000), oldest first.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub limit: u64,
    #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
    pub output: ListFormat,
    /// `stale` reads the answering node's local copy (works without a leader).
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
}

/// `--state` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CallbackStateArg {
    Pending,
    Dead,
}

impl CallbackStateArg {
    fn as_str(self) -> &'static str {
        match self {
            CallbackStateArg::Pending => "pending",
            CallbackStateArg::Dead => "dead",
        }
    }
}

pub async fn get(args: GetCallbacksArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let list: CallbackList = global
        .client()
        .list_callbacks(
            args.state.map(CallbackStateArg::as_str),
            Some(args.limit as usize),
            args.consistency.into(),
        )
        .await
        .context("listing completion callbacks")?;
    if print_list(args.output, &list, || {
        list.items
            .iter()
            .map(|n| format!("callback/{}", n.id))
            .collect()
    })? {
        return Ok(());
    }
    if list.items.is_empty() {
        eprintln!(
            "No callback notices found ({} pending in all).",
            list.pending
        );
        return Ok(());
    }
    print!(
        "{}",
        render_callbacks(&list.items, args.output == ListFormat::Wide, now_ms())
    );
    Ok(())
}

/// The table of `aofctl get callbacks` (`wide`: delivery, URL, idempotency key).
pub fn render_callbacks(items: &[CallbackNotice], wide: bool, now_ms: u64) -> String {
    let mut t = if wide {
        Table::new([
            "ID",
            "STATE",
            "OUTCOME",
            "JOB",
            "DELIVERY",
            "TRIGGER",
            "URL",
            "ATTEMPTS",
            "AGE",
            "IDEMPOTENCY-KEY",
            "LAST-ERROR",
        ])
    } else {
        Table::new([
            "ID",
            "STATE",
            "OUTCOME",
            "JOB",
            "TRIGGER",
            "ATTEMPTS",
            "AGE",
            "LAST-ERROR",
        ])
    };
    for n in items {
        let err = n.last_error.as_deref().map_or("-".to_string(), |e| {
            e.split_whitespace().collect::<Vec<_>>().join(" ")
        });
        let mut row = vec![
            n.id.clone(),
            n.state.clone(),
            n.outcome.clone(),
            n.job_id.clone(),
        ];
        if wide {
            row.push(n.delivery_id.clone());
        }
        row.push(if n.trigger.is_empty() {
            "-".into()
        } else {
            n.trigger.clone()
        });
        if wide {
            row.push(n.url.clone());
        }
        row.push(n.attempts.to_string());
        row.push(age_since_ms(n.created_ms, now_ms));
        if wide {
            row.push(n.idempotency_key.clone());
        }
        row.push(err);
        t.row(row);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_pending_and_dead_notices() {
        let n: CallbackNotice = serde_json::from_value(serde_json::json!({
            "id": "1024-512-0", "state": "dead", "outcome": "completed", "trigger": "t", "event_id": 512,
            "delivery_id": "d-1", "job_id": "512-0", "url": "http://x/cb", "attempts": 3, "created_ms": 1000,
            "idempotency_key": "d-1/512-0/1024", "last_error": "the callback secret variable S is not set\non node 1"
        }))
        .unwrap();
        let out = render_callbacks(&[n.clone()], false, 61_000);
        assert!(out.starts_with("ID"), "{out}");
        assert!(
            out.contains("1024-512-0")
                && out.contains("dead")
                && out.contains("60s")
                && out.contains("not set on node 1"),
            "{out}"
        );
        let wide = render_callbacks(&[n], true, 61_000);
        assert!(
            wide.contains("http://x/cb") && wide.contains("d-1/512-0/1024"),
            "{wide}"
        );
    }
}
