//! Unit tests of the sled store: restart durability, identity pinning, pristine
//! detection, applying commands, snapshot transfer and bad on-disk records.

use std::collections::BTreeMap;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder};

use super::*;
use crate::sm::triggers;
use crate::types::{Command, Entry, LogId, Member, Request, Response, SnapshotMeta, Vote};

const CACHE: u64 = 4 * 1024 * 1024;

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(dir.path(), CACHE).expect("open store")
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn blank(term: u64, index: u64) -> Entry {
    Entry { log_id: log_id(term, index), payload: EntryPayload::Blank }
}

fn put(term: u64, index: u64, name: &str, doc: &str) -> Entry {
    let cmd = Command::PutTrigger { name: name.into(), doc_json: doc.into(), if_match: None };
    Entry { log_id: log_id(term, index), payload: EntryPayload::Normal(Request { time_ms: 1000 + index, cmd }) }
}

fn delete(term: u64, index: u64, name: &str) -> Entry {
    let cmd = Command::DeleteTrigger { name: name.into(), if_match: None };
    Entry { log_id: log_id(term, index), payload: EntryPayload::Normal(Request { time_ms: 1000 + index, cmd }) }
}

fn membership(term: u64, index: u64) -> Entry {
    let nodes: BTreeMap<u64, Member> = [(1, Member { peer_addr: "a:0".into(), grpc_addr: "a:1".into(), api_addr: "a:3".into(), http_addr: "a:2".into() })].into();
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Membership(Membership::new(vec![[1u64].into()], nodes)),
    }
}

/// All pairs of the `sm` tree.
fn sm_pairs(store: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
    store.sm().iter().map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap()).collect()
}

fn corrupt(record: &[u8]) -> Vec<u8> {
    let mut bad = record.to_vec();
    bad[0] = 99; // a format version no build knows
    bad
}

#[tokio::test]
async fn restart_keeps_vote_logs_committed_applied_and_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot_meta;
    {
        let store = open(&dir);
        let mut log = store.log_store();
        let mut sm = store.state_machine();
        log.save_vote(&Vote::new(3, 1)).await.unwrap();
        log.blocking_append([blank(1, 1), membership(1, 2), put(1, 3, "x", "{}"), put(2, 4, "y", "{\"a\":1}")])
            .await
            .unwrap();
        log.save_committed(Some(log_id(2, 4))).await.unwrap();
        sm.apply([blank(1, 1), membership(1, 2), put(1, 3, "x", "{}")]).await.unwrap();
        snapshot_meta = sm.get_snapshot_builder().await.build_snapshot().await.unwrap().meta;
        sm.apply([put(2, 4, "y", "{\"a\":1}")]).await.unwrap();
        assert_eq!(sm.last_applied(), Some(log_id(2, 4)));
    }

    let store = open(&dir);
    assert!(!store.is_pristine().unwrap());
    let mut log = store.log_store();
    let mut sm = store.state_machine();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, 4)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!((state.last_purged_log_id, state.last_log_id), (None, Some(log_id(2, 4))));
    let entries = log.try_get_log_entries(1..5).await.unwrap();
    assert_eq!(
        entries.iter().map(|e| e.log_id).collect::<Vec<_>>(),
        (1..=4).map(|i| log_id(if i < 4 { 1 } else { 2 }, i)).collect::<Vec<_>>()
    );
    assert_eq!(entries[2], put(1, 3, "x", "{}"));

    let (last_applied, mem) = sm.applied_state().await.unwrap();
    assert_eq!(last_applied, Some(log_id(2, 4)));
    assert_eq!(mem.log_id(), &Some(log_id(1, 2)));
    assert_eq!(sm.last_applied(), Some(log_id(2, 4)));
    assert_eq!(sm.read(|kv| triggers::get(kv, "x")).unwrap().revision, 3);
    assert_eq!(sm.read(|kv| triggers::get(kv, "y")).unwrap().doc_json, "{\"a\":1}");

    let current = sm.get_current_snapshot().await.unwrap().expect("snapshot survives restart");
    assert_eq!(current.meta, snapshot_meta);
    assert_eq!(current.meta.last_log_id, Some(log_id(1, 3)));
}

/// A committed vote is read back uncommitted, so a node that was leader does not
/// restart as leader of its old term with a read index that may lag what it
/// acknowledged (finding F1 in docs/JEPSEN.md); the vote itself (term and
/// candidate) is kept, so the node still votes for no one else in that term.
#[tokio::test]
async fn a_committed_vote_is_read_back_uncommitted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir);
        store.log_store().save_vote(&Vote::new_committed(4, 2)).await.unwrap();
    }
    let store = open(&dir);
    let vote = store.log_store().read_vote().await.unwrap().expect("a vote");
    assert_eq!(vote, Vote::new(4, 2));
    assert!(!vote.is_committed());
}

