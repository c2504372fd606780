//! Automatic membership with processes configured by `AOF__*` variables alone and
//! addressed by `localhost` names (what the compose and StatefulSet deployments do
//! with container and pod names): started out of order they form one cluster and
//! never a one-node one; a fourth node joins and becomes a voter with no command; a
//! SIGTERM with `leave_on_shutdown` removes it; a SIGKILL removes nobody. With
//! `max_voters: 3` a fourth node joins as a learner and stays one.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, wait_until, Proc, BIN};
use serde_json::Value;

#[derive(Clone, Copy)]
struct Ports {
    http: u16,
    grpc: u16,
    api: u16,
    peer: u16,
}

fn env_node(dir: &Path, id: u64, p: Ports, seeds: &str, leave_on_shutdown: bool, max_voters: u32) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve").env_clear().env("RUST_LOG", "info,openraft=warn");
    if leave_on_shutdown {
        cmd.arg("--leave-on-shutdown");
    }
    let vars = [
        ("AOF__SERVER__HOST", "127.0.0.1".to_string()),
        ("AOF__SERVER__PORT", p.http.to_string()),
        ("AOF__CLUSTER__NODE_ID", id.to_string()),
        ("AOF__CLUSTER__GRPC_ADDR", format!("localhost:{}", p.grpc)),
        ("AOF__CLUSTER__API_ADDR", format!("localhost:{}", p.api)),
        ("AOF__CLUSTER__PEER_ADDR", format!("localhost:{}", p.peer)),
        ("AOF__CLUSTER__ADVERTISE__HTTP_ADDR", format!("localhost:{}", p.http)),
        ("AOF__CLUSTER__DATA_DIR", dir.join(format!("node{id}")).display().to_string()),
        ("AOF__CLUSTER__DISCOVERY__SEEDS", seeds.to_string()),
        ("AOF__CLUSTER__DISCOVERY__MAX_VOTERS", max_voters.to_string()),
        ("AOF__CLUSTER__RAFT__HEARTBEAT_INTERVAL_MS", "100".into()),
        ("AOF__CLUSTER__RAFT__ELECTION_TIMEOUT_MIN_MS", "500".into()),
        ("AOF__CLUSTER__RAFT__ELECTION_TIMEOUT_MAX_MS", "1000".into()),
        ("AOF__CLUSTER__STORAGE__CACHE_CAPACITY_MB", "8".into()),
        ("AOF__AUTH__INSECURE", "true".into()),
    ];
    for (k, v) in vars {
        cmd.env(k, v);
    }
    Proc::spawn(format!("node {id}"), dir.join(format!("node{id}.log")), &mut cmd)
}

async fn status(p: Ports) -> Option<Value> {
    let r = reqwest::get(format!("http://127.0.0.1:{}/v1/cluster", p.api)).await.ok()?;
    r.status().is_success().then_some(())?;
    r.json().await.ok()
}

async fn ready(p: Ports) -> bool {
    reqwest::get(format!("http://127.0.0.1:{}/ready", p.http)).await.is_ok_and(|r| r.status().is_success())
}

fn members(s: &Value, role: &str) -> BTreeSet<u64> {
    s["members"].as_array().into_iter().flatten().filter(|m| m["role"] == role).filter_map(|m| m["id"].as_u64()).collect()
}

