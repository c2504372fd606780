//! The replicated state machine (`sm` + `sm_meta` trees) and its snapshots (`snapshot`
//! tree).

use std::collections::{HashMap, HashSet};

use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::disk::{self, DiskAlarm};
use super::{any, fail_stop_on_sled_io, io, sm_meta_keys, snapshot_keys, Applied, SledKv, SnapshotFileSum, Store, StoreError};
use crate::codec;
use crate::sm::kv::{Key, Overlay, Value};
use crate::types::{Entry, LogId, Response, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

/// The state machine storage of one node. Clones share the same database.
///
/// ### To ensure correctness
///
/// - [`apply`](RaftStateMachine::apply) runs the pure core ([`crate::sm::apply`]) for
///   the whole batch against ONE [`Overlay`] over the `sm` tree, then commits the
///   overlay's writes to `sm` together with `last_applied` (and the membership, if the
///   batch carried one) to `sm_meta` in one sled transaction. The applied state and
///   `last_applied` can therefore never disagree, even across a crash. Nothing is
///   flushed here: the log is durable, and sled recovers a consistent prefix, so a
///   lost apply is simply re-applied from the log after restart.
/// - If any read of the `sm` tree fails during a batch, nothing of the batch is
///   committed and the error is returned.
/// - A snapshot is the state as of the moment
///   [`get_snapshot_builder`](RaftStateMachine::get_snapshot_builder) was called (on
///   openraft's state-machine worker, between two applies), but it is read later, in
///   `build_snapshot`, on a separate blocking thread while applies go on — copying the
///   whole state on the worker would stop the cluster for as long as the copy takes.
///   sled has no MVCC snapshots, so the builder starts an [`UndoLog`]: until the build
///   ends, `apply` records in it the value every key it writes had *before* its first
///   write (`None` = absent), and does so before committing the write. The builder
///   reads each key from sled first and then takes the undo value if there is one,
///   so a key changed before it was read shows its old value and one changed after
///   was read old; keys removed before the builder reached them are added from the
///   undo log at the end. The result is exactly the state at capture time.
/// - [`install_snapshot`](RaftStateMachine::install_snapshot) rewrites the tree
///   without going through `apply`, so it marks a running build's undo log as
///   overtaken; that build then returns the installed (newer) snapshot instead.
/// - A snapshot's data is written to its own file (synced, renamed into place, the
///   directory synced), then its meta is recorded in the `snapshot` tree unless a
///   newer one (greater `last_log_id`) is already there;
///   [`install_snapshot`](RaftStateMachine::install_snapshot) replaces the whole `sm`
///   tree, `sm_meta` and the stored snapshot in one transaction. **sled is flushed
///   before the files of other snapshots are removed**: the stored meta must name a
///   file that exists after any crash (before the flush, sled recovers the old meta,
///   whose file is still there; after it, the new one). A data dir left by a build
///   without that flush (meta naming a deleted file) is repaired when it is opened:
///   a new snapshot is built from the applied state ([`StateMachineStore::check_snapshot_at_open`]).
/// - A snapshot's file length and CRC-32 are stored with its meta (same transaction)
///   and checked when the data dir is opened: a damaged current snapshot is replaced
///   by one built from the applied state, never served to a member that needs it.
///   The same check makes the snapshot cover the purge mark openraft will start with.
/// - While the storage alarm is raised (a full disk, see [`super::disk`]), snapshot
///   files are not written: building or installing waits, and a write that meets a
///   full disk raises the alarm, waits and writes the same bytes again.
/// - Bad bytes on disk surface as a [`StorageError`], never as a panic.
#[derive(Clone)]
pub struct StateMachineStore {
    store: Store,
    /// Compiled triggers reused across applies (`aof_core::sm::triggers::TriggerCache`).
    triggers: std::sync::Arc<crate::sm::triggers::TriggerCache>,
}

/// The contents of a snapshot's data: every `(key, value)` pair of the `sm` tree (in
/// no particular order), encoded with [`crate::codec`]. Written and read pair by
/// pair ([`encode_captured`], [`load_pairs`]), never as one value but in tests.
#[allow(dead_code)]
pub type SnapshotPairs = Vec<(Key, Value)>;

fn read_sm_err(e: impl std::error::Error + 'static) -> StorageError {
    io(StorageIOError::read_state_machine(any(e)))
}

/// Map the outcome of a sled transaction whose closure aborts with a [`StorageError`].
fn tx_result<T>(
    r: Result<T, TransactionError<StorageError>>,
    on_sled: impl FnOnce(sled::Error) -> StorageError,
) -> Result<T, StorageError> {
    match r {
        Ok(v) => Ok(v),
        Err(TransactionError::Abort(e)) => Err(e),
        Err(TransactionError::Storage(e)) => Err(on_sled(e)),
    }
}

/// Where snapshot data lives: `<data dir>/snapshots/<snapshot id>.snap`. Only the
/// meta is kept in sled (a multi-hundred-MiB sled value stalls every other sled
/// writer while it is written).
fn snapshot_dir(store: &Store) -> std::path::PathBuf {
    store.dir.join("snapshots")
}

fn snapshot_file(store: &Store, id: &str) -> std::path::PathBuf {
    snapshot_dir(store).join(format!("{id}.snap"))
}

fn write_snapshot_err(meta: Option<&SnapshotMeta>, e: impl std::error::Error + 'static) -> StorageError {
    io(StorageIOError::write_snapshot(meta.map(|m| m.signature()), any(e)))
}

/// Snapshot data is synced to disk every this many bytes while it is written.
const SNAPSHOT_SYNC_EVERY: u64 = 4 << 20;

/// A file writer that syncs every [`SNAPSHOT_SYNC_EVERY`] bytes. A snapshot is as
/// large as the state (hundreds of MiB); written in one go and synced at the end,
/// its dirty pages queued ahead of every log append's `fdatasync` for a second or
/// more, AppendEntries timed out (they are bounded by the heartbeat interval) and the
/// leader backed off for 500 ms: p99 stalls of 0.6 – 2 s in the benchmark. Syncing in
/// small steps keeps the device queue short.
struct SyncEvery {
    file: std::fs::File,
    unsynced: u64,
    /// Syncs made so far (for tests).
    syncs: u32,
    /// On a full disk: raise this alarm, wait until it clears, write again. (A
    /// `write` that fails has written nothing, so the same bytes are written again.)
    alarm: Option<(std::sync::Arc<DiskAlarm>, std::path::PathBuf)>,
}

impl std::io::Write for SyncEvery {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = loop {
            match std::io::Write::write(&mut self.file, buf) {
                Ok(n) => break n,
                Err(e) => match &self.alarm {
                    Some((alarm, path)) if disk::is_disk_full(&e) => {
                        alarm.raise_disk_full(path, &e);
                        alarm.wait_clear("writing a snapshot").map_err(std::io::Error::other)?;
                    }
                    _ => return Err(e),
                },
            }
        };
        self.unsynced += n as u64;
        if self.unsynced >= SNAPSHOT_SYNC_EVERY {
            sync_waiting_for_space(&self.file, self.alarm.as_ref(), false)?;
            self.unsynced = 0;
            self.syncs += 1;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::Write::flush(&mut self.file)
    }
}

/// `fdatasync` (or `fsync` with `all`) `file`; on a full disk (a file system that
/// reports `ENOSPC` at sync, like one over a FUSE layer) raise the alarm, wait until
/// it clears and sync again, as log appends do, instead of failing the snapshot
/// (openraft stops its core on a failed snapshot write: a member that looks alive
/// but does nothing, found with `disk-full` in docs/JEPSEN.md, F4).
fn sync_waiting_for_space(
    file: &std::fs::File,
    alarm: Option<&(std::sync::Arc<DiskAlarm>, std::path::PathBuf)>,
    all: bool,
) -> std::io::Result<()> {
    loop {
        let r = if all { file.sync_all() } else { file.sync_data() };
        match (r, alarm) {
            (Err(e), Some((alarm, path))) if disk::is_disk_full(&e) => {
                alarm.raise_disk_full(path, &e);
                alarm.wait_clear("syncing a snapshot").map_err(std::io::Error::other)?;
            }
            (r, _) => return r,
        }
    }
}

impl std::io::Seek for SyncEvery {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        std::io::Seek::seek(&mut self.file, pos)
    }
}