#[tokio::test]
async fn purge_and_truncate_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = open(&dir).log_store();
        log.blocking_append((1..=10).map(|i| blank(1, i))).await.unwrap();
        log.purge(log_id(1, 3)).await.unwrap();
        log.truncate(log_id(1, 8)).await.unwrap();
        log.save_vote(&Vote::new(1, 1)).await.unwrap(); // flushes
    }
    let mut log = open(&dir).log_store();
    let state = log.get_log_state().await.unwrap();
    assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(log_id(1, 3)), Some(log_id(1, 7))));
    let idx: Vec<u64> = log.try_get_log_entries(..).await.unwrap().iter().map(|e| e.log_id.index).collect();
    assert_eq!(idx, vec![4, 5, 6, 7]);
    // purging everything leaves last_log_id at last_purged
    log.purge(log_id(1, 7)).await.unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(log_id(1, 7)), Some(log_id(1, 7))));
}

#[tokio::test]
async fn check_identity_pins_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir);
        store.check_identity(2).unwrap();
        store.check_identity(2).unwrap();
    }
    let store = open(&dir);
    store.check_identity(2).unwrap();
    let err = store.check_identity(3).unwrap_err();
    assert!(matches!(err, StoreError::WrongNode { found: 2, expected: 3, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("belongs to node 2, config says node 3; use the right --data-dir or an empty one"), "{msg}");
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
}

#[tokio::test]
async fn is_pristine_until_raft_persists_something() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    assert!(store.is_pristine().unwrap());
    store.check_identity(1).unwrap();
    assert!(store.is_pristine().unwrap(), "the node id alone does not count");
    store.log_store().save_vote(&Vote::new(1, 1)).await.unwrap();
    assert!(!store.is_pristine().unwrap());

    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.log_store().blocking_append([blank(1, 1)]).await.unwrap();
    assert!(!store.is_pristine().unwrap());

    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.state_machine().apply([blank(1, 1)]).await.unwrap();
    assert!(!store.is_pristine().unwrap());
}

#[tokio::test]
async fn apply_commands_and_read_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut sm = store.state_machine();
    assert_eq!(sm.last_applied(), None);
    assert_eq!(sm.apply(Vec::<Entry>::new()).await.unwrap(), vec![]);

    // one batch: later entries see the earlier entries' writes (one overlay)
    let resps =
        sm.apply([blank(1, 1), put(1, 2, "x", "{}"), membership(1, 3), put(1, 4, "x", "{\"v\":2}")]).await.unwrap();
    assert_eq!(
        resps,
        vec![
            Response::None,
            Response::TriggerPut { name: "x".into(), revision: 2, created: true, unchanged: false },
            Response::None,
            Response::TriggerPut { name: "x".into(), revision: 4, created: false, unchanged: false },
        ]
    );
    assert_eq!(sm.last_applied(), Some(log_id(1, 4)));
    let (_, mem) = sm.applied_state().await.unwrap();
    assert_eq!(mem.log_id(), &Some(log_id(1, 3)));

    let rec = sm.read(|kv| triggers::get(kv, "x")).expect("trigger x");
    assert_eq!((rec.revision, rec.created_revision, rec.doc_json.as_str()), (4, 2, "{\"v\":2}"));
    assert_eq!(sm.read(|kv| crate::sm::read_clock(kv)), 1004);

    // another handle sees the same state
    let other = store.state_machine();
    assert_eq!(other.last_applied(), Some(log_id(1, 4)));
    assert_eq!(other.read(|kv| triggers::list(kv)).len(), 1);

    assert_eq!(
        sm.apply([delete(1, 5, "x")]).await.unwrap(),
        vec![Response::TriggerDeleted { name: "x".into(), revision: 5 }]
    );
    assert!(sm.read(|kv| triggers::get(kv, "x")).is_none());
    assert_eq!(sm.last_applied(), Some(log_id(1, 5)));
}

