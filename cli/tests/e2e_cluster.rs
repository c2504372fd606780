//! End to end with real processes: three `aofctl serve` nodes on loopback, SIGKILL
//! of the leader, restart with data, and `aofctl cluster join/leave/status`,
//! `aofctl apply/get/delete` as a user runs them.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use aof_client::{Client, Consistency};

mod common;
use common::{free_port, write_config, BIN};

struct Proc {
    id: u64,
    http: u16,
    grpc: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info,openraft=warn")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn aofctl serve");
        self.child = Some(child);
    }
    /// SIGKILL: no graceful shutdown, no flush beyond what the node already did.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn aofctl(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run aofctl")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

async fn wait_until<F, Fut>(what: &str, secs: u64, procs: &[Proc], f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let dump = || {
        for p in procs {
            eprintln!("---- log of node {} ----\n{}", p.id, std::fs::read_to_string(&p.log).unwrap_or_default());
        }
    };
    common::wait_until(what, secs, dump, f).await
}

async fn all_ready(procs: &[Proc]) -> bool {
    common::all_ready(procs.iter().filter(|p| p.child.is_some()).map(Proc::endpoint)).await
}

fn trigger_yaml(name: &str) -> String {
    format!("apiVersion: aof.dev/v1\nkind: Trigger\nmetadata:\n  name: {name}\nspec:\n  type: GitHub\n  config:\n    github_events: [push]\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_survive_sigkill_of_the_leader_and_cli_manages_membership() {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<(u64, u16, u16)> = (1..=4).map(|id| (id, free_port(), free_port())).collect();
    let initial = &ports[..3];
    let mut procs: Vec<Proc> = ports
        .iter()
        .map(|&(id, http, grpc)| {
            let members = if id <= 3 { initial } else { &[][..] };
            Proc { id, http, grpc, config: write_config(dir.path(), "e2e", id, http, grpc, members, ""), log: dir.path().join(format!("node{id}.log")), child: None }
        })
        .collect();
    // Start 1-3 in reverse order: formation must not depend on who comes first.
    for i in (0..3).rev() {
        procs[i].start();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_until("three nodes ready", 60, &procs, || all_ready(&procs[..3])).await;
    let all: Vec<String> = procs[..3].iter().map(Proc::endpoint).collect();
    let client = Client::new(all.clone());

    // `aofctl cluster status` prints a table naming every member.
    let o = aofctl(&["cluster", "status", "--endpoint", &all[1]]);
    assert!(o.status.success(), "{}", text(&o));
    let table = text(&o);
    for p in &procs[..3] {
        assert!(table.contains(&format!("127.0.0.1:{}", p.grpc)), "status table lacks node {}: {table}", p.id);
    }

    // `aofctl apply -f` a directory of triggers via a follower.
    let tdir = dir.path().join("triggers");
    std::fs::create_dir(&tdir).unwrap();
    std::fs::write(tdir.join("a.yaml"), format!("{}---\n{}", trigger_yaml("alpha"), trigger_yaml("beta"))).unwrap();
    let o = aofctl(&["apply", "-f", tdir.to_str().unwrap(), "--endpoint", &all[2]]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("trigger/alpha created") && text(&o).contains("trigger/beta created"), "{}", text(&o));
    let o = aofctl(&["apply", "-f", tdir.to_str().unwrap(), "--endpoint", &all[0]]);
    assert!(text(&o).contains("trigger/alpha unchanged"), "{}", text(&o));
    let alpha_rev = client.get_trigger("alpha", Consistency::Linearizable).await.unwrap().revision;

    // SIGKILL the leader: a new leader is elected and writes continue.
    let status = client.cluster_status(Consistency::Linearizable).await.unwrap();
    let leader = status.leader_id.expect("a leader");
    let li = procs.iter().position(|p| p.id == leader).unwrap();
    procs[li].kill9();
    let survivors: Vec<String> = procs[..3].iter().filter(|p| p.child.is_some()).map(Proc::endpoint).collect();
    let sclient = Client::new(survivors.clone());
    wait_until("a new leader after SIGKILL", 30, &procs, || async {
        matches!(sclient.cluster_status(Consistency::Linearizable).await, Ok(s) if s.leader_id.is_some_and(|l| l != leader))
    })
    .await;
    let o = aofctl(&["apply", "-f", tdir.to_str().unwrap(), "--endpoint", &survivors[0]]);
    assert!(o.status.success(), "write after failover: {}", text(&o));
    let o = aofctl(&["delete", "trigger", "beta", "--endpoint", &survivors[1]]);
    assert!(o.status.success(), "{}", text(&o));

    // The killed node restarts from its data: same revisions, and it catches up.
    procs[li].start();
    wait_until("restarted node ready", 60, &procs, || all_ready(&procs[..3])).await;
    let only_restarted = Client::new(vec![procs[li].endpoint()]);
    assert_eq!(only_restarted.get_trigger("alpha", Consistency::Linearizable).await.unwrap().revision, alpha_rev);
    let err = only_restarted.get_trigger("beta", Consistency::Linearizable).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");

    // Node 4 starts with no initial members: it waits; `aofctl cluster join` adds it.
    procs[3].start();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (n4, g4, h4) = (procs[3].id.to_string(), format!("127.0.0.1:{}", procs[3].grpc), format!("127.0.0.1:{}", procs[3].http));
    let o = aofctl(&["cluster", "join", "--endpoint", &all.join(","), "--node-id", &n4, "--grpc-addr", &g4, "--http-addr", &h4]);
    assert!(o.status.success(), "join: {}", text(&o));
    let s = client.cluster_status(Consistency::Linearizable).await.unwrap();
    assert_eq!(s.members.len(), 4);
    let m4 = s.member(4).expect("node 4 is a member");
    assert_eq!(serde_json::to_value(&m4.role).unwrap(), "voter");
    wait_until("node 4 ready", 30, &procs, || all_ready(&procs)).await;
    let c4 = Client::new(vec![procs[3].endpoint()]);
    assert_eq!(c4.get_trigger("alpha", Consistency::Linearizable).await.unwrap().revision, alpha_rev);

    // `aofctl cluster leave` removes it again.
    let o = aofctl(&["cluster", "leave", "--endpoint", &all.join(","), "--node-id", "4"]);
    assert!(o.status.success(), "leave: {}", text(&o));
    let o = aofctl(&["cluster", "status", "-o", "json", "--endpoint", &all.join(",")]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    assert_eq!(v["members"].as_array().unwrap().len(), 3, "{v}");

    // `aofctl doctor`: healthy cluster → exit 0 with an OK quorum line.
    let o = aofctl(&["doctor", "--endpoint", &all.join(",")]);
    assert!(o.status.success(), "doctor on a healthy cluster: {}", text(&o));
    assert!(text(&o).contains("OK   quorum"), "{}", text(&o));
    // A majority down → FAIL and a non-zero exit.
    let down: Vec<usize> = (0..3).filter(|&i| i != li).take(2).collect();
    for &i in &down {
        procs[i].kill9();
    }
    let o = aofctl(&["doctor", "--endpoint", &all.join(","), "--request-timeout", "3s"]);
    assert!(!o.status.success(), "doctor with a majority down must fail: {}", text(&o));
    assert!(text(&o).contains("FAIL quorum"), "{}", text(&o));

    // A write against a dead endpoint list fails with a clear message naming it.
    let o = aofctl(&["get", "triggers", "--endpoint", "http://127.0.0.1:1"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("127.0.0.1:1"), "{}", text(&o));
}
