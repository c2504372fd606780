//! Crashes around snapshots: a process that builds two snapshots and is killed
//! (SIGKILL) right after the second leaves a data dir that opens, starts Raft and
//! serves that snapshot; a data dir whose snapshot meta names a missing file (as
//! older builds could leave one) is repaired when it is opened.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aof_node::store::Store;
use aof_node::types::{Command as Cmd, Entry, LogId, Member, Raft, Request};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, Membership, RaftSnapshotBuilder};

/// Set in the child process: the data dir to work in.
const CHILD_ENV: &str = "AOF_SNAPSHOT_CRASH_CHILD_DIR";
const CACHE: u64 = 8 << 20;

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn membership(index: u64) -> Entry {
    let nodes: std::collections::BTreeMap<u64, Member> =
        [(1, Member { peer_addr: "127.0.0.1:3".into(), grpc_addr: "127.0.0.1:1".into(), api_addr: "127.0.0.1:4".into(), http_addr: "127.0.0.1:2".into() })].into();
    Entry { log_id: log_id(index), payload: EntryPayload::Membership(Membership::new(vec![[1u64].into()], nodes)) }
}

fn put(index: u64) -> Entry {
    let cmd = Cmd::PutTrigger { name: format!("t{index}"), doc_json: format!("{{\"n\":{index}}}"), if_match: None };
    Entry { log_id: log_id(index), payload: EntryPayload::Normal(Request { time_ms: 1000 + index, cmd }) }
}

/// Entries 1 (membership of node 1) to `last` (trigger puts).
fn entries(last: u64) -> Vec<Entry> {
    std::iter::once(membership(1)).chain((2..=last).map(put)).collect()
}

/// Start Raft (node 1, a single voter) over the store, as the server does.
async fn start_raft(store: &Store) -> Result<Raft, String> {
    let config = openraft::Config { cluster_name: "snapshot-crash".into(), ..Default::default() }.validate().unwrap();
    Raft::new(1, Arc::new(config), aof_node::network::Network::default(), store.log_store(), store.state_machine())
        .await
        .map_err(|e| e.to_string())
}

/// The child: append 20 entries; apply 10 and snapshot; purge the log the snapshot
/// covers (as openraft does after a snapshot; this flushes sled); apply the other
/// 10 and snapshot again; print both snapshot ids; SIGKILL itself.
fn child(dir: &Path) -> ! {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let store = Store::open(dir, CACHE).expect("open the store");
        let (mut log, mut sm) = (store.log_store(), store.state_machine());
        let all = entries(20);
        log.blocking_append(all.clone()).await.unwrap();
        sm.apply(all[..10].to_vec()).await.unwrap();
        let first = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        log.purge(first.meta.last_log_id.unwrap()).await.unwrap();
        sm.apply(all[10..].to_vec()).await.unwrap();
        let second = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        println!("SNAPSHOT1 {}", first.meta.snapshot_id);
        println!("SNAPSHOT2 {} {}", second.meta.snapshot_id, second.meta.last_log_id.unwrap().index);
        use std::io::Write;
        std::io::stdout().flush().unwrap();
        // SAFETY: sending a signal to this process; no memory is involved.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        unreachable!("SIGKILL was sent");
    })
}