fn four_ports_and_seeds() -> (Vec<Ports>, String) {
    let ports: Vec<Ports> =
        (0..4).map(|_| Ports { http: free_port(), grpc: free_port(), api: free_port(), peer: free_port() }).collect();
    // Every node knows the first three by name, as a headless Service would list them.
    let seeds = format!(
        "[{}]",
        ports[..3].iter().map(|p| format!("\"localhost:{}\"", p.peer)).collect::<Vec<_>>().join(",")
    );
    (ports, seeds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_only_nodes_by_localhost_names_form_one_cluster_and_scale() {
    let dir = tempfile::tempdir().unwrap();
    let (ports, seeds) = four_ports_and_seeds();
    let mut procs: Vec<Option<Proc>> = (0..4).map(|_| None).collect();
    let dump = |procs: &[Option<Proc>]| procs.iter().flatten().for_each(Proc::dump);

    // Node 3 first, alone: it must not form a one-node cluster (polled for 3 s, a few
    // election timeouts).
    procs[2] = Some(env_node(dir.path(), 3, ports[2], &seeds, false, 5));
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert!(!ready(ports[2]).await, "node 3 alone became ready: a one-node cluster");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    procs[0] = Some(env_node(dir.path(), 1, ports[0], &seeds, false, 5));
    tokio::time::sleep(Duration::from_millis(700)).await;
    procs[1] = Some(env_node(dir.path(), 2, ports[1], &seeds, false, 5));
    wait_until("nodes 1-3 ready", 60, || dump(&procs), || async {
        ready(ports[0]).await && ready(ports[1]).await && ready(ports[2]).await
    })
    .await;
    let mut leaders = BTreeSet::new();
    for p in &ports[..3] {
        let s = status(*p).await.expect("status");
        assert_eq!(members(&s, "voter"), BTreeSet::from([1, 2, 3]), "{s}");
        leaders.insert(s["leader_id"].as_u64().expect("a leader"));
    }
    assert_eq!(leaders.len(), 1, "one cluster, one leader: {leaders:?}");

    // A fourth node, same seeds, no command: it joins and is promoted (max_voters 5).
    procs[3] = Some(env_node(dir.path(), 4, ports[3], &seeds, true, 5));
    wait_until("node 4 a voter", 60, || dump(&procs), || async {
        status(ports[0]).await.is_some_and(|s| members(&s, "voter").contains(&4))
    })
    .await;
    let s4 = status(ports[3]).await.expect("node 4 answers");
    assert!(s4["members"].as_array().unwrap().iter().any(|m| m["id"] == 4 && m["api_addr"] == format!("localhost:{}", ports[3].api)), "{s4}");

    // SIGTERM with `serve --leave-on-shutdown`: it leaves, then exits cleanly.
    let p4 = procs[3].as_mut().unwrap();
    p4.sigterm();
    assert!(p4.wait_exit(30).await.is_some_and(|s| s.success()), "node 4 stops cleanly");
    wait_until("node 4 removed", 30, || dump(&procs), || async {
        status(ports[0]).await.is_some_and(|s| !s["members"].as_array().unwrap().iter().any(|m| m["id"] == 4))
    })
    .await;

    // SIGKILL node 3 (a crash, no preStop): it stays a member while the others go on.
    procs[2].as_mut().unwrap().kill9();
    // (Node 3 may have been the leader: the survivors elect another first.)
    let put_url = format!("http://127.0.0.1:{}/v1/triggers/after-crash", ports[0].api);
    let doc = "apiVersion: aof.dev/v1\nkind: Trigger\nmetadata:\n  name: after-crash\nspec:\n  type: GitHub\n  config:\n    github_events: [push]\n";
    wait_until("the two survivors commit a write", 30, || dump(&procs), || async {
        let r = reqwest::Client::new().put(&put_url).header("content-type", "application/yaml").body(doc).send().await;
        r.is_ok_and(|r| r.status().is_success())
    })
    .await;
    let s = status(ports[1]).await.expect("status");
    assert_eq!(members(&s, "voter"), BTreeSet::from([1, 2, 3]), "a killed node is not removed: {s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_voters_a_new_node_stays_a_learner() {
    let dir = tempfile::tempdir().unwrap();
    let (ports, seeds) = four_ports_and_seeds();
    let mut procs: Vec<Option<Proc>> = (0..4).map(|_| None).collect();
    let dump = |procs: &[Option<Proc>]| procs.iter().flatten().for_each(Proc::dump);
    for i in 0..3 {
        procs[i] = Some(env_node(dir.path(), i as u64 + 1, ports[i], &seeds, false, 3));
    }
    wait_until("nodes 1-3 ready", 60, || dump(&procs), || async {
        ready(ports[0]).await && ready(ports[1]).await && ready(ports[2]).await
    })
    .await;
    procs[3] = Some(env_node(dir.path(), 4, ports[3], &seeds, false, 3));
    wait_until("node 4 a learner", 60, || dump(&procs), || async {
        status(ports[0]).await.is_some_and(|s| members(&s, "learner").contains(&4))
    })
    .await;
    // Its join loop keeps running; for several rounds it must not be promoted.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        let s = status(ports[0]).await.expect("status");
        assert_eq!(members(&s, "voter"), BTreeSet::from([1, 2, 3]), "max_voters 3 exceeded: {s}");
        assert!(members(&s, "learner").contains(&4), "node 4 dropped out of membership: {s}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(ready(ports[3]).await, "a learner serves intake (gateway + worker host)");
}
