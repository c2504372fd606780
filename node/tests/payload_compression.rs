//! `spec.gateway.payload_compression: zstd` end to end on a three-node cluster: each
//! node packs the deliveries it accepts with zstd, every replica checks and stores
//! them, and a worker gets every body back byte for byte, whichever node took it.

mod common;

use std::time::Duration;

use aof_client::Worker;
use aof_core::sm::payload::Compression;
use aof_node::config::{DaemonConfig, GithubConfig};
use common::{put_trigger, TestCluster};

const SECRET: &str = "compression-secret";

fn body(i: usize) -> Vec<u8> {
    // JSON that compresses (well over the 256 bytes below which payloads stay plain).
    let commits: Vec<String> = (0..40).map(|k| format!(r#"{{"id":"{i}-{k}","message":"fix the build, take {k}"}}"#)).collect();
    format!(r#"{{"action":"opened","repository":{{"full_name":"acme/api","owner":{{"login":"acme"}}}},"commits":[{}]}}"#, commits.join(","))
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zstd_payloads_reach_workers_byte_for_byte() {
    let c = TestCluster::start_with(3, 10_000, |cfg: &mut DaemonConfig| {
        let gh: GithubConfig = serde_yaml::from_str(&format!("enabled: true\nwebhook_secret: {SECRET}\n")).unwrap();
        cfg.spec.platforms.github = Some(gh);
        cfg.spec.gateway.payload_compression = Compression::Zstd;
    })
    .await;
    let leader = c.wait_ready(30).await;
    put_trigger(&c, "all", "apiVersion: aof.dev/v1\nkind: Trigger\nspec:\n  type: GitHub\n  config: {}\n  default_agent: ext\n").await;
    // One delivery through each node: the leader packs its own, followers theirs
    // before forwarding.
    for i in 0..3 {
        let r = common::signed_webhook(&c.http, &c.nodes[i].url("/webhook/github"), "push", &format!("z-{i}"), &body(i), SECRET).await;
        assert_eq!(r.status().as_u16(), 202, "node {i}: {}", r.text().await.unwrap_or_default());
    }
    let l = c.index_of(leader);
    let mut worker = Worker::builder([format!("http://{}", c.nodes[l].grpc)])
        .worker_id("compression")
        .targets(["ext"])
        .max_in_flight(3)
        .start()
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let lease = tokio::time::timeout(Duration::from_secs(10), worker.next()).await.expect("a lease").expect("a lease");
        let i: usize = lease.delivery_id().strip_prefix("z-").unwrap().parse().unwrap();
        assert_eq!(lease.payload(), body(i).as_slice(), "delivery z-{i} comes back as it was sent");
        seen.push(i);
        lease.complete("done").await.unwrap();
    }
    seen.sort();
    assert_eq!(seen, vec![0, 1, 2]);
}
