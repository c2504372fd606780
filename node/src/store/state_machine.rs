//! The replicated state machine (`sm` + `sm_meta` trees) and its snapshots (`snapshot`
//! tree).

use std::collections::{HashMap, HashSet};

use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::{any, io, sm_meta_keys, snapshot_keys, Applied, SledKv, Store};
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
/// - A snapshot's data is written to its own file (synced, renamed into place), then
///   its meta is recorded in the `snapshot` tree unless a newer one (greater
///   `last_log_id`) is already there; files of other snapshots are then removed; [`install_snapshot`](RaftStateMachine::install_snapshot)
///   replaces the whole `sm` tree, `sm_meta` and the stored snapshot in one transaction.
/// - Bad bytes on disk surface as a [`StorageError`], never as a panic.
#[derive(Clone)]
pub struct StateMachineStore {
    store: Store,
}

/// The contents of a snapshot's data: every `(key, value)` pair of the `sm` tree (in
/// no particular order), encoded with [`crate::codec`].
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
}

impl std::io::Write for SyncEvery {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = std::io::Write::write(&mut self.file, buf)?;
        self.unsynced += n as u64;
        if self.unsynced >= SNAPSHOT_SYNC_EVERY {
            self.file.sync_data()?;
            self.unsynced = 0;
            self.syncs += 1;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::Write::flush(&mut self.file)
    }
}

impl std::io::Seek for SyncEvery {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        std::io::Seek::seek(&mut self.file, pos)
    }
}