/// Length and CRC-32 of a file's bytes from `file`'s current position to its end.
fn file_sum(file: &mut std::fs::File, snapshot_id: &str) -> std::io::Result<SnapshotFileSum> {
    use std::io::Read;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok(SnapshotFileSum { snapshot_id: snapshot_id.to_string(), len, crc32: hasher.finalize() })
}

/// Write snapshot data durably: into a temporary file (synced as it grows, see
/// [`SyncEvery`]), synced, renamed into place, directory synced. Waits while the
/// storage alarm is raised. `write` answers `false` to abandon the file (then `None`);
/// otherwise the file is returned open for reading, at its start, with the length and
/// checksum of what it holds (read back from it). Blocking.
fn persist_snapshot_file(
    store: &Store,
    id: &str,
    write: impl FnOnce(&mut std::io::BufWriter<SyncEvery>) -> Result<bool, StorageError>,
) -> Result<Option<(std::fs::File, SnapshotFileSum)>, StorageError> {
    use std::io::{Seek, Write};
    let err = |e: std::io::Error| write_snapshot_err(None, e);
    store.alarm.wait_clear("writing a snapshot").map_err(|e| write_snapshot_err(None, e))?;
    let dir = snapshot_dir(store);
    disk::create_dir_all_durable(&dir).map_err(err)?;
    let tmp = dir.join(format!("{id}.tmp"));
    let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp).map_err(err)?;
    let sync_every = SyncEvery { file, unsynced: 0, syncs: 0, alarm: Some((store.alarm.clone(), tmp.clone())) };
    let mut w = std::io::BufWriter::with_capacity(1 << 20, sync_every);
    let written = (|| {
        if !write(&mut w)? {
            return Ok(None);
        }
        w.flush().map_err(err)?;
        let inner = w.into_inner().map_err(|e| err(e.into_error()))?;
        sync_waiting_for_space(&inner.file, inner.alarm.as_ref(), true).map_err(err)?;
        let mut file = inner.file;
        std::fs::rename(&tmp, snapshot_file(store, id)).map_err(err)?;
        let dir_file = std::fs::File::open(&dir).map_err(err)?;
        sync_waiting_for_space(&dir_file, Some(&(store.alarm.clone(), dir.clone())), true).map_err(err)?;
        file.seek(std::io::SeekFrom::Start(0)).map_err(err)?;
        let sum = file_sum(&mut file, id).map_err(err)?;
        file.seek(std::io::SeekFrom::Start(0)).map_err(err)?;
        Ok(Some((file, sum)))
    })();
    if !matches!(written, Ok(Some(_))) {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Map a sled error of a write: fail-stop if sled itself failed (see
/// [`fail_stop_on_sled_io`]), else hand it on.
fn sled_write<'a>(store: &'a Store, what: &'static str) -> impl Fn(sled::Error) -> sled::Error + 'a {
    move |e| {
        fail_stop_on_sled_io(&store.dir, what, &e);
        e
    }
}

/// Store `meta` (whose file is written) as the current snapshot unless a newer one
/// is stored (or always, with `replace`); then make that durable and remove the
/// files of other snapshots. Returns whether it was stored. Blocking.
fn store_snapshot_meta(store: &Store, meta: &SnapshotMeta, sum: &SnapshotFileSum, replace: bool) -> Result<bool, StorageError> {
    let meta_rec = codec::encode(meta);
    let sum_rec = codec::encode(sum);
    let r = store.snapshot.transaction(|snap| {
        if !replace {
            if let Some(stored) = StateMachineStore::stored_meta(snap)? {
                if stored.last_log_id > meta.last_log_id {
                    return Ok(false);
                }
            }
        }
        snap.insert(snapshot_keys::META, meta_rec.as_slice())?;
        snap.insert(snapshot_keys::FILE_SUM, sum_rec.as_slice())?;
        snap.remove(snapshot_keys::DATA)?;
        Ok(true)
    });
    let stored = tx_result(r, |e| write_snapshot_err(Some(meta), sled_write(store, "storing a snapshot's meta")(e)))?;
    if stored {
        // The new meta must be durable before the old snapshot's file is removed.
        store.flush_durable().map_err(|e| write_snapshot_err(Some(meta), sled_write(store, "flushing a snapshot's meta")(e)))?;
        remove_other_snapshot_files(store, &meta.snapshot_id);
    } else {
        let _ = std::fs::remove_file(snapshot_file(store, &meta.snapshot_id));
    }
    Ok(stored)
}

/// Write the snapshot started as `generation` to its file and store it (see
/// [`store_snapshot_meta`]): `(stored, the file)`, or `None` if a snapshot was
/// installed meanwhile. Blocking.
fn build_blocking(
    store: &Store,
    generation: u64,
    meta: &SnapshotMeta,
    replace: bool,
) -> Result<Option<(bool, std::fs::File)>, StorageError> {
    let Some((file, sum)) = persist_snapshot_file(store, &meta.snapshot_id, |w| encode_captured(store, generation, w))? else {
        return Ok(None);
    };
    let stored = store_snapshot_meta(store, meta, &sum, replace)?;
    Ok(Some((stored, file)))
}

/// Nice value of the thread that builds snapshots.
const SNAPSHOT_NICE: libc::c_int = 10;

/// Run `f` on a thread of its own at a lower CPU priority ([`SNAPSHOT_NICE`]) and
/// await its result. Building a snapshot reads and encodes the whole state; on a
/// busy machine it should yield the CPU to the log appends and applies that
/// acknowledgements wait for. (A thread of its own, not the blocking pool: a thread's
/// priority cannot be raised back without privileges.)
async fn in_background_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, std::io::Error> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("aof-snapshot".into()).spawn(move || {
        // SAFETY: setpriority on the calling thread (who = 0 is this thread's tid on
        // Linux) has no memory effects; failure leaves the default priority.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, 0, SNAPSHOT_NICE);
        }
        let _ = tx.send(f());
    })?;
    rx.await.map_err(|_| std::io::Error::other("the snapshot thread panicked"))
}

