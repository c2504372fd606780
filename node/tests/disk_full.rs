//! A full disk (see `aof_node::store::disk`): a node whose data dir is on its own
//! small file system (a tmpfs mounted by the test; needs root, skipped otherwise)
//! stops storing and acknowledging, says so on `/ready` and in a metric, and comes
//! back by itself once space is freed; nothing acknowledged is lost. A log append
//! that meets `ENOSPC` waits and then writes the same bytes again; sled meeting
//! `ENOSPC` stops the process (fail-stop) with a clear message.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aof_node::store::disk::{free_bytes, is_disk_full};
use aof_node::store::{DiskPolicy, Store, FAIL_STOP_EXIT_CODE};
use aof_node::types::{Command as Cmd, Entry, LogId, Request};
use common::TestCluster;
use openraft::storage::{RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader};

/// A tmpfs of a given size mounted on a temp dir for the test's lifetime;
/// unmounted when dropped, also when the test fails.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (the test is skipped) when not running as root.
    fn mount(size_mib: u64) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m,mode=0700"), "aof-disk-full"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a {size_mib} MiB tmpfs on {} failed", dir.path().display());
        Some(Tmpfs { path: dir.path().to_path_buf(), _dir: dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.path).status().is_ok_and(|s| s.success());
        if !ok {
            // Still in use (a node of a failed test): detach it now, freed when unused.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// A file that takes up the free space of a file system.
struct Filler {
    path: PathBuf,
    file: File,
}

impl Filler {
    fn create(path: PathBuf) -> Filler {
        let file = File::create(&path).unwrap();
        Filler { path, file }
    }

    /// Write `chunk`-sized blocks until `stop` holds or the disk is full (bounded).
    fn write_until(&mut self, chunk: usize, mut stop: impl FnMut() -> bool) -> bool {
        let block = vec![0xa5u8; chunk];
        for _ in 0..100_000 {
            if stop() {
                return false;
            }
            match self.file.write(&block) {
                Ok(_) => {}
                Err(e) if is_disk_full(&e) => return true,
                Err(e) => panic!("writing the filler: {e}"),
            }
        }
        panic!("the filler did not fill the disk");
    }

    /// Fill until less than `bytes` are free.
    fn leave(&mut self, bytes: u64) {
        let dir = self.path.parent().unwrap().to_path_buf();
        self.write_until(256 << 10, || free_bytes(&dir).unwrap() < bytes);
    }

    /// Fill until writes fail.
    fn fill(&mut self) {
        for chunk in [1 << 20, 64 << 10, 4 << 10, 512, 1] {
            assert!(self.write_until(chunk, || false), "writes of {chunk} bytes never failed");
        }
        let e = self.file.write(&[1]).expect_err("the file system is full");
        assert!(is_disk_full(&e), "{e}");
    }

    fn remove(self) {
        drop(self.file);
        std::fs::remove_file(&self.path).unwrap();
    }
}

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn put(index: u64, doc_bytes: usize) -> Entry {
    let doc_json = format!("{{\"pad\":\"{}\"}}", "x".repeat(doc_bytes));
    let cmd = Cmd::PutTrigger { name: format!("t{index}"), doc_json, if_match: None };
    Entry { log_id: log_id(index), payload: EntryPayload::Normal(Request { time_ms: 1000 + index, cmd }) }
}

/// Poll `f` until it returns `Some`, at most `secs` seconds.
async fn wait_for<T, Fut: std::future::Future<Output = Option<T>>>(what: &str, secs: u64, mut f: impl FnMut() -> Fut) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {secs}s waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A log append meets a full disk halfway through its bytes: it raises the alarm
/// (naming the file) and does not return; once space is freed it writes the same
/// bytes at the same offset and returns, and the log holds exactly what was appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_append_on_a_full_disk_waits_for_space_then_writes_the_same_bytes() {
    let Some(fs) = Tmpfs::mount(32) else { return };
    let data = fs.path.join("data");
    // No early alarm and no reserve: the append itself meets ENOSPC.
    let policy = DiskPolicy { reserve_bytes: 0, min_free_bytes: 0, check_every: Duration::from_millis(20) };
    let store = Store::open_with_policy(&data, 1 << 20, policy).unwrap();
    store.check_identity(1).unwrap(); // flushes sled: it has nothing left to write
    let mut log = store.log_store();
    log.blocking_append((1..=3).map(|i| put(i, 10))).await.unwrap();

    let mut filler = Filler::create(fs.path.join("filler"));
    filler.fill();
    // Leave 64 KiB: the next append's 300 KiB get partly written.
    let len = filler.file.metadata().unwrap().len();
    filler.file.set_len(len - (64 << 10)).unwrap();

    let big = vec![put(4, 300 << 10), put(5, 10)];
    let append = {
        let (mut log, big) = (log.clone(), big.clone());
        tokio::spawn(async move { log.blocking_append(big).await })
    };
    let reason = wait_for("the storage alarm", 10, || async { store.disk_alarm() }).await;
    assert!(!append.is_finished(), "the append returned while the disk was full");
    let segment = data.join("wal").join(format!("{:020}.wal", 1));
    assert!(reason.contains("disk full") && reason.contains(&segment.display().to_string()), "{reason}");

    filler.remove();
    tokio::time::timeout(Duration::from_secs(10), append).await.expect("the append completes once space is free").unwrap().unwrap();
    assert_eq!(store.disk_alarm(), None);
    let got = log.try_get_log_entries(1..10).await.unwrap();
    assert_eq!(got.len(), 5);
    assert_eq!(&got[3..], &big[..]);
    drop((log, store));

    // After a restart: the same five entries, nothing of the failed attempt left over.
    let store = Store::open_with_policy(&data, 1 << 20, policy).unwrap();
    let mut log = store.log_store();
    let got = log.try_get_log_entries(1..10).await.unwrap();
    assert_eq!(got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    assert_eq!(&got[3..], &big[..]);

    // A node that stops while an append waits for space: the append gives up with an
    // error (so Raft can shut down), and it was never acknowledged.
    let mut filler = Filler::create(fs.path.join("filler"));
    filler.fill();
    let append = {
        let mut log = log.clone();
        tokio::spawn(async move { log.blocking_append([put(6, 300 << 10)]).await })
    };
    wait_for("the storage alarm", 10, || async { store.disk_alarm() }).await;
    store.stop_waiting_for_disk();
    let res = tokio::time::timeout(Duration::from_secs(10), append).await.expect("the append gives up").unwrap();
    assert!(res.is_err(), "an append on a full disk succeeded");
    drop((log, store));
    filler.remove();
    let store = Store::open_with_policy(&data, 1 << 20, policy).unwrap();
    let got = store.log_store().try_get_log_entries(1..10).await.unwrap();
    assert_eq!(got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
}

/// Set in the child process of the fail-stop test: its data dir.
const FAIL_STOP_CHILD_ENV: &str = "AOF_DISK_FULL_FAIL_STOP_DIR";

/// The child: a store on a full disk whose sled runs out of space while applying.
fn fail_stop_child(data: &Path) -> ! {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let policy = DiskPolicy { reserve_bytes: 0, min_free_bytes: 0, check_every: Duration::from_millis(20) };
        let store = Store::open_with_policy(data, 1 << 20, policy).unwrap();
        store.check_identity(1).unwrap();
        Filler::create(data.parent().unwrap().join("filler")).fill();
        let mut sm = store.state_machine();
        for i in 1..=400 {
            if let Err(e) = sm.apply([put(i, 64 << 10)]).await {
                println!("APPLY FAILED WITHOUT STOPPING: {e}");
                std::process::exit(3);
            }
        }
        println!("NO FAILURE");
        std::process::exit(4);
    })
}

/// sled cannot go on after an IO error of its own: the node stops with
/// [`FAIL_STOP_EXIT_CODE`] and says why, rather than living on as a zombie member.
#[test]
fn sled_running_out_of_space_stops_the_process_with_a_clear_message() {
    if let Some(dir) = std::env::var_os(FAIL_STOP_CHILD_ENV) {
        fail_stop_child(Path::new(&dir));
    }
    let Some(fs) = Tmpfs::mount(24) else { return };
    let data = fs.path.join("data");
    let mut proc = Command::new(std::env::current_exe().unwrap())
        .args(["sled_running_out_of_space_stops_the_process_with_a_clear_message", "--exact", "--nocapture", "--test-threads", "1"])
        .env(FAIL_STOP_CHILD_ENV, &data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = proc.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = proc.kill();
            let _ = proc.wait();
            panic!("the child did not stop within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (mut out, mut err) = (String::new(), String::new());
    proc.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    proc.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(FAIL_STOP_EXIT_CODE), "{status:?}\nstdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains(&format!("storage failed in data dir {}", data.display())) && err.contains("free space"),
        "stderr:\n{err}"
    );
}

/// Reads a gauge from a node's `/metrics`.
async fn gauge(c: &TestCluster, i: usize, name: &str) -> Option<i64> {
    let text = c.http.get(c.nodes[i].url("/metrics")).send().await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

/// PUT a trigger through nodes `via` (in turn) until it is acknowledged, within
/// `secs`. Answers other than 200/201 (a 503 while a leader is replaced) are
/// retried: trigger puts are idempotent.
async fn put_acked(c: &TestCluster, via: &[usize], name: &str, secs: u64) {
    let mut n = 0;
    wait_for(&format!("write {name} acknowledged"), secs, || {
        n += 1;
        let i = via[n % via.len()];
        async move {
            let (s, _) = c.put_trigger(i, name, "push", None).await;
            (s == 200 || s == 201).then_some(())
        }
    })
    .await;
}

/// Three nodes; node 3's data dir is on a 160 MiB tmpfs. The disk runs low, then
/// full: node 3 raises its alarm (503 on `/ready` naming the data dir, gauge 1),
/// stores nothing more, while nodes 1 and 2 go on acknowledging writes. Once the
/// filler is deleted node 3 clears the alarm, catches up, and every write
/// acknowledged at any time is readable on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_on_a_full_disk_stops_acknowledging_says_so_and_comes_back() {
    let Some(fs) = Tmpfs::mount(160) else { return };
    let data3 = fs.path.join("node3");
    let mut c = TestCluster::start_with(3, 10_000, |cfg| {
        if cfg.spec.cluster.node_id == 3 {
            cfg.spec.cluster.data_dir = data3.clone();
        }
    })
    .await;
    c.wait_ready(30).await;
    let mut acked = Vec::new();
    for k in 0..10 {
        let name = format!("before-{k}");
        let (s, v) = c.put_trigger(k % 3, &name, "push", None).await;
        assert_eq!(s, 201, "{v}");
        acked.push(name);
    }
    assert_eq!(gauge(&c, 2, "aof_storage_alarm").await, Some(0));

    // The disk runs low: the alarm goes up before it is full.
    let policy = DiskPolicy::default();
    let mut filler = Filler::create(fs.path.join("filler"));
    filler.leave(policy.min_free_bytes / 2);
    let reason = wait_for("node 3 not ready because of its disk", 10, || async {
        let (s, v) = c.get_json(2, "/ready").await;
        let msg = v["message"].as_str().unwrap_or_default().to_string();
        (s == 503 && msg.contains("storage alarm")).then_some(msg)
    })
    .await;
    assert!(reason.contains(&data3.display().to_string()), "{reason}");
    assert_eq!(gauge(&c, 2, "aof_storage_alarm").await, Some(1));
    let (s, health) = c.get_json(2, "/health").await;
    assert_eq!(s, 200, "a full disk is not a dead node: {health}");
    assert!(health["storage_alarm"].as_str().is_some_and(|a| a.contains("disk space")), "{health}");

    // Then full: nothing more can be written there at all.
    filler.fill();

    // Nodes 1 and 2 are a quorum: writes through them are acknowledged (if node 3
    // led, after they elect a new leader).
    let mut during = Vec::new();
    for k in 0..20 {
        let name = format!("during-{k}");
        put_acked(&c, &[0, 1], &name, 30).await;
        during.push(name);
    }
    // Node 3 stored none of them: it acknowledged nothing while its disk was full.
    for name in &during {
        let (s, v) = c.get_json(2, &format!("/v1/triggers/{name}?consistency=stale")).await;
        assert_eq!(s, 404, "node 3 applied {name} while its disk was full: {v}");
    }
    let (s, status) = c.get_json(0, "/v1/cluster").await;
    assert_eq!(s, 200, "{status}");
    let commit = status["commit_index"].as_u64().unwrap();
    let m3 = status["members"].as_array().unwrap().iter().find(|m| m["id"] == 3).unwrap().clone();
    assert!(m3["matched_index"].as_u64().unwrap_or(0) < commit, "node 3 matched entries while full: {status}");
    assert_eq!(c.get_json(2, "/ready").await.0, 503);
    acked.extend(during);

    // Space is freed: node 3 clears the alarm by itself and catches up.
    filler.remove();
    wait_for("node 3 ready again", 60, || async { (c.get_json(2, "/ready").await.0 == 200).then_some(()) }).await;
    assert_eq!(gauge(&c, 2, "aof_storage_alarm").await, Some(0));
    let (_, health) = c.get_json(2, "/health").await;
    assert!(health["storage_alarm"].is_null(), "{health}");
    for name in &acked {
        let path = format!("/v1/triggers/{name}?consistency=stale");
        wait_for(&format!("node 3 has {name}"), 30, || async { (c.get_json(2, &path).await.0 == 200).then_some(()) }).await;
    }
    // A write after recovery is acknowledged through node 3 too.
    put_acked(&c, &[2], "after", 30).await;
    acked.push("after".into());

    // Every acknowledged write is readable (linearizably) on every node.
    for name in &acked {
        for i in 0..3 {
            let (s, v) = c.get_json(i, &format!("/v1/triggers/{name}")).await;
            assert_eq!(s, 200, "{name} on node {}: {v}", i + 1);
        }
    }
    for i in 0..3 {
        c.stop(i).await;
    }
}
