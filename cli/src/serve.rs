//! `aofctl serve`: run one cluster node until SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use aof_node::config::{DaemonConfig, Severity};
use clap::{Args, ValueEnum};

use crate::signals::Shutdown;

#[derive(Debug, Args)]
#[command(after_help = "Every key under `spec` can also be set by an environment variable named AOF__ + its \
                        path in upper case, with `__` between levels (AOF__CLUSTER__NODE_ID=3, \
                        AOF__SERVER__PORT=3001); variables override the file. Without --config the node is \
                        configured by these variables alone.")]
pub struct ServeArgs {
    /// The node's DaemonConfig file (with `spec.cluster`). Optional: without it the
    /// configuration comes from `AOF__*` environment variables alone.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Overrides `spec.cluster.data_dir`.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Leave the cluster on SIGTERM/SIGINT (after draining): for a node that is being
    /// scaled away and will not come back. Same as spec.cluster.leave_on_shutdown:
    /// true. Without it a stopped node stays a member (a restart, an upgrade).
    #[arg(long)]
    pub leave_on_shutdown: bool,

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
    // The config errors name the file or variable, the key and the line themselves.
    let mut cfg = match &args.config {
        Some(path) => aof_node::config::load(path, args.data_dir.as_deref())?,
        None => {
            let prefix = aof_node::config::ENV_PREFIX;
            if !std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with(prefix)) {
                anyhow::bail!(
                    "no configuration: pass --config FILE, or set {prefix}* environment variables \
                     (e.g. {prefix}CLUSTER__DATA_DIR=/var/lib/aof, {prefix}CLUSTER__NODE_ID=1)"
                );
            }
            aof_node::config::load_env(args.data_dir.as_deref())?
        }
    };
    match &args.config {
        Some(path) => tracing::info!(config = %path.display(), node_id = cfg.spec.cluster.node_id, "starting node"),
        None => tracing::info!(node_id = cfg.spec.cluster.node_id, "starting node (configured by AOF__* variables)"),
    }
    if args.leave_on_shutdown {
        cfg.spec.cluster.leave_on_shutdown = true;
    }
    log_notices(&cfg);
    aof_node::server::run(cfg, shutdown.first_signal()).await?;
    tracing::info!("node stopped");
    Ok(())
}

/// Accepted but ignored AOF keys, and risky values, once per start — as warnings
/// both: a key that silently does nothing is what an operator must be told.
fn log_notices(cfg: &DaemonConfig) {
    for n in cfg.notices() {
        let kind = match n.severity {
            Severity::Info => "accepted, not used",
            Severity::Warn => "risky value",
        };
        tracing::warn!(key = %n.key, "config ({kind}): {}", n.message);
    }
}
