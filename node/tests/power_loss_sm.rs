//! Power loss under the state machine: a child process appends and applies
//! entries one by one on an `aof-faultfs` mount (which keeps every write that was
//! not fsynced in memory); the test SIGKILLs it, drops the unsynced writes
//! (power loss), reopens the store and checks that the applied state it reports
//! (`last_applied`) and the state machine's content agree: every put up to
//! `last_applied` is there. Needs root and /dev/fuse, and the `aof-faultfs`
//! binary (`cargo build -p aof-faultfs`, or `AOF_FAULTFS_BIN`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aof_faultfs::{default_program, FaultFs, MountOptions};
use aof_node::store::Store;
use aof_node::types::{Command as Cmd, Entry, LogId, Member, Request};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, Membership};

const CHILD_ENV: &str = "AOF_POWER_LOSS_SM_CHILD_DIR";
const CACHE: u64 = 8 << 20;

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn entry(index: u64) -> Entry {
    if index == 1 {
        let nodes: std::collections::BTreeMap<u64, Member> = [(
            1,
            Member { peer_addr: "127.0.0.1:3".into(), grpc_addr: "127.0.0.1:1".into(), api_addr: "127.0.0.1:4".into(), http_addr: "127.0.0.1:2".into() },
        )]
        .into();
        return Entry { log_id: log_id(1), payload: EntryPayload::Membership(Membership::new(vec![[1u64].into()], nodes)) };
    }
    let cmd = Cmd::PutTrigger { name: format!("t{index}"), doc_json: format!("{{\"n\":{index}}}"), if_match: None };
    Entry { log_id: log_id(index), payload: EntryPayload::Normal(Request { time_ms: 1000 + index, cmd }) }
}

/// The child: append and apply entries one at a time (as openraft does under
/// load) until killed (bounded: 100 000 entries).
fn child(dir: &Path) -> ! {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let store = Store::open(dir, CACHE).expect("open the store");
        let (mut log, mut sm) = (store.log_store(), store.state_machine());
        // Apply what the log holds beyond the applied state (as openraft does at
        // start), then go on from the log's end.
        let applied = sm.applied_state().await.unwrap().0.map_or(0, |l| l.index);
        let last = log.get_log_state().await.unwrap().last_log_id.map_or(0, |l| l.index);
        for i in applied + 1..=last {
            sm.apply(vec![entry(i)]).await.unwrap();
        }
        use std::io::Write;
        let mut out = std::io::stdout();
        for i in last + 1..last + 100_000 {
            log.blocking_append(vec![entry(i)]).await.unwrap();
            // Durable now: the parent holds us to it.
            let _ = writeln!(out, "APPENDED {i}");
            let _ = out.flush();
            sm.apply(vec![entry(i)]).await.unwrap();
        }
        std::process::exit(0)
    })
}

fn faultfs_program() -> PathBuf {
    default_program().expect("the aof-faultfs binary: run `cargo build -p aof-faultfs` first, or set AOF_FAULTFS_BIN")
}