/// A new, empty file in the snapshot dir, unlinked at once: it disappears with its
/// last handle, so nothing is left behind if it is never used. `what` names it while
/// it briefly has a name.
fn anonymous_file(store: &Store, what: &str) -> std::io::Result<std::fs::File> {
    let dir = snapshot_dir(store);
    disk::create_dir_all_durable(&dir)?;
    let path = dir.join(format!("{what}-{}.tmp", store.db.generate_id().map_err(std::io::Error::other)?));
    let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

/// An unlinked file in the snapshot dir holding `data`, positioned at its start.
fn anonymous_file_with(store: &Store, data: &[u8]) -> std::io::Result<std::fs::File> {
    use std::io::{Seek, Write};
    let mut file = anonymous_file(store, "legacy")?;
    file.write_all(data)?;
    file.seek(std::io::SeekFrom::Start(0))?;
    Ok(file)
}

/// All of a snapshot's data, from its start (the handle may have been read or
/// written before: openraft writes received chunks at their offsets).
pub(crate) async fn read_snapshot_data(file: &mut tokio::fs::File) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
    file.flush().await?;
    file.seek(std::io::SeekFrom::Start(0)).await?;
    let mut data = Vec::new();
    file.read_to_end(&mut data).await?;
    Ok(data)
}

/// Remove snapshot files other than the current one's (older builds, leftovers of a
/// crash between writing a file and recording its meta), then sync the directory.
fn remove_other_snapshot_files(store: &Store, keep: &str) {
    let dir = snapshot_dir(store);
    let Ok(entries) = std::fs::read_dir(&dir) else { return };
    let keep = format!("{keep}.snap");
    let mut removed = false;
    for e in entries.flatten() {
        if e.file_name().to_str() != Some(keep.as_str()) {
            removed |= std::fs::remove_file(e.path()).is_ok();
        }
    }
    if removed {
        if let Err(e) = disk::sync_dir(&dir) {
            tracing::warn!(dir = %dir.display(), "cannot sync the snapshot dir: {e}");
        }
    }
}

fn snapshot_id(last_applied: Option<&LogId>, seq: u64) -> String {
    match last_applied {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, seq),
        None => format!("none-{seq}"),
    }
}

