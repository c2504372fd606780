//! The replicated state machine (`sm` + `sm_meta` trees) and its snapshots (`snapshot`
//! tree).

use std::collections::HashSet;
use std::io::Cursor;

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
/// - [`get_snapshot_builder`](RaftStateMachine::get_snapshot_builder) copies the whole
///   `sm` tree plus `last_applied`/membership right away (sled has no MVCC snapshots,
///   and `build_snapshot` may run concurrently with later applies). It is called by
///   openraft's state-machine worker, the same task that applies, so the copy is
///   consistent.
/// - A built snapshot is stored in the `snapshot` tree unless a newer one (greater
///   `last_log_id`) is already there; [`install_snapshot`](RaftStateMachine::install_snapshot)
///   replaces the whole `sm` tree, `sm_meta` and the stored snapshot in one transaction.
/// - Bad bytes on disk surface as a [`StorageError`], never as a panic.
#[derive(Clone)]
pub struct StateMachineStore {
    store: Store,
}

/// The contents of a snapshot's data: every `(key, value)` pair of the `sm` tree, in
/// key order, encoded with [`crate::codec`].
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

    /// Copy the current state (all `sm` pairs, last applied, membership).
    fn capture(&self) -> Result<Captured, StorageError> {
        let applied = self.applied();
        let mut pairs = Vec::new();
        for kv in self.store.sm.iter() {
            let (k, v) = kv.map_err(read_sm_err)?;
            pairs.push((k.to_vec(), v.to_vec()));
        }
        Ok(Captured { pairs, last_applied: applied.last_applied, membership: applied.membership })
    }
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
                EntryPayload::Normal(req) => crate::sm::apply(&mut overlay, log_id.index, &req),
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
        SnapshotBuilder { store: self.store.clone(), captured: Some(self.capture()) }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        tracing::info!(%meta, "installing snapshot");
        let data = snapshot.into_inner();
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
            snap.insert(snapshot_keys::DATA, data.as_slice())?;
            Ok::<_, ConflictableTransactionError<StorageError>>(())
        });
        tx_result(r, |e| io(StorageIOError::write_snapshot(Some(meta.signature()), any(e))))?;
        self.set_applied(Applied { last_applied: meta.last_log_id, membership: meta.last_membership.clone() });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let r = self.store.snapshot.transaction(|snap| {
            let Some(meta) = Self::stored_meta(snap)? else { return Ok(None) };
            let data = snap.get(snapshot_keys::DATA)?.ok_or_else(|| {
                ConflictableTransactionError::Abort(io(StorageIOError::read_snapshot(
                    Some(meta.signature()),
                    AnyError::error("snapshot meta is stored but its data is missing"),
                )))
            })?;
            Ok(Some((meta, data)))
        });
        let found = tx_result(r, |e| io(StorageIOError::read_snapshot(None, any(e))))?;
        Ok(found.map(|(meta, data)| Snapshot { meta, snapshot: Box::new(Cursor::new(data.to_vec())) }))
    }
}

/// State copied at [`RaftStateMachine::get_snapshot_builder`] time.
struct Captured {
    pairs: SnapshotPairs,
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

/// Builds a snapshot from the state captured when it was created (see
/// [`StateMachineStore`]); stores it as the current snapshot unless a newer one exists.
pub struct SnapshotBuilder {
    store: Store,
    /// `None` once built; an error met while capturing is returned by `build_snapshot`.
    captured: Option<Result<Captured, StorageError>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let captured = self.captured.take().unwrap_or_else(|| {
            Err(io(StorageIOError::write_snapshot(None, AnyError::error("snapshot builder used twice"))))
        })?;
        let seq = self.store.db.generate_id().map_err(|e| io(StorageIOError::write_snapshot(None, any(e))))?;
        let meta = SnapshotMeta {
            last_log_id: captured.last_applied,
            last_membership: captured.membership,
            snapshot_id: snapshot_id(captured.last_applied.as_ref(), seq),
        };
        let data = codec::encode(&captured.pairs);
        drop(captured.pairs);

        let meta_rec = codec::encode(&meta);
        let r = self.store.snapshot.transaction(|snap| {
            if let Some(stored) = StateMachineStore::stored_meta(snap)? {
                if stored.last_log_id > meta.last_log_id {
                    return Ok(false);
                }
            }
            snap.insert(snapshot_keys::META, meta_rec.as_slice())?;
            snap.insert(snapshot_keys::DATA, data.as_slice())?;
            Ok(true)
        });
        let stored = tx_result(r, |e| io(StorageIOError::write_snapshot(Some(meta.signature()), any(e))))?;
        tracing::info!(%meta, bytes = data.len(), stored, "built snapshot");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

#[cfg(test)]
pub(crate) fn decode_snapshot_pairs(data: &[u8]) -> Result<SnapshotPairs, codec::CodecError> {
    codec::decode(data)
}