#[test]
fn applied_state_and_content_agree_after_a_power_loss() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
    }
    assert!(rustix_is_root(), "this test mounts a FUSE filesystem and must run as root");
    let tmp = tempfile::tempdir().unwrap();
    let (backing, mnt) = (tmp.path().join("disk"), tmp.path().join("mnt"));
    std::fs::create_dir_all(&backing).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let mut fs = FaultFs::mount(MountOptions::new(faultfs_program(), &backing, &mnt)).expect("mount aof-faultfs");
    let data = mnt.join("data");
    let mut problems = Vec::new();
    let mut last_applied_before = 0;
    // Bounded: 5 power cycles of ~1.7 s each.
    for cycle in 0..5 {
        let mut proc = Command::new(std::env::current_exe().unwrap())
            .args(["applied_state_and_content_agree_after_a_power_loss", "--exact", "--nocapture", "--include-ignored", "--test-threads", "1"])
            .env(CHILD_ENV, &data)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Long enough for sled's periodic flushes (every 500 ms).
        std::thread::sleep(Duration::from_millis(1700));
        let _ = proc.kill();
        let _ = proc.wait();
        let mut printed = String::new();
        let _ = std::io::Read::read_to_string(&mut proc.stdout.take().unwrap(), &mut printed);
        // The test harness prints its own words too: take the tag's numbers.
        let appended: u64 = printed
            .split("APPENDED ")
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .max()
            .unwrap_or(0);
        let lost = fs.lose_unsynced().expect("power loss and remount");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let store = Store::open(&data, CACHE).expect("the data dir opens after a power loss");
            let mut sm = store.state_machine();
            let applied = sm.applied_state().await.unwrap().0.map_or(0, |l| l.index);
            let missing: Vec<u64> =
                (2..=applied).filter(|i| sm.read(|kv| aof_node::sm::triggers::get(kv, &format!("t{i}"))).is_none()).collect();
            let log_last = store.log_store().get_log_state().await.unwrap().last_log_id.map_or(0, |l| l.index);
            eprintln!("cycle {cycle}: appended {appended}, applied {applied}, log ends at {log_last}, lost {lost:?}, {} puts missing", missing.len());
            if !missing.is_empty() {
                problems.push(format!(
                    "cycle {cycle}: last_applied {applied} but {} puts at or below it are missing (first {:?})",
                    missing.len(),
                    &missing[..missing.len().min(5)]
                ));
            }
            if log_last < appended {
                problems.push(format!("cycle {cycle}: entry {appended} was appended (fsynced) before the power loss, but the log ends at {log_last}"));
            }
            if log_last < applied {
                problems.push(format!("cycle {cycle}: the log ends at {log_last}, before last_applied {applied}"));
            }
            if applied <= last_applied_before {
                problems.push(format!("cycle {cycle}: no progress (applied {applied}); the child did not run"));
            }
            last_applied_before = applied;
        });
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline && !data.exists() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    drop(fs);
    assert!(problems.is_empty(), "{problems:#?}");
}

fn rustix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

const VOTE_CHILD_ENV: &str = "AOF_POWER_LOSS_VOTE_CHILD_DIR";

/// The child of [`a_saved_vote_survives_a_power_loss`]: save votes for terms
/// 1..=20, printing each once `save_vote` returned, then wait to be killed.
fn vote_child(dir: &Path) -> ! {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        use std::io::Write;
        let store = Store::open(dir, CACHE).expect("open the store");
        let mut log = store.log_store();
        // Some log traffic first, so sled's file grows.
        for i in 1..=200 {
            log.blocking_append(vec![entry(i)]).await.unwrap();
        }
        let mut out = std::io::stdout();
        for term in 1..=20u64 {
            openraft::storage::RaftLogStorage::save_vote(&mut log, &openraft::Vote::new(term, 1)).await.unwrap();
            let _ = writeln!(out, "VOTED {term}");
            let _ = out.flush();
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
        std::process::exit(0)
    })
}

/// A vote is a promise: once `save_vote` returned, a power loss must not take it
/// back (a node that forgets its vote can vote twice in one term: two leaders).
/// sled's own flush does not `fsync` (see `LogStore::flush`).
#[test]
fn a_saved_vote_survives_a_power_loss() {
    if let Some(dir) = std::env::var_os(VOTE_CHILD_ENV) {
        vote_child(Path::new(&dir));
    }
    assert!(rustix_is_root(), "this test mounts a FUSE filesystem and must run as root");
    let tmp = tempfile::tempdir().unwrap();
    let (backing, mnt) = (tmp.path().join("disk"), tmp.path().join("mnt"));
    std::fs::create_dir_all(&backing).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let mut fs = FaultFs::mount(MountOptions::new(faultfs_program(), &backing, &mnt)).expect("mount aof-faultfs");
    let data = mnt.join("data");
    let mut proc = Command::new(std::env::current_exe().unwrap())
        .args(["a_saved_vote_survives_a_power_loss", "--exact", "--nocapture", "--test-threads", "1"])
        .env(VOTE_CHILD_ENV, &data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Read until the last vote is reported (bounded: 60 s), then cut the power at once.
    let (tx, rx) = std::sync::mpsc::channel();
    let mut stdout = proc.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(&mut stdout).lines().map_while(Result::ok) {
            if line.contains("VOTED 20") {
                let _ = tx.send(());
                return;
            }
        }
    });
    let voted = rx.recv_timeout(Duration::from_secs(60)).is_ok();
    let _ = proc.kill();
    let _ = proc.wait();
    assert!(voted, "the child did not save its votes within 60 s");
    fs.lose_unsynced().expect("power loss and remount");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let store = Store::open(&data, CACHE).expect("the data dir opens after a power loss");
        let vote = openraft::storage::RaftLogStorage::read_vote(&mut store.log_store()).await.unwrap();
        assert_eq!(vote.map(|v| v.leader_id().term), Some(20), "the vote saved last: {vote:?}");
    });
    drop(fs);
}