impl StateMachineStore {
    pub(crate) fn new(store: Store) -> Self {
        StateMachineStore { store, triggers: Default::default() }
    }

    /// The compiled triggers this store's applies reuse (shared by its clones).
    pub fn trigger_cache(&self) -> &crate::sm::triggers::TriggerCache {
        &self.triggers
    }

    /// Run a read-only closure against the local applied state (used for reads after
    /// read-index, and for stale reads).
    ///
    /// Each key read sees fully applied batches only, but sled has no MVCC snapshots:
    /// a closure reading several keys may see some of them from a batch committed while
    /// it ran (state only moves forward, so every value is at least as new as
    /// [`Self::last_applied`] was when the closure started).
    ///
    /// A sled read error (an IO failure of the disk) shows to the closure as an absent
    /// key and is logged.
    pub fn read<R>(&self, f: impl FnOnce(&dyn crate::sm::KvRead) -> R) -> R {
        let tree = self.store.sm();
        let kv = SledKv::new(&tree);
        let out = f(&kv);
        if let Some(e) = kv.take_error() {
            tracing::error!(error = %e, dir = %self.store.dir.display(), "state machine read failed");
        }
        out
    }

    /// The log id of the last entry applied to this state machine.
    pub fn last_applied(&self) -> Option<LogId> {
        self.applied().last_applied
    }

    /// See [`Store::disk_alarm`].
    pub fn disk_alarm(&self) -> Option<String> {
        self.store.disk_alarm()
    }

    /// At open, before openraft reads anything: make the stored state one openraft
    /// accepts, or fail with a clear error. openraft starts with the purge mark, or
    /// the last applied log id if the log ends before it (it then purges up to it),
    /// and requires the current snapshot to cover that (else it panics at every
    /// start: finding F3 in docs/JEPSEN.md); it also reads the current snapshot's
    /// data, and later sends it to members that need it.
    ///
    /// - The current snapshot's data file must exist and match the length and
    ///   checksum stored with its meta (files of older builds have none).
    /// - If it does not, or it does not cover that purge mark, a new snapshot is built
    ///   from the applied state (durable, and consistent with `last_applied`) when
    ///   that reaches the mark.
    /// - If the applied state is behind the purge mark too, the mark is lowered to
    ///   the applied state when the log still holds every entry after it (a crash
    ///   between recording the mark and deleting the entries); else those entries
    ///   are gone from this node and the open fails saying so.
    ///
    /// Returns the purge mark to use.
    pub(crate) fn check_snapshot_at_open(&self, last_purged: Option<LogId>) -> Result<Option<LogId>, StoreError> {
        let store = &self.store;
        let dir = || store.dir.to_path_buf();
        let io_err = |source| StoreError::Io { dir: dir(), source };
        let meta: Option<SnapshotMeta> = match store.snapshot.get(snapshot_keys::META).map_err(io_err)? {
            None => None,
            Some(v) => Some(
                codec::decode(&v).map_err(|source| StoreError::Corrupt { dir: dir(), what: "the snapshot meta", source })?,
            ),
        };
        let in_sled = store.snapshot.get(snapshot_keys::DATA).map_err(io_err)?.is_some();
        let damage = match &meta {
            Some(m) if !in_sled => self.snapshot_file_damage(m)?,
            _ => None,
        };
        let applied = self.applied().last_applied;
        if meta.is_none() && applied.is_none() {
            return Ok(last_purged); // nothing was ever applied: nothing to check against
        }
        let idx = |l: Option<LogId>| l.map(|l| l.index);
        let log_end = store.wal.bounds().map(|(_, last)| last).max(idx(last_purged));
        let purge_at_start = if idx(applied) > log_end { applied } else { last_purged };
        let covered_by = if damage.is_some() { None } else { meta.as_ref().and_then(|m| m.last_log_id) };
        if damage.is_none() && (idx(purge_at_start) <= idx(covered_by) || (meta.is_none() && purge_at_start.is_none())) {
            return Ok(last_purged);
        }
        let snapshot_desc = match (&meta, &damage) {
            (_, Some(d)) => d.clone(),
            (Some(m), None) => format!("the current snapshot ({m}) covers the log only up to {:?}", idx(m.last_log_id)),
            (None, None) => "there is no snapshot".to_string(),
        };
        let mut last_purged = last_purged;
        if idx(applied) < idx(purge_at_start) {
            // purge_at_start is the purge mark here (else it is `applied`).
            let (Some(a), Some(p)) = (applied, purge_at_start) else {
                return Err(self.entries_gone(&snapshot_desc, applied, purge_at_start));
            };
            let kept = store.wal.bounds().is_some_and(|(first, last)| first <= a.index + 1 && last >= p.index);
            if !kept {
                return Err(self.entries_gone(&snapshot_desc, applied, purge_at_start));
            }
            tracing::warn!(
                dir = %store.dir.display(),
                "the Raft log is purged up to {p} but {snapshot_desc}, and the state machine has applied up to {a}; \
                 the log still holds the entries after {a}: lowering the purge mark to {a}"
            );
            store
                .raft_meta
                .insert(super::raft_meta_keys::LAST_PURGED, codec::encode(&a))
                .and_then(|_| store.flush_durable())
                .map_err(io_err)?;
            last_purged = Some(a);
            if damage.is_none() && idx(covered_by) >= Some(a.index) {
                return Ok(last_purged);
            }
        }
        if applied.is_none() {
            return Err(self.entries_gone(&snapshot_desc, applied, purge_at_start));
        }
        tracing::warn!(
            dir = %store.dir.display(),
            "{snapshot_desc}; openraft would start with the log purged up to {:?}: building a new snapshot from the applied state ({applied:?})",
            idx(purge_at_start)
        );
        let capture = self.begin_snapshot();
        let seq = store.db.generate_id().map_err(io_err)?;
        let new_meta = SnapshotMeta {
            last_log_id: capture.last_applied,
            last_membership: capture.membership,
            snapshot_id: snapshot_id(capture.last_applied.as_ref(), seq),
        };
        let damaged = |e: StorageError| StoreError::Damaged {
            dir: dir(),
            message: format!("{snapshot_desc}, and building a new snapshot from the applied state failed: {e}"),
        };
        match build_blocking(store, capture.generation, &new_meta, true).map_err(damaged)? {
            Some(_) => {
                tracing::info!(snapshot = %new_meta, "rebuilt the current snapshot");
                Ok(last_purged)
            }
            None => Err(damaged(io(StorageIOError::write_snapshot(None, AnyError::error("the build was overtaken"))))),
        }
    }

