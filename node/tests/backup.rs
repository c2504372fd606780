//! Backup and restore (`GET /v1/snapshot`, `aof_node::backup::restore`): a snapshot
//! saved under webhook load and restored into a fresh three-node cluster holds every
//! delivery acknowledged before the save, the same records and trigger revisions;
//! the restored cluster refuses Raft traffic of the old one.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use aof_node::backup;
use aof_node::config::{DaemonConfig, GithubConfig};
use aof_proto::v1 as pb;
use common::{signed_webhook, TestCluster};

const SECRET: &str = "backup-test-secret";

fn with_secret(cfg: &mut DaemonConfig) {
    let gh: GithubConfig =
        serde_yaml::from_str(&format!("enabled: true\nwebhook_secret: \"{SECRET}\"\n")).unwrap();
    cfg.spec.platforms.github = Some(gh);
    cfg.spec.gateway.ack_timeout_ms = 4000;
}

async fn post(http: &reqwest::Client, url: &str, delivery: &str) -> u16 {
    let body = format!(
        r#"{{"ref":"refs/heads/main","after":"{delivery}","repository":{{"full_name":"acme/api"}}}}"#
    );
    signed_webhook(http, url, "push", delivery, body.as_bytes(), SECRET)
        .await
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_saved_under_load_restores_into_a_new_cluster() {
    let mut c = TestCluster::start_with(3, 40, with_secret).await;
    c.wait_ready(30).await;
    assert_eq!(c.put_trigger(0, "pushes", "push", None).await.0, 201);
    let (s, t) = c.put_trigger(0, "pushes", "push", None).await;
    assert_eq!(s, 200, "{t}");

    let mut acked = Vec::new();
    for k in 0..30 {
        let d = format!("before-{k}");
        if post(&c.http, &c.nodes[k % 3].url("/webhook/github"), &d).await == 202 {
            acked.push(d);
        }
    }
    assert_eq!(
        acked.len(),
        30,
        "every delivery of a healthy cluster is accepted"
    );

    // Load during the save: a writer keeps posting to all nodes.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (http, stop) = (c.http.clone(), stop.clone());
        let urls: Vec<String> = c.nodes.iter().map(|n| n.url("/webhook/github")).collect();
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) && n < 2_000 {
                post(&http, &urls[n as usize % 3], &format!("during-{n}")).await;
                n += 1;
            }
            n
        })
    };
    let resp = c
        .http
        .get(c.nodes[1].url("/v1/snapshot"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let sum = resp.headers()["x-aof-snapshot-sha256"]
        .to_str()
        .unwrap()
        .to_string();
    let file = resp.bytes().await.unwrap().to_vec();
    stop.store(true, Ordering::SeqCst);
    let sent_during = writer.await.unwrap();
    assert!(sent_during > 0, "the save ran under load");
    assert_eq!(backup::checksum(&file).unwrap(), sum);
    let (header, _) = backup::decode(&file).unwrap();
    assert_eq!(header.members.len(), 3);

    // What the old cluster says, to compare with the restored one.
    let mut records = BTreeMap::new();
    for d in &acked {
        let (s, rec) = c.get_json(0, &format!("/v1/deliveries/{d}")).await;
        assert_eq!(s, 200, "{rec}");
        records.insert(d.clone(), rec);
    }
    let (_, trigger_before) = c.get_json(0, "/v1/triggers/pushes").await;

    for i in 0..3 {
        c.stop(i).await;
    }

    // Refused: a data dir that holds state, a corrupt file.
    let members: BTreeMap<u64, aof_node::types::Member> = c.nodes[0]
        .cfg
        .spec
        .cluster
        .initial_membership()
        .into_iter()
        .collect();
    let id = backup::new_cluster_id(&file, &members);
    let dir0 = c.nodes[0].cfg.spec.cluster.data_dir.clone();
    let e = backup::restore(&file, &dir0, 1, &members, &id)
        .await
        .unwrap_err();
    assert!(matches!(e, backup::BackupError::NotEmpty { .. }), "{e}");
    let mut bad = file.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    let fresh = c.dir.path().join("fresh");
    let e = backup::restore(&bad, &fresh, 1, &members, &id)
        .await
        .unwrap_err();
    assert!(matches!(e, backup::BackupError::Checksum { .. }), "{e}");
    assert!(
        !fresh.join("db").exists(),
        "a refused restore writes nothing"
    );

    // Restore every member into an empty data dir, on the same addresses.
    for n in &c.nodes {
        let dir = n.cfg.spec.cluster.data_dir.clone();
        std::fs::rename(&dir, dir.with_extension("old")).unwrap();
        let r = backup::restore(&file, &dir, n.id, &members, &id)
            .await
            .unwrap();
        assert_eq!(r.cluster_id, id);
    }
    for i in 0..3 {
        c.restart(i).await;
    }
    c.wait_ready(30).await;

    for (d, before) in &records {
        let (s, after) = c.get_json(2, &format!("/v1/deliveries/{d}")).await;
        assert_eq!(
            s, 200,
            "acknowledged delivery {d} is missing after the restore: {after}"
        );
        assert_eq!(
            &after, before,
            "delivery {d} changed across save and restore"
        );
    }
    let (_, trigger_after) = c.get_json(1, "/v1/triggers/pushes").await;
    assert_eq!(
        trigger_after, trigger_before,
        "trigger revision and document are restored"
    );

    // The restored cluster takes new writes, and a replay gets the original answer.
    assert_eq!(
        post(&c.http, &c.nodes[0].url("/webhook/github"), "after-restore").await,
        202
    );
    assert_eq!(
        post(&c.http, &c.nodes[1].url("/webhook/github"), "before-0").await,
        200,
        "a restored delivery id is a replay"
    );

    // Raft traffic without the new cluster's id (the old cluster's nodes) is refused;
    // with it, the gate lets it through (the garbage payload is refused later).
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", c.nodes[0].peer))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raft = pb::raft_service_client::RaftServiceClient::new(ch);
    let e = raft
        .vote(pb::RaftPayload { data: vec![1] })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let mut req = tonic::Request::new(pb::RaftPayload { data: vec![1] });
    req.metadata_mut()
        .insert(aof_node::network::CLUSTER_ID_HEADER, id.parse().unwrap());
    let e = raft.vote(req).await.unwrap_err();
    assert_ne!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");

    // And a saved snapshot of the restored cluster names it.
    let again = c
        .http
        .get(c.nodes[2].url("/v1/snapshot"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        backup::decode(&again).unwrap().0.cluster_id.as_deref(),
        Some(id.as_str())
    );
}
