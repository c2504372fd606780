use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use aof_faultfs::{control_path, request, serve, FaultFs, MetadataSync, MountOptions, ServeConfig};
use clap::{Args, Parser, Subcommand};

/// Power-loss fault injection: a FUSE pass-through filesystem that keeps
/// unsynced writes in memory. SIGKILL the daemon to lose them; mount again over
/// the same backing dir to see the last synced state.
#[derive(Parser)]
#[command(name = "aof-faultfs", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount BACKING at MOUNTPOINT. Unmount (umount / fusermount3 -u) to stop
    /// cleanly: everything is synced first. Killing the daemon is a power loss.
    Mount(MountArgs),
    /// Print what the daemon serving BACKING holds unsynced, and its counters (JSON).
    Stats(BackingArg),
    /// Make everything durable now, then print the stats (JSON).
    Sync(BackingArg),
}

#[derive(Args)]
struct MountArgs {
    /// Directory holding the durable state.
    #[arg(long)]
    backing: PathBuf,
    /// Where programs see the filesystem.
    #[arg(long)]
    mountpoint: PathBuf,
    /// When names (create, rename, unlink, mkdir, link) become durable.
    #[arg(long, value_enum, default_value_t = MetadataSync::OnDirFsync)]
    metadata: MetadataSync,
    /// Serve in this process (prints `ready` once mounted); otherwise start a
    /// daemon and return once it has mounted.
    #[arg(long)]
    foreground: bool,
    /// Control socket (default: BACKING/.faultfs/ctl.sock).
    #[arg(long)]
    control: Option<PathBuf>,
    /// Append the daemon's stderr to this file (background mode).
    #[arg(long)]
    log: Option<PathBuf>,
    /// How long to wait for the mount (background mode).
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
}

#[derive(Args)]
struct BackingArg {
    #[arg(long)]
    backing: PathBuf,
    /// Control socket (default: BACKING/.faultfs/ctl.sock).
    #[arg(long)]
    control: Option<PathBuf>,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Mount(a) if a.foreground => {
            let cfg = ServeConfig {
                backing: a.backing,
                mountpoint: a.mountpoint,
                metadata: a.metadata,
                control: a.control,
            };
            serve(&cfg, || {
                let mut out = std::io::stdout();
                let _ = writeln!(out, "ready");
                let _ = out.flush();
            })
            .context("aof-faultfs mount")
        }
        Cmd::Mount(a) => {
            anyhow::ensure!(
                a.control.is_none(),
                "--control works with --foreground only"
            );
            let program = std::env::current_exe().context("find this program")?;
            let mut opts = MountOptions::new(program, a.backing, a.mountpoint);
            opts.metadata = a.metadata;
            opts.log = a.log;
            opts.timeout = Duration::from_millis(a.timeout_ms);
            opts.own_process_group = true;
            let fs = FaultFs::mount(opts).context("aof-faultfs mount")?;
            let mountpoint = fs.mountpoint().to_path_buf();
            let pid = fs.detach().unwrap_or_default();
            println!("mounted {} (daemon pid {pid})", mountpoint.display());
            Ok(())
        }
        Cmd::Stats(b) => print(b, "stats"),
        Cmd::Sync(b) => print(b, "sync"),
    }
}

fn print(b: BackingArg, command: &str) -> Result<()> {
    let socket = b.control.unwrap_or_else(|| control_path(&b.backing));
    let stats = request(&socket, command, Duration::from_secs(30))?;
    println!("{}", serde_json::to_string_pretty(&stats)?);
    Ok(())
}
