//! The shipped configurations in `cluster-configs/` load, validate and agree.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use aof_node::config::{self, DaemonConfig, Role};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn local_dir() -> PathBuf {
    repo_root().join("cluster-configs/local")
}

/// Every `cluster-configs/local/node*.yaml`, by file name, loaded as `aofctl serve`
/// run from the repository root would load it.
fn shipped_nodes() -> BTreeMap<String, DaemonConfig> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(local_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("node") && name.ends_with(".yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let origin = format!("cluster-configs/local/{name}");
            let cfg = config::parse_str_in(&text, &origin, None, &repo_root()).unwrap_or_else(|e| panic!("{e}"));
            out.insert(name, cfg);
        }
    }
    out
}

#[test]
fn every_node_config_loads_with_load() {
    let mut n = 0;
    for entry in std::fs::read_dir(local_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("node") && name.ends_with(".yaml") {
            let cfg = config::load(&path, None).unwrap_or_else(|e| panic!("{e}"));
            assert!(cfg.spec.cluster.data_dir.is_absolute(), "{name}");
            cfg.validate(&name).unwrap();
            n += 1;
        }
    }
    assert_eq!(n, 5, "expected node1.yaml .. node5.yaml");
}

#[test]
fn node_configs_have_expected_identity_and_no_notices() {
    let nodes = shipped_nodes();
    let names: Vec<&str> = nodes.keys().map(String::as_str).collect();
    assert_eq!(names, ["node1.yaml", "node2.yaml", "node3.yaml", "node4.yaml", "node5.yaml"]);
    for (i, (name, cfg)) in nodes.iter().enumerate() {
        let id = i as u64 + 1;
        let c = &cfg.spec.cluster;
        assert_eq!(c.node_id, id, "{name}");
        assert_eq!(cfg.http_addr(), format!("127.0.0.1:{}", 3000 + id), "{name}");
        assert_eq!(c.grpc_addr, format!("127.0.0.1:{}", 4000 + id), "{name}");
        assert_eq!(c.api_addr, format!("127.0.0.1:{}", 5000 + id), "{name}");
        assert_eq!(c.peer_addr, format!("127.0.0.1:{}", 6000 + id), "{name}");
        assert_eq!(cfg.self_member(), cfg.bind_addrs(), "{name}: loopback binds are advertised as they are");
        let tls = c.peer_tls.as_ref().unwrap_or_else(|| panic!("{name}: peer_tls"));
        assert_eq!(tls.ca_file, repo_root().join("data/certs/ca.crt"), "{name}");
        assert_eq!(tls.cert_file, repo_root().join(format!("data/certs/node{id}.crt")), "{name}");
        assert_eq!(tls.key_file, repo_root().join(format!("data/certs/node{id}.key")), "{name}");
        let a = &cfg.spec.auth;
        assert!(!a.insecure && !a.metrics_public, "{name}");
        let tokens: Vec<(Role, &str, bool)> =
            a.tokens.iter().map(|t| (t.role, t.env.as_deref().unwrap_or("-"), t.optional)).collect();
        assert_eq!(
            tokens,
            [(Role::Admin, "AOF_ADMIN_TOKEN", false), (Role::Read, "AOF_READ_TOKEN", true), (Role::Worker, "AOF_WORKER_TOKEN", false)],
            "{name}"
        );
        assert_eq!(c.data_dir, repo_root().join(format!("data/node{id}")), "{name}");
        assert_eq!(cfg.spec.triggers.directory.as_deref(), Some(local_dir().join("triggers").as_path()), "{name}");
        let g = cfg.github().unwrap_or_else(|| panic!("{name}: github platform enabled"));
        assert_eq!(g.webhook_secret_env.as_deref(), Some("GITHUB_WEBHOOK_SECRET"), "{name}");
        assert_eq!(g.token_env.as_deref(), Some("GITHUB_TOKEN"), "{name}");
        assert!(cfg.notices().is_empty(), "{name}: {:?}", cfg.notices());
    }
}

#[test]
fn bootstrap_nodes_agree_on_members_and_spares_have_none() {
    let nodes = shipped_nodes();
    let lists: Vec<_> = ["node1.yaml", "node2.yaml", "node3.yaml"]
        .iter()
        .map(|n| nodes[*n].spec.cluster.initial_members.clone())
        .collect();
    assert_eq!(lists[0].len(), 3);
    assert_eq!(lists[0], lists[1], "node1 and node2 disagree on initial_members");
    assert_eq!(lists[0], lists[2], "node1 and node3 disagree on initial_members");
    // Each member entry is exactly what that node's own file says about itself.
    for m in &lists[0] {
        let own = nodes[&format!("node{}.yaml", m.id)].self_member();
        assert_eq!(m.peer_addr, own.peer_addr, "member {}", m.id);
        assert_eq!(m.grpc_addr, own.grpc_addr, "member {}", m.id);
        assert_eq!(m.api_addr, own.api_addr, "member {}", m.id);
        assert_eq!(m.http_addr, own.http_addr, "member {}", m.id);
    }
    for spare in ["node4.yaml", "node5.yaml"] {
        assert!(nodes[spare].spec.cluster.initial_members.is_empty(), "{spare} must wait to be added");
    }
    // All five nodes can run side by side.
    let mut addrs = BTreeSet::new();
    let mut dirs = BTreeSet::new();
    for (name, cfg) in &nodes {
        let b = cfg.bind_addrs();
        for a in [b.http_addr, b.api_addr, b.grpc_addr, b.peer_addr] {
            assert!(addrs.insert(a.clone()), "{name}: address {a} reused");
        }
        assert!(dirs.insert(cfg.spec.cluster.data_dir.clone()), "{name}: data_dir reused");
    }
}

#[test]
fn data_dir_override_applies_to_shipped_config() {
    let tmp = std::env::temp_dir().join("aof-node-config-files-override");
    let cfg = config::load(&local_dir().join("node2.yaml"), Some(&tmp)).unwrap();
    assert_eq!(cfg.spec.cluster.data_dir, tmp);
}

#[test]
fn sample_triggers_are_aof_github_triggers() {
    let dir = local_dir().join("triggers");
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(doc["apiVersion"].as_str(), Some("aof.dev/v1"), "{file}");
        assert_eq!(doc["kind"].as_str(), Some("Trigger"), "{file}");
        assert_eq!(doc["spec"]["type"].as_str(), Some("GitHub"), "{file}");
        let name = doc["metadata"]["name"].as_str().unwrap_or_else(|| panic!("{file}: metadata.name")).to_string();
        assert_eq!(format!("{name}.yaml"), file, "file named after its trigger");
        let commands = doc["spec"]["commands"].as_mapping().unwrap_or_else(|| panic!("{file}: spec.commands"));
        for (_, target) in commands {
            let routes = ["agent", "fleet", "flow"].iter().filter(|k| target.get(**k).is_some()).count();
            assert_eq!(routes, 1, "{file}: each command routes to exactly one agent, fleet or flow");
        }
        assert!(names.insert(name), "{file}: duplicate trigger name");
    }
    assert!(names.len() >= 2, "expected sample triggers in {}", dir.display());
}