#[tokio::test]
async fn snapshot_build_and_install_copies_the_state() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let a = open(&dir_a);
    let b = open(&dir_b);
    let mut sm_a = a.state_machine();
    let mut sm_b = b.state_machine();

    sm_a.apply([membership(1, 1), put(1, 2, "x", "{}"), put(1, 3, "y", "{}"), put(1, 4, "z", "{}"), delete(1, 5, "y")])
        .await
        .unwrap();
    // b has state of its own that the snapshot must replace
    sm_b.apply([put(1, 1, "old", "{}"), put(1, 2, "x", "{\"other\":true}")]).await.unwrap();

    // the builder captures the state when it is created; later applies (a new key, an
    // overwrite, a delete) do not leak in, though it reads the tree after them
    let mut builder = sm_a.get_snapshot_builder().await;
    let at_capture = sm_pairs(&a);
    sm_a.apply([put(2, 6, "late", "{}"), put(2, 7, "x", "{\"late\":1}"), delete(2, 8, "z")]).await.unwrap();
    sm_a.apply([delete(2, 9, "late")]).await.unwrap();
    let snap = builder.build_snapshot().await.unwrap();
    assert_eq!(snap.meta.last_log_id, Some(log_id(1, 5)));
    assert_eq!(snap.meta.last_membership.log_id(), &Some(log_id(1, 1)));
    assert!(snap.meta.snapshot_id.starts_with("1-5-"), "{}", snap.meta.snapshot_id);
    let mut snap = snap;
    let snap_bytes = data_of(&mut snap.snapshot).await;
    let mut pairs = state_machine::decode_snapshot_pairs(&snap_bytes).unwrap();
    pairs.sort();
    assert_eq!(pairs, at_capture);
    assert!(pairs.iter().all(|(k, _)| k.as_slice() != b"t/late"));
    assert!(pairs.iter().all(|(k, _)| k.as_slice() != b"t/y"), "deleted keys are not in the snapshot");
    let expected_after_install = pairs.clone();

    let stored = sm_a.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(stored.meta, snap.meta);

    assert!(data_of(&mut sm_b.begin_receiving_snapshot().await.unwrap()).await.is_empty());
    sm_b.install_snapshot(&snap.meta, file_with(&snap_bytes).await).await.unwrap();
    assert_eq!(sm_pairs(&b), expected_after_install);
    assert_eq!(sm_b.applied_state().await.unwrap(), (snap.meta.last_log_id, snap.meta.last_membership.clone()));
    assert_eq!(sm_b.last_applied(), Some(log_id(1, 5)));
    assert!(sm_b.read(|kv| triggers::get(kv, "old")).is_none());
    assert_eq!(sm_b.read(|kv| triggers::get(kv, "x")).unwrap().doc_json, "{}");
    assert_eq!(sm_b.get_current_snapshot().await.unwrap().unwrap().meta, snap.meta);

    // a second snapshot of `a` now includes the late write and supersedes the first
    let mut snap2 = sm_a.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let snap2_bytes = data_of(&mut snap2.snapshot).await;
    assert_eq!(snap2.meta.last_log_id, Some(log_id(2, 9)));
    let mut pairs2 = state_machine::decode_snapshot_pairs(&snap2_bytes).unwrap();
    pairs2.sort();
    assert_eq!(pairs2, sm_pairs(&a));
    assert_ne!(snap2.meta.snapshot_id, snap.meta.snapshot_id);
    assert_eq!(sm_a.get_current_snapshot().await.unwrap().unwrap().meta, snap2.meta);
    // the data is a file of its own (not a sled value); older snapshots' files are gone
    let files: Vec<String> = std::fs::read_dir(dir_a.path().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, vec![format!("{}.snap", snap2.meta.snapshot_id)]);
    assert!(a.snapshot.get(snapshot_keys::DATA).unwrap().is_none());
    assert_eq!(std::fs::read(dir_a.path().join("snapshots").join(&files[0])).unwrap(), snap2_bytes);
    // the current snapshot is that file, read from its start however often it is asked for
    let mut current = sm_a.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(data_of(&mut current.snapshot).await, snap2_bytes);
    assert_eq!(data_of(&mut current.snapshot).await, snap2_bytes);
    // a builder builds once
    let mut once = sm_a.get_snapshot_builder().await;
    once.build_snapshot().await.unwrap();
    assert!(once.build_snapshot().await.is_err());

    // snapshot size tracks live state, not history
    let sm_c_dir = tempfile::tempdir().unwrap();
    let c = open(&sm_c_dir);
    let mut sm_c = c.state_machine();
    for i in 1..=200 {
        sm_c.apply([put(1, i, "same", &format!("{{\"v\":{i}}}"))]).await.unwrap();
    }
    let mut small = sm_c.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let small_len = data_of(&mut small.snapshot).await.len();
    assert!(small_len < 1024, "{small_len} bytes");
}

