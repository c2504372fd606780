//! The Raft log and vote, in the `log` and `raft_meta` trees.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, StorageIOError};

use super::{any, io, raft_meta_keys as keys, Store};
use crate::codec;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// The Raft log storage of one node (`log` + `raft_meta` trees). Clones share the
/// same database; a clone is also the log reader handed to replication tasks.
///
/// ### To ensure correctness
///
/// - [`append`](RaftLogStorage::append) writes the entries in one sled batch (readable
///   as soon as it returns), then awaits `flush_async` and only then reports
///   `log_io_completed(Ok(()))`: an append is acknowledged to openraft only once it is
///   on disk.
/// - [`save_vote`](RaftLogStorage::save_vote) flushes before returning.
/// - `save_committed` persists the committed log id (not flushed: losing it only
///   means re-applying from the state machine's durable `last_applied`).
/// - [`truncate`](RaftLogStorage::truncate) removes every entry with index `>=
///   log_id.index` in one atomic batch; [`purge`](RaftLogStorage::purge) first
///   records `last_purged`, then removes entries `<= log_id.index` in one batch. sled
///   recovers a prefix of the operations after a crash, so neither can leave a hole.
/// - All writes are issued from `&mut self` methods that openraft awaits one after
///   another, so they are serialized.
/// - Bad bytes on disk (unknown format version, corrupt record) surface as a
///   [`StorageError`], never as a panic.
#[derive(Clone)]
pub struct LogStore {
    store: Store,
}

/// The sled key of a log index: 8 bytes big-endian, so key order is index order.
pub(crate) fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
}

fn read_logs_err(e: impl std::error::Error + 'static) -> StorageError {
    io(StorageIOError::read_logs(any(e)))
}

fn write_logs_err(e: impl std::error::Error + 'static) -> StorageError {
    io(StorageIOError::write_logs(any(e)))
}

impl LogStore {
    pub(crate) fn new(store: Store) -> Self {
        LogStore { store }
    }

    fn decode_entry(key: &[u8], value: &[u8]) -> Result<Entry, StorageError> {
        let index = key_index(key).ok_or_else(|| {
            io(StorageIOError::read_logs(openraft::AnyError::error(format!("log key {key:?} is not an 8-byte index"))))
        })?;
        codec::decode(value).map_err(|e| io(StorageIOError::read_log_at_index(index, any(e))))
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        err: fn(openraft::AnyError) -> StorageIOError<u64>,
    ) -> Result<Option<T>, StorageError> {
        match self.store.raft_meta.get(key).map_err(|e| io(err(any(e))))? {
            None => Ok(None),
            Some(v) => codec::decode(&v).map(Some).map_err(|e| io(err(any(e)))),
        }
    }

    fn last_purged(&self) -> Result<Option<LogId>, StorageError> {
        self.get_meta(keys::LAST_PURGED, StorageIOError::read_logs)
    }

    async fn flush(&self) -> Result<(), sled::Error> {
        self.store.db.flush_async().await.map(drop)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => Bound::Included(index_key(i)),
            Bound::Excluded(&i) => Bound::Excluded(index_key(i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => Bound::Included(index_key(i)),
            Bound::Excluded(&i) => Bound::Excluded(index_key(i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        // sled panics on an inverted range; an empty request yields nothing.
        let empty = match (range.start_bound(), range.end_bound()) {
            (Bound::Included(&s), Bound::Included(&e)) => s > e,
            (Bound::Included(&s), Bound::Excluded(&e)) | (Bound::Excluded(&s), Bound::Included(&e)) => s >= e,
            (Bound::Excluded(&s), Bound::Excluded(&e)) => s.saturating_add(1) >= e,
            _ => false,
        };
        if empty {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for kv in self.store.log.range::<[u8; 8], _>((start, end)) {
            let (k, v) = kv.map_err(read_logs_err)?;
            out.push(Self::decode_entry(&k, &v)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.last_purged()?;
        let last_entry = match self.store.log.last().map_err(read_logs_err)? {
            Some((k, v)) => Some(Self::decode_entry(&k, &v)?.log_id),
            None => None,
        };
        // Normally the last entry is above last_purged. After a crash between recording
        // last_purged and deleting the purged entries, leftovers may sit at or below it.
        let last_log_id = last_entry.max(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let err = |e| io(StorageIOError::write_vote(any(e)));
        self.store.raft_meta.insert(keys::VOTE, codec::encode(vote)).map_err(err)?;
        self.flush().await.map_err(err)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(keys::VOTE, StorageIOError::read_vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let err = |e| io(StorageIOError::write(any(e)));
        match committed {
            Some(c) => self.store.raft_meta.insert(keys::COMMITTED, codec::encode(&c)).map_err(err)?,
            None => self.store.raft_meta.remove(keys::COMMITTED).map_err(err)?,
        };
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.get_meta(keys::COMMITTED, StorageIOError::read)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        let mut n = 0u64;
        for entry in entries {
            batch.insert(&index_key(entry.log_id.index), codec::encode(&entry));
            n += 1;
        }
        self.store.log.apply_batch(batch).map_err(write_logs_err)?;
        let stats = &self.store.append_stats;
        stats.flushes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        stats.entries.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        // Entries are readable now; acknowledge them only once they are durable.
        match self.flush().await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(write_logs_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "truncate log since (inclusive)");
        let mut batch = sled::Batch::default();
        for k in self.store.log.range(index_key(log_id.index)..).keys() {
            batch.remove(k.map_err(read_logs_err)?);
        }
        self.store.log.apply_batch(batch).map_err(write_logs_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "purge log up to (inclusive)");
        // Never move last_purged backwards (openraft does not ask for that). The deletion
        // below runs regardless: it may be the retry of a purge cut short by a crash.
        if self.last_purged()?.is_none_or(|prev| prev < log_id) {
            self.store.raft_meta.insert(keys::LAST_PURGED, codec::encode(&log_id)).map_err(write_logs_err)?;
        }
        let mut batch = sled::Batch::default();
        for k in self.store.log.range(..=index_key(log_id.index)).keys() {
            batch.remove(k.map_err(read_logs_err)?);
        }
        self.store.log.apply_batch(batch).map_err(write_logs_err)
    }
}