    /// What is wrong with the current snapshot's data file, if anything: missing,
    /// or not the length and checksum stored with its meta.
    fn snapshot_file_damage(&self, meta: &SnapshotMeta) -> Result<Option<String>, StoreError> {
        let store = &self.store;
        let path = snapshot_file(store, &meta.snapshot_id);
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Some(format!("the current snapshot's data file {} is missing", path.display())));
            }
            Err(e) => return Err(StoreError::Io { dir: store.dir.to_path_buf(), source: sled::Error::Io(e) }),
        };
        let stored: Option<SnapshotFileSum> = match store.snapshot.get(snapshot_keys::FILE_SUM) {
            Ok(Some(v)) => codec::decode(&v).ok(),
            Ok(None) => None,
            Err(source) => return Err(StoreError::Io { dir: store.dir.to_path_buf(), source }),
        };
        let Some(stored) = stored.filter(|s| s.snapshot_id == meta.snapshot_id) else {
            return Ok(None); // written by an older build: nothing to check against
        };
        let found = file_sum(&mut file, &meta.snapshot_id)
            .map_err(|e| StoreError::Io { dir: store.dir.to_path_buf(), source: sled::Error::Io(e) })?;
        if found == stored {
            return Ok(None);
        }
        Ok(Some(format!(
            "the current snapshot's data file {} is damaged: {} bytes with CRC-32 {:08x}, {} bytes with CRC-32 {:08x} were written",
            path.display(),
            found.len,
            found.crc32,
            stored.len,
            stored.crc32
        )))
    }

    fn entries_gone(&self, snapshot_desc: &str, applied: Option<LogId>, purged: Option<LogId>) -> StoreError {
        let from = applied.map_or(0, |a| a.index + 1);
        StoreError::Damaged {
            dir: self.store.dir.to_path_buf(),
            message: format!(
                "the Raft log is purged up to index {}, but {snapshot_desc} and the state machine has applied only up to {}: \
                 log entries {from}..={} are gone from this node, so it cannot start with this data dir. Remove this node \
                 from the cluster and add it back with an empty data dir (as a new node id) so it catches up from the cluster",
                purged.map_or(0, |p| p.index),
                applied.map_or("nothing".to_string(), |a| a.index.to_string()),
                purged.map_or(0, |p| p.index)
            ),
        }
    }

    fn applied(&self) -> Applied {
        self.store.applied.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_applied(&self, applied: Applied) {
        *self.store.applied.write().unwrap_or_else(|p| p.into_inner()) = applied;
    }

    /// The stored snapshot's meta, if any.
    fn stored_meta(
        tree: &sled::transaction::TransactionalTree,
    ) -> Result<Option<SnapshotMeta>, ConflictableTransactionError<StorageError>> {
        match tree.get(snapshot_keys::META)? {
            None => Ok(None),
            Some(v) => codec::decode(&v)
                .map(Some)
                .map_err(|e| ConflictableTransactionError::Abort(io(StorageIOError::read_snapshot(None, any(e))))),
        }
    }

    /// Start a snapshot at the current applied state: the undo log that lets
    /// `build_snapshot` read it later.
    fn begin_snapshot(&self) -> Capture {
        let applied = self.applied();
        let generation = self.store.db.generate_id().unwrap_or(0);
        *self.store.snapshot_undo.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(UndoLog { generation, old: HashMap::new(), overtaken: false });
        Capture { generation, last_applied: applied.last_applied, membership: applied.membership }
    }

    /// Before `writes` are committed: remember the current value of each key the
    /// running snapshot build (if any) has not seen changed yet.
    /// `tree` is the state machine's tree the writes go to.
    fn record_undo<'a>(&self, tree: &sled::Tree, keys: impl Iterator<Item = &'a Key>) -> Result<(), StorageError> {
        let mut guard = self.store.snapshot_undo.lock().unwrap_or_else(|p| p.into_inner());
        let Some(undo) = guard.as_mut() else { return Ok(()) };
        for k in keys {
            if !undo.old.contains_key(k) {
                let v = tree.get(k).map_err(read_sm_err)?;
                undo.old.insert(k.clone(), v.map(|v| v.to_vec()));
            }
        }
        Ok(())
    }
}

/// The values keys had when the running snapshot build started, for keys written
/// since (see [`StateMachineStore`]).
pub(crate) struct UndoLog {
    generation: u64,
    old: HashMap<Key, Option<Value>>,
    /// A snapshot was installed meanwhile: this build's state is gone.
    overtaken: bool,
}

