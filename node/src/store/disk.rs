//! Running out of disk space: the storage alarm, the reserved space, and durable
//! directory operations.
//!
//! ## What a full disk does to this node
//!
//! The anchor is etcd's `NOSPACE` alarm: a member that cannot store more says so,
//! accepts no more writes, and carries on once an operator has made room. Here:
//!
//! - **Never acknowledge what is not durable.** A log append that fails with
//!   `ENOSPC` or `EDQUOT` is not reported to openraft as an error (openraft stops
//!   its core on any storage error, and the process would live on as a member
//!   that answers nothing: a zombie). Instead the write raises the alarm
//!   ([`DiskAlarm::raise_disk_full`]), waits until it is cleared, and writes the same
//!   bytes again at the same offset (overwriting whatever part of them reached the
//!   file), then `fdatasync`s. Until then the append has not returned, so openraft
//!   reports nothing as flushed: the leader does not count this node towards a
//!   quorum, a follower does not acknowledge, and a leader stuck like this stops
//!   sending heartbeats, so the others elect a new one. Peers see a slow or
//!   unreachable member, which Raft handles.
//! - **Say so.** The alarm's reason names the data dir and what failed; it is logged
//!   when raised and cleared, `/ready` answers 503 with it, and the
//!   `aof_storage_alarm` gauge is 1 meanwhile ([`super::Store::disk_alarm`]).
//! - **Come back by itself.** A watcher thread ([`DiskWatch`]) checks the free space
//!   of the data dir's file system every [`DiskPolicy::check_every`]. It raises the
//!   alarm before the disk is full (free space below [`DiskPolicy::min_free_bytes`]),
//!   and clears it once there is room for the reserve plus twice the minimum again;
//!   the waiting write then goes through and the node catches up from the leader.
//!
//! ## sled
//!
//! The vote and (until the state machine leaves sled) the applied state live in
//! sled. sled cannot be retried: the first failed write of its log sets a global
//! error that every later operation returns, until the database is opened again.
//! So sled must not run out of space, and if it does the node stops:
//!
//! - The data dir holds a **reserve**: a file of [`DiskPolicy::reserve_bytes`]
//!   allocated up front (`reserved-space`). Raising the alarm deletes it, so the
//!   writes already under way (applying entries that are in the log, sled's flush)
//!   find room; clearing the alarm allocates it again first. When the watcher raises
//!   the alarm it also flushes sled at once, before reporting the alarm, so sled has
//!   nothing left to write when the disk is full.
//! - While the alarm is raised, saving a vote and writing snapshot files wait like
//!   log appends do (applies, which only follow appended entries, are not held).
//! - **Fail-stop** if sled fails anyway (its own `Io` error, e.g. the reserve was
//!   eaten by another process): the node logs why and exits with
//!   [`super::FAIL_STOP_EXIT_CODE`] (see [`super::fail_stop_on_sled_io`]), so a
//!   supervisor restarts it; the restart recovers from the log like after a crash.
//!   A node whose sled is broken could never write again, so staying up would only
//!   leave a zombie member.
//!
//! Other IO errors (`EIO` and the like) are not retried: an `fsync` that failed must
//! not be trusted on retry. They reach openraft, which stops the node's Raft core;
//! `/health` and `/ready` then answer 503 saying so, so a supervisor restarts it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

/// When the alarm is raised and cleared, and how much space is kept in reserve.
#[derive(Clone, Copy, Debug)]
pub struct DiskPolicy {
    /// Size of the reserve file (`reserved-space` in the data dir), deleted when the
    /// alarm is raised so in-flight writes find room.
    pub reserve_bytes: u64,
    /// The alarm is raised when less than this is free (the reserve not counted).
    pub min_free_bytes: u64,
    /// How often the watcher checks the free space.
    pub check_every: Duration,
}

impl Default for DiskPolicy {
    fn default() -> Self {
        DiskPolicy { reserve_bytes: 32 << 20, min_free_bytes: 32 << 20, check_every: Duration::from_millis(100) }
    }
}

impl DiskPolicy {
    /// Free space needed to clear the alarm (before the reserve is allocated again).
    pub fn clear_at(&self) -> u64 {
        self.reserve_bytes + 2 * self.min_free_bytes
    }
}

/// Name of the reserve file in the data dir.
pub const RESERVE_FILE: &str = "reserved-space";

/// True for the errors of a full disk or an exhausted quota. (By kind too: sled
/// hands out copies of its IO errors that keep the kind but not the OS code.)
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
}

