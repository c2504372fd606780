//! The harness side: a [`FaultFs`] runs the daemon as a child process, waits
//! (bounded) until the mount is live, and turns the power off (SIGKILL the
//! daemon, detach its dead mount) and on (mount again) on request.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::mount::UnmountFlags;

use crate::daemon::{control_path, request};
use crate::error::Error;
use crate::state::{MetadataSync, Stats};

/// How to run a mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// The `aof-faultfs` binary (see [`default_program`]), or any program that
    /// runs [`crate::serve`] when given `program_args` followed by the
    /// `aof-faultfs mount ... --foreground` arguments.
    pub program: PathBuf,
    pub program_args: Vec<OsString>,
    pub backing: PathBuf,
    pub mountpoint: PathBuf,
    pub metadata: MetadataSync,
    /// Bound on each wait: mount, unmount, daemon exit, control requests.
    pub timeout: Duration,
    /// File the daemon's stderr is appended to; it inherits ours when `None`.
    pub log: Option<PathBuf>,
    /// Run the daemon in its own process group (it then survives a Ctrl-C of ours).
    pub own_process_group: bool,
}

impl MountOptions {
    pub fn new(
        program: impl Into<PathBuf>,
        backing: impl Into<PathBuf>,
        mountpoint: impl Into<PathBuf>,
    ) -> Self {
        MountOptions {
            program: program.into(),
            program_args: Vec::new(),
            backing: backing.into(),
            mountpoint: mountpoint.into(),
            metadata: MetadataSync::default(),
            timeout: Duration::from_secs(10),
            log: None,
            own_process_group: false,
        }
    }
}

/// A mount served by a daemon process. Dropping it unmounts cleanly (the
/// daemon syncs everything first); if that does not finish within the
/// timeout, the daemon is killed and the mount detached.
#[derive(Debug)]
pub struct FaultFs {
    opts: MountOptions,
    mountpoint: PathBuf,
    child: Option<Child>,
}

impl FaultFs {
    /// Mounts and returns once the kernel has the mount (bounded by `timeout`).
    /// A dead mount left at the mountpoint by a killed daemon is detached first.
    pub fn mount(opts: MountOptions) -> Result<FaultFs, Error> {
        let mountpoint = absolute(&opts.mountpoint)?;
        let mut fs = FaultFs {
            opts,
            mountpoint,
            child: None,
        };
        fs.power_on()?;
        Ok(fs)
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    pub fn backing(&self) -> &Path {
        &self.opts.backing
    }

    /// The daemon's pid while the power is on.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What the daemon holds unsynced now, and its counters.
    pub fn stats(&self) -> Result<Stats, Error> {
        request(
            &control_path(&self.opts.backing),
            "stats",
            self.opts.timeout,
        )
    }

    /// Makes everything durable now (as a clean unmount would).
    pub fn sync_all(&self) -> Result<Stats, Error> {
        request(&control_path(&self.opts.backing), "sync", self.opts.timeout)
    }

    /// Power loss and restart: [`power_off`](Self::power_off), then
    /// [`power_on`](Self::power_on). Returns what was lost (see `power_off`).
    pub fn lose_unsynced(&mut self) -> Result<Option<Stats>, Error> {
        let lost = self.power_off()?;
        self.power_on()?;
        Ok(lost)
    }

    /// Power loss: SIGKILLs the daemon (what was unsynced was only in its
    /// memory) and detaches the dead mount, leaving the bare mountpoint.
    /// Returns the daemon's stats just before the kill (`None` if it did not
    /// answer): exact if nothing wrote meanwhile, so stop the program using the
    /// mount first. Processes with files open on the old mount get errors
    /// (ENOTCONN), as on a dead disk. Does nothing when already off.
    pub fn power_off(&mut self) -> Result<Option<Stats>, Error> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        let lost = self.stats().ok();
        kill(&mut child, self.opts.timeout)?;
        detach(&self.mountpoint, self.opts.timeout)?;
        Ok(lost)
    }