/// What a snapshot build was started with.
struct Capture {
    generation: u64,
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

/// Read the `sm` tree as of `generation`'s capture (see [`StateMachineStore`]) and
/// write it to `out` as [`SnapshotPairs`], streaming: nothing of the state is held
/// in memory. `false` when a snapshot was installed meanwhile (then `out` is garbage).
fn encode_captured<W: std::io::Write + std::io::Seek>(store: &Store, generation: u64, out: &mut W) -> Result<bool, StorageError> {
    let undo = &store.snapshot_undo;
    let lookup = |k: &[u8]| -> Result<Option<Option<Value>>, ()> {
        let guard = undo.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(u) if u.generation == generation && !u.overtaken => Ok(u.old.get(k).cloned()),
            _ => Err(()),
        }
    };
    let werr = |e: std::io::Error| write_snapshot_err(None, e);
    // bincode of a Vec<(Key, Value)>: u64 count, then each pair; the count is patched in.
    out.write_all(&[codec::FORMAT_VERSION]).map_err(werr)?;
    out.write_all(&0u64.to_le_bytes()).map_err(werr)?;
    let mut count = 0u64;
    let mut seen_changed = HashSet::new();
    let mut push = |out: &mut W, k: &[u8], v: &[u8]| -> Result<(), StorageError> {
        bincode::serialize_into(&mut *out, &(serde_bytes::Bytes::new(k), serde_bytes::Bytes::new(v)))
            .map_err(|e| write_snapshot_err(None, e))?;
        count += 1;
        Ok(())
    };
    for kv in store.sm().iter() {
        let (k, v) = kv.map_err(read_sm_err)?;
        match lookup(&k) {
            Err(()) => return Ok(false),
            Ok(None) => push(out, &k, &v)?,
            Ok(Some(old)) => {
                seen_changed.insert(k.to_vec());
                if let Some(old) = old {
                    push(out, &k, &old)?;
                }
            }
        }
    }
    // Stop recording and add the captured keys deleted before the iteration got there.
    let finished = {
        let mut guard = undo.lock().unwrap_or_else(|p| p.into_inner());
        match guard.take() {
            Some(u) if u.generation == generation && !u.overtaken => u,
            other => {
                *guard = other;
                return Ok(false);
            }
        }
    };
    for (k, old) in finished.old {
        if let (false, Some(v)) = (seen_changed.contains(&k), old) {
            push(out, &k, &v)?;
        }
    }
    out.seek(std::io::SeekFrom::Start(1)).map_err(werr)?;
    out.write_all(&count.to_le_bytes()).map_err(werr)?;
    Ok(true)
}

/// Install a received snapshot (see [`StateMachineStore`]), streaming: one pass over
/// the received data copies it into the snapshot's own file and loads its pairs into
/// a new tree in small batches; then one transaction makes that tree the state machine's
/// and records `last_applied`, the membership and the snapshot's meta, flushed
/// before other snapshots' files are removed. Memory stays at one batch whatever
/// the snapshot's size (reading it whole, decoding it and writing it in one sled
/// transaction held it four times over: gigabytes, and minutes for a 1 GiB state).
/// Blocking.
fn install_blocking(store: &Store, meta: &SnapshotMeta, received: std::fs::File) -> Result<(), StorageError> {
    let werr = |e: sled::Error| write_snapshot_err(Some(meta), sled_write(store, "installing a snapshot")(e));
    let name = format!("{}-{}", super::trees::SM, store.db.generate_id().map_err(werr)?);
    let tree = store.db.open_tree(&name).map_err(werr)?;
    let loaded = persist_snapshot_file(store, &meta.snapshot_id, |w| {
        let len = received.metadata().map_err(|e| write_snapshot_err(Some(meta), e))?.len();
        let mut tee = std::io::BufReader::with_capacity(1 << 20, Tee { from: received, to: w });
        load_pairs(&mut tee, len, &tree).map_err(|e| write_snapshot_err(Some(meta), e))?;
        Ok(true)
    });
    let sum = match loaded.and_then(|written| {
        written.map(|(_, sum)| sum).ok_or_else(|| write_snapshot_err(Some(meta), std::io::Error::other("snapshot file not written")))
    }) {
        Ok(sum) => sum,
        Err(e) => {
            let _ = store.db.drop_tree(name.as_bytes());
            return Err(e);
        }
    };
    let tree_rec = codec::encode(&name);
    let sum_rec = codec::encode(&sum);
    let last_applied_rec = meta.last_log_id.as_ref().map(codec::encode);
    let membership_rec = codec::encode(&meta.last_membership);
    let meta_rec = codec::encode(meta);
    let r = (&store.sm_meta, &store.snapshot).transaction(|(sm_meta, snap)| {
        sm_meta.insert(sm_meta_keys::TREE, tree_rec.as_slice())?;
        match &last_applied_rec {
            Some(rec) => sm_meta.insert(sm_meta_keys::LAST_APPLIED, rec.as_slice())?,
            None => sm_meta.remove(sm_meta_keys::LAST_APPLIED)?,
        };
        sm_meta.insert(sm_meta_keys::MEMBERSHIP, membership_rec.as_slice())?;
        snap.insert(snapshot_keys::META, meta_rec.as_slice())?;
        snap.insert(snapshot_keys::FILE_SUM, sum_rec.as_slice())?;
        snap.remove(snapshot_keys::DATA)?;
        Ok::<_, ConflictableTransactionError<StorageError>>(())
    });
    let on_sled = |e| io(StorageIOError::write_snapshot(Some(meta.signature()), any(sled_write(store, "installing a snapshot")(e))));
    if let Err(e) = tx_result(r, on_sled) {
        let _ = store.db.drop_tree(name.as_bytes());
        return Err(e);
    }
    // Durable before the old snapshot's file goes (see `store_snapshot_meta`), and
    // before the old tree is dropped.
    store.flush_durable().map_err(|e| write_snapshot_err(Some(meta), sled_write(store, "flushing an installed snapshot")(e)))?;
    store.switch_sm(tree);
    remove_other_snapshot_files(store, &meta.snapshot_id);
    Ok(())
}

