//! `aofctl github recover --since 2h [--dry-run]`: sweep the configured GitHub hooks'
//! delivery logs now and ingest the deliveries the cluster never accepted (or, with
//! `--dry-run`, only list them). The nodes' `spec.platforms.github.recovery` says
//! which hooks; the sweep runs on the node that answers (admin token).

use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::output::{print_structured, OutputFormat};
use crate::GlobalArgs;

#[derive(Debug, Subcommand)]
pub enum GithubCommand {
    /// Recover deliveries GitHub failed to deliver: list each configured hook's
    /// deliveries of the last --since and ingest those the cluster never accepted.
    #[command(
        after_help = "Examples:\n  aofctl github recover --since 2h --dry-run\n  aofctl github recover --since 6h"
    )]
    Recover(RecoverArgs),
}

#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// How far back to look (e.g. 30m, 2h, 1d); default: the nodes' `recovery.since`.
    #[arg(long, value_name = "DURATION", value_parser = check_since)]
    pub since: Option<String>,
    /// Only list what would be recovered; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

fn check_since(s: &str) -> Result<String, String> {
    crate::parse_duration(s).map(|_| s.to_string())
}

pub async fn run(cmd: GithubCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    let GithubCommand::Recover(args) = cmd;
    let client = global.client();
    let report = client
        .recover_deliveries(args.since.as_deref(), args.dry_run)
        .await
        .context("sweeping the GitHub hooks' deliveries")?;
    if print_structured(args.output, &report)? {
        return Ok(());
    }
    let mut failed = false;
    for s in &report.sources {
        let verb = if report.dry_run {
            "would recover"
        } else {
            "recovered"
        };
        let n = if report.dry_run {
            s.missing.len() as u64
        } else {
            s.recovered
        };
        println!(
            "{}: {} listed, {} missing, {verb} {n}",
            s.source,
            s.listed,
            s.missing.len()
        );
        for d in &s.missing {
            let action = d
                .action
                .as_deref()
                .map(|a| format!(".{a}"))
                .unwrap_or_default();
            println!(
                "  {} {}{action} delivered {} (GitHub status {}) id {}",
                d.guid, d.event, d.delivered_at, d.status_code, d.id
            );
        }
        for k in &s.skipped {
            println!("  skipped {k}");
        }
        if let Some(e) = &s.error {
            failed = true;
            println!("  error: {e}");
        }
    }
    if report.sources.is_empty() {
        println!("no hooks configured (spec.platforms.github.recovery.hooks)");
    }
    anyhow::ensure!(
        !failed,
        "some hooks could not be swept (see above); run again once the cause is fixed"
    );
    Ok(())
}