#[tokio::test]
async fn older_build_does_not_replace_newer_installed_snapshot() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let mut sm_a = open(&dir_a).state_machine();
    let mut sm_b = open(&dir_b).state_machine();
    sm_a.apply([put(1, 1, "x", "{}"), put(1, 2, "y", "{}")]).await.unwrap();
    let mut newer = sm_a.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let newer_bytes = data_of(&mut newer.snapshot).await;

    sm_b.apply([put(1, 1, "x", "{}")]).await.unwrap();
    let mut old_builder = sm_b.get_snapshot_builder().await; // captured at (1,1)
    sm_b.install_snapshot(&newer.meta, file_with(&newer_bytes).await).await.unwrap();
    // the old build's state was replaced while it ran: it yields the installed one
    let old = old_builder.build_snapshot().await.unwrap();
    assert_eq!(old.meta, newer.meta);
    assert_eq!(sm_b.get_current_snapshot().await.unwrap().unwrap().meta, newer.meta);
}

#[tokio::test]
async fn unknown_format_version_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir);
        let mut log = store.log_store();
        let mut sm = store.state_machine();
        log.save_vote(&Vote::new(1, 1)).await.unwrap();
        log.blocking_append([blank(1, 1), blank(1, 2)]).await.unwrap();
        sm.apply([blank(1, 1)]).await.unwrap();
        sm.get_snapshot_builder().await.build_snapshot().await.unwrap();

        // vote
        let vote = store.raft_meta.get(raft_meta_keys::VOTE).unwrap().unwrap();
        store.raft_meta.insert(raft_meta_keys::VOTE, corrupt(&vote)).unwrap();
        assert!(log.read_vote().await.is_err());
        // a log entry
        // (a record with an intact checksum whose entry this build cannot read)
        let entry = store.wal.read(2, 3).unwrap()[0].1.to_vec();
        store.wal.truncate(2).unwrap();
        store.wal.append(vec![(2, corrupt(&entry))]).unwrap();
        assert!(log.try_get_log_entries(1..3).await.is_err());
        assert!(log.get_log_state().await.is_err());
        assert_eq!(log.try_get_log_entries(1..2).await.unwrap().len(), 1, "good entries stay readable");
        // a truncated (not just mis-versioned) entry
        store.wal.truncate(2).unwrap();
        store.wal.append(vec![(2, entry[..entry.len() / 2].to_vec())]).unwrap();
        assert!(log.try_get_log_entries(2..3).await.is_err());
        // the snapshot meta
        let meta = store.snapshot.get(snapshot_keys::META).unwrap().unwrap();
        store.snapshot.insert(snapshot_keys::META, corrupt(&meta)).unwrap();
        assert!(sm.get_current_snapshot().await.is_err());
        // received snapshot data: rejected before touching the state
        let good = sm.get_snapshot_builder().await.build_snapshot().await;
        assert!(good.is_err(), "the stored meta is unreadable, so storing the new snapshot fails");
        let before = sm_pairs(&store);
        let snap_meta = SnapshotMeta { last_log_id: Some(log_id(1, 9)), ..Default::default() };
        let data = corrupt(&crate::codec::encode(&Vec::<(Vec<u8>, Vec<u8>)>::new()));
        assert!(sm.install_snapshot(&snap_meta, file_with(&data).await).await.is_err());
        assert_eq!(sm_pairs(&store), before);
        assert_eq!(sm.last_applied(), Some(log_id(1, 1)));
        // the applied state record
        let la = store.sm_meta.get(sm_meta_keys::LAST_APPLIED).unwrap().unwrap();
        store.sm_meta.insert(sm_meta_keys::LAST_APPLIED, corrupt(&la)).unwrap();
        // the node id
        store.raft_meta.insert(raft_meta_keys::NODE_ID, corrupt(&crate::codec::encode(&1u64))).unwrap();
        assert!(matches!(store.check_identity(1), Err(StoreError::Corrupt { .. })));
        store.db.flush().unwrap();
    }
    let err = Store::open(dir.path(), CACHE).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { what: "the last applied log id", .. }), "{err:?}");
    assert!(err.to_string().contains("format version 99"), "{err}");
}

#[test]
fn open_error_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = Store::open(&file.join("sub"), CACHE).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("cannot open data dir"), "{err}");
}

/// New data dirs use 2 MiB sled segments, so a 300 KiB record (a leaf of stored
/// payloads) is written inline, not as a blob file; a dir created with another
/// segment size keeps it (sled refuses to open it with a different one).
#[test]
fn large_records_stay_inline_and_old_segment_sizes_still_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir);
        store.sm().insert(b"big", vec![7u8; 300 << 10]).unwrap();
        store.db.flush().unwrap();
    }
    let blobs = std::fs::read_dir(dir.path().join("blobs")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(blobs, 0, "a 300 KiB value became a blob file");
    assert!(String::from_utf8_lossy(&std::fs::read(dir.path().join("conf")).unwrap()).contains(&format!("segment_size: {}", super::SEGMENT_SIZE)));

    let old = tempfile::tempdir().unwrap();
    drop(sled::Config::new().path(old.path()).segment_size(512 * 1024).open().unwrap());
    let store = open(&old);
    store.sm().insert(b"k", b"v".to_vec()).unwrap();
}