/// Free bytes for unprivileged users on the file system holding `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-param.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// fsync a directory, so that entries created, renamed or removed in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `create_dir_all`, durably: every directory it creates is synced, and so is the
/// parent it was created in.
pub fn create_dir_all_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    // The missing directories, deepest first.
    let mut missing = Vec::new();
    let mut p = Some(dir);
    while let Some(d) = p {
        if d.as_os_str().is_empty() || d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        p = d.parent();
    }
    std::fs::create_dir_all(dir)?;
    for d in missing.iter().rev() {
        sync_dir(d)?;
        sync_dir(&parent_of(d))?;
    }
    Ok(())
}

/// The directory holding `path` (`.` for a bare relative name).
pub fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The reserve file: space allocated up front and given back when the alarm is
/// raised.
#[derive(Debug)]
struct Reserve {
    path: PathBuf,
    bytes: u64,
}

impl Reserve {
    fn present(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.path).is_ok_and(|m| m.len() >= self.bytes && m.blocks() * 512 >= self.bytes)
    }

    /// Allocate the file (really: blocks, not a sparse file). On failure nothing is
    /// left behind.
    fn allocate(&self) -> io::Result<()> {
        let r = (|| {
            let file = OpenOptions::new().write(true).create(true).truncate(false).open(&self.path)?;
            // SAFETY: fallocate on an open descriptor; no memory is passed.
            let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, self.bytes as libc::off_t) };
            if rc != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                    return Err(e);
                }
                // No fallocate on this file system: write zeros.
                use std::os::unix::fs::FileExt;
                let chunk = vec![0u8; 1 << 20];
                let mut off = 0;
                while off < self.bytes {
                    let n = chunk.len().min((self.bytes - off) as usize);
                    file.write_all_at(&chunk[..n], off)?;
                    off += n as u64;
                }
            }
            file.sync_all()
        })();
        if r.is_err() {
            let _ = std::fs::remove_file(&self.path);
        }
        r
    }

    fn release(&self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => tracing::warn!(path = %self.path.display(), bytes = self.bytes, "released the reserved disk space"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!(path = %self.path.display(), "cannot delete the reserve file: {e}"),
        }
    }
}

#[derive(Debug, Default)]
struct AlarmState {
    reason: Option<String>,
    /// The store is gone: waiters give up.
    closed: bool,
    /// Not cleared before this (grows when the alarm flaps).
    hold_until: Option<Instant>,
    hold: Duration,
    last_cleared: Option<Instant>,
}

/// The storage alarm of one data dir. Shared by the log, the state machine and the
/// watcher.
#[derive(Debug)]
pub struct DiskAlarm {
    dir: PathBuf,
    reserve: Option<Reserve>,
    state: Mutex<AlarmState>,
    changed: Condvar,
}

/// The store was closed while a write waited for disk space.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the store was closed while waiting for disk space")]
pub struct Closed;

impl DiskAlarm {
    /// An alarm without a reserve file (a WAL opened on its own).
    pub fn standalone(dir: &Path) -> Arc<DiskAlarm> {
        Arc::new(DiskAlarm { dir: dir.to_path_buf(), reserve: None, state: Mutex::default(), changed: Condvar::new() })
    }