/// A reader that writes what it reads to `to`.
struct Tee<'w, W: std::io::Write> {
    from: std::fs::File,
    to: &'w mut W,
}

impl<W: std::io::Write> std::io::Read for Tee<'_, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = std::io::Read::read(&mut self.from, buf)?;
        self.to.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// A reader that counts the bytes read through it.
struct Counted<R> {
    inner: R,
    read: u64,
}

impl<R: std::io::Read> std::io::Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Bytes of pairs written to a tree per sled batch while a snapshot is loaded. sled
/// holds several times a batch in memory while it applies it, growing with the
/// keys: with 8 MiB batches a 134 MB snapshot of 240 000 pairs peaked at 1 GB of
/// RSS, with 256 KiB at 121 MB, in the same time (4.8 s, debug build).
const LOAD_BATCH_BYTES: usize = 256 << 10;

/// Load snapshot data ([`SnapshotPairs`] as [`codec`] encodes them, `len` bytes) from
/// `from` into `tree`, one batch of about [`LOAD_BATCH_BYTES`] at a time. Damaged
/// data (an unknown version, a length past the end, bytes after the last pair) is an
/// error, and no length read from the data makes it allocate more than what is left.
fn load_pairs(from: &mut impl std::io::Read, len: u64, tree: &sled::Tree) -> std::io::Result<u64> {
    use bincode::Options;
    use std::io::Read as _;
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut r = Counted { inner: from, read: 0 };
    let mut version = [0u8; 1];
    r.read_exact(&mut version).map_err(|e| bad(format!("snapshot data: {e}")))?;
    if version[0] != codec::FORMAT_VERSION {
        return Err(bad(codec::CodecError::UnknownVersion(version[0]).to_string()));
    }
    let opts = |r: &Counted<_>| bincode::options().with_fixint_encoding().allow_trailing_bytes().with_limit(len.saturating_sub(r.read));
    let count: u64 = opts(&r).deserialize_from(&mut r).map_err(|e| bad(format!("snapshot data: {e}")))?;
    let mut batch = sled::Batch::default();
    let mut batch_bytes = 0usize;
    for n in 0..count {
        let (k, v): (serde_bytes::ByteBuf, serde_bytes::ByteBuf) =
            opts(&r).deserialize_from(&mut r).map_err(|e| bad(format!("snapshot data, pair {n} of {count}: {e}")))?;
        batch_bytes += k.len() + v.len();
        batch.insert(k.into_vec(), v.into_vec());
        if batch_bytes >= LOAD_BATCH_BYTES {
            tree.apply_batch(std::mem::take(&mut batch)).map_err(std::io::Error::other)?;
            batch_bytes = 0;
        }
    }
    tree.apply_batch(batch).map_err(std::io::Error::other)?;
    if r.read(&mut [0u8; 1])? != 0 {
        return Err(bad(format!("snapshot data: bytes after its {count} pairs")));
    }
    Ok(count)
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let a = self.applied();
        Ok((a.last_applied, a.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut applied = self.applied();
        let mut membership_changed = false;
        let mut responses = Vec::new();

        let tree = self.store.sm();
        let kv = SledKv::new(&tree);
        let mut overlay = Overlay::new(&kv).with_triggers(&self.triggers);
        for entry in entries {
            let log_id = entry.log_id;
            let resp = match entry.payload {
                EntryPayload::Blank => Response::None,
                EntryPayload::Normal(req) => crate::sm::apply(&mut overlay, log_id.index, &req, crate::planted::in_state_machine()),
                EntryPayload::Membership(m) => {
                    applied.membership = StoredMembership::new(Some(log_id), m);
                    membership_changed = true;
                    Response::None
                }
            };
            applied.last_applied = Some(log_id);
            responses.push(resp);
        }
        let writes = overlay.into_writes();
        if let Some(e) = kv.take_error() {
            return Err(read_sm_err(e));
        }
        self.record_undo(&tree, writes.keys())?;
        let Some(last_applied) = applied.last_applied else {
            return Ok(responses); // no entries: nothing to commit
        };
        if responses.is_empty() {
            return Ok(responses);
        }

        let mut batch = sled::Batch::default();
        for (k, v) in writes {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        let last_applied_rec = codec::encode(&last_applied);
        let membership_rec = membership_changed.then(|| codec::encode(&applied.membership));
        let r = (&tree, &self.store.sm_meta).transaction(|(sm, meta)| {
            sm.apply_batch(&batch)?;
            meta.insert(sm_meta_keys::LAST_APPLIED, last_applied_rec.as_slice())?;
            if let Some(m) = &membership_rec {
                meta.insert(sm_meta_keys::MEMBERSHIP, m.as_slice())?;
            }
            Ok::<_, ConflictableTransactionError<StorageError>>(())
        });
        tx_result(r, |e| io(StorageIOError::apply(last_applied, any(sled_write(&self.store, "applying entries")(e)))))?;
        self.set_applied(applied);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let capture = self.begin_snapshot();
        SnapshotBuilder { store: self.store.clone(), generation: capture.generation, capture: Some(capture) }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        // An install that never completes leaves nothing behind.
        self.store.installs.receiving.store(true, std::sync::atomic::Ordering::SeqCst);
        let store = self.store.clone();
        let file = tokio::task::spawn_blocking(move || anonymous_file(&store, "receiving"))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(|e| io(StorageIOError::write_snapshot(None, any(e))))?;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        tracing::info!(%meta, "installing snapshot");
        let r = self.install_snapshot_inner(meta, &mut snapshot).await;
        // Wake a purge of the log waiting for this install (see `LogStore`).
        if r.is_err() {
            self.store.installs.failed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.store.installs.done.notify_waiters();
        r
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        self.current_snapshot().await
    }
}

impl StateMachineStore {
    async fn install_snapshot_inner(&mut self, meta: &SnapshotMeta, snapshot: &mut tokio::fs::File) -> Result<(), StorageError> {
        if let Some(u) = self.store.snapshot_undo.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            u.overtaken = true;
        }
        use tokio::io::AsyncWriteExt;
        let read_err = |e: std::io::Error| io(StorageIOError::read_snapshot(Some(meta.signature()), any(e)));
        snapshot.flush().await.map_err(read_err)?;
        let mut received = snapshot.try_clone().await.map_err(read_err)?.into_std().await;
        std::io::Seek::seek(&mut received, std::io::SeekFrom::Start(0)).map_err(read_err)?;
        let (store, m) = (self.store.clone(), meta.clone());
        tokio::task::spawn_blocking(move || install_blocking(&store, &m, received))
            .await
            .map_err(|e| write_snapshot_err(Some(meta), e))??;
        self.set_applied(Applied { last_applied: meta.last_log_id, membership: meta.last_membership.clone() });
        Ok(())
    }

    async fn current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        // Data dirs from before snapshot files kept the data in sled, under `data`.
        let r = self.store.snapshot.transaction(|snap| {
            let Some(meta) = Self::stored_meta(snap)? else { return Ok(None) };
            Ok(Some((meta, snap.get(snapshot_keys::DATA)?)))
        });
        let found = tx_result(r, |e| io(StorageIOError::read_snapshot(None, any(e))))?;
        let Some((meta, in_sled)) = found else { return Ok(None) };
        let store = self.store.clone();
        let id = meta.snapshot_id.clone();
        let file = tokio::task::spawn_blocking(move || match in_sled {
            // Written by a build that kept the data in sled: hand it out as a file.
            Some(d) => anonymous_file_with(&store, &d),
            None => std::fs::File::open(snapshot_file(&store, &id)),
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        .map_err(|e| {
            io(StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::error(format!("snapshot meta is stored but its data file cannot be read: {e}")),
            ))
        })?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(tokio::fs::File::from_std(file)) }))
    }
}