/// A data dir from before the WAL keeps its log in the `log` tree: opening it moves
/// the entries into the WAL (same records) and empties the tree.
#[tokio::test]
async fn a_log_in_the_old_sled_tree_moves_to_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let entries = [blank(1, 1), blank(1, 2), blank(2, 3)];
    {
        let store = open(&dir);
        for e in &entries {
            store.log.insert(log_store::index_key(e.log_id.index), crate::codec::encode(e)).unwrap();
        }
        // as an old build left it: nothing in the WAL
        store.wal.purge(u64::MAX - 1).unwrap();
        store.db.flush().unwrap();
    }
    let store = open(&dir);
    assert!(store.log.is_empty());
    let mut log = store.log_store();
    let got = log.try_get_log_entries(0..10).await.unwrap();
    assert_eq!(got.iter().map(|e| e.log_id).collect::<Vec<_>>(), entries.iter().map(|e| e.log_id).collect::<Vec<_>>());
    assert_eq!(log.get_log_state().await.unwrap().last_log_id, Some(log_id(2, 3)));
    assert!(!store.is_pristine().unwrap());
}

/// A damaged WAL (not a torn last append) stops the node at open with a message that
/// names the file and says what to do; a snapshot whose data file is gone is an
/// error, not an empty snapshot.
#[tokio::test]
async fn damaged_wal_and_missing_snapshot_file_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir);
        store.log_store().blocking_append([blank(1, 1), blank(1, 2)]).await.unwrap();
        let mut sm = store.state_machine();
        sm.apply([blank(1, 1)]).await.unwrap();
        let snap = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        std::fs::remove_file(dir.path().join("snapshots").join(format!("{}.snap", snap.meta.snapshot_id))).unwrap();
        let err = sm.get_current_snapshot().await.unwrap_err();
        assert!(err.to_string().contains("data file cannot be read"), "{err}");
    }
    let seg = dir.path().join("wal").join(format!("{:020}.wal", 1));
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[16 + 2] ^= 0xff; // inside the first of two records
    std::fs::write(&seg, &bytes).unwrap();
    let err = Store::open(dir.path(), CACHE).unwrap_err();
    assert!(matches!(err, StoreError::Wal { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("00000000000000000001.wal") && msg.contains("restore the data dir"), "{msg}");
}

/// All of a snapshot's data (from its start, wherever the handle is).
async fn data_of(file: &mut tokio::fs::File) -> Vec<u8> {
    state_machine::read_snapshot_data(file).await.unwrap()
}

/// Snapshot data as openraft hands a received snapshot to `install_snapshot`: an
/// open file, positioned after what was written into it.
async fn file_with(data: &[u8]) -> Box<tokio::fs::File> {
    use tokio::io::AsyncWriteExt;
    let mut f = tokio::fs::File::from_std(tempfile::tempfile().unwrap());
    f.write_all(data).await.unwrap();
    Box::new(f)
}

/// Data dirs from before snapshot files kept the data in sled: it is still served,
/// as an unlinked file that leaves nothing in the snapshot dir.
#[tokio::test]
async fn snapshot_data_kept_in_sled_by_older_builds_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut sm = store.state_machine();
    sm.apply([put(1, 1, "x", "{}"), put(1, 2, "y", "{}")]).await.unwrap();
    let mut snap = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let bytes = data_of(&mut snap.snapshot).await;
    // Turn it into the older layout: data in sled, no file.
    store.snapshot.insert(snapshot_keys::DATA, bytes.as_slice()).unwrap();
    let snap_dir = dir.path().join("snapshots");
    for e in std::fs::read_dir(&snap_dir).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let mut current = sm.get_current_snapshot().await.unwrap().expect("the stored snapshot");
    assert_eq!(current.meta, snap.meta);
    assert_eq!(data_of(&mut current.snapshot).await, bytes);
    assert_eq!(std::fs::read_dir(&snap_dir).unwrap().count(), 0, "the served copy has no name");
}