#[test]
fn sigkill_right_after_the_second_snapshot_leaves_a_startable_data_dir() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let mut proc = Command::new(std::env::current_exe().unwrap())
        .args(["sigkill_right_after_the_second_snapshot_leaves_a_startable_data_dir", "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = proc.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = proc.kill();
            panic!("the child did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    proc.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    proc.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "the child was to kill itself: {status:?}\n{out}\n{err}");
    // The test harness prints its own words on the same line: find the tag's.
    let field = |tag: &str, n: usize| -> String {
        let mut words = out.split_whitespace().skip_while(|w| *w != tag);
        words.nth(n).unwrap_or_else(|| panic!("no {tag} in the child's output:\n{out}\n{err}")).to_string()
    };
    let (first_id, second_id) = (field("SNAPSHOT1", 1), field("SNAPSHOT2", 1));
    let second_index: u64 = field("SNAPSHOT2", 2).parse().unwrap();
    assert_ne!(first_id, second_id);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let store = Store::open(dir.path(), CACHE).expect("the data dir opens after the kill");
        let raft = start_raft(&store).await.expect("Raft starts after the kill");
        // The snapshot built before the kill is the current one (its meta was durable
        // before build_snapshot returned), and Raft serves it.
        let m = raft
            .wait(Some(Duration::from_secs(10)))
            .metrics(|m| m.snapshot.is_some(), "a snapshot")
            .await
            .expect("Raft reports a snapshot");
        assert_eq!(m.snapshot, Some(log_id(second_index)));
        let mut sm = store.state_machine();
        let mut current = sm.get_current_snapshot().await.unwrap().expect("a current snapshot");
        assert_eq!(current.meta.snapshot_id, second_id, "the first snapshot was {first_id}");
        let mut data = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut *current.snapshot, &mut data).await.unwrap();
        assert!(data.windows(3).any(|w| w == b"t20"), "the snapshot data holds the last applied put");
        // Every applied put is there.
        for i in 2..=20 {
            assert!(sm.read(|kv| aof_node::sm::triggers::get(kv, &format!("t{i}"))).is_some(), "t{i}");
        }
        raft.shutdown().await.unwrap();
    });
}

/// Older builds could leave the stored snapshot meta naming a deleted file, and the
/// node could never start again. Opening such a data dir now builds a new snapshot
/// from the applied state; if the log is purged past the applied state there is
/// nothing to rebuild from, and the error says what to do.
#[test]
fn a_snapshot_meta_naming_a_missing_file_is_repaired_at_open() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let lost = {
            let store = Store::open(dir.path(), CACHE).unwrap();
            let (mut log, mut sm) = (store.log_store(), store.state_machine());
            log.blocking_append(entries(12)).await.unwrap();
            sm.apply(entries(12)).await.unwrap();
            let snap = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
            log.purge(log_id(8)).await.unwrap();
            snap.meta
        };
        std::fs::remove_file(dir.path().join("snapshots").join(format!("{}.snap", lost.snapshot_id))).unwrap();

        let store = Store::open(dir.path(), CACHE).expect("a missing snapshot file is repaired at open");
        let mut sm = store.state_machine();
        let current = sm.get_current_snapshot().await.unwrap().expect("a snapshot");
        assert_ne!(current.meta.snapshot_id, lost.snapshot_id);
        assert_eq!(current.meta.last_log_id, Some(log_id(12)), "built from the applied state");
        assert_eq!(current.meta.last_membership.log_id(), &Some(log_id(1)));
        let files: Vec<_> = std::fs::read_dir(dir.path().join("snapshots")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(files, vec![std::ffi::OsString::from(format!("{}.snap", current.meta.snapshot_id))]);
        let raft = start_raft(&store).await.expect("Raft starts");
        raft.shutdown().await.unwrap();
        drop((sm, store));

        // The log purged past the applied state: no way to rebuild.
        let dir = tempfile::tempdir().unwrap();
        let lost = {
            let store = Store::open(dir.path(), CACHE).unwrap();
            let (mut log, mut sm) = (store.log_store(), store.state_machine());
            log.blocking_append(entries(12)).await.unwrap();
            sm.apply(entries(6)).await.unwrap();
            let snap = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
            log.purge(log_id(10)).await.unwrap();
            snap.meta
        };
        std::fs::remove_file(dir.path().join("snapshots").join(format!("{}.snap", lost.snapshot_id))).unwrap();
        // The purge mark is past the applied state, but the WAL segment still holds the
        // entries after it: open lowers the mark and rebuilds the snapshot from the
        // applied state instead of refusing (see `check_snapshot_at_open`).
        let store = Store::open(dir.path(), CACHE).expect("the purge mark is lowered and the snapshot rebuilt");
        let mut sm = store.state_machine();
        let current = sm.get_current_snapshot().await.unwrap().expect("a snapshot");
        assert_ne!(current.meta.snapshot_id, lost.snapshot_id);
        assert_eq!(current.meta.last_log_id, Some(log_id(6)), "built from the applied state");
    });
}
