//! Three (and more) real nodes in one process on loopback sockets: election,
//! forwarding, linearizable reads, CAS, restart, join by snapshot, leave.

mod common;

use common::TestCluster;
use serde_json::Value;

fn follower_indices(c: &TestCluster, leader: u64) -> Vec<usize> {
    (0..c.nodes.len()).filter(|&i| c.nodes[i].id != leader && c.nodes[i].is_running()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_elect_and_serve_linearizable_reads_from_any_node() {
    let c = TestCluster::start(3, 10_000).await;
    let leader = c.wait_ready(30).await;
    let (_, status) = c.get_json(0, "/v1/cluster").await;
    assert_eq!(status["members"].as_array().unwrap().len(), 3, "{status}");
    assert!(status["members"].as_array().unwrap().iter().all(|m| m["role"] == "voter"));
    assert!(status["term"].as_u64().unwrap() >= 1);
    // Every node agrees on the leader (linearizable status comes from the leader).
    for i in 0..3 {
        assert_eq!(c.get_json(i, "/v1/cluster").await.1["leader_id"].as_u64(), Some(leader));
    }

    // A write on a follower is forwarded; the next linearizable read on the other
    // follower sees it at once.
    let f = follower_indices(&c, leader);
    for k in 0..20 {
        let name = format!("t{k}");
        let (s, put) = c.put_trigger(f[0], &name, "push", None).await;
        assert_eq!(s, 201, "{put}");
        let (s, got) = c.get_json(f[1], &format!("/v1/triggers/{name}")).await;
        assert_eq!(s, 200, "read of {name} on node {} right after the write: {got}", c.nodes[f[1]].id);
        assert_eq!(got["revision"], put["revision"]);
        assert_eq!(got["trigger"]["spec"]["config"]["github_events"][0], "push");
    }
    let (_, list) = c.get_json(c.index_of(leader), "/v1/triggers").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 20);

    // Stale reads are served locally; a bad consistency value is a 400.
    let (s, _) = c.get_json(f[1], "/v1/triggers/t0?consistency=stale").await;
    assert_eq!(s, 200);
    let (s, e) = c.get_json(f[1], "/v1/triggers/t0?consistency=eventual").await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_consistency")));
    let (s, e) = c.get_json(f[1], "/v1/triggers/nope").await;
    assert_eq!((s, e["error"].as_str()), (404, Some("not_found")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compare_and_set_conflicts_get_412_and_change_nothing() {
    let c = TestCluster::start(3, 10_000).await;
    c.wait_ready(30).await;
    let (s, a) = c.put_trigger(1, "pr", "pull_request", None).await;
    assert_eq!(s, 201);
    let rev = a["revision"].as_u64().unwrap();
    // Same document again: unchanged, same revision.
    let (s, same) = c.put_trigger(2, "pr", "pull_request", None).await;
    assert_eq!((s, same["result"].as_str(), same["revision"].as_u64()), (200, Some("unchanged"), Some(rev)));
    // CAS on the current revision wins, a second CAS on the same revision loses.
    let (s, b) = c.put_trigger(0, "pr", "push", Some(rev)).await;
    assert_eq!((s, b["result"].as_str()), (200, Some("configured")));
    let new_rev = b["revision"].as_u64().unwrap();
    assert!(new_rev > rev);
    let (s, e) = c.put_trigger(2, "pr", "issues", Some(rev)).await;
    assert_eq!(s, 412, "{e}");
    assert_eq!(e["error"], "revision_mismatch");
    assert_eq!(e["current_revision"].as_u64(), Some(new_rev));
    let (_, got) = c.get_json(1, "/v1/triggers/pr").await;
    assert_eq!(got["trigger"]["spec"]["config"]["github_events"][0], "push", "the losing CAS changed nothing");
    // Create-only on an existing name fails; bad If-Match is a 400.
    assert_eq!(c.put_trigger(0, "pr", "push", Some(0)).await.0, 412);
    let r = c.http.put(c.nodes[0].url("/v1/triggers/pr")).header("content-type", "application/yaml").header("if-match", "abc").body("{}").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // Invalid documents are refused and store nothing.
    let r = c.http.put(c.nodes[1].url("/v1/triggers/bad")).header("content-type", "application/yaml").body("kind: Agent\n").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_trigger");
    assert_eq!(c.get_json(0, "/v1/triggers/bad").await.0, 404);
    // Delete with a stale revision → 412; with the right one → gone.
    let r = c.http.delete(c.nodes[2].url("/v1/triggers/pr")).header("if-match", rev.to_string()).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 412);
    let r = c.http.delete(c.nodes[2].url("/v1/triggers/pr")).header("if-match", new_rev.to_string()).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(c.get_json(0, "/v1/triggers/pr").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_loss_elects_a_new_leader_and_restart_keeps_data() {
    let mut c = TestCluster::start(3, 10_000).await;
    let leader = c.wait_ready(30).await;
    let (_, put) = c.put_trigger(0, "keep", "push", None).await;
    let rev = put["revision"].as_u64().unwrap();

    let li = c.index_of(leader);
    c.stop(li).await;
    let f = follower_indices(&c, leader);
    // A new leader is elected among the two survivors and writes continue.
    c.eventually("a new leader", 20, || async {
        let (s, v) = c.get_json(f[0], "/v1/cluster").await;
        s == 200 && v["leader_id"].as_u64().is_some_and(|l| l != leader)
    })
    .await;
    let (s, _) = c.put_trigger(f[1], "after-failover", "issues", None).await;
    assert_eq!(s, 201);

    // The old leader restarts with its data: same identity, same revisions, and it
    // catches up on what it missed.
    c.restart(li).await;
    c.wait_ready(30).await;
    let (s, got) = c.get_json(li, "/v1/triggers/keep").await;
    assert_eq!((s, got["revision"].as_u64()), (200, Some(rev)));
    assert_eq!(c.get_json(li, "/v1/triggers/after-failover?consistency=stale").await.0, 200);

    // A full restart of every node keeps everything.
    for i in 0..3 {
        c.stop(i).await;
    }
    for i in 0..3 {
        c.restart(i).await;
    }
    c.wait_ready(30).await;
    let (s, got) = c.get_json(2, "/v1/triggers/keep").await;
    assert_eq!((s, got["revision"].as_u64()), (200, Some(rev)));
    let (_, status) = c.get_json(0, "/v1/cluster").await;
    assert_eq!(status["members"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joined_node_catches_up_by_snapshot_then_leaves() {
    const SNAPSHOT_EVERY: u64 = 50;
    let mut c = TestCluster::start(3, SNAPSHOT_EVERY).await;
    let leader = c.wait_ready(30).await;
    // More writes than snapshot_every, so the log behind the snapshot is purged.
    for k in 0..(SNAPSHOT_EVERY * 3) {
        let (s, _) = c.put_trigger((k % 3) as usize, &format!("w{k}"), "push", None).await;
        assert_eq!(s, 201);
    }
    let li = c.index_of(leader);
    // The leader has snapshotted and purged its log: a new member can only catch up
    // by snapshot install.
    c.eventually("leader purged its log", 10, || async {
        c.get_json(li, "/v1/cluster?consistency=stale").await.1["purged_index"].as_u64().unwrap_or(0) >= SNAPSHOT_EVERY
    })
    .await;
    let n4 = c.add_unjoined_node(SNAPSHOT_EVERY).await;
    // Not a member: it is up, not ready, and belongs to no cluster (it has no
    // initial_members, so nothing makes it form one; joining below shows it ends up
    // in this cluster, with this cluster's leader).
    c.eventually("node 4 answers", 10, || async { c.get_json(n4, "/health").await.0 == 200 }).await;
    let (s, v) = c.get_json(n4, "/ready").await;
    assert_eq!(s, 503, "{v}");
    let (s, v) = c.get_json(n4, "/v1/cluster?consistency=stale").await;
    assert_eq!(s, 200);
    assert!(v["members"].as_array().is_none_or(|m| m.is_empty()) && v["leader_id"].is_null(), "an unjoined node is in a cluster: {v}");

    // Join via a follower (forwarded to the leader).
    let f = follower_indices(&c, leader)[0];
    let body = c.learner_body(n4);
    let r = c.http.post(c.nodes[f].url("/v1/cluster/learners")).json(&body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
    c.eventually("node 4 catches up", 30, || async {
        let (_, v) = c.get_json(li, "/v1/cluster").await;
        let commit = v["commit_index"].as_u64().unwrap_or(0);
        v["members"].as_array().unwrap().iter().any(|m| m["id"] == 4 && m["matched_index"].as_u64().unwrap_or(0) >= commit)
    })
    .await;
    let r = c.http.post(c.nodes[f].url("/v1/cluster/voters/4")).header("content-type", "application/json").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (_, v) = c.get_json(n4, "/v1/cluster").await;
    let m4 = v["members"].as_array().unwrap().iter().find(|m| m["id"] == 4).unwrap().clone();
    assert_eq!(m4["role"], "voter");
    // It has the state, and it got it by snapshot.
    let (_, own) = c.get_json(n4, "/v1/cluster?consistency=stale").await;
    assert!(own["snapshot_index"].as_u64().unwrap_or(0) >= SNAPSHOT_EVERY, "{own}");
    let (s, got) = c.get_json(n4, "/v1/triggers/w0?consistency=stale").await;
    assert_eq!(s, 200, "{got}");
    let (_, list) = c.get_json(n4, "/v1/triggers?consistency=stale").await;
    assert_eq!(list["items"].as_array().unwrap().len() as u64, SNAPSHOT_EVERY * 3);
    c.eventually("node 4 ready", 20, || async { c.get_json(n4, "/ready").await.0 == 200 }).await;

    // Leave: remove node 4 again (sent to node 4 itself), back to 3 members.
    let r = c.http.delete(c.nodes[n4].url("/v1/cluster/members/4")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
    let (_, v) = c.get_json(li, "/v1/cluster").await;
    assert_eq!(v["members"].as_array().unwrap().len(), 3, "{v}");
    // Removing a non-member is a 404.
    let r = c.http.delete(c.nodes[li].url("/v1/cluster/members/9")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // Removing the leader works too; the remaining two elect a new leader.
    let r = c.http.delete(c.nodes[f].url(&format!("/v1/cluster/members/{leader}"))).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
    c.eventually("2 members and a new leader", 20, || async {
        let (s, v) = c.get_json(f, "/v1/cluster").await;
        s == 200 && v["members"].as_array().unwrap().len() == 2 && v["leader_id"].as_u64().is_some_and(|l| l != leader)
    })
    .await;
}