/// Start a store as openraft does (`get_initial_state`: its start-up purge, its
/// snapshot) and check openraft's start-up invariants: the purge mark within the
/// current snapshot, the snapshot within what is committed. Returns
/// `(purge mark, snapshot's last log id)`.
async fn start_as_openraft(store: &Store) -> (Option<LogId>, Option<LogId>) {
    let mut log = store.log_store();
    let mut sm = store.state_machine();
    let state = openraft::storage::StorageHelper::new(&mut log, &mut sm).get_initial_state().await.expect("initial state");
    let purged = log.get_log_state().await.unwrap().last_purged_log_id;
    let snap = state.snapshot_meta.last_log_id;
    if snap.is_some() || purged.is_some() {
        assert!(purged.map(|p| p.index) <= snap.map(|s| s.index), "purge mark {purged:?} ahead of the snapshot {snap:?}");
    }
    assert!(snap <= state.committed, "snapshot {snap:?} ahead of committed {:?}", state.committed);
    if let Some(mut current) = sm.get_current_snapshot().await.unwrap() {
        state_machine::decode_snapshot_pairs(&data_of(&mut current.snapshot).await).expect("the served snapshot decodes");
    }
    (purged, snap)
}

/// Copy a data dir as it is on disk right now: what a SIGKILL would leave.
fn crash_image(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            crash_image(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Finding F3 (docs/JEPSEN.md): openraft 0.9 purges the log up to a received
/// snapshot in the same step as it hands the snapshot to the state machine to
/// install. The purge mark used to be durable at once; a crash before the install
/// left a node whose purge mark is ahead of its snapshot, which openraft refuses at
/// every start. The purge must wait for the install.
#[tokio::test]
async fn a_purge_up_to_a_received_snapshot_is_never_durable_before_the_snapshot() {
    // The leader's snapshot at (2, 20).
    let dir_a = tempfile::tempdir().unwrap();
    let a = open(&dir_a);
    let mut sm_a = a.state_machine();
    sm_a.apply((1..=20).map(|i| put(1 + i / 11, i, &format!("k{i}"), "{}"))).await.unwrap();
    let mut snap = sm_a.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(snap.meta.last_log_id, Some(log_id(2, 20)));
    let bytes = data_of(&mut snap.snapshot).await;

    // A lagging follower: log 0..=5, applied and snapshotted up to 3.
    let dir_b = tempfile::tempdir().unwrap();
    let image = tempfile::tempdir().unwrap();
    {
        let b = open(&dir_b);
        let mut log_b = b.log_store();
        let mut sm_b = b.state_machine();
        log_b.blocking_append((0..=5).map(|i| blank(1, i))).await.unwrap();
        sm_b.apply((0..=3).map(|i| blank(1, i))).await.unwrap();
        sm_b.get_snapshot_builder().await.build_snapshot().await.unwrap();

        // As openraft does: receive, then install on the state machine worker while
        // the core purges the log up to the snapshot.
        let mut receiving = sm_b.begin_receiving_snapshot().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut receiving, &bytes).await.unwrap();
        let purge = tokio::spawn(async move { log_b.purge(log_id(2, 20)).await });
        // Let the purge get as far as it gets on its own (bounded), then crash.
        for _ in 0..100 {
            if purge.is_finished() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        crash_image(dir_b.path(), &image.path().join("b"));
        sm_b.install_snapshot(&snap.meta, receiving).await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), purge).await.expect("purge ends after the install").unwrap().unwrap();
    }

    // The crash image opens and starts: the purge mark did not get ahead.
    let crashed = Store::open(&image.path().join("b"), CACHE).expect("a crash during the install leaves a data dir that opens");
    start_as_openraft(&crashed).await;
    // After the install: the snapshot, the applied state and the purge mark at (2, 20).
    let b = open(&dir_b);
    assert_eq!(start_as_openraft(&b).await, (Some(log_id(2, 20)), Some(log_id(2, 20))));
}