    /// Mounts again over the same backing dir: it shows the last durable
    /// state. Does nothing when already on.
    pub fn power_on(&mut self) -> Result<(), Error> {
        if self.child.is_some() {
            return Ok(());
        }
        detach(&self.mountpoint, self.opts.timeout)?;
        let o = &self.opts;
        let mut cmd = Command::new(&o.program);
        cmd.args(&o.program_args)
            .arg("mount")
            .arg("--backing")
            .arg(&o.backing)
            .arg("--mountpoint")
            .arg(&self.mountpoint)
            .arg("--metadata")
            .arg(match o.metadata {
                MetadataSync::OnDirFsync => "on-dir-fsync",
                MetadataSync::Immediate => "immediate",
            })
            .arg("--foreground")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        if let Some(log) = &o.log {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .map_err(|e| Error::io(format!("open {}", log.display()), e))?;
            cmd.stderr(f);
        }
        if o.own_process_group {
            cmd.process_group(0);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("run {}", o.program.display()), e))?;
        match self.wait_ready(&mut child) {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(detail) => {
                let _ = kill(&mut child, o.timeout);
                let _ = detach(&self.mountpoint, o.timeout);
                let log = o
                    .log
                    .as_ref()
                    .map(|l| format!(" ({})", l.display()))
                    .unwrap_or_default();
                Err(Error::Mount {
                    mountpoint: self.mountpoint.clone(),
                    timeout: o.timeout,
                    detail,
                    log,
                })
            }
        }
    }

    /// Waits for the daemon's `ready` line, then checks the kernel's mount table.
    fn wait_ready(&self, child: &mut Child) -> Result<(), String> {
        let Some(stdout) = child.stdout.take() else {
            return Err("no stdout pipe".into());
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        match rx.recv_timeout(self.opts.timeout) {
            Ok(line) if line.trim() == "ready" => {}
            Ok(_) => {
                let status = wait_exit(child, self.opts.timeout)
                    .map_or("still running".into(), |s| s.to_string());
                return Err(format!("the daemon stopped before mounting ({status})"));
            }
            Err(_) => return Err("no ready line from the daemon".into()),
        }
        match is_mounted(&self.mountpoint) {
            Ok(true) => Ok(()),
            Ok(false) => {
                Err("the daemon said ready but the mount table has no FUSE mount there".into())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Clean unmount: the daemon syncs everything and exits.
    pub fn unmount(mut self) -> Result<(), Error> {
        self.shutdown()
    }

    /// Leaves the daemon serving the mount after this handle is gone; returns its pid.
    pub fn detach(mut self) -> Option<u32> {
        self.child.take().map(|c| c.id())
    }

    fn shutdown(&mut self) -> Result<(), Error> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // A busy mount (files still open) is detached; the daemon exits when the last one closes.
        let unmounted =
            unmount(&self.mountpoint, false).or_else(|_| unmount(&self.mountpoint, true));
        if unmounted.is_ok() && wait_exit(&mut child, self.opts.timeout).is_some() {
            return Ok(());
        }
        kill(&mut child, self.opts.timeout)?;
        detach(&self.mountpoint, self.opts.timeout)?;
        unmounted.map_err(|e| Error::io(format!("unmount {}", self.mountpoint.display()), e))
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            crate::log(format_args!("{e}"));
        }
    }
}

/// Where the `aof-faultfs` binary is when built by cargo next to the running
/// program (`target/<profile>/`, also from `target/<profile>/deps/`), or
/// `$AOF_FAULTFS_BIN`.
pub fn default_program() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AOF_FAULTFS_BIN") {
        return Some(p.into());
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join("aof-faultfs"), dir.parent()?.join("aof-faultfs")]
        .into_iter()
        .find(|p| p.is_file())
}

/// Whether the top mount at `path` (absolute) is a FUSE mount.
pub fn is_mounted(path: &Path) -> Result<bool, Error> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("read /proc/self/mountinfo", e))?;
    let mut top = None;
    for line in table.lines() {
        // id parent major:minor root mountpoint options... - fstype source options
        let mut fields = line.split(' ');
        let Some(point) = fields.nth(4) else { continue };
        if Path::new(&unescape(point)) == path {
            top = line
                .split(" - ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .map(str::to_owned);
        }
    }
    Ok(top.is_some_and(|fstype| fstype == "fuse" || fstype.starts_with("fuse.")))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match (b[i], oct) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mountpoint as the mount table shows it. A dead FUSE mount there cannot
/// be resolved (ENOTCONN): then only its parent is.
fn absolute(path: &Path) -> Result<PathBuf, Error> {
    if let Ok(p) = path.canonicalize() {
        return Ok(p);
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::io(format!("mountpoint {}", path.display()), Errno::INVAL))?;
    let parent = parent
        .canonicalize()
        .map_err(|e| Error::io(format!("mountpoint parent {}", parent.display()), e))?;
    Ok(parent.join(name))
}

fn unmount(path: &Path, lazy: bool) -> std::io::Result<()> {
    let flags = if lazy {
        UnmountFlags::DETACH
    } else {
        UnmountFlags::empty()
    };
    match rustix::mount::unmount(path, flags) {
        Ok(()) | Err(Errno::INVAL) => Ok(()), // EINVAL: nothing mounted there
        Err(Errno::PERM) => {
            // Not root: the setuid helper may.
            let status = Command::new("fusermount3")
                .arg(if lazy { "-uz" } else { "-u" })
                .arg(path)
                .status()?;
            if status.success() {
                Ok(())
            } else {
                Err(std::io::Error::other(format!(
                    "fusermount3 -u {} failed ({status})",
                    path.display()
                )))
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Lazily unmounts the FUSE mount at `path`, if any, and waits (bounded)
/// until the mount table agrees.
fn detach(path: &Path, timeout: Duration) -> Result<(), Error> {
    if !is_mounted(path)? {
        return Ok(());
    }
    unmount(path, true)
        .map_err(|e| Error::io(format!("detach the mount at {}", path.display()), e))?;
    let deadline = Instant::now() + timeout;
    while is_mounted(path)? {
        if Instant::now() >= deadline {
            return Err(Error::io(
                format!("detach the mount at {}", path.display()),
                Errno::BUSY,
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn kill(child: &mut Child, timeout: Duration) -> Result<(), Error> {
    let _ = child.kill(); // SIGKILL; fails only if it already exited
    wait_exit(child, timeout)
        .map(|_| ())
        .ok_or(Error::Unkillable {
            pid: child.id(),
            timeout,
        })
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape(r"/tmp/a\040b\134c"), r"/tmp/a b\c");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
    }
}
