//! `aofctl snapshot save|restore|status`: backups of the whole replicated state, like
//! `etcdctl snapshot save` and `etcdutl snapshot restore` (see `aof_node::backup`).

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use aof_node::backup;
use clap::{Args, Subcommand};

use crate::output::{print_structured, OutputFormat};
use crate::GlobalArgs;

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Save a consistent snapshot of the whole cluster state to FILE (admin token).
    ///
    /// Everything acknowledged before the command started is in it: events, jobs,
    /// the DLQ, triggers (with their secrets: keep the file as safe as the tokens).
    #[command(
        after_help = "Examples:\n  aofctl snapshot save backup.aofsnap\n  aofctl --context prod snapshot save /backups/aof-$(date +%F).aofsnap"
    )]
    Save(SaveArgs),
    /// Seed the data dir of one member of a NEW cluster from a snapshot file.
    ///
    /// Run it once per member of the new cluster, each with its own node config
    /// (the members come from spec.cluster.initial_members), then start the nodes.
    /// The new cluster gets its own cluster id: its members and the old cluster's
    /// refuse each other's Raft traffic.
    #[command(
        after_help = "Examples:\n  aofctl snapshot restore backup.aofsnap --config node1.yaml\n  AOF__CLUSTER__NODE_ID=2 aofctl snapshot restore backup.aofsnap --data-dir /var/lib/aof"
    )]
    Restore(RestoreArgs),
    /// Check a snapshot file's checksum and show what it holds.
    #[command(after_help = "Example:\n  aofctl snapshot status backup.aofsnap -o json")]
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct SaveArgs {
    /// Where to write the snapshot (written to FILE.part first, renamed when complete).
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The snapshot file (`aofctl snapshot save`).
    pub file: PathBuf,
    /// The new member's DaemonConfig file; without it, `AOF__*` variables alone.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Overrides `spec.cluster.data_dir`; it must be empty.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    pub file: PathBuf,
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

pub async fn run(cmd: SnapshotCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    match cmd {
        SnapshotCommand::Save(a) => save(a, global).await,
        SnapshotCommand::Restore(a) => restore(a).await,
        SnapshotCommand::Status(a) => status(a),
    }
}

fn spinner(msg: &str) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(Duration::from_millis(120));
    Some(pb)
}

async fn save(a: SaveArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    // A snapshot of a large state takes longer than a normal request.
    let client = global.client_for(
        global.conn.api.clone(),
        global.request_timeout.max(Duration::from_secs(300)),
    );
    let pb = spinner("saving a snapshot (read-index, then the state at or past it)…");
    let file = client.snapshot().await;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let file = file.context("saving a snapshot")?;
    let (header, _) =
        backup::decode(&file).context("the node sent a snapshot that does not check out; retry")?;
    let part = a.file.with_extension(match a.file.extension() {
        Some(e) => format!("{}.part", e.to_string_lossy()),
        None => "part".into(),
    });
    write_synced(&part, &file).with_context(|| format!("writing {}", part.display()))?;
    std::fs::rename(&part, &a.file)
        .with_context(|| format!("renaming {} to {}", part.display(), a.file.display()))?;
    println!(
        "saved {} ({} bytes, up to log index {}, from node {})\nsha256 {}",
        a.file.display(),
        file.len(),
        header.last_log_id.index,
        header.source_node,
        backup::checksum(&file).unwrap_or_default()
    );
    Ok(())
}

fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

async fn restore(a: RestoreArgs) -> anyhow::Result<()> {
    let cfg = match &a.config {
        Some(path) => aof_node::config::load(path, a.data_dir.as_deref())?,
        None => aof_node::config::load_env(a.data_dir.as_deref())?,
    };
    let c = &cfg.spec.cluster;
    let members = c.initial_membership();
    if members.is_empty() {
        bail!("the new cluster's members are not set: list them in spec.cluster.initial_members (or AOF__CLUSTER__INITIAL_MEMBERS)");
    }
    let file = std::fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let id = backup::new_cluster_id(&file, &members);
    let r = backup::restore(&file, &c.data_dir, c.node_id, &members, &id)
        .await
        .with_context(|| {
            format!(
                "restoring {} into {}",
                a.file.display(),
                c.data_dir.display()
            )
        })?;
    let ids: Vec<String> = members.keys().map(|k| k.to_string()).collect();
    println!(
        "restored node {} of new cluster {} (members {}) into {}: state up to old log index {} from cluster {}\n\
         restore the other members from the same file, then start the nodes",
        c.node_id,
        r.cluster_id,
        ids.join(", "),
        c.data_dir.display(),
        r.header.last_log_id.index,
        r.header.cluster_id.as_deref().unwrap_or("(never restored)"),
    );
    Ok(())
}

fn status(a: StatusArgs) -> anyhow::Result<()> {
    let file = std::fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let (h, data) = backup::decode(&file)?;
    let view = serde_json::json!({
        "file": a.file.display().to_string(),
        "bytes": file.len(),
        "sha256": backup::checksum(&file),
        "format": h.format,
        "created_at_ms": h.created_at_ms,
        "source_node": h.source_node,
        "cluster_id": h.cluster_id,
        "last_log_index": h.last_log_id.index,
        "last_log_term": h.last_log_id.leader_id.get_term(),
        "members": h.members.keys().collect::<Vec<_>>(),
        "data_bytes": data.len(),
    });
    match a.output {
        OutputFormat::Table | OutputFormat::Wide => {
            let keys = [
                "file",
                "bytes",
                "sha256",
                "format",
                "source_node",
                "cluster_id",
                "last_log_index",
                "last_log_term",
                "members",
                "data_bytes",
                "created_at_ms",
            ];
            for k in keys {
                let v = &view[k];
                let shown = match v {
                    serde_json::Value::Null => "(never restored)".to_string(),
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                println!("{k:<16} {shown}");
            }
            Ok(())
        }
        other => print_structured(other, &view).map(|_| ()),
    }
}
