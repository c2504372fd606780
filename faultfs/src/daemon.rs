//! Serving a mount in this process, and its control socket: a Unix socket
//! (by default `<backing>/.faultfs/ctl.sock`) that answers one-line commands
//! with one JSON line. Commands: `stats` (what is unsynced, and counters) and
//! `sync` (make everything durable now, then `stats`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{MountOption, SessionACL};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::fuse::Fs;
use crate::state::{MetadataSync, State, Stats, STAGING};

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub backing: PathBuf,
    pub mountpoint: PathBuf,
    pub metadata: MetadataSync,
    /// The control socket; [`control_path`] of the backing dir when `None`.
    pub control: Option<PathBuf>,
}

/// The default control socket of the daemon serving `backing`.
pub fn control_path(backing: &Path) -> PathBuf {
    backing.join(STAGING).join("ctl.sock")
}

/// Serves the mount in this process until it is unmounted (then everything is
/// synced, as on a clean unmount). `ready` runs once the kernel has the mount.
/// Killing the process is the power loss.
pub fn serve(cfg: &ServeConfig, ready: impl FnOnce()) -> Result<(), Error> {
    // Modes of created files come from the caller (already masked by the kernel).
    rustix::process::umask(rustix::fs::Mode::empty());
    let state = Arc::new(Mutex::new(State::serve(&cfg.backing, cfg.metadata)?));

    let socket = cfg
        .control
        .clone()
        .unwrap_or_else(|| control_path(&cfg.backing));
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(|e| {
        Error::io(
            format!(
                "bind control socket {} (a shorter path may be needed)",
                socket.display()
            ),
            e,
        )
    })?;
    let for_control = state.clone();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || control_loop(listener, for_control))
        .map_err(|e| Error::io("start the control thread", e))?;

    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName("aof-faultfs".into()),
        MountOption::Subtype("aof-faultfs".into()),
        MountOption::DefaultPermissions,
    ];
    if rustix::process::geteuid().is_root() {
        config.acl = SessionACL::All; // like a disk: every user, with permission checks
    }
    let session = fuser::Session::new(Fs::new(state), &cfg.mountpoint, &config)
        .map_err(|e| Error::io(format!("mount FUSE at {}", cfg.mountpoint.display()), e))?;
    ready();
    session
        .run()
        .map_err(|e| Error::io("serve FUSE requests", e))
}

#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stats: Option<Stats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn control_loop(listener: UnixListener, state: Arc<Mutex<State>>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        if let Err(e) = answer(conn, &state) {
            crate::log(format_args!("control request failed: {e}"));
        }
    }
}

fn answer(conn: UnixStream, state: &Mutex<State>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
    let answer = match line.trim() {
        "stats" => Answer {
            ok: true,
            stats: Some(state.stats()),
            error: None,
        },
        "sync" => match state.sync_all() {
            Ok(()) => Answer {
                ok: true,
                stats: Some(state.stats()),
                error: None,
            },
            Err(e) => Answer {
                ok: false,
                stats: None,
                error: Some(format!("sync failed: {e}")),
            },
        },
        other => Answer {
            ok: false,
            stats: None,
            error: Some(format!("unknown command {other:?} (try stats or sync)")),
        },
    };
    drop(state);
    let mut out = serde_json::to_vec(&answer).map_err(std::io::Error::other)?;
    out.push(b'\n');
    (&conn).write_all(&out)
}

/// Sends `command` (`stats` or `sync`) to the daemon listening on `socket`.
pub fn request(socket: &Path, command: &str, timeout: Duration) -> Result<Stats, Error> {
    let fail = |source| Error::Control {
        path: socket.to_path_buf(),
        source,
    };
    let conn = UnixStream::connect(socket).map_err(fail)?;
    conn.set_read_timeout(Some(timeout)).map_err(fail)?;
    conn.set_write_timeout(Some(timeout)).map_err(fail)?;
    (&conn)
        .write_all(format!("{command}\n").as_bytes())
        .map_err(fail)?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line).map_err(fail)?;
    let answer: Answer = serde_json::from_str(&line).map_err(|e| fail(std::io::Error::other(e)))?;
    match (answer.ok, answer.stats) {
        (true, Some(stats)) => Ok(stats),
        (_, _) => Err(Error::Command {
            command: command.into(),
            message: answer
                .error
                .unwrap_or_else(|| "no stats in the answer".into()),
        }),
    }
}
