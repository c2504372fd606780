//! Running a job's command: the one implementation behind the node's built-in
//! `command` executor and `aofctl worker`.
//!
//! - The command gets exactly the environment it is given ([`Spec::env`], built by
//!   [`crate::jobenv::EnvPolicy::environment`]): the runner's environment is
//!   cleared first.
//! - It runs in its own process group (so a Ctrl-C in the runner's terminal does
//!   not reach it) and, on Linux, gets SIGKILL if the thread that started it dies
//!   with the runner.
//! - The payload goes to its stdin (a command that does not read it is fine).
//! - stdout keeps its first [`MAX_RESULT_BYTES`], stderr its last
//!   [`STDERR_TAIL_BYTES`]; the rest is read, counted and dropped, so a command
//!   that writes gigabytes neither blocks on a full pipe nor fills memory.
//! - Past [`Spec::timeout`], or when its [`Killer`] is used, the **whole process
//!   group** gets SIGKILL: children and grandchildren the command started go too
//!   (unless they left the group on purpose with `setsid`/`setpgid`).
//! - After the command exits, output still in the pipes is read for at most
//!   [`PIPE_GRACE`] (a background grandchild may hold them open).
//!
//! [`run`] blocks; [`start`] runs the same on a thread of its own and returns a
//! [`Running`] future that any async runtime can await (dropping it kills the
//! group). Everything here is `std` + `libc`.

use std::ffi::OsString;
use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Most of a command's stdout kept as the job's result.
pub const MAX_RESULT_BYTES: usize = 64 * 1024;
/// Most of a command's stderr kept (its end) for a failure message.
pub const STDERR_TAIL_BYTES: usize = 2048;
/// How long output is still read after the command exited.
pub const PIPE_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for a killed command to be reaped.
const REAP_BOUND: Duration = Duration::from_secs(5);
/// Poll period when the kernel cannot signal the command's exit (no pidfd).
const TICK: Duration = Duration::from_millis(20);
/// Read and write chunk.
const CHUNK: usize = 64 * 1024;

/// What to run.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Program and arguments (no shell). The program is looked up in the `PATH`
    /// of [`Spec::env`] when it has no `/`.
    pub argv: Vec<String>,
    /// The command's whole environment.
    pub env: Vec<(OsString, OsString)>,
    /// Written to the command's stdin, which is then closed.
    pub stdin: Vec<u8>,
    pub timeout: Duration,
    /// Bytes of stdout kept (the first ones); default [`MAX_RESULT_BYTES`].
    pub stdout_limit: usize,
    /// Bytes of stderr kept (the last ones); default [`STDERR_TAIL_BYTES`].
    pub stderr_limit: usize,
}

impl Spec {
    pub fn new(
        argv: Vec<String>,
        env: Vec<(OsString, OsString)>,
        stdin: Vec<u8>,
        timeout: Duration,
    ) -> Self {
        Spec {
            argv,
            env,
            stdin,
            timeout,
            stdout_limit: MAX_RESULT_BYTES,
            stderr_limit: STDERR_TAIL_BYTES,
        }
    }
}

/// Output read from a pipe: at most a limit of it kept (its head or its tail),
/// all of it counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Captured {
    /// The bytes kept.
    pub bytes: Vec<u8>,
    /// All bytes read.
    pub total: u64,
}

impl Captured {
    /// Bytes read but not kept.
    pub fn dropped(&self) -> u64 {
        self.total - self.bytes.len() as u64
    }

