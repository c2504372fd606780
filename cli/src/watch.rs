//! `--watch` (`-w`) of `get events` and `queue stats`: poll every `--interval`,
//! print the table once and then only what is new or changed, until Ctrl-C (or
//! SIGTERM) or `--watch-timeout`.
//!
//! A failed poll (no leader for a moment, a node restarting) prints a warning and
//! the watch goes on; the next poll picks up where the last good one stopped.

use std::future::Future;
use std::time::Duration;

use clap::Args;

#[derive(Clone, Debug, Args)]
pub struct WatchArgs {
    /// After the first listing, keep polling and print what is new or changed,
    /// until Ctrl-C.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// How often `--watch` polls (e.g. 500ms, 2s, 1m).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_interval, requires = "watch")]
    pub interval: Duration,
    /// Stop watching after this long (exit code 0); default: until Ctrl-C.
    #[arg(long, value_name = "DURATION", value_parser = crate::parse_duration, requires = "watch")]
    pub watch_timeout: Option<Duration>,
}

/// A `--interval`: a duration of at least 100ms (no busy polling).
fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = crate::parse_duration(s)?;
    if d < Duration::from_millis(100) {
        return Err(format!("--interval {s:?} is too short: use at least 100ms"));
    }
    Ok(d)
}

/// Calls `poll` every `args.interval` (the first call after one interval: the
/// caller has printed the first listing) until Ctrl-C/SIGTERM or the watch
/// timeout. An error of `poll` is printed as a warning; watching goes on.
pub async fn run<F, Fut>(args: &WatchArgs, mut poll: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut stop = crate::signals::Shutdown::new()?;
    let deadline = args.watch_timeout.map(|t| tokio::time::Instant::now() + t);
    let until_deadline = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until_deadline);
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + args.interval, args.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.recv() => return Ok(()),
            _ = &mut until_deadline => return Ok(()),
            _ = ticker.tick() => {
                // A poll waiting on a slow node does not hold up Ctrl-C or the timeout.
                tokio::select! {
                    r = poll() => if let Err(e) = r {
                        eprintln!("warning: {e:#} (still watching)");
                    },
                    _ = stop.recv() => return Ok(()),
                    _ = &mut until_deadline => return Ok(()),
                }
            }
        }
    }
}

/// The rows of a rendered table without its header line (for the updates of a
/// watch: the columns were named by the first listing).
pub fn rows_only(table: &str) -> &str {
    table.split_once('\n').map_or("", |(_, rest)| rest)
}
