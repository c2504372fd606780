//! `aofctl serve`: run one cluster node until SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::signals::Shutdown;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The node's DaemonConfig file (with `spec.cluster`).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,

    /// Overrides `spec.cluster.data_dir`.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Register the handlers first: a signal during startup then stops the node
    // as soon as it runs instead of killing the process half-way.
    let shutdown = Shutdown::new().context("installing SIGINT/SIGTERM handlers")?;
    // The config errors name the file, key and line themselves.
    let cfg = aof_node::config::load(&args.config, args.data_dir.as_deref())?;
    tracing::info!(config = %args.config.display(), "starting node");
    aof_node::server::run(cfg, shutdown.first_signal()).await?;
    tracing::info!("node stopped");
    Ok(())
}
