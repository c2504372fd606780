//! Automatic membership (`spec.cluster.discovery`) on real nodes with peer mutual
//! TLS: the first voters form one cluster whatever the start order, later nodes
//! join and are promoted up to `max_voters`, a node that leaves on shutdown is
//! removed, a stopped node without the flag stays a member.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::TestCluster;
use serde_json::Value;

async fn membership(c: &TestCluster, i: usize) -> Option<(Option<u64>, BTreeSet<u64>, BTreeSet<u64>)> {
    let (s, v) = c.get_json(i, "/v1/cluster?consistency=stale").await;
    if s != 200 {
        return None;
    }
    let members = v["members"].as_array()?;
    let role = |r: &str| members.iter().filter(|m| m["role"] == r).filter_map(|m| m["id"].as_u64()).collect::<BTreeSet<_>>();
    Some((v["leader_id"].as_u64(), role("voter"), role("learner")))
}

/// Wait until every running node reports the same leader and exactly these voters
/// and learners.
async fn wait_for(c: &TestCluster, voters: &[u64], learners: &[u64], secs: u64) {
    let want = (voters.iter().copied().collect::<BTreeSet<_>>(), learners.iter().copied().collect::<BTreeSet<_>>());
    let running: Vec<usize> = (0..c.nodes.len()).filter(|&i| c.nodes[i].is_running()).collect();
    c.eventually(&format!("voters {voters:?}, learners {learners:?} on every running node"), secs, || async {
        let mut leader = None;
        for &i in &running {
            match membership(c, i).await {
                Some((Some(l), v, ls)) if (v.clone(), ls.clone()) == want && leader.is_none_or(|x| x == l) => leader = Some(l),
                _ => return false,
            }
        }
        true
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_cluster_forms_whatever_the_start_order_and_later_nodes_join() {
    // Node 4 first, then the first voters last-to-first: nobody may form a cluster
    // before ids 1..=3 all answered, and only one cluster forms.
    let mut c = TestCluster::start_discovery(5, 4, &[3, 2, 1, 0], Duration::from_millis(300), |cfg| {
        if cfg.spec.cluster.node_id == 4 {
            cfg.spec.cluster.leave_on_shutdown = true;
        }
    })
    .await;
    // max_voters 4: 1..=3 form the cluster and 4 is promoted; 5, started later,
    // stays a learner.
    wait_for(&c, &[1, 2, 3, 4], &[], 60).await;
    c.restart(4).await;
    wait_for(&c, &[1, 2, 3, 4], &[5], 60).await;
    let (_, v) = c.get_json(0, "/v1/cluster").await;
    let leader = v["leader_id"].as_u64().unwrap();
    // Every node ended up in the same cluster: a write on one is read on all.
    let (s, _) = c.put_trigger(4, "t", "push", None).await;
    assert_eq!(s, 201);
    for i in 0..5 {
        let (s, t): (u16, Value) = c.get_json(i, "/v1/triggers/t").await;
        assert_eq!(s, 200, "node {} does not see the write: {t}", i + 1);
    }
    // Node 4 stops gracefully with leave_on_shutdown: it leaves, and the learner 5
    // is promoted into the free voter seat.
    c.stop(3).await;
    wait_for(&c, &[1, 2, 3, 5], &[], 60).await;
    // Node 5 stops without the flag (a crash or a plain restart): still a member.
    c.stop(4).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idx = if leader == 5 { 0 } else { c.index_of(leader).min(2) };
    c.eventually("the remaining voters see node 5 as a voter still", 30, || async {
        matches!(membership(&c, idx).await, Some((Some(_), v, _)) if v.contains(&5))
    })
    .await;
    // It comes back with its data and identity and is a voter again.
    c.restart(4).await;
    wait_for(&c, &[1, 2, 3, 5], &[], 60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_majority_of_first_voters_that_found_each_other_forms_nothing_without_the_third() {
    // Only nodes 1 and 2 start: the first voters are 1..=3 and node 3's addresses
    // are unknown, so no cluster may form yet (it would be a different membership
    // from the one node 3 would form later).
    let mut c = TestCluster::start_discovery(3, 5, &[0, 1], Duration::from_millis(100), |_| {}).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in 0..2 {
        let (s, v) = c.get_json(i, "/v1/cluster?consistency=stale").await;
        assert_eq!(s, 200);
        assert!(v["members"].as_array().is_none_or(|m| m.is_empty()), "node {} formed a cluster alone: {v}", i + 1);
    }
    c.restart(2).await;
    wait_for(&c, &[1, 2, 3], &[], 60).await;
}
