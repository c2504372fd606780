//! The Raft log ([`super::wal`]) and the vote (`raft_meta` tree).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, StorageIOError};

use super::{any, fail_stop_on_sled_io, io, raft_meta_keys as keys, Store};
use crate::codec;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// The Raft log storage of one node. Clones share the same files and database; a
/// clone is also the log reader handed to replication tasks.
///
/// ### To ensure correctness
///
/// - [`append`](RaftLogStorage::append) writes the entries to the WAL, which
///   `fdatasync`s before returning, and only then reports
///   `log_io_completed(Ok(()))`: an append is acknowledged to openraft only once it is
///   on disk (see [`super::wal`] for what recovery does with a torn append).
/// - [`save_vote`](RaftLogStorage::save_vote) flushes sled before returning. While
///   the storage alarm is raised (a full disk) it waits, like log appends do (see
///   [`super::disk`]): a vote is a promise too.
/// - A sled write that fails with an IO error stops the process
///   ([`super::fail_stop_on_sled_io`]); sled cannot continue after one.
/// - `save_committed` persists the committed log id (not flushed: losing it only
///   means re-applying from the state machine's durable `last_applied`).
/// - The state machine is not flushed when it applies: after a crash it resumes from
///   its durable `last_applied` and re-applies from the log. So the log must keep
///   every entry after it. [`purge`](RaftLogStorage::purge) first waits until the
///   applied state covers the purged entries (an install of a received snapshot runs
///   concurrently with the purge openraft issues for it: see
///   [`LogStore::wait_for_install`]); then it records `last_purged`
///   and forgets the entries, then flushes sled and only then deletes their WAL
///   files, so the snapshot covering them and the applied state are durable first.
///   If the process dies before that flush, sled recovers a prefix of its writes:
///   either without the new `last_purged` (the entries are still in the WAL and still
///   count), or with it and with the snapshot and applied state written before it.
/// - [`truncate`](RaftLogStorage::truncate) removes every entry with index `>=
///   log_id.index` and syncs.
/// - All writes are issued from `&mut self` methods that openraft awaits one after
///   another, so they are serialized. File IO runs on the blocking thread pool.
/// - Bad bytes on disk (unknown format version, corrupt record) surface as a
///   [`StorageError`], never as a panic.
#[derive(Clone)]
pub struct LogStore {
    store: Store,
}

/// The sled key of a log index in the old `log` tree: 8 bytes big-endian.
#[cfg(test)]
pub(crate) fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// How long a purge of the log waits for the snapshot install that covers it (see
/// [`LogStore::wait_for_install`]); an install waiting for disk space can take long.
const INSTALL_WAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(600);

fn read_logs_err(e: impl std::error::Error + 'static) -> StorageError {
    io(StorageIOError::read_logs(any(e)))
}

fn write_logs_err(e: impl std::error::Error + 'static) -> StorageError {
    io(StorageIOError::write_logs(any(e)))
}

/// Run blocking WAL IO off the async runtime's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f).await.map_err(write_logs_err)
}

impl LogStore {
    pub(crate) fn new(store: Store) -> Self {
        LogStore { store }
    }