    /// Keep `data` within `limit`: the first bytes (`keep_tail == false`) or the last.
    pub fn push(&mut self, data: &[u8], limit: usize, keep_tail: bool) {
        self.total += data.len() as u64;
        if keep_tail {
            if data.len() >= limit {
                self.bytes.clear();
                self.bytes.extend_from_slice(&data[data.len() - limit..]);
            } else {
                self.bytes.extend_from_slice(data);
                let excess = self.bytes.len().saturating_sub(limit);
                self.bytes.drain(..excess);
            }
        } else {
            let room = limit.saturating_sub(self.bytes.len());
            self.bytes.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The command exited (or was killed by a signal it did not get from us).
    Exited(ExitStatus),
    /// It ran past the timeout; its process group was killed.
    TimedOut,
    /// Its [`Killer`] was used; its process group was killed.
    Killed,
}

/// A finished run.
#[derive(Clone, Debug)]
pub struct Finished {
    pub ended: Ended,
    /// The head of stdout.
    pub stdout: Captured,
    /// The tail of stderr.
    pub stderr: Captured,
    pub elapsed: Duration,
}

impl Finished {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        matches!(&self.ended, Ended::Exited(s) if s.success())
    }

    /// The kept stdout as text: invalid UTF-8 replaced, cut to [`MAX_RESULT_BYTES`]
    /// at a character boundary.
    pub fn result_text(&self) -> String {
        result_text(&self.stdout.bytes)
    }
}

/// The first [`MAX_RESULT_BYTES`] of `stdout` as text (cut at a character boundary).
pub fn result_text(stdout: &[u8]) -> String {
    let text = String::from_utf8_lossy(&stdout[..stdout.len().min(MAX_RESULT_BYTES)]);
    let mut end = text.len().min(MAX_RESULT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// `exit status 3` / `killed by signal 9`.
pub fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// The error reported for a failed run: what happened, plus the tail of stderr
/// (and how much of it was dropped).
pub fn failure_message(what: &str, stderr: &Captured) -> String {
    let tail = String::from_utf8_lossy(&stderr.bytes);
    let tail = tail.trim();
    match (tail.is_empty(), stderr.dropped()) {
        (true, _) => format!("{what} (no stderr output)"),
        (false, 0) => format!("{what}; stderr: {tail}"),
        (false, n) => format!("{what}; stderr ({n} earlier bytes dropped): …{tail}"),
    }
}

#[derive(Debug, Default)]
struct KillState {
    /// The command's pid once started.
    pid: Option<u32>,
    /// The command was reaped: its pid (and group id) may belong to someone else now.
    reaped: bool,
    /// [`Killer::kill`] was called.
    requested: bool,
}

/// Kills a run's process group from anywhere (another thread, an async task).
/// Killing before the command started stops it from starting; after it was
/// reaped, does nothing.
#[derive(Clone, Debug, Default)]
pub struct Killer(Arc<Mutex<KillState>>);

impl Killer {
    pub fn new() -> Self {
        Killer::default()
    }

    /// SIGKILL the command's process group; the run ends as [`Ended::Killed`].
    pub fn kill(&self) {
        let mut s = self.0.lock().expect("kill state");
        s.requested = true;
        if let (Some(pid), false) = (s.pid, s.reaped) {
            kill_group(pid);
        }
    }

    fn requested(&self) -> bool {
        self.0.lock().expect("kill state").requested
    }
}

/// SIGKILL every process in the group `pid` leads.
fn kill_group(pid: u32) {
    // SAFETY: kill(2) on the process group our own (not yet reaped) child leads.
    unsafe {
        libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
    }
}

fn spawn(spec: &Spec) -> io::Result<Child> {
    let (program, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A descriptor that becomes readable when the process exits (Linux >= 5.3).
fn pidfd(pid: u32) -> Option<OwnedFd> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::FromRawFd as _;
        // SAFETY: pidfd_open(2) returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        // SAFETY: a fresh descriptor that nothing else owns.
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        None
    }
}

/// One pipe of the command, non-blocking.
struct Pipe {
    file: Option<File>,
}

impl Pipe {
    fn new(fd: Option<impl Into<OwnedFd>>) -> io::Result<Pipe> {
        let file = match fd {
            Some(fd) => {
                let fd: OwnedFd = fd.into();
                set_nonblocking(fd.as_raw_fd())?;
                Some(File::from(fd))
            }
            None => None,
        };
        Ok(Pipe { file })
    }

    fn fd(&self) -> Option<RawFd> {
        self.file.as_ref().map(|f| f.as_raw_fd())
    }

    /// Read everything available into `into`; closes the pipe at its end.
    fn drain(&mut self, into: &mut Captured, limit: usize, keep_tail: bool, buf: &mut [u8]) {
        let Some(f) = self.file.as_mut() else { return };
        loop {
            match f.read(buf) {
                Ok(0) => {
                    self.file = None;
                    return;
                }
                Ok(n) => into.push(&buf[..n], limit, keep_tail),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.file = None;
                    return;
                }
            }
        }
    }

    /// Write what fits of `data[*written..]`; closes the pipe when all is written
    /// or the reader is gone.
    fn feed(&mut self, data: &[u8], written: &mut usize) {
        let Some(f) = self.file.as_mut() else { return };
        while *written < data.len() {
            let end = (*written + CHUNK).min(data.len());
            match f.write(&data[*written..end]) {
                Ok(n) => *written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // A command that does not read its stdin is fine (broken pipe).
                Err(_) => break,
            }
        }
        self.file = None;
    }
}

/// Run `spec` to its end, blocking the calling thread. `killer` may be used from
/// elsewhere meanwhile. An error means the command could not be started.
pub fn run(spec: &Spec, killer: &Killer) -> io::Result<Finished> {
    let started = Instant::now();
    let mut child = {
        let mut state = killer.0.lock().expect("kill state");
        if state.requested {
            return Ok(Finished {
                ended: Ended::Killed,
                stdout: Captured::default(),
                stderr: Captured::default(),
                elapsed: Duration::ZERO,
            });
        }
        let child = spawn(spec)?;
        state.pid = Some(child.id());
        child
    };
    let result = supervise(&mut child, spec, killer, started);
    if result.is_err() {
        // Never leave a command behind: kill and reap it.
        let mut state = killer.0.lock().expect("kill state");
        if !state.reaped {
            kill_group(child.id());
            let _ = child.wait();
            state.reaped = true;
        }
    }
    result
}

/// Reap the child if it has exited; the lock makes [`Killer::kill`] and reaping
/// exclusive, so a group id is never signalled after its leader was reaped.
fn try_reap(child: &mut Child, killer: &Killer) -> io::Result<Option<ExitStatus>> {
    let mut state = killer.0.lock().expect("kill state");
    let status = child.try_wait()?;
    if status.is_some() {
        state.reaped = true;
    }
    Ok(status)
}

fn supervise(
    child: &mut Child,
    spec: &Spec,
    killer: &Killer,
    started: Instant,
) -> io::Result<Finished> {
    let mut stdin = Pipe::new(child.stdin.take())?;
    let mut stdout = Pipe::new(child.stdout.take())?;
    let mut stderr = Pipe::new(child.stderr.take())?;
    let exit_fd = pidfd(child.id());
    let (mut out, mut err) = (Captured::default(), Captured::default());
    let mut written = 0usize;
    let mut buf = vec![0u8; CHUNK];
    // A timeout too large for the clock is no timeout.
    let deadline = started
        .checked_add(spec.timeout)
        .unwrap_or_else(|| started + Duration::from_secs(u32::MAX.into()));
    let mut killed_by_us: Option<Ended> = None;
    let mut kill_deadline: Option<Instant> = None;
    let mut status: Option<ExitStatus> = None;
    let mut grace_end: Option<Instant> = None;
    if spec.stdin.is_empty() {
        stdin.file = None;
    }
    loop {
        // What to wait for, and until when.
        let now = Instant::now();
        if status.is_some() {
            stdin.file = None;
            if stdout.file.is_none() && stderr.file.is_none() {
                break;
            }
            if grace_end.is_some_and(|g| now >= g) {
                break;
            }
        } else if killed_by_us.is_none() && now >= deadline {
            killed_by_us = Some(Ended::TimedOut);
            kill_deadline = Some(now + REAP_BOUND);
            killer.0.lock().expect("kill state").requested = true;
            kill_group(child.id());
        }
        if kill_deadline.is_some_and(|k| now >= k) && status.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the killed command was not reaped in time",
            ));
        }
        let wake = match (status, grace_end, kill_deadline) {
            (Some(_), Some(g), _) => g,
            (None, _, Some(k)) => k,
            _ => deadline,
        };
        let mut timeout = wake.saturating_duration_since(now);
        if exit_fd.is_none() && status.is_none() {
            timeout = timeout.min(TICK);
        }
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(4);
        let mut push = |fd: Option<RawFd>, events: libc::c_short| {
            if let Some(fd) = fd {
                fds.push(libc::pollfd {
                    fd,
                    events,
                    revents: 0,
                });
            }
        };
        push(stdin.fd(), libc::POLLOUT);
        push(stdout.fd(), libc::POLLIN);
        push(stderr.fd(), libc::POLLIN);
        if status.is_none() {
            push(exit_fd.as_ref().map(|f| f.as_raw_fd()), libc::POLLIN);
        }
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // Round up so that a wait for a deadline does not spin.
        let ms = if ms == 0 && !timeout.is_zero() { 1 } else { ms };
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        stdin.feed(&spec.stdin, &mut written);
        stdout.drain(&mut out, spec.stdout_limit, false, &mut buf);
        stderr.drain(&mut err, spec.stderr_limit, true, &mut buf);
        if status.is_none() {
            if let Some(s) = try_reap(child, killer)? {
                status = Some(s);
                grace_end = Some(Instant::now() + PIPE_GRACE);
            }
        }
    }
    let ended = match (killed_by_us, status) {
        (Some(e), _) => e,
        (None, Some(_)) if killer.requested() => Ended::Killed,
        (None, Some(s)) => Ended::Exited(s),
        (None, None) => unreachable!("the loop ends only after the command exited"),
    };
    Ok(Finished {
        ended,
        stdout: out,
        stderr: err,
        elapsed: started.elapsed(),
    })
}

