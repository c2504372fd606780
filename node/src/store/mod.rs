//! sled-backed Raft storage: the replicated log ([`LogStore`]) and the state machine
//! with its snapshots ([`StateMachineStore`]).
//!
//! One node keeps the Raft log in append-only segment files ([`wal`], in
//! `<data dir>/wal/`) and everything else in one sled [`sled::Db`] in its data dir,
//! with these trees:
//!
//! | tree        | key                                | value                                   |
//! |-------------|------------------------------------|-----------------------------------------|
//! | `log`       | log index, 8 bytes big-endian      | `codec(Entry)` — only in data dirs from before the WAL; moved to it at open |
//! | `raft_meta` | `vote`, `committed`, `last_purged`, `node_id` | `codec(..)`                  |
//! | `sm` (or `sm-<n>`) | the state machine's own keys (`t/…`, `m/clock`), unprefixed | written by [`crate::sm`] |
//! | `sm_meta`   | `last_applied`, `membership`, `tree` | `codec(LogId)`, `codec(StoredMembership)`, `codec(String)`: the name of the state machine's tree (`sm` when absent) |
//! | `snapshot`  | `meta` (`data` in old data dirs)   | `codec(SnapshotMeta)`; the data, `codec(Vec<(key, value)>)` in any order, is the file `snapshots/<id>.snap` |
//!
//! Besides sled's own files the data dir holds `wal/` (the log), `snapshots/` (one
//! file per snapshot) and `reserved-space`, space kept free for a full disk
//! ([`disk`]: the storage alarm, and why sled failures stop the process).
//!
//! **Architecture Invariant**: every value this module writes goes through
//! [`crate::codec`], so each record carries a format version; a record this build
//! cannot read surfaces as an error ([`StoreError::Corrupt`] at open, or an
//! [`openraft::StorageError`] from the Raft storage traits), never as a panic.
//!
//! **Architecture Invariant**: the state machine's tree and `sm_meta` only ever change
//! together, in one sled transaction, so after a crash the applied state and
//! `last_applied` agree. A received snapshot is the one exception to "together": it
//! is written into a new tree (`sm-<n>`) that nothing reads, and `sm_meta.tree`
//! switches to it in the transaction that records its `last_applied`; a tree that
//! `sm_meta` does not name is dropped at open.

// `openraft::StorageError` (~224 bytes) is the error type the Raft storage traits
// prescribe; boxing it in the helpers would only add conversions.
#![allow(clippy::result_large_err)]

pub mod disk;
mod kv;
mod log_store;
mod state_machine;
pub mod wal;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use openraft::{AnyError, StorageIOError};

use crate::codec::{self, CodecError};
use crate::types::{LogId, StorageError, StoredMembership};

pub use disk::DiskPolicy;
pub use kv::SledKv;
pub use log_store::LogStore;
pub use state_machine::{SnapshotBuilder, StateMachineStore};
pub(crate) use state_machine::read_snapshot_data;

/// Tree names.
pub(crate) mod trees {
    pub const LOG: &str = "log";
    pub const RAFT_META: &str = "raft_meta";
    pub const SM: &str = "sm";
    pub const SM_META: &str = "sm_meta";
    pub const SNAPSHOT: &str = "snapshot";
}

/// Keys of the `raft_meta` tree.
pub(crate) mod raft_meta_keys {
    pub const VOTE: &[u8] = b"vote";
    pub const COMMITTED: &[u8] = b"committed";
    pub const LAST_PURGED: &[u8] = b"last_purged";
    pub const NODE_ID: &[u8] = b"node_id";
}

/// Keys of the `sm_meta` tree.
pub(crate) mod sm_meta_keys {
    pub const LAST_APPLIED: &[u8] = b"last_applied";
    pub const MEMBERSHIP: &[u8] = b"membership";
    /// The name of the tree holding the state machine (`trees::SM` when absent).
    pub const TREE: &[u8] = b"tree";
}

/// Keys of the `snapshot` tree.
pub(crate) mod snapshot_keys {
    pub const META: &[u8] = b"meta";
    pub const DATA: &[u8] = b"data";
    /// `codec(SnapshotFileSum)` of the current snapshot's file, written with `meta`.
    pub const FILE_SUM: &[u8] = b"file_sum";
}