/// Builds the snapshot started by [`RaftStateMachine::get_snapshot_builder`] (see
/// [`StateMachineStore`]); stores it as the current snapshot unless a newer one exists.
pub struct SnapshotBuilder {
    store: Store,
    generation: u64,
    /// `None` once built.
    capture: Option<Capture>,
}

impl Drop for SnapshotBuilder {
    fn drop(&mut self) {
        // A builder dropped unbuilt (or whose build failed) must not leave applies
        // recording undo values.
        let mut guard = self.store.snapshot_undo.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_some_and(|u| u.generation == self.generation) {
            *guard = None;
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let capture = self.capture.take().ok_or_else(|| {
            io(StorageIOError::write_snapshot(None, AnyError::error("snapshot builder used twice")))
        })?;
        let seq = self.store.db.generate_id().map_err(|e| write_snapshot_err(None, e))?;
        let meta = SnapshotMeta {
            last_log_id: capture.last_applied,
            last_membership: capture.membership,
            snapshot_id: snapshot_id(capture.last_applied.as_ref(), seq),
        };
        let (store, generation, m) = (self.store.clone(), capture.generation, meta.clone());
        let built = in_background_thread(move || build_blocking(&store, generation, &m, false))
            .await
            .map_err(|e| write_snapshot_err(None, e))??;
        let Some((stored, file)) = built else {
            // A newer snapshot was installed while this one was read: that one is current.
            let mut sm = StateMachineStore::new(self.store.clone());
            return sm.get_current_snapshot().await?.ok_or_else(|| {
                io(StorageIOError::write_snapshot(None, AnyError::error("snapshot overtaken by an install that stored none")))
            });
        };
        // The built data is returned as an open handle to its file, opened before a
        // newer snapshot may replace (unlink) the file; nothing is read into memory.
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        tracing::info!(%meta, bytes, stored, "built snapshot");
        Ok(Snapshot { meta, snapshot: Box::new(tokio::fs::File::from_std(file)) })
    }
}

#[cfg(test)]
#[test]
fn snapshot_files_are_synced_as_they_grow() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::File::create(dir.path().join("s")).unwrap();
    let mut w = std::io::BufWriter::with_capacity(1 << 20, SyncEvery { file, unsynced: 0, syncs: 0, alarm: None });
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..9 {
        w.write_all(&chunk).unwrap();
    }
    let inner = w.into_inner().ok().unwrap();
    assert_eq!(inner.syncs, 2, "9 MiB written: synced after 4 and 8 MiB");
    assert_eq!(std::fs::metadata(dir.path().join("s")).unwrap().len(), 9 << 20);
}

#[cfg(test)]
pub(crate) fn decode_snapshot_pairs(data: &[u8]) -> Result<SnapshotPairs, codec::CodecError> {
    codec::decode(data)
}