/// Data dirs left by F3 (or any purge mark ahead of the snapshot) are repaired at
/// open when the node still has what the mark needs, and refused with a clear
/// message when it does not — never handed to openraft as they are.
#[tokio::test]
async fn a_purge_mark_ahead_of_the_snapshot_is_repaired_or_refused_at_open() {
    // (1) Applied state past the mark: a new snapshot of the applied state.
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir);
        store.log_store().blocking_append((1..=10).map(|i| put(1, i, &format!("k{i}"), "{}"))).await.unwrap();
        let mut sm = store.state_machine();
        sm.apply((1..=3).map(|i| put(1, i, &format!("k{i}"), "{}"))).await.unwrap();
        sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        sm.apply((4..=8).map(|i| put(1, i, &format!("k{i}"), "{}"))).await.unwrap();
        set_purged(&store, log_id(1, 6));
    }
    let store = open(&dir);
    assert_eq!(start_as_openraft(&store).await, (Some(log_id(1, 6)), Some(log_id(1, 8))));
    drop(store);

    // (2) Applied state behind the mark, but the log still has the entries: the
    // mark goes back to the applied state.
    let dir = applied_to_3_purged_to_6().await;
    let store = open(&dir);
    assert_eq!(start_as_openraft(&store).await.0, Some(log_id(1, 3)));
    let idx: Vec<u64> = store.log_store().try_get_log_entries(..).await.unwrap().iter().map(|e| e.log_id.index).collect();
    assert_eq!(idx, (4..=10).collect::<Vec<_>>());
    drop(store);

    // (3) The log ends before the applied state (openraft then purges up to it):
    // the snapshot must reach the applied state.
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir);
        store.log_store().blocking_append((1..=4).map(|i| blank(1, i))).await.unwrap();
        let mut sm = store.state_machine();
        sm.apply((1..=2).map(|i| blank(1, i))).await.unwrap();
        sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        sm.apply((3..=7).map(|i| blank(1, i))).await.unwrap();
    }
    let store = open(&dir);
    assert_eq!(start_as_openraft(&store).await, (Some(log_id(1, 7)), Some(log_id(1, 7))));
    drop(store);

    // (4) Neither the applied state nor the log has entries up to the mark: refused.
    let dir = applied_to_3_purged_to_6().await;
    std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
    let err = Store::open(dir.path(), CACHE).unwrap_err();
    assert!(matches!(err, StoreError::Damaged { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("log entries 4..=6 are gone") && msg.contains("empty data dir"), "{msg}");
}

/// Record `p` as the purge mark, durably (what openraft's purge leaves behind).
fn set_purged(store: &Store, p: LogId) {
    store.raft_meta.insert(raft_meta_keys::LAST_PURGED, codec::encode(&p)).unwrap();
    store.db.flush().unwrap();
}

/// A data dir whose log holds entries 1..=10, whose state machine applied (and
/// snapshotted) 1..=3, and whose purge mark says 6: a mark past the applied state.
async fn applied_to_3_purged_to_6() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.log_store().blocking_append((1..=10).map(|i| blank(1, i))).await.unwrap();
    let mut sm = store.state_machine();
    sm.apply((1..=3).map(|i| blank(1, i))).await.unwrap();
    sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    set_purged(&store, log_id(1, 6));
    drop(store);
    dir
}

/// A snapshot file damaged on disk is found at open (its stored length and CRC-32)
/// and replaced by a snapshot of the applied state; the damaged bytes are never
/// served. If the node cannot rebuild it, it refuses to start naming the file.
#[tokio::test]
async fn a_damaged_snapshot_file_is_detected_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (damaged_id, pairs) = {
        let store = open(&dir);
        store.log_store().blocking_append((0..=5).map(|i| put(1, i, &format!("k{i}"), "{}"))).await.unwrap();
        let mut sm = store.state_machine();
        sm.apply((0..=5).map(|i| put(1, i, &format!("k{i}"), "{\"x\":1}"))).await.unwrap();
        let snap = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        (snap.meta.snapshot_id, sm_pairs(&store))
    };
    let file = dir.path().join("snapshots").join(format!("{damaged_id}.snap"));
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5a;
    std::fs::write(&file, &bytes).unwrap();

    let store = open(&dir);
    start_as_openraft(&store).await;
    let mut current = store.state_machine().get_current_snapshot().await.unwrap().unwrap();
    assert_ne!(current.meta.snapshot_id, damaged_id, "the damaged snapshot is still current");
    let mut served = state_machine::decode_snapshot_pairs(&data_of(&mut current.snapshot).await).unwrap();
    served.sort();
    assert_eq!(served, pairs);
    drop(store);

    // Damaged again, and the log purged past the applied state: refused, naming the file.
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let store = open(&dir);
        store.log_store().blocking_append((1..=5).map(|i| blank(1, i))).await.unwrap();
        let mut sm = store.state_machine();
        sm.apply((1..=3).map(|i| blank(1, i))).await.unwrap();
        let id = sm.get_snapshot_builder().await.build_snapshot().await.unwrap().meta.snapshot_id;
        store.raft_meta.insert(raft_meta_keys::LAST_PURGED, codec::encode(&log_id(1, 5))).unwrap();
        store.db.flush().unwrap();
        id
    };
    std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
    let file = dir.path().join("snapshots").join(format!("{id}.snap"));
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[3] ^= 1;
    std::fs::write(&file, &bytes).unwrap();
    let msg = Store::open(dir.path(), CACHE).unwrap_err().to_string();
    assert!(msg.contains(&format!("{id}.snap")) && msg.contains("is damaged"), "{msg}");
}

fn sm_tree_names(store: &Store) -> Vec<String> {
    let mut names: Vec<String> = store
        .db
        .tree_names()
        .iter()
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .filter(|n| n == "sm" || n.starts_with("sm-"))
        .collect();
    names.sort();
    names
}