/// Length and CRC-32 of a snapshot's data file, stored with its meta and checked
/// when the data dir is opened (a damaged snapshot file must never be served to a
/// member that needs it).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct SnapshotFileSum {
    pub snapshot_id: String,
    pub len: u64,
    pub crc32: u32,
}

/// Snapshot installs as [`LogStore::purge`] sees them. openraft 0.9 issues the purge
/// of the log up to a received snapshot in the same step as the snapshot's install,
/// which runs on its state-machine worker: the purge could reach the disk first, and
/// a crash in between left a purge mark ahead of the durable snapshot, which openraft
/// refuses at every start (finding F3 in docs/JEPSEN.md). So a purge past the applied
/// state waits for the install (see [`LogStore`]).
#[derive(Debug, Default)]
pub(crate) struct InstallProgress {
    /// A snapshot was received from a leader (`begin_receiving_snapshot`) since open.
    pub receiving: std::sync::atomic::AtomicBool,
    /// Installs that failed since open.
    pub failed: std::sync::atomic::AtomicU64,
    /// Notified whenever an install ends (stored or failed).
    pub done: tokio::sync::Notify,
}

/// Errors of opening and checking a data dir. Each message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot open data dir {}: {source}; check that the directory exists or can be created, \
         is writable, and is not in use by another aof-cluster process",
        .dir.display()
    )]
    Open { dir: PathBuf, source: sled::Error },

    #[error("storage error in data dir {}: {source}; check free disk space and permissions", .dir.display())]
    Io { dir: PathBuf, source: sled::Error },

    #[error(
        "data dir {}: cannot read {what}: {source}; the data dir was written by an incompatible \
         aof-cluster version or is damaged (restore it from a backup, or start this node with an \
         empty data dir so it catches up from the cluster)",
        .dir.display()
    )]
    Corrupt { dir: PathBuf, what: &'static str, source: CodecError },

    #[error("data dir {}: {source}", .dir.display())]
    Wal { dir: PathBuf, source: wal::WalError },

    #[error(
        "data dir {}: {message}; restore the data dir from a backup, or start this node with an empty \
         data dir so it catches up from the cluster",
        .dir.display()
    )]
    Damaged { dir: PathBuf, message: String },

    #[error(
        "data dir {} belongs to node {found}, config says node {expected}; use the right --data-dir or an empty one",
        .dir.display()
    )]
    WrongNode { dir: PathBuf, found: u64, expected: u64 },
}

/// sled's log segment size for new data dirs: 2 MiB. sled writes any page larger
/// than a quarter segment as a separate blob file (a file create, write and sync
/// each); with its default 512 KiB segments that threshold is 128 KiB, which a leaf
/// of 16 stored webhook payloads (GitHub's are up to tens of KiB) exceeds. At 2 MiB
/// the threshold is 512 KiB; larger segments only cost more memory per IO buffer.
pub const SEGMENT_SIZE: usize = 2 << 20;

/// The segment size to open `dir` with: the one it was created with (sled refuses any
/// other), else [`SEGMENT_SIZE`].
/// sled's data file in the data dir (sled 0.34).
pub(crate) const SLED_FILE: &str = "db";