/// Write snapshot data durably: into a temporary file (synced as it grows, see
/// [`SyncEvery`]), synced, renamed into place, directory synced. `write` answers
/// `false` to abandon the file.
fn persist_snapshot_file(
    store: &Store,
    id: &str,
    write: impl FnOnce(&mut std::io::BufWriter<SyncEvery>) -> Result<bool, StorageError>,
) -> Result<bool, StorageError> {
    use std::io::Write;
    let dir = snapshot_dir(store);
    std::fs::create_dir_all(&dir).map_err(|e| write_snapshot_err(None, e))?;
    let tmp = dir.join(format!("{id}.tmp"));
    let file = std::fs::File::create(&tmp).map_err(|e| write_snapshot_err(None, e))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, SyncEvery { file, unsynced: 0, syncs: 0 });
    if !write(&mut w)? {
        drop(w);
        let _ = std::fs::remove_file(&tmp);
        return Ok(false);
    }
    w.flush().map_err(|e| write_snapshot_err(None, e))?;
    let file = w.into_inner().map_err(|e| write_snapshot_err(None, e.into_error()))?.file;
    file.sync_all().map_err(|e| write_snapshot_err(None, e))?;
    std::fs::rename(&tmp, snapshot_file(store, id)).map_err(|e| write_snapshot_err(None, e))?;
    std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(|e| write_snapshot_err(None, e))?;
    Ok(true)
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
    std::fs::create_dir_all(&dir)?;
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
/// crash between writing a file and recording its meta).
fn remove_other_snapshot_files(store: &Store, keep: &str) {
    let Ok(entries) = std::fs::read_dir(snapshot_dir(store)) else { return };
    let keep = format!("{keep}.snap");
    for e in entries.flatten() {
        if e.file_name().to_str() != Some(keep.as_str()) {
            let _ = std::fs::remove_file(e.path());
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
        StateMachineStore { store }
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
        let kv = SledKv::new(&self.store.sm);
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
    fn record_undo<'a>(&self, keys: impl Iterator<Item = &'a Key>) -> Result<(), StorageError> {
        let mut guard = self.store.snapshot_undo.lock().unwrap_or_else(|p| p.into_inner());
        let Some(undo) = guard.as_mut() else { return Ok(()) };
        for k in keys {
            if !undo.old.contains_key(k) {
                let v = self.store.sm.get(k).map_err(read_sm_err)?;
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
    for kv in store.sm.iter() {
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

        let kv = SledKv::new(&self.store.sm);
        let mut overlay = Overlay::new(&kv);
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
        self.record_undo(writes.keys())?;
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
        let r = (&self.store.sm, &self.store.sm_meta).transaction(|(sm, meta)| {
            sm.apply_batch(&batch)?;
            meta.insert(sm_meta_keys::LAST_APPLIED, last_applied_rec.as_slice())?;
            if let Some(m) = &membership_rec {
                meta.insert(sm_meta_keys::MEMBERSHIP, m.as_slice())?;
            }
            Ok::<_, ConflictableTransactionError<StorageError>>(())
        });
        tx_result(r, |e| io(StorageIOError::apply(last_applied, any(e))))?;
        self.set_applied(applied);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let capture = self.begin_snapshot();
        SnapshotBuilder { store: self.store.clone(), generation: capture.generation, capture: Some(capture) }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        // An install that never completes leaves nothing behind.
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
        if let Some(u) = self.store.snapshot_undo.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            u.overtaken = true;
        }
        let data = read_snapshot_data(&mut snapshot)
            .await
            .map_err(|e| io(StorageIOError::read_snapshot(Some(meta.signature()), any(e))))?;
        let pairs: SnapshotPairs =
            codec::decode(&data).map_err(|e| io(StorageIOError::read_snapshot(Some(meta.signature()), any(e))))?;

        // Replace the whole `sm` tree: remove what the snapshot does not have, write the rest.
        let mut batch = sled::Batch::default();
        let incoming: HashSet<&[u8]> = pairs.iter().map(|(k, _)| k.as_slice()).collect();
        for k in self.store.sm.iter().keys() {
            let k = k.map_err(read_sm_err)?;
            if !incoming.contains(k.as_ref()) {
                batch.remove(k);
            }
        }
        for (k, v) in &pairs {
            batch.insert(k.as_slice(), v.as_slice());
        }

        persist_snapshot_file(&self.store, &meta.snapshot_id, |w| {
            std::io::Write::write_all(w, &data).map_err(|e| write_snapshot_err(Some(meta), e)).map(|_| true)
        })?;
        let last_applied_rec = meta.last_log_id.as_ref().map(codec::encode);
        let membership_rec = codec::encode(&meta.last_membership);
        let meta_rec = codec::encode(meta);
        let r = (&self.store.sm, &self.store.sm_meta, &self.store.snapshot).transaction(|(sm, sm_meta, snap)| {
            sm.apply_batch(&batch)?;
            match &last_applied_rec {
                Some(rec) => sm_meta.insert(sm_meta_keys::LAST_APPLIED, rec.as_slice())?,
                None => sm_meta.remove(sm_meta_keys::LAST_APPLIED)?,
            };
            sm_meta.insert(sm_meta_keys::MEMBERSHIP, membership_rec.as_slice())?;
            snap.insert(snapshot_keys::META, meta_rec.as_slice())?;
            snap.remove(snapshot_keys::DATA)?;
            Ok::<_, ConflictableTransactionError<StorageError>>(())
        });
        tx_result(r, |e| io(StorageIOError::write_snapshot(Some(meta.signature()), any(e))))?;
        remove_other_snapshot_files(&self.store, &meta.snapshot_id);
        self.set_applied(Applied { last_applied: meta.last_log_id, membership: meta.last_membership.clone() });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
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
        let store = self.store.clone();
        let (generation, id) = (capture.generation, meta.snapshot_id.clone());
        let written = in_background_thread(move || {
            persist_snapshot_file(&store, &id, |w| encode_captured(&store, generation, w))
        })
        .await
        .map_err(|e| write_snapshot_err(None, e))??;
        if !written {
            // A newer snapshot was installed while this one was read: that one is current.
            let mut sm = StateMachineStore::new(self.store.clone());
            return sm.get_current_snapshot().await?.ok_or_else(|| {
                io(StorageIOError::write_snapshot(None, AnyError::error("snapshot overtaken by an install that stored none")))
            });
        }

        let meta_rec = codec::encode(&meta);
        let r = self.store.snapshot.transaction(|snap| {
            if let Some(stored) = StateMachineStore::stored_meta(snap)? {
                if stored.last_log_id > meta.last_log_id {
                    return Ok(false);
                }
            }
            snap.insert(snapshot_keys::META, meta_rec.as_slice())?;
            snap.remove(snapshot_keys::DATA)?;
            Ok(true)
        });
        let stored = tx_result(r, |e| write_snapshot_err(Some(&meta), e))?;
        // The built data is returned as an open handle to its file, opened before a
        // newer snapshot may replace (unlink) the file; nothing is read into memory.
        let (store, id) = (self.store.clone(), meta.snapshot_id.clone());
        let file = tokio::task::spawn_blocking(move || {
            let path = snapshot_file(&store, &id);
            let file = std::fs::File::open(&path);
            if stored {
                remove_other_snapshot_files(&store, &id);
            } else {
                let _ = std::fs::remove_file(&path);
            }
            file
        })
        .await
        .map_err(|e| write_snapshot_err(Some(&meta), e))?
        .map_err(|e| write_snapshot_err(Some(&meta), e))?;
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
    let mut w = std::io::BufWriter::with_capacity(1 << 20, SyncEvery { file, unsynced: 0, syncs: 0 });
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