    fn decode_entry(index: u64, value: &[u8]) -> Result<Entry, StorageError> {
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

    /// Make sled's writes durable. sled 0.34's own flush ends with
    /// `sync_file_range` on Linux, which syncs no metadata (a grown file's size)
    /// and no disk cache, so after a power loss a "flushed" vote could be gone
    /// (found with `lose-unsynced-all`: a node voted twice in one term; see
    /// docs/JEPSEN.md). Only sled's periodic flusher calls `fsync`; so fsync its
    /// file here too.
    async fn flush(&self) -> Result<(), sled::Error> {
        self.store.db.flush_async().await.map(drop).map_err(|e| self.sled_failed("flushing sled", e))?;
        let file = self.store.dir.join(super::SLED_FILE);
        tokio::task::spawn_blocking(move || std::fs::File::open(&file)?.sync_all())
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(|e| self.sled_failed("fsyncing sled's file", sled::Error::Io(e)))
    }

    /// See [`fail_stop_on_sled_io`]; returns `e` if it did not stop.
    fn sled_failed(&self, what: &str, e: sled::Error) -> sled::Error {
        fail_stop_on_sled_io(&self.store.dir, what, &e);
        e
    }

    /// Before the log is purged up to `log_id`: wait until the state machine covers
    /// it. openraft 0.9 purges the log up to a snapshot received from the leader in
    /// the same step as it hands the snapshot to its state-machine worker to install
    /// (`PurgeLog` has no condition), so the purge mark used to reach the disk while
    /// the snapshot was still being written; a crash in between left a node whose
    /// purge mark is ahead of its snapshot, which openraft refuses at every start
    /// (finding F3 in docs/JEPSEN.md). Everything else openraft purges is covered by
    /// a snapshot already stored (openraft's own invariant), so this returns at once.
    /// Gives up (with an error, as the failed install does) if the install fails or
    /// the store is closing.
    async fn wait_for_install(&self, log_id: LogId) -> Result<(), StorageError> {
        use std::sync::atomic::Ordering;
        let installs = &self.store.installs;
        let covered = || {
            let applied = self.store.applied.read().unwrap_or_else(|p| p.into_inner()).last_applied;
            applied.map(|a| a.index) >= Some(log_id.index)
        };
        // Nothing received and nothing applied: openraft's storage test suite purges
        // logs it never applied; a running node always has a snapshot or receives one.
        if covered() || !installs.receiving.load(Ordering::SeqCst) {
            return Ok(());
        }
        let failed = installs.failed.load(Ordering::SeqCst);
        let started = std::time::Instant::now();
        let mut said = started;
        let give_up = |why: String| {
            write_logs_err(std::io::Error::other(format!("not purging the log up to {log_id}: {why}")))
        };
        loop {
            let notified = installs.done.notified();
            if covered() {
                tracing::debug!(%log_id, waited_ms = started.elapsed().as_millis() as u64, "purge waited for the snapshot install");
                return Ok(());
            }
            if installs.failed.load(Ordering::SeqCst) != failed {
                return Err(give_up("the snapshot install covering it failed".into()));
            }
            if self.store.alarm.is_closed() {
                return Err(give_up("the store is closing".into()));
            }
            if started.elapsed() > INSTALL_WAIT_LIMIT {
                return Err(give_up(format!("no snapshot covering it was installed within {INSTALL_WAIT_LIMIT:?}")));
            }
            if said.elapsed() > std::time::Duration::from_secs(10) {
                tracing::warn!(%log_id, waited_s = started.elapsed().as_secs(), "purging the log waits for the snapshot install that covers it");
                said = std::time::Instant::now();
            }
            let _ = tokio::time::timeout(std::time::Duration::from_millis(50), notified).await;
        }
    }

    /// Wait (off the async runtime) while the storage alarm is raised.
    async fn wait_for_disk(&self, what: &'static str) -> Result<(), StorageError> {
        if self.store.alarm.reason().is_none() {
            return Ok(());
        }
        let alarm = self.store.alarm.clone();
        blocking(move || alarm.wait_clear(what)).await?.map_err(write_logs_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let from = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(&i) => i.saturating_add(1),
            Bound::Excluded(&i) => i,
            Bound::Unbounded => u64::MAX,
        };
        if from >= to {
            return Ok(Vec::new());
        }
        let records = self.store.wal.read(from, to).map_err(read_logs_err)?;
        records.iter().map(|(i, bytes)| Self::decode_entry(*i, bytes)).collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.last_purged()?;
        let last_entry = match self.store.wal.bounds() {
            Some((_, last)) => match self.store.wal.read(last, last + 1).map_err(read_logs_err)?.first() {
                Some((i, bytes)) => Some(Self::decode_entry(*i, bytes)?.log_id),
                None => None,
            },
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
        self.wait_for_disk("saving the vote").await?;
        self.store.raft_meta.insert(keys::VOTE, codec::encode(vote)).map_err(|e| err(self.sled_failed("saving the vote", e)))?;
        self.flush().await.map_err(err)
    }

    /// The stored vote, **as not committed**. openraft 0.9 starts a node whose
    /// stored vote is a committed vote for itself straight back as leader of
    /// that term, without an election and without a new blank entry; its read
    /// index is then `max(its old blank entry, the commit index it had saved)`,
    /// and the saved commit index can lag writes it acknowledged before a crash
    /// (it is not flushed, and the state machine applies in its own task), so it
    /// served stale linearizable reads after a power loss (finding F1 in
    /// docs/JEPSEN.md). Read back uncommitted, the vote still keeps this node
    /// from voting for anyone else in that term, and a node that was leader has
    /// to win an election in a new term, whose blank entry makes read-index wait
    /// for everything acknowledged before.
    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let vote: Option<Vote> = self.get_meta(keys::VOTE, StorageIOError::read_vote)?;
        Ok(vote.map(|v| Vote::new(v.leader_id().term, v.leader_id().voted_for().unwrap_or_default())))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let err = |e| io(StorageIOError::write(any(self.sled_failed("saving the committed log id", e))));
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
        let records: Vec<(u64, Vec<u8>)> = entries.into_iter().map(|e| (e.log_id.index, codec::encode(&e))).collect();
        let n = records.len() as u64;
        let wal = self.store.wal.clone();
        let started = std::time::Instant::now();
        let res = blocking(move || wal.append(records)).await?;
        let stats = &self.store.append_stats;
        stats.flush_seconds.observe(started.elapsed().as_secs_f64());
        stats.flushes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        stats.entries.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        match res {
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
        let wal = self.store.wal.clone();
        blocking(move || wal.truncate(log_id.index)).await?.map_err(write_logs_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "purge log up to (inclusive)");
        self.wait_for_install(log_id).await?;
        // Never move last_purged backwards (openraft does not ask for that).
        if self.last_purged()?.is_none_or(|prev| prev < log_id) {
            self.store
                .raft_meta
                .insert(keys::LAST_PURGED, codec::encode(&log_id))
                .map_err(|e| write_logs_err(self.sled_failed("saving the last purged log id", e)))?;
        }
        self.store.wal.forget(log_id.index);
        // Delete the files only once the snapshot and applied state that replace these
        // entries are durable. (With the log and snapshot data outside sled this flush
        // is short: a few ms at 1 000 events/s.)
        self.flush().await.map_err(write_logs_err)?;
        let wal = self.store.wal.clone();
        blocking(move || wal.delete_forgotten(log_id.index)).await?.map_err(write_logs_err)?;
        Ok(())
    }
}