/// fsync sled's `conf` and `db` files and the data dir holding them.
fn sync_sled_files(dir: &Path) -> std::io::Result<()> {
    for name in ["conf", SLED_FILE] {
        match std::fs::File::open(dir.join(name)) {
            Ok(f) => f.sync_all()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    disk::sync_dir(dir)
}

fn segment_size(dir: &Path) -> usize {
    // `conf` is text lines followed by a binary checksum.
    std::fs::read(dir.join("conf"))
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .and_then(|conf| {
            conf.lines().find_map(|l| l.strip_prefix("segment_size:").and_then(|v| v.trim().parse::<usize>().ok()))
        })
        .unwrap_or(SEGMENT_SIZE)
}

/// What the state machine has applied, cached in memory (the source of truth is the
/// `sm_meta` tree; the cache is updated right after each commit to it).
#[derive(Clone, Debug, Default)]
pub(crate) struct Applied {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// Exit code of a node that stops because its storage failed beyond repair in this
/// process (`EX_IOERR`); see [`fail_stop_on_sled_io`].
pub const FAIL_STOP_EXIT_CODE: i32 = 74;

/// Fail-stop: if `e` is an IO error of sled, log why and exit the process with
/// [`FAIL_STOP_EXIT_CODE`].
///
/// sled keeps the first IO error of its log as a global error and returns it from
/// every later operation until the database is opened again, so a node whose sled
/// failed can never store a vote or apply an entry again. Carrying on would leave a
/// member that looks alive but does nothing (a zombie). Exiting is as safe as a
/// crash (everything acknowledged is in the fsynced log and in flushed sled state)
/// and lets a supervisor restart the node, which then recovers from the log. See
/// [`disk`] for how a full disk is kept from reaching sled in the first place.
pub(crate) fn fail_stop_on_sled_io(dir: &Path, what: &str, e: &sled::Error) {
    if let sled::Error::Io(io) = e {
        let hint = if disk::is_disk_full(io) { "free space on that file system; " } else { "" };
        let msg = format!(
            "storage failed in data dir {}: {what}: {e}. The state machine store (sled) cannot continue after \
             an IO error, so this node stops now (exit code {FAIL_STOP_EXIT_CODE}); {hint}restart it and it \
             recovers from its log",
            dir.display()
        );
        tracing::error!("{msg}");
        eprintln!("{msg}");
        std::process::exit(FAIL_STOP_EXIT_CODE);
    }
}

/// The sled database of one node. Cheap to clone (all handles are shared).
#[derive(Clone)]
pub struct Store {
    /// The disk watcher; declared first so that dropping the last handle stops it
    /// before sled is closed.
    _watch: Arc<disk::DiskWatch>,
    /// The storage alarm (full disk), shared with the WAL.
    pub(crate) alarm: Arc<disk::DiskAlarm>,
    pub(crate) dir: Arc<PathBuf>,
    pub(crate) db: Arc<sled::Db>,
    pub(crate) log: sled::Tree,
    pub(crate) raft_meta: sled::Tree,
    /// The state machine's tree: replaced as a whole when a snapshot is installed
    /// (see [`Store::sm`]).
    sm: Arc<RwLock<sled::Tree>>,
    pub(crate) sm_meta: sled::Tree,
    pub(crate) snapshot: sled::Tree,
    pub(crate) applied: Arc<RwLock<Applied>>,
    /// Log appends (flushes) and the entries they carried: their ratio is the
    /// group-commit batch size.
    pub(crate) append_stats: Arc<AppendStats>,
    /// While a snapshot is being built: the values keys had when it was started
    /// (see [`state_machine`]'s "To ensure correctness").
    pub(crate) snapshot_undo: Arc<std::sync::Mutex<Option<state_machine::UndoLog>>>,
    /// The Raft log.
    pub(crate) wal: Arc<wal::Wal>,
    /// Snapshot installs, for purges of the log (see [`InstallProgress`]).
    pub(crate) installs: Arc<InstallProgress>,
}

/// Counters of [`LogStore`] appends, for metrics.
#[derive(Debug)]
pub struct AppendStats {
    pub flushes: std::sync::atomic::AtomicU64,
    pub entries: std::sync::atomic::AtomicU64,
    /// Seconds of each append (WAL write and `fdatasync`); `aof_log_flush_seconds`.
    pub flush_seconds: prometheus_client::metrics::histogram::Histogram,
}

impl Default for AppendStats {
    fn default() -> Self {
        AppendStats { flushes: Default::default(), entries: Default::default(), flush_seconds: crate::metrics::log_flush_histogram() }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl Store {
    /// Open (or create) the data dir. `cache_capacity_bytes` bounds sled's page cache
    /// (sled's own default is 1 GB). Full-disk handling with [`DiskPolicy::default`].
    pub fn open(dir: &Path, cache_capacity_bytes: u64) -> Result<Store, StoreError> {
        Self::open_with_policy(dir, cache_capacity_bytes, DiskPolicy::default())
    }

    /// [`Store::open`] with the given full-disk policy (see [`disk`]).
    pub fn open_with_policy(dir: &Path, cache_capacity_bytes: u64, policy: DiskPolicy) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open { dir: dir.to_path_buf(), source };
        disk::create_dir_all_durable(dir).map_err(|e| open_err(sled::Error::Io(e)))?;
        let db = Arc::new(
            sled::Config::new()
                .path(dir)
                .cache_capacity(cache_capacity_bytes)
                .segment_size(segment_size(dir))
                // Planted bug `ack-before-fsync`: sled flushes only when asked to.
                .flush_every_ms((!crate::planted::active(crate::planted::Bug::AckBeforeFsync)).then_some(500))
                .open()
                .map_err(open_err)?,
        );
        // sled creates its files (`db`, `conf`, `blobs/`) without syncing them or the
        // directory: make their names and `conf` durable.
        sync_sled_files(dir).map_err(|e| open_err(sled::Error::Io(e)))?;
        let tree = |name: &str| db.open_tree(name).map_err(open_err);
        let raft_meta = tree(trees::RAFT_META)?;
        let (alarm, watch) =
            disk::DiskWatch::start(dir, policy, Arc::downgrade(&db)).map_err(|e| open_err(sled::Error::Io(e)))?;
        let last_purged: Option<LogId> = match raft_meta.get(raft_meta_keys::LAST_PURGED).map_err(open_err)? {
            None => None,
            Some(v) => Some(codec::decode(&v).map_err(|source| StoreError::Corrupt {
                dir: dir.to_path_buf(),
                what: "the last purged log id",
                source,
            })?),
        };
        let wal = wal::Wal::open_with(&dir.join("wal"), alarm.clone(), last_purged.map(|p| p.index))
            .map_err(|source| StoreError::Wal { dir: dir.to_path_buf(), source })?;
        let sm_meta = tree(trees::SM_META)?;
        let sm = open_sm_tree(dir, &db, &sm_meta)?;
        let mut store = Store {
            _watch: Arc::new(watch),
            alarm,
            wal: Arc::new(wal),
            dir: Arc::new(dir.to_path_buf()),
            log: tree(trees::LOG)?,
            raft_meta,
            sm: Arc::new(RwLock::new(sm)),
            sm_meta,
            snapshot: tree(trees::SNAPSHOT)?,
            db,
            applied: Arc::default(),
            append_stats: Arc::default(),
            snapshot_undo: Arc::default(),
            installs: Arc::default(),
        };
        let applied = store.load_applied()?;
        store.applied = Arc::new(RwLock::new(applied));
        store.migrate_log_tree()?;
        // The current snapshot must be readable, undamaged and cover the purge mark
        // (openraft's start-up invariant); a purge mark ahead of what this node can
        // cover is lowered if the log still has the entries, else the open fails.
        let last_purged = store.state_machine().check_snapshot_at_open(last_purged)?;
        if let Some(p) = last_purged {
            // Entries purged before a restart may still sit in a segment with live ones.
            store.wal.purge(p.index).map_err(|source| StoreError::Wal { dir: dir.to_path_buf(), source })?;
        }
        // The data dir's entries (sled's files, wal/, snapshots/) and the data dir in
        // its parent are durable from the first open on, whoever created them.
        disk::sync_dir(dir)
            .and_then(|()| disk::sync_dir(&disk::parent_of(dir)))
            .map_err(|e| StoreError::Io { dir: dir.to_path_buf(), source: sled::Error::Io(e) })?;
        Ok(store)
    }

    /// Make writes that wait for disk space (see [`disk`]) give up with an error
    /// instead: call it when the node stops, so that a node whose disk is full still
    /// shuts down (Raft's core waits on such a write). Nothing those writes carried
    /// was acknowledged. The alarm is not cleared again afterwards.
    pub fn stop_waiting_for_disk(&self) {
        self.alarm.close();
    }

    /// Why this node stores nothing at the moment (a full disk, see [`disk`]), or
    /// `None`. While this is `Some`, log appends wait and the node acknowledges no
    /// writes; it clears by itself once space is freed.
    pub fn disk_alarm(&self) -> Option<String> {
        self.alarm.reason()
    }

    /// Data dirs written before the WAL kept the log in the `log` tree: move its
    /// entries (already versioned records) into the WAL, then empty the tree.
    fn migrate_log_tree(&self) -> Result<(), StoreError> {
        let wal_err = |source| StoreError::Wal { dir: self.dir.to_path_buf(), source };
        if self.log.is_empty() {
            return Ok(());
        }
        let mut entries = Vec::new();
        for kv in self.log.iter() {
            let (k, v) = kv.map_err(|e| self.io_err(e))?;
            let index = <[u8; 8]>::try_from(k.as_ref()).map(u64::from_be_bytes).map_err(|_| StoreError::Corrupt {
                dir: self.dir.to_path_buf(),
                what: "a log key of the old log tree",
                source: CodecError::Empty,
            })?;
            entries.push((index, v.to_vec()));
        }
        match self.wal.bounds() {
            Some((_, last)) if last >= entries.last().map_or(0, |e| e.0) => {} // moved before a crash
            Some((_, last)) => entries.retain(|(i, _)| *i > last),
            None => {}
        }
        let n = entries.len();
        self.wal.append(entries).map_err(wal_err)?;
        self.log.clear().map_err(|e| self.io_err(e))?;
        self.db.flush().map_err(|e| self.io_err(e))?;
        tracing::info!(entries = n, dir = %self.dir.display(), "moved the Raft log from sled into the write-ahead log");
        Ok(())
    }

    /// The state machine's tree as of now. An install replaces it (see
    /// [`state_machine`]); a handle taken before keeps reading the state it had.
    pub(crate) fn sm(&self) -> sled::Tree {
        self.sm.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Make `tree` the state machine's tree (its name is already durable in
    /// `sm_meta`), and drop the one it replaces once readers that may hold it are
    /// done with it.
    pub(crate) fn switch_sm(&self, tree: sled::Tree) {
        let old = std::mem::replace(&mut *self.sm.write().unwrap_or_else(|p| p.into_inner()), tree);
        // Reads are short (one request's keys); a snapshot build reading the old tree
        // was overtaken and stops at its next key. A weak handle: the data dir closes
        // (and can be opened again) meanwhile; the tree is then dropped at that open.
        let db = Arc::downgrade(&self.db);
        let name = old.name();
        drop(old);
        let _ = std::thread::Builder::new().name("aof-drop-tree".into()).spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(5));
            let Some(db) = db.upgrade() else { return };
            if let Err(e) = db.drop_tree(name) {
                tracing::warn!("cannot drop the replaced state machine tree: {e}; it is dropped at the next start");
            }
        });
    }

    fn load_applied(&self) -> Result<Applied, StoreError> {
        let last_applied = self.get_decoded(&self.sm_meta, sm_meta_keys::LAST_APPLIED, "the last applied log id")?;
        let membership =
            self.get_decoded(&self.sm_meta, sm_meta_keys::MEMBERSHIP, "the applied membership")?.unwrap_or_default();
        Ok(Applied { last_applied, membership })
    }

    fn io_err(&self, source: sled::Error) -> StoreError {
        StoreError::Io { dir: self.dir.to_path_buf(), source }
    }

    fn get_decoded<T: serde::de::DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        key: &[u8],
        what: &'static str,
    ) -> Result<Option<T>, StoreError> {
        match tree.get(key).map_err(|e| self.io_err(e))? {
            None => Ok(None),
            Some(v) => codec::decode(&v).map(Some).map_err(|source| StoreError::Corrupt {
                dir: self.dir.to_path_buf(),
                what,
                source,
            }),
        }
    }

    /// sled's flush and then an `fsync` of its file: sled 0.34's flush alone ends
    /// with `sync_file_range`, which is no durability after a power loss (see
    /// [`LogStore`]'s `flush`). Blocking.
    pub(crate) fn flush_durable(&self) -> Result<(), sled::Error> {
        self.db.flush()?;
        std::fs::File::open(self.dir.join(SLED_FILE)).and_then(|f| f.sync_all()).map_err(sled::Error::Io)
    }

    /// Make everything written so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(|e| self.io_err(e))?;
        Ok(())
    }

    /// Pins this data dir to a node id: first open records it; a different id later is an error
    /// ("data dir X belongs to node 2, config says node 3; use the right --data-dir or an empty one").
    pub fn check_identity(&self, node_id: u64) -> Result<(), StoreError> {
        let encoded = codec::encode(&node_id);
        match self
            .raft_meta
            .compare_and_swap(raft_meta_keys::NODE_ID, None as Option<&[u8]>, Some(encoded))
            .map_err(|e| self.io_err(e))?
        {
            Ok(()) => {
                self.db.flush().map_err(|e| self.io_err(e))?;
                Ok(())
            }
            Err(cas) => {
                let current = cas.current.expect("compare_and_swap against None fails only when a value exists");
                let found: u64 = codec::decode(&current).map_err(|source| StoreError::Corrupt {
                    dir: self.dir.to_path_buf(),
                    what: "the node id of the data dir",
                    source,
                })?;
                if found == node_id {
                    Ok(())
                } else {
                    Err(StoreError::WrongNode { dir: self.dir.to_path_buf(), found, expected: node_id })
                }
            }
        }
    }

    /// True when nothing was ever persisted by Raft: no vote, no log entry, no applied
    /// state, no snapshot. (The pinned node id does not count.)
    pub fn is_pristine(&self) -> Result<bool, StoreError> {
        let io = |e| self.io_err(e);
        for key in [raft_meta_keys::VOTE, raft_meta_keys::COMMITTED, raft_meta_keys::LAST_PURGED] {
            if self.raft_meta.contains_key(key).map_err(io)? {
                return Ok(false);
            }
        }
        for tree in [&self.log, &self.sm(), &self.sm_meta, &self.snapshot] {
            if tree.first().map_err(io)?.is_some() {
                return Ok(false);
            }
        }
        Ok(self.wal.bounds().is_none())
    }

    /// The Raft log (and vote) storage of this node.
    /// Append counters (see [`AppendStats`]).
    pub fn append_stats(&self) -> Arc<AppendStats> {
        self.append_stats.clone()
    }

    /// Bytes the data dir takes on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0) + self.wal.size_on_disk() + self.snapshot_bytes()
    }

    /// Bytes of Raft log on disk.
    pub fn log_bytes(&self) -> u64 {
        self.wal.size_on_disk()
    }

    /// Bytes of snapshot data on disk (the current snapshot's file, plus one being
    /// written or replaced at the moment).
    pub fn snapshot_bytes(&self) -> u64 {
        std::fs::read_dir(self.dir.join("snapshots"))
            .map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum::<u64>())
            .unwrap_or(0)
    }

    /// Wait until this is the last handle on the store, at most `timeout`; `false`
    /// if others remain. Dropping the last handle unlocks the data dir, so a node
    /// restarted in the same process can open it again.
    pub async fn wait_until_last_handle(&self, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        // Every clone shares `dir`, so its count is the number of live handles.
        while Arc::strong_count(&self.dir) > 1 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        true
    }

    pub fn log_store(&self) -> LogStore {
        LogStore::new(self.clone())
    }

    /// The state machine (and snapshot) storage of this node.
    pub fn state_machine(&self) -> StateMachineStore {
        StateMachineStore::new(self.clone())
    }

    /// The data dir this store was opened from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Open the state machine's tree named in `sm_meta` (`sm` when none is), and drop