/// A received snapshot is loaded streaming, in batches, into a tree of its own that
/// becomes the state machine's in one step: the state after the install is exactly
/// the snapshot's, the old tree is gone, and all of it survives a restart.
#[tokio::test]
async fn a_large_snapshot_is_installed_in_batches_into_a_new_tree() {
    let dir = tempfile::tempdir().unwrap();
    let meta = SnapshotMeta { last_log_id: Some(log_id(3, 40)), last_membership: Default::default(), snapshot_id: "3-40-7".into() };
    // More than three batches' worth, with keys the old state also has.
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> =
        (0..100u32).map(|i| (format!("t/k{i:03}").into_bytes(), vec![(i % 251) as u8; 300 << 10])).collect();
    pairs.push((b"m/clock".to_vec(), b"c".to_vec()));
    {
        let store = open(&dir);
        let mut sm = store.state_machine();
        sm.apply([put(1, 1, "old", "{}"), put(1, 2, "k001", "{}")]).await.unwrap();
        sm.install_snapshot(&meta, file_with(&codec::encode(&pairs)).await).await.unwrap();
        let mut want = pairs.clone();
        want.sort();
        assert_eq!(sm_pairs(&store), want);
        assert_eq!(sm.last_applied(), meta.last_log_id);
        let current = String::from_utf8_lossy(&store.sm().name()).into_owned();
        assert!(current.starts_with("sm-"), "{current}");
        assert!(sm_tree_names(&store).contains(&current));
        assert_eq!(sm.get_current_snapshot().await.unwrap().unwrap().meta, meta);
    }
    let store = open(&dir);
    let mut want = pairs.clone();
    want.sort();
    assert_eq!(sm_pairs(&store), want, "the installed state is the state after a restart");
    assert_eq!(store.state_machine().last_applied(), meta.last_log_id);
    assert_eq!(sm_tree_names(&store).len(), 1, "a replaced tree left by the last run is dropped at open");
}

/// A crash after some of a snapshot's pairs were loaded into their new tree, but
/// before the switch to it: the node restarts with the state it had, and the
/// half-loaded tree is dropped.
#[tokio::test]
async fn a_crash_during_an_install_leaves_the_state_it_had() {
    let dir = tempfile::tempdir().unwrap();
    let before;
    {
        let store = open(&dir);
        store.state_machine().apply([put(1, 1, "x", "{}"), put(1, 2, "y", "{}")]).await.unwrap();
        before = sm_pairs(&store);
        let half = store.db.open_tree("sm-99").unwrap();
        half.insert(b"t/partial", b"junk".to_vec()).unwrap();
        store.flush_durable().unwrap();
    }
    let store = open(&dir);
    assert_eq!(sm_pairs(&store), before);
    assert_eq!(store.state_machine().last_applied(), Some(log_id(1, 2)));
    assert_eq!(sm_tree_names(&store), vec!["sm".to_string()]);
}

/// Damaged snapshot data (cut short, a length past its end, bytes after the last
/// pair) is refused: the install fails, allocates nothing near the lengths it
/// claims, and changes neither the state nor the current snapshot.
#[tokio::test]
async fn damaged_snapshot_data_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut sm = store.state_machine();
    sm.apply([put(1, 1, "x", "{}")]).await.unwrap();
    let before = sm_pairs(&store);
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = vec![(b"t/a".to_vec(), vec![1u8; 100]), (b"t/b".to_vec(), vec![2u8; 100])];
    let good = codec::encode(&pairs);
    let mut huge_len = good.clone();
    // The first pair's key length (after the version byte and the pair count).
    huge_len[9..17].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    let mut trailing = good.clone();
    trailing.push(0);
    let mut many = good.clone();
    many[1..9].copy_from_slice(&u64::MAX.to_le_bytes());
    for (what, data) in [("cut short", good[..good.len() - 10].to_vec()), ("huge length", huge_len), ("trailing", trailing), ("huge count", many)] {
        let meta = SnapshotMeta { last_log_id: Some(log_id(2, 9)), last_membership: Default::default(), snapshot_id: format!("2-9-{}", what.len()) };
        assert!(sm.install_snapshot(&meta, file_with(&data).await).await.is_err(), "{what}");
        assert_eq!(sm_pairs(&store), before, "{what}");
        assert_eq!(sm.last_applied(), Some(log_id(1, 1)), "{what}");
        assert!(sm.get_current_snapshot().await.unwrap().is_none(), "{what}");
        assert_eq!(sm_tree_names(&store), vec!["sm".to_string()], "{what}");
    }
}