    /// The alarm of data dir `dir`, with its reserve file.
    fn with_reserve(dir: &Path, policy: &DiskPolicy) -> DiskAlarm {
        DiskAlarm {
            dir: dir.to_path_buf(),
            reserve: (policy.reserve_bytes > 0).then(|| Reserve { path: dir.join(RESERVE_FILE), bytes: policy.reserve_bytes }),
            state: Mutex::default(),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AlarmState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why the alarm is raised, if it is.
    pub fn reason(&self) -> Option<String> {
        self.lock().reason.clone()
    }

    /// Raise the alarm (if it is not already) with `reason`. Returns true if it was
    /// newly raised.
    fn raise(&self, reason: String) -> bool {
        let mut s = self.lock();
        if s.reason.is_some() {
            return false;
        }
        // An alarm raised again soon after it was cleared is held longer each time.
        let flapping = s.last_cleared.is_some_and(|t| t.elapsed() < Duration::from_secs(60));
        s.hold = if flapping { (s.hold * 2).clamp(Duration::from_millis(200), Duration::from_secs(30)) } else { Duration::ZERO };
        s.hold_until = Some(Instant::now() + s.hold);
        tracing::error!(data_dir = %self.dir.display(), "storage alarm raised: {reason}");
        s.reason = Some(reason);
        drop(s);
        self.changed.notify_all();
        true
    }

    /// A write to `path` failed with `err` (a full disk): raise the alarm and give
    /// back the reserve so the writes under way can finish.
    pub fn raise_disk_full(&self, path: &Path, err: &io::Error) {
        let reason = format!(
            "disk full: writing {} failed ({err}); this node stores nothing more (and acknowledges nothing) \
             until space is freed on the file system of data dir {}, then resumes by itself",
            path.display(),
            self.dir.display()
        );
        if self.raise(reason) {
            if let Some(r) = &self.reserve {
                r.release();
            }
        }
    }

    fn clear(&self) {
        let mut s = self.lock();
        if let Some(reason) = s.reason.take() {
            s.last_cleared = Some(Instant::now());
            tracing::warn!(data_dir = %self.dir.display(), "storage alarm cleared: disk space is available again (was: {reason})");
        }
        drop(s);
        self.changed.notify_all();
    }

    fn may_clear(&self) -> bool {
        self.lock().hold_until.is_none_or(|t| Instant::now() >= t)
    }

    /// Whether [`DiskAlarm::close`] was called (the store is stopping).
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Stop: wake every waiter, which then gives up.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Block until the alarm is not raised. `what` names the waiting write in the
    /// log, which says every 30 s that it is still waiting.
    pub fn wait_clear(&self, what: &str) -> Result<(), Closed> {
        let mut s = self.lock();
        let started = Instant::now();
        loop {
            if s.closed {
                return Err(Closed);
            }
            if s.reason.is_none() {
                return Ok(());
            }
            let (guard, timeout) =
                self.changed.wait_timeout(s, Duration::from_secs(30)).unwrap_or_else(|p| p.into_inner());
            s = guard;
            if timeout.timed_out() && s.reason.is_some() {
                tracing::warn!(
                    data_dir = %self.dir.display(),
                    waited_s = started.elapsed().as_secs(),
                    "{what} is waiting for disk space: {}",
                    s.reason.as_deref().unwrap_or_default()
                );
            }
        }
    }

    /// Sleep `d` unless closed meanwhile; false once closed.
    fn sleep(&self, d: Duration) -> bool {
        let s = self.lock();
        if s.closed {
            return false;
        }
        let (s, _) = self.changed.wait_timeout_while(s, d, |s| !s.closed).unwrap_or_else(|p| p.into_inner());
        !s.closed
    }

    /// One check of the watcher, given the free bytes of the file system. `flush`
    /// flushes sled (before a raise is reported).
    fn check(&self, policy: &DiskPolicy, free: u64, flush: impl FnOnce()) {
        let raised = self.reason().is_some();
        if !raised {
            if free < policy.min_free_bytes {
                // Give the reserve back and let sled write out what it has, then
                // report: writes stop from here on.
                if let Some(r) = &self.reserve {
                    r.release();
                }
                flush();
                self.raise(format!(
                    "low disk space: {free} bytes free on the file system of data dir {} (the minimum is {}); \
                     this node stores nothing more (and acknowledges nothing) until space is freed, then resumes by itself",
                    self.dir.display(),
                    policy.min_free_bytes
                ));
            } else if let Some(r) = self.reserve.as_ref().filter(|r| !r.present()) {
                if free >= policy.clear_at() {
                    if let Err(e) = r.allocate() {
                        tracing::warn!(path = %r.path.display(), "cannot allocate the reserve file: {e}");
                    }
                }
            }
            return;
        }
        if free < policy.clear_at() || !self.may_clear() {
            return;
        }
        if let Some(r) = &self.reserve {
            if let Err(e) = r.allocate() {
                if is_disk_full(&e) {
                    return; // not really free (a quota, or taken meanwhile)
                }
                tracing::warn!(path = %r.path.display(), "cannot allocate the reserve file: {e}; going on without it");
            }
        }
        self.clear();
    }
}

/// The watcher thread of one store's data dir (see the module docs). Dropping it
/// (with the store's last handle) stops the thread and closes the alarm.
pub(crate) struct DiskWatch {
    alarm: Arc<DiskAlarm>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DiskWatch {
    /// Set up the alarm of data dir `dir`: allocate the reserve if there is room
    /// (else start with the alarm raised), and start the watcher. It holds sled only
    /// weakly, so the data dir is unlocked once the store is dropped.
    pub fn start(dir: &Path, policy: DiskPolicy, db: Weak<sled::Db>) -> io::Result<(Arc<DiskAlarm>, DiskWatch)> {
        let alarm = Arc::new(DiskAlarm::with_reserve(dir, &policy));
        if let Some(r) = alarm.reserve.as_ref().filter(|r| !r.present()) {
            let free = free_bytes(dir)?;
            if free >= policy.reserve_bytes + policy.min_free_bytes {
                if let Err(e) = r.allocate() {
                    tracing::warn!(path = %r.path.display(), "cannot allocate the reserve file: {e}");
                }
            }
        }
        let thread = {
            let alarm = alarm.clone();
            let dir = dir.to_path_buf();
            std::thread::Builder::new().name("aof-disk-watch".into()).spawn(move || {
                // The first check runs at once, so a node started on a full disk
                // reports it before it writes.
                loop {
                    match free_bytes(&dir) {
                        Ok(free) => alarm.check(&policy, free, || {
                            if let Some(db) = db.upgrade() {
                                if let Err(e) = db.flush() {
                                    super::fail_stop_on_sled_io(&dir, "flushing sled before the disk fills up", &e);
                                    tracing::error!("flushing sled failed: {e}");
                                }
                            }
                        }),
                        Err(e) => tracing::debug!(dir = %dir.display(), "statvfs failed: {e}"),
                    }
                    if !alarm.sleep(policy.check_every) {
                        return;
                    }
                }
            })?
        };
        Ok((alarm.clone(), DiskWatch { alarm, thread: Some(thread) }))
    }
}

impl Drop for DiskWatch {
    fn drop(&mut self) {
        self.alarm.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> DiskPolicy {
        DiskPolicy { reserve_bytes: 1 << 20, min_free_bytes: 4 << 20, check_every: Duration::from_millis(10) }
    }

    #[test]
    fn raise_below_the_minimum_clear_with_room_for_reserve_and_twice_the_minimum() {
        let dir = tempfile::tempdir().unwrap();
        let p = policy();
        let alarm = DiskAlarm::with_reserve(dir.path(), &p);
        let reserve = dir.path().join(RESERVE_FILE);
        // Plenty of room: the reserve is allocated, no alarm.
        alarm.check(&p, 100 << 20, || panic!("no flush without a raise"));
        assert!(alarm.reason().is_none());
        assert_eq!(std::fs::metadata(&reserve).unwrap().len(), p.reserve_bytes);
        // Low: the reserve is released, sled flushed, then the alarm raised.
        let mut flushed = false;
        alarm.check(&p, p.min_free_bytes - 1, || flushed = true);
        assert!(flushed);
        let reason = alarm.reason().expect("raised");
        assert!(reason.contains("low disk space") && reason.contains(&dir.path().display().to_string()), "{reason}");
        assert!(!reserve.exists());
        // The released reserve does not clear it; room for reserve + 2 x minimum does.
        alarm.check(&p, p.min_free_bytes + p.reserve_bytes, || panic!("already raised"));
        assert!(alarm.reason().is_some());
        alarm.check(&p, p.clear_at() - 1, || panic!("already raised"));
        assert!(alarm.reason().is_some());
        alarm.check(&p, p.clear_at(), || panic!("already raised"));
        assert!(alarm.reason().is_none());
        assert!(reserve.exists(), "the reserve is allocated again before the alarm clears");
    }

    #[test]
    fn a_full_disk_error_raises_and_waiters_resume_on_clear_or_give_up_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let p = policy();
        let alarm = Arc::new(DiskAlarm::with_reserve(dir.path(), &p));
        alarm.check(&p, 100 << 20, || {});
        assert!(dir.path().join(RESERVE_FILE).exists());
        let enospc = io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(is_disk_full(&enospc) && is_disk_full(&io::Error::from_raw_os_error(libc::EDQUOT)));
        assert!(!is_disk_full(&io::Error::from_raw_os_error(libc::EIO)));
        alarm.raise_disk_full(Path::new("/x/wal/1.wal"), &enospc);
        let reason = alarm.reason().unwrap();
        assert!(reason.contains("disk full") && reason.contains("/x/wal/1.wal"), "{reason}");
        assert!(!dir.path().join(RESERVE_FILE).exists());

        let waiter = {
            let alarm = alarm.clone();
            std::thread::spawn(move || alarm.wait_clear("test write"))
        };
        alarm.check(&p, p.clear_at(), || {});
        assert!(waiter.join().unwrap().is_ok());

        alarm.raise_disk_full(Path::new("/x"), &enospc);
        let waiter = {
            let alarm = alarm.clone();
            std::thread::spawn(move || alarm.wait_clear("test write"))
        };
        alarm.close();
        assert!(waiter.join().unwrap().is_err());
    }

    #[test]
    fn durable_dir_creation_creates_every_level() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        create_dir_all_durable(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_all_durable(&deep).unwrap();
    }
}