/// the trees a snapshot install left behind: one written but never switched to (a
/// crash during the install), or one replaced but not yet dropped.
fn open_sm_tree(dir: &Path, db: &sled::Db, sm_meta: &sled::Tree) -> Result<sled::Tree, StoreError> {
    let open_err = |source| StoreError::Open { dir: dir.to_path_buf(), source };
    let name: String = match sm_meta.get(sm_meta_keys::TREE).map_err(open_err)? {
        None => trees::SM.to_string(),
        Some(v) => codec::decode(&v).map_err(|source| StoreError::Corrupt {
            dir: dir.to_path_buf(),
            what: "the state machine's tree name",
            source,
        })?,
    };
    let replaced = format!("{}-", trees::SM);
    for other in db.tree_names() {
        let is_sm = other.as_ref() == trees::SM.as_bytes() || other.starts_with(replaced.as_bytes());
        if is_sm && other.as_ref() != name.as_bytes() {
            db.drop_tree(&other).map_err(open_err)?;
        }
    }
    db.open_tree(&name).map_err(open_err)
}

/// Wrap any error as the source of a [`StorageIOError`].
pub(crate) fn any<E: std::error::Error + 'static>(e: E) -> AnyError {
    AnyError::new(&e)
}

/// Shorthand: a [`StorageIOError`] as a [`StorageError`].
pub(crate) fn io(e: StorageIOError<u64>) -> StorageError {
    StorageError::IO { source: e }
}