struct Shared {
    result: Option<io::Result<Finished>>,
    waker: Option<Waker>,
}

/// A run on a thread of its own, as a future (any executor). Dropping it before it
/// is done kills the command's process group.
pub struct Running {
    shared: Arc<Mutex<Shared>>,
    killer: Killer,
    done: bool,
}

impl Running {
    /// Kills the run's process group.
    pub fn killer(&self) -> Killer {
        self.killer.clone()
    }
}

impl Future for Running {
    type Output = io::Result<Finished>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut shared = self.shared.lock().expect("run state");
        match shared.result.take() {
            Some(r) => {
                drop(shared);
                self.done = true;
                Poll::Ready(r)
            }
            None => {
                shared.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.done {
            self.killer.kill();
        }
    }
}

/// Start [`run`] on a new thread. The thread that starts the command stays alive
/// until it is reaped, so the Linux parent-death signal fires only if the runner
/// itself dies.
pub fn start(spec: Spec) -> io::Result<Running> {
    let shared = Arc::new(Mutex::new(Shared {
        result: None,
        waker: None,
    }));
    let killer = Killer::new();
    let (s2, k2) = (shared.clone(), killer.clone());
    std::thread::Builder::new()
        .name("aof-job".into())
        .spawn(move || {
            let result = run(&spec, &k2);
            let mut shared = s2.lock().expect("run state");
            shared.result = Some(result);
            if let Some(w) = shared.waker.take() {
                w.wake();
            }
        })?;
    Ok(Running {
        shared,
        killer,
        done: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_keep_the_head_or_the_tail_and_count_everything() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut head = Captured::default();
        for chunk in data.chunks(7) {
            head.push(chunk, 10, false);
        }
        assert_eq!(
            (head.bytes.clone(), head.total, head.dropped()),
            ((0..10).collect::<Vec<u8>>(), 100, 90)
        );
        let mut tail = Captured::default();
        for chunk in data.chunks(7) {
            tail.push(chunk, 10, true);
        }
        assert_eq!(tail.bytes, (90..100).collect::<Vec<u8>>());
        let mut big = Captured::default();
        big.push(&data, 10, true);
        assert_eq!(big.bytes, (90..100).collect::<Vec<u8>>());
    }

    #[test]
    fn results_are_cut_at_64_kib_on_a_character_boundary() {
        assert_eq!(result_text(b"hello\n"), "hello\n");
        let big = "é".repeat(MAX_RESULT_BYTES); // 2 bytes each
        let r = result_text(big.as_bytes());
        assert!(
            r.len() <= MAX_RESULT_BYTES && r.len() >= MAX_RESULT_BYTES - 4,
            "{}",
            r.len()
        );
        assert!(r.chars().all(|c| c == 'é'));
    }

    #[test]
    fn failures_quote_the_stderr_tail() {
        assert_eq!(describe_exit(ExitStatus::from_raw(3 << 8)), "exit status 3");
        assert_eq!(describe_exit(ExitStatus::from_raw(9)), "killed by signal 9");
        let err = |b: &[u8], total| Captured {
            bytes: b.to_vec(),
            total,
        };
        assert_eq!(
            failure_message("exit status 3", &err(b"  boom\n", 7)),
            "exit status 3; stderr: boom"
        );
        assert_eq!(
            failure_message("exit status 1", &err(b"", 0)),
            "exit status 1 (no stderr output)"
        );
        assert_eq!(
            failure_message("exit status 1", &err(b"end", 10)),
            "exit status 1; stderr (7 earlier bytes dropped): …end"
        );
    }
}
