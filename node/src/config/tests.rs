use std::path::{Path, PathBuf};

use super::*;
use crate::types::Member;
use crate::sm::payload::Compression;

const CWD: &str = "/srv/aof";
/// The host name the tests' loads see.
const HOST: &str = "testhost.example";

/// A valid node-1 config of a 3-node loopback cluster.
pub(super) const NODE1: &str = r#"
apiVersion: aof.dev/v1
kind: DaemonConfig
metadata:
  name: node1
spec:
  server:
    host: 127.0.0.1
    port: 3001
  platforms:
    github:
      enabled: true
      token_env: GITHUB_TOKEN
      webhook_secret_env: GITHUB_WEBHOOK_SECRET
  auth:
    tokens:
      - { name: admin, role: admin, env: AOF_ADMIN_TOKEN }
  cluster:
    node_id: 1
    api_addr: 127.0.0.1:5001
    grpc_addr: 127.0.0.1:4001
    peer_addr: 127.0.0.1:6001
    peer_tls: { ca_file: ./certs/ca.crt, cert_file: "./certs/node{node_id}.crt", key_file: "./certs/node{node_id}.key" }
    data_dir: ./data/node1
    initial_members:
      - { id: 1, peer_addr: 127.0.0.1:6001, grpc_addr: 127.0.0.1:4001, api_addr: 127.0.0.1:5001, http_addr: 127.0.0.1:3001 }
      - { id: 2, peer_addr: 127.0.0.1:6002, grpc_addr: 127.0.0.1:4002, api_addr: 127.0.0.1:5002, http_addr: 127.0.0.1:3002 }
      - { id: 3, peer_addr: 127.0.0.1:6003, grpc_addr: 127.0.0.1:4003, api_addr: 127.0.0.1:5003, http_addr: 127.0.0.1:3003 }
"#;

pub(super) fn loader(yaml: &str) -> Loader {
    Loader::new().yaml("node1.yaml", yaml).cwd(CWD).hostname(Some(HOST))
}

fn parse(yaml: &str) -> Result<DaemonConfig, ConfigError> {
    loader(yaml).load()
}

fn with_env(yaml: Option<&str>, env: &[(&str, &str)]) -> Result<DaemonConfig, ConfigError> {
    let l = match yaml {
        Some(y) => loader(y),
        None => Loader::new().cwd(CWD).hostname(Some(HOST)),
    };
    l.env_vars(env.iter().map(|(k, v)| (k.to_string(), v.to_string()))).load()
}

fn err(yaml: &str) -> ConfigError {
    match parse(yaml) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

fn env_err(yaml: Option<&str>, env: &[(&str, &str)]) -> ConfigError {
    match with_env(yaml, env) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

fn addrs(http: &str, api: &str, grpc: &str, peer: &str) -> NodeAddrs {
    NodeAddrs { http_addr: http.into(), api_addr: api.into(), grpc_addr: grpc.into(), peer_addr: peer.into() }
}

#[test]
fn valid_config_loads() {
    let cfg = parse(NODE1).unwrap();
    assert_eq!(cfg.spec.cluster.node_id, 1);
    assert_eq!(cfg.http_addr(), "127.0.0.1:3001");
    assert_eq!(cfg.spec.cluster.initial_members.len(), 3);
    let own = addrs("127.0.0.1:3001", "127.0.0.1:5001", "127.0.0.1:4001", "127.0.0.1:6001");
    assert_eq!(cfg.bind_addrs(), own);
    assert_eq!(cfg.self_member(), own);
    assert_eq!(cfg.spec.cluster.initial_membership()[&2], Member { peer_addr: "127.0.0.1:6002".into(), grpc_addr: "127.0.0.1:4002".into(), api_addr: "127.0.0.1:5002".into(), http_addr: "127.0.0.1:3002".into() });
    assert_eq!(cfg.github().unwrap().secret_env_names(), vec!["GITHUB_WEBHOOK_SECRET"]);
    let tls = cfg.spec.cluster.peer_tls.as_ref().unwrap();
    assert_eq!(tls.cert_file, PathBuf::from("/srv/aof/certs/node1.crt"));
    assert_eq!(tls.key_file, PathBuf::from("/srv/aof/certs/node1.key"));
    assert_eq!(tls.ca_file, PathBuf::from("/srv/aof/certs/ca.crt"));
    assert!(cfg.notices().is_empty(), "{:?}", cfg.notices());
}

#[test]
fn defaults_applied() {
    let cfg = parse(NODE1).unwrap();
    let s = &cfg.spec;
    assert_eq!(s.mode, Mode::Cluster);
    assert_eq!(s.cluster.raft, RaftTuning::default());
    assert_eq!(s.cluster.raft.heartbeat_interval_ms, 250);
    assert_eq!((s.cluster.raft.election_timeout_min_ms, s.cluster.raft.election_timeout_max_ms), (1000, 2000));
    assert_eq!(s.cluster.raft.snapshot_every, 10_000);
    assert_eq!(s.cluster.raft.logs_to_keep_after_snapshot, 1000);
    assert_eq!(s.cluster.raft.request_timeout_ms, 2000);
    assert_eq!(s.cluster.storage.cache_capacity_mb, 64);
    assert!(!s.server.cors);
    assert_eq!(s.server.timeout_secs, 30);
    assert_eq!(s.runtime.max_concurrent_tasks, 10);
    assert_eq!(s.runtime.task_timeout_secs, 300);
    assert_eq!(
        s.gateway,
        GatewayConfig { ack_timeout_ms: 5000, max_body_bytes: 26_214_400, max_in_flight: 1024, payload_compression: Compression::Lz4 }
    );
    let zstd = parse(&format!("{NODE1}  gateway:\n    payload_compression: zstd\n")).unwrap();
    assert_eq!(zstd.spec.gateway.payload_compression, Compression::Zstd);
    let e = parse(&format!("{NODE1}  gateway:\n    payload_compression: gzip\n")).unwrap_err();
    assert!(e.to_string().contains("spec.gateway.payload_compression"), "{e}");
    assert_eq!(s.queue.lease_timeout_ms, 30_000);
    assert_eq!(s.queue.max_retries, 3);
    assert_eq!(s.queue.retry_delay_ms, 1000);
    assert_eq!(s.queue.max_retry_delay_ms, 60_000);
    assert_eq!(s.queue.retention_secs, 604_800);
    assert_eq!(s.queue.max_ready, 100_000);
    assert_eq!(s.worker, WorkerConfig { concurrency: 10, prefetch: 5 });
    assert_eq!(s.platforms.github.as_ref().unwrap().bot_name, "aofbot");
    assert!(s.flows.enabled && !s.flows.watch);
    assert!(!s.auth.metrics_public && !s.auth.insecure);
    // A partial section keeps the defaults of the keys it omits.
    let cfg = parse(&NODE1.replace("    data_dir:", "    raft: { heartbeat_interval_ms: 50 }\n    data_dir:")).unwrap();
    assert_eq!(cfg.spec.cluster.raft.heartbeat_interval_ms, 50);
    assert_eq!(cfg.spec.cluster.raft.election_timeout_min_ms, 1000);
    // Server defaults are AOF's.
    assert_eq!(ServerConfig::default().host, "0.0.0.0");
    assert_eq!(ServerConfig::default().port, 8080);
    assert_eq!(ServerConfig::default().timeout_secs, 30);

    // The smallest config: listeners on every interface with their default ports,
    // the conventional token variables, no member list.
    let cfg = parse("apiVersion: aof.dev/v1\nkind: DaemonConfig\nspec:\n  auth: { insecure: true }\n  cluster: { node_id: 7, data_dir: /d }\n")
        .unwrap();
    assert_eq!(cfg.bind_addrs(), addrs("0.0.0.0:8080", "0.0.0.0:5000", "0.0.0.0:4000", "0.0.0.0:6000"));
    assert_eq!(cfg.metadata.name, "aof-node7");
    let envs: Vec<(&str, Role, bool)> =
        cfg.spec.auth.tokens.iter().map(|t| (t.env.as_deref().unwrap(), t.role, t.optional)).collect();
    assert_eq!(
        envs,
        [("AOF_ADMIN_TOKEN", Role::Admin, false), ("AOF_READ_TOKEN", Role::Read, true), ("AOF_WORKER_TOKEN", Role::Worker, true)]
    );
    let d: DiscoveryConfig = serde_yaml::from_str("dns: aof.prod.svc.cluster.local:6000").unwrap();
    assert_eq!(d.max_voters, 5);
}

#[test]
fn unknown_key_names_path_and_suggests() {
    let yaml = NODE1.replace("    data_dir:", "    raft:\n      heartbeat_intervl_ms: 100\n    data_dir:");
    let e = err(&yaml);
    let msg = e.to_string();
    assert_eq!(e.keys(), vec!["spec.cluster.raft.heartbeat_intervl_ms"], "{msg}");
    assert!(msg.starts_with("node1.yaml: spec.cluster.raft.heartbeat_intervl_ms: unknown field"), "{msg}");
    assert!(msg.contains("did you mean `heartbeat_interval_ms`?"), "{msg}");
    assert!(msg.contains("election_timeout_min_ms"), "{msg}");
    assert!(msg.contains("[line 25, column 7]"), "{msg}");

    // top level, inside a list, and in AOF's sections
    let e = err(&format!("{NODE1}extra: 1\n"));
    assert_eq!(e.keys(), vec!["extra"], "{e}");
    let e = err(&NODE1.replace("http_addr: 127.0.0.1:3002 }", "http_addr: 127.0.0.1:3002, grpc: x }"));
    assert_eq!(e.keys(), vec!["spec.cluster.initial_members[1].grpc"], "{e}");
    assert!(e.to_string().contains("[line 27,"), "{e}");
    let e = err(&NODE1.replace("      enabled: true\n", "      enabeld: true\n"));
    assert_eq!(e.keys(), vec!["spec.platforms.github.enabeld"], "{e}");
    assert!(e.to_string().contains("did you mean `enabled`?"), "{e}");
    let e = err(&NODE1.replace("role: admin,", "role: admin, optinal: true,"));
    assert_eq!(e.keys(), vec!["spec.auth.tokens[0].optinal"], "{e}");
    assert!(e.to_string().contains("did you mean `optional`?"), "{e}");

    // a section at the wrong level says where it belongs; no far-fetched guesses
    let e = err(&format!("{NODE1}  raft: {{ snapshot_every: 5 }}\n"));
    assert_eq!(e.keys(), vec!["spec.raft"], "{e}");
    assert!(e.to_string().contains("`raft` belongs under `spec.cluster`"), "{e}");
    let e = err(&format!("{NODE1}  foo: 1\n"));
    assert!(!e.to_string().contains("did you mean"), "{e}");
}

#[test]
fn wrong_type_and_bad_variant() {
    let e = err(&NODE1.replace("port: 3001", "port: 70000"));
    assert_eq!(e.keys(), vec!["spec.server.port"], "{e}");
    assert!(e.to_string().contains("u16"), "{e}");
    assert!(e.to_string().contains("[line 9,"), "{e}");
    let e = err(&NODE1.replace("  server:", "  mode: clustr\n  server:"));
    assert_eq!(e.keys(), vec!["spec.mode"], "{e}");
    assert!(e.to_string().contains("did you mean `cluster`?"), "{e}");
    let e = err(&NODE1.replace("role: admin", "role: admn"));
    assert_eq!(e.keys(), vec!["spec.auth.tokens[0].role"], "{e}");
    assert!(e.to_string().contains("did you mean `admin`?"), "{e}");
    let e = err(&NODE1.replace("      enabled: true\n", "      enabled: [yes]\n"));
    assert_eq!(e.keys(), vec!["spec.platforms.github.enabled"], "{e}");
    assert!(e.to_string().contains("bool"), "{e}");
}

#[test]
fn missing_sections_have_hints() {
    let no_cluster = NODE1.split("  cluster:").next().unwrap();
    let e = err(no_cluster);
    assert_eq!(e.keys(), vec!["spec.cluster"], "{e}");
    assert!(e.to_string().contains("cluster-configs/local/node1.yaml"), "{e}");

    let no_dir = NODE1.replace("    data_dir: ./data/node1\n", "");
    let e = err(&no_dir);
    assert_eq!(e.keys(), vec!["spec.cluster.data_dir"], "{e}");
    assert!(e.to_string().contains("--data-dir"), "{e}");
    // ... which --data-dir supplies
    let cfg = parse_str_in(&no_dir, "x", Some(Path::new("/var/lib/aof")), Path::new(CWD)).unwrap();
    assert_eq!(cfg.spec.cluster.data_dir, PathBuf::from("/var/lib/aof"));

    let e = err(&NODE1.replace("{ name: admin, role: admin, env: AOF_ADMIN_TOKEN }", "{ role: admin, env: AOF_ADMIN_TOKEN }"));
    assert_eq!(e.keys(), vec!["spec.auth.tokens[0].name"], "{e}");
    assert!(e.to_string().contains("required key is missing"), "{e}");
    let e = err(&NODE1.replace("ca_file: ./certs/ca.crt, ", ""));
    assert_eq!(e.keys(), vec!["spec.cluster.peer_tls.ca_file"], "{e}");

    let e = err("");
    assert!(e.to_string().contains("empty"), "{e}");
}

#[test]
fn node_id_from_the_statefulset_ordinal() {
    let yaml = NODE1.replace("    node_id: 1\n", "");
    let e = loader(&yaml).hostname(Some("build-box")).load().unwrap_err();
    assert_eq!(e.keys(), vec!["spec.cluster.node_id"], "{e}");
    assert!(e.to_string().contains("`build-box`") && e.to_string().contains("AOF__CLUSTER__NODE_ID"), "{e}");
    let e = loader(&yaml).hostname(None).load().unwrap_err();
    assert_eq!(e.keys(), vec!["spec.cluster.node_id"], "{e}");

    // aof-0 is node 1 (whose entry in initial_members matches); the FQDN works too
    for host in ["aof-0", "aof-0.aof.prod.svc.cluster.local"] {
        let cfg = loader(&yaml).hostname(Some(host)).load().unwrap();
        assert_eq!(cfg.spec.cluster.node_id, 1, "{host}");
        assert_eq!(cfg.spec.cluster.peer_tls.unwrap().cert_file, PathBuf::from("/srv/aof/certs/node1.crt"));
    }
    // aof-2 is node 3, whose member entry has other addresses than this file's
    let e = loader(&yaml).hostname(Some("aof-2")).load().unwrap_err();
    assert!(e.keys().contains(&"spec.cluster.initial_members[2].peer_addr"), "{e}");
    // an explicit id wins over the host name, and 0 is refused as written
    assert_eq!(loader(NODE1).hostname(Some("aof-4")).load().unwrap().spec.cluster.node_id, 1);
    let e = err(&NODE1.replace("node_id: 1", "node_id: 0"));
    assert_eq!(e.keys(), vec!["spec.cluster.node_id"], "{e}");
    assert!(e.to_string().contains(">= 1"), "{e}");
}

#[test]
fn yaml_syntax_error_reports_line_and_column() {
    let e = err("apiVersion: aof.dev/v1\nkind: DaemonConfig\nspec:\n  server: [\n");
    match &e {
        ConfigError::Syntax { origin, line, column, .. } => {
            assert_eq!(origin, "node1.yaml");
            assert!(*line >= 4, "{e}");
            assert!(*column >= 1);
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().starts_with("node1.yaml:"), "{e}");
    assert!(!e.to_string().contains(" at line "), "{e}");
    let e = err(&format!("{NODE1}  server: {{}}\n"));
    assert!(matches!(e, ConfigError::Syntax { .. }), "duplicate key: {e}");
}

#[test]
fn wrong_api_version_or_kind() {
    let e = err(&NODE1.replace("aof.dev/v1", "aof.dev/v2"));
    assert_eq!(e.keys(), vec!["apiVersion"]);
    let e = err(&NODE1.replace("kind: DaemonConfig", "kind: Trigger"));
    assert_eq!(e.keys(), vec!["kind"]);
    assert!(e.to_string().contains("not a Trigger resource"), "{e}");
    let e = err(&NODE1.replace("apiVersion: aof.dev/v1\n", ""));
    assert_eq!(e.keys(), vec!["apiVersion"], "{e}");
    assert!(e.to_string().contains("add `apiVersion: aof.dev/v1`"), "{e}");
}

#[test]
fn addresses_may_be_dns_names_and_bind_every_interface() {
    // DNS names, in binds and in members
    let dns = NODE1
        .replace("grpc_addr: 127.0.0.1:4001\n", "grpc_addr: localhost:4001\n")
        .replace("grpc_addr: 127.0.0.1:4001,", "grpc_addr: localhost:4001,")
        .replace("grpc_addr: 127.0.0.1:4002", "grpc_addr: aof-1.aof.prod.svc.cluster.local:4002");
    let cfg = parse(&dns).unwrap();
    assert_eq!(cfg.self_member().grpc_addr, "localhost:4001");
    // host: 0.0.0.0 is accepted; the node advertises its host name with the port,
    // so its member entry must carry the same port
    let any = NODE1
        .replace("host: 127.0.0.1", "host: 0.0.0.0")
        .replace("http_addr: 127.0.0.1:3001", &format!("http_addr: {HOST}:3001"));
    let cfg = parse(&any).unwrap();
    assert_eq!(cfg.http_addr(), "0.0.0.0:3001");
    assert_eq!(cfg.self_member().http_addr, format!("{HOST}:3001"));
    // (a name the node cannot check against its own: only the port must agree)
    parse(&NODE1.replace("host: 127.0.0.1", "host: 0.0.0.0")).unwrap();
    let e = err(&any.replace(&format!("http_addr: {HOST}:3001"), "http_addr: other-name:3009"));
    assert_eq!(e.keys(), vec!["spec.cluster.initial_members[0].http_addr"], "{e}");
    // ... which it cannot do without a host name
    let e = loader(&any).hostname(None).load().unwrap_err();
    assert_eq!(e.keys(), vec!["spec.cluster.advertise.http_addr"], "{e}");
    assert!(e.to_string().contains("0.0.0.0:3001"), "{e}");
    // IPv6
    let v6 = NODE1.replace("host: 127.0.0.1", "host: \"::1\"").replace("127.0.0.1:3001", "\"[::1]:3001\"");
    let cfg = parse(&v6).unwrap();
    assert_eq!(cfg.http_addr(), "[::1]:3001");
    assert_eq!(cfg.self_member().http_addr, "[::1]:3001");
}

#[test]
fn bad_addresses() {
    let e = err(&NODE1.replace("grpc_addr: 127.0.0.1:4001\n", "grpc_addr: bad_host:4001\n"));
    assert_eq!(e.keys(), vec!["spec.cluster.grpc_addr"], "{e}");
    assert!(e.to_string().contains("DNS name"), "{e}");
    let e = err(&NODE1.replace("grpc_addr: 127.0.0.1:4001\n", "grpc_addr: 127.0.0.1\n"));
    assert_eq!(e.keys(), vec!["spec.cluster.grpc_addr"], "{e}");
    let e = err(&NODE1.replace("host: 127.0.0.1", "host: my_host"));
    assert_eq!(e.keys(), vec!["spec.server.host"], "{e}");

    // two listeners on one port
    let e = err(&NODE1.replace("grpc_addr: 127.0.0.1:4001\n", "grpc_addr: 127.0.0.1:3001\n"));
    assert!(e.keys().contains(&"spec.cluster.grpc_addr"), "{e}");
    assert!(e.to_string().contains("public listener"), "{e}");
    let e = err(&NODE1.replace("peer_addr: 127.0.0.1:6001\n", "peer_addr: 0.0.0.0:5001\n"));
    assert!(e.keys().contains(&"spec.cluster.peer_addr"), "{e}");
    assert!(e.to_string().contains("API listener"), "{e}");
    // same port on another host, or port 0, is fine
    let ok = "apiVersion: aof.dev/v1\nkind: DaemonConfig\nspec:\n  server: { host: 127.0.0.1, port: 0 }\n  auth: { insecure: true }\n  cluster: { node_id: 1, data_dir: /d, api_addr: 127.0.0.2:3000, grpc_addr: 127.0.0.1:0, peer_addr: 127.0.0.3:3000 }\n";
    parse(ok).unwrap();

    let e = err(&NODE1.replace("http_addr: 127.0.0.1:3003", "http_addr: 127.0.0.1:99999"));
    assert_eq!(e.keys(), vec!["spec.cluster.initial_members[2].http_addr"], "{e}");
    let e = err(&NODE1.replace("http_addr: 127.0.0.1:3003", "http_addr: 0.0.0.0:3003"));
    assert_eq!(e.keys(), vec!["spec.cluster.initial_members[2].http_addr"], "{e}");
    assert!(e.to_string().contains("unspecified"), "{e}");
    let e = err(&NODE1.replace("    data_dir:", "    advertise: { peer_addr: \"[::]:6001\", api_addr: node1:0 }\n    data_dir:"));
    assert_eq!(e.keys(), vec!["spec.cluster.advertise.api_addr", "spec.cluster.advertise.peer_addr"], "{e}");
}

#[test]
fn advertised_addresses() {
    let yaml = "apiVersion: aof.dev/v1\nkind: DaemonConfig\nspec:\n  auth: { insecure: true }\n  cluster:\n    node_id: 3\n    data_dir: /d\n    api_addr: 10.0.0.7:5000\n    advertise: { peer_addr: aof-2.aof:6000, http_addr: \"hooks.example.com:443\" }\n";
    let cfg = loader(yaml).hostname(Some("aof-2.aof.prod.svc.cluster.local")).load().unwrap();
    assert_eq!(
        cfg.self_member(),
        addrs("hooks.example.com:443", "10.0.0.7:5000", "aof-2.aof.prod.svc.cluster.local:4000", "aof-2.aof:6000")
    );
    // listeners bound on port 0 advertise the port they got
    let cfg = DaemonConfig::new(1, "127.0.0.1:0".parse().unwrap(), "127.0.0.1:0".parse().unwrap(), "/d");
    let bound = NodeAddrs {
        http_addr: "127.0.0.1:40001".parse().unwrap(),
        api_addr: "127.0.0.1:40002".parse().unwrap(),
        grpc_addr: "127.0.0.1:40003".parse().unwrap(),
        peer_addr: "127.0.0.1:40004".parse().unwrap(),
    };
    assert_eq!(
        cfg.self_member_bound(&bound),
        addrs("127.0.0.1:40001", "127.0.0.1:40002", "127.0.0.1:40003", "127.0.0.1:40004")
    );
    assert_eq!(cfg.self_member().api_addr, "127.0.0.1:0");
}

#[test]
fn member_list_rules() {
    // this node listed with a different address
    let e = err(&NODE1.replace("api_addr: 127.0.0.1:5001, http_addr: 127.0.0.1:3001 }", "api_addr: 127.0.0.1:5001, http_addr: 127.0.0.1:3009 }"));
    assert_eq!(e.keys(), vec!["spec.cluster.initial_members[0].http_addr"], "{e}");
    assert!(e.to_string().contains("127.0.0.1:3009") && e.to_string().contains("spec.server"), "{e}");

    let e = err(&NODE1.replace("{ id: 1, peer_addr: 127.0.0.1:6001, grpc_addr: 127.0.0.1:4001,", "{ id: 1, peer_addr: 127.0.0.1:6001, grpc_addr: 127.0.0.1:4009,"));
    assert_eq!(e.keys(), vec!["spec.cluster.initial_members[0].grpc_addr"], "{e}");

    // this node missing
    let e = err(&NODE1.replace("node_id: 1", "node_id: 4"));
    assert_eq!(
        e.keys(),
        vec![
            "spec.cluster.initial_members[0].peer_addr",
            "spec.cluster.initial_members[0].grpc_addr",
            "spec.cluster.initial_members[0].api_addr",
            "spec.cluster.initial_members[0].http_addr",
            "spec.cluster.initial_members",
        ],
        "{e}"
    );

    // duplicate id and duplicate address (also across kinds of address)
    let e = err(&NODE1.replace("{ id: 3,", "{ id: 2,"));
    assert_eq!(e.keys(), vec!["spec.cluster.initial_members[2].id"], "{e}");
    let e = err(&NODE1.replace("grpc_addr: 127.0.0.1:4003", "grpc_addr: 127.0.0.1:4002"));
    assert_eq!(e.keys(), vec!["spec.cluster.initial_members[2].grpc_addr"], "{e}");
    assert!(e.to_string().contains("initial_members[1].grpc_addr"), "{e}");
    let e = err(&NODE1.replace("grpc_addr: 127.0.0.1:4003", "grpc_addr: 127.0.0.1:3002"));
    assert_eq!(e.keys(), vec!["spec.cluster.initial_members[2].grpc_addr"], "{e}");
    let e = err(&NODE1.replace("api_addr: 127.0.0.1:5003", "api_addr: 127.0.0.1:6003"));
    assert_eq!(e.keys(), vec!["spec.cluster.initial_members[2].api_addr"], "{e}");
    // a member entry missing one of its four addresses
    let e = err(&NODE1.replace("{ id: 2, peer_addr: 127.0.0.1:6002, ", "{ id: 2, "));
    assert_eq!(e.keys(), vec!["spec.cluster.initial_members[1].peer_addr"], "{e}");
    assert!(e.to_string().contains("api_addr"), "{e}");

    // no members at all is fine (a node that waits to be added)
    let solo = NODE1.split("    initial_members:").next().unwrap();
    assert!(parse(solo).unwrap().spec.cluster.initial_members.is_empty());
}

#[test]
fn raft_rules_and_multiple_problems() {
    let yaml = NODE1.replace(
        "    data_dir:",
        "    raft: { heartbeat_interval_ms: 1500, election_timeout_min_ms: 1000, election_timeout_max_ms: 900, snapshot_every: 0 }\n    storage: { cache_capacity_mb: 0 }\n    data_dir:",
    );
    let e = err(&yaml);
    assert_eq!(
        e.keys(),
        vec![
            "spec.cluster.raft.heartbeat_interval_ms",
            "spec.cluster.raft.election_timeout_min_ms",
            "spec.cluster.raft.snapshot_every",
            "spec.cluster.storage.cache_capacity_mb",
        ],
        "{e}"
    );
    assert!(e.to_string().contains("4 problems"), "{e}");
}

#[test]
fn tls_and_auth_rules() {
    // peer TLS is required unless the node is explicitly insecure
    let no_tls: String = NODE1.lines().filter(|l| !l.contains("peer_tls")).map(|l| format!("{l}\n")).collect();
    let e = err(&no_tls);
    assert_eq!(e.keys(), vec!["spec.cluster.peer_tls"], "{e}");
    assert!(e.to_string().contains("spec.auth.insecure: true"), "{e}");
    let insecure = no_tls.replace("  auth:\n", "  auth:\n    insecure: true\n");
    let cfg = parse(&insecure).unwrap();
    let notices = cfg.notices();
    let warn: Vec<&str> = notices.iter().filter(|n| n.severity == Severity::Warn).map(|n| n.key.as_str()).collect();
    assert_eq!(warn, vec!["spec.auth.insecure"]);
    // only {node_id} is expanded
    let e = err(&NODE1.replace("node{node_id}.key", "node{id}.key"));
    assert_eq!(e.keys(), vec!["spec.cluster.peer_tls.key_file"], "{e}");
    // listener certificates
    let cfg = parse(&NODE1.replace(
        "    port: 3001\n",
        "    port: 3001\n    tls: { cert_file: /etc/aof/hooks.crt, key_file: ./hooks.key }\n",
    ))
    .unwrap();
    assert_eq!(cfg.spec.server.tls.unwrap().key_file, PathBuf::from("/srv/aof/hooks.key"));

    // tokens: one source each, unique names, targets only for workers, an admin
    let tokens = |list: &str| NODE1.replace("      - { name: admin, role: admin, env: AOF_ADMIN_TOKEN }\n", list);
    let e = err(&tokens(
        "      - { name: admin, role: admin, env: AOF_ADMIN_TOKEN, file: ./a }\n      - { name: admin, role: read, env: '${X}', targets: [a] }\n      - { name: w, role: worker, file: ./w.token, targets: [deploy] }\n",
    ));
    assert_eq!(
        e.keys(),
        vec!["spec.auth.tokens[0]", "spec.auth.tokens[1].name", "spec.auth.tokens[1].env", "spec.auth.tokens[1].targets"],
        "{e}"
    );
    let e = err(&tokens("      - { name: r, role: read, env: AOF_READ_TOKEN }\n"));
    assert_eq!(e.keys(), vec!["spec.auth.tokens"], "{e}");
    assert!(e.to_string().contains("AOF_ADMIN_TOKEN") && e.to_string().contains("insecure"), "{e}");
    // a literal token is accepted with a warning; a token file resolves against the cwd
    let cfg = parse(&tokens(
        "      - { name: admin, role: admin, token: admin-0123456789abcdef }\n      - { name: w, role: worker, file: ./w.token, targets: [deploy], optional: true }\n",
    ))
    .unwrap();
    assert_eq!(cfg.spec.auth.tokens[1].file, Some(PathBuf::from("/srv/aof/w.token")));
    let keys: Vec<String> = cfg.notices().into_iter().map(|n| n.key).collect();
    assert_eq!(keys, vec!["spec.auth.tokens[0].token"]);
    assert!(!serde_yaml::to_string(&cfg).unwrap().contains("admin-0123456789abcdef"));
    let r = cfg.spec.auth.resolve_with(|_| None).unwrap();
    assert_eq!(r.check("admin-0123456789abcdef").unwrap().role, Role::Admin);
}

#[test]
fn discovery_rules() {
    let solo = NODE1.split("    initial_members:").next().unwrap().to_string();
    let cfg = parse(&format!("{solo}    discovery: {{ dns: \"aof.prod.svc.cluster.local:6000\", max_voters: 3 }}\n")).unwrap();
    let d = cfg.spec.cluster.discovery.unwrap();
    assert_eq!((d.dns.as_deref(), d.max_voters), (Some("aof.prod.svc.cluster.local:6000"), 3));
    parse(&format!("{solo}    discovery: {{ seeds: [\"aof-0.aof:6000\", \"10.0.0.2:6000\"] }}\n")).unwrap();
    let e = err(&format!("{solo}    discovery: {{ max_voters: 0 }}\n"));
    assert_eq!(e.keys(), vec!["spec.cluster.discovery", "spec.cluster.discovery.max_voters"], "{e}");
    let e = err(&format!("{solo}    discovery: {{ seeds: [\"a:1\", \"a:1\", \"0.0.0.0:6000\"], dns: \"10.0.0.1:6000\" }}\n"));
    assert_eq!(
        e.keys(),
        vec![
            "spec.cluster.discovery",
            "spec.cluster.discovery.seeds[1]",
            "spec.cluster.discovery.seeds[2]",
            "spec.cluster.discovery.dns"
        ],
        "{e}"
    );
    // not together with a fixed member list
    let e = err(&NODE1.replace("    initial_members:", "    discovery: { dns: \"aof:6000\" }\n    initial_members:"));
    assert_eq!(e.keys(), vec!["spec.cluster.discovery"], "{e}");
}

#[test]
fn relative_paths_resolve_against_cwd() {
    let cfg = parse(&format!("{NODE1}  triggers:\n    directory: ./cluster-configs/local/triggers\n")).unwrap();
    assert_eq!(cfg.spec.cluster.data_dir, PathBuf::from("/srv/aof/data/node1"));
    assert_eq!(cfg.spec.triggers.directory, Some(PathBuf::from("/srv/aof/cluster-configs/local/triggers")));
    // not against the config file's directory
    let file_dir = tempfile::tempdir().unwrap();
    let file = file_dir.path().join("node1.yaml");
    std::fs::write(&file, NODE1).unwrap();
    let cfg = Loader::new().file(&file).load().unwrap();
    assert_eq!(cfg.spec.cluster.data_dir, std::env::current_dir().unwrap().join("data/node1"));
    assert!(!cfg.spec.cluster.data_dir.starts_with(file_dir.path()));
    // absolute stays
    let cfg = parse(&NODE1.replace("./data/node1", "/var/lib/aof/n1")).unwrap();
    assert_eq!(cfg.spec.cluster.data_dir, PathBuf::from("/var/lib/aof/n1"));
}

#[test]
fn data_dir_override() {
    let cfg = parse_str_in(NODE1, "x", Some(Path::new("/tmp/n1")), Path::new(CWD)).unwrap();
    assert_eq!(cfg.spec.cluster.data_dir, PathBuf::from("/tmp/n1"));
    let cfg = parse_str_in(NODE1, "x", Some(Path::new("other/dir")), Path::new(CWD)).unwrap();
    assert_eq!(cfg.spec.cluster.data_dir, PathBuf::from("/srv/aof/other/dir"));
}

#[test]
fn load_names_missing_file() {
    let e = load(Path::new("/nonexistent/node9.yaml"), None).unwrap_err();
    assert!(e.to_string().starts_with("/nonexistent/node9.yaml: cannot read"), "{e}");
}

// ---------------------------------------------------------------------------
// Environment variables
// ---------------------------------------------------------------------------

#[test]
fn environment_overrides_the_file() {
    let cfg = with_env(
        Some(NODE1),
        &[
            ("AOF__SERVER__PORT", "3001"),
            ("AOF__SERVER__CORS", "true"),
            ("AOF__CLUSTER__RAFT__HEARTBEAT_INTERVAL_MS", "100"),
            ("AOF__PLATFORMS__GITHUB__BOT_NAME", "hookbot"),
            ("AOF__CLUSTER__PEER_TLS__CA_FILE", "/etc/aof/ca.pem"),
            ("AOF__QUEUE__MAX_RETRIES", "9"),
            ("HOME", "/root"),
            ("AOF_ADMIN_TOKEN", "not a key path"),
        ],
    )
    .unwrap();
    assert!(cfg.spec.server.cors);
    assert_eq!(cfg.spec.cluster.raft.heartbeat_interval_ms, 100);
    assert_eq!(cfg.spec.cluster.raft.election_timeout_min_ms, 1000, "keys not set keep the file's value");
    assert_eq!(cfg.github().unwrap().bot_name, "hookbot");
    assert_eq!(cfg.github().unwrap().token_env.as_deref(), Some("GITHUB_TOKEN"));
    let tls = cfg.spec.cluster.peer_tls.unwrap();
    assert_eq!(tls.ca_file, PathBuf::from("/etc/aof/ca.pem"));
    assert_eq!(tls.cert_file, PathBuf::from("/srv/aof/certs/node1.crt"));
    assert_eq!(cfg.spec.queue.max_retries, 9);

    // a whole list in figment's syntax replaces the file's
    let cfg = with_env(
        Some(NODE1),
        &[(
            "AOF__CLUSTER__INITIAL_MEMBERS",
            "[{id=1,peer_addr=\"127.0.0.1:6001\",grpc_addr=\"127.0.0.1:4001\",api_addr=\"127.0.0.1:5001\",http_addr=\"127.0.0.1:3001\"},\
             {id=2,peer_addr=\"aof-1.aof:6000\",grpc_addr=\"aof-1.aof:4000\",api_addr=\"aof-1.aof:5000\",http_addr=\"aof-1.aof:3000\"}]",
        )],
    )
    .unwrap();
    let m = &cfg.spec.cluster.initial_members;
    assert_eq!(m.len(), 2);
    assert_eq!(m[1].peer_addr, "aof-1.aof:6000");
}

#[test]
fn a_node_runs_from_the_environment_alone() {
    let env = [
        ("AOF__CLUSTER__DATA_DIR", "/var/lib/aof"),
        ("AOF__CLUSTER__PEER_ADDR", "0.0.0.0:6000"),
        ("AOF__CLUSTER__ADVERTISE__PEER_ADDR", "aof-2.aof:6000"),
        ("AOF__SERVER__PORT", "3000"),
        ("AOF__CLUSTER__PEER_TLS", "{ca_file=\"/certs/ca.crt\",cert_file=\"/certs/node{node_id}.crt\",key_file=\"/certs/node{node_id}.key\"}"),
        ("AOF__CLUSTER__DISCOVERY__DNS", "aof.prod.svc.cluster.local:6000"),
        ("AOF__PLATFORMS__GITHUB__WEBHOOK_SECRET_ENV", "GITHUB_WEBHOOK_SECRET"),
    ];
    let cfg = Loader::new()
        .cwd(CWD)
        .hostname(Some("aof-2.aof.prod.svc.cluster.local"))
        .env_vars(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .load()
        .unwrap();
    assert_eq!(cfg.api_version, API_VERSION);
    assert_eq!(cfg.spec.cluster.node_id, 3, "from the StatefulSet ordinal");
    assert_eq!(cfg.metadata.name, "aof-node3");
    assert_eq!(cfg.spec.cluster.data_dir, PathBuf::from("/var/lib/aof"));
    assert_eq!(cfg.spec.cluster.peer_tls.as_ref().unwrap().cert_file, PathBuf::from("/certs/node3.crt"));
    assert_eq!(
        cfg.self_member(),
        addrs(
            "aof-2.aof.prod.svc.cluster.local:3000",
            "aof-2.aof.prod.svc.cluster.local:5000",
            "aof-2.aof.prod.svc.cluster.local:4000",
            "aof-2.aof:6000"
        )
    );
    assert!(cfg.github().is_some());
    // --data-dir still overrides
    let cfg = Loader::new()
        .cwd(CWD)
        .hostname(Some("aof-2"))
        .env_vars(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .data_dir(Some(Path::new("data/x")))
        .load()
        .unwrap();
    assert_eq!(cfg.spec.cluster.data_dir, PathBuf::from("/srv/aof/data/x"));

    // nothing at all: says what is missing
    let e = with_env(None, &[]).unwrap_err();
    assert_eq!(e.keys(), vec!["spec"], "{e}");
    assert!(e.to_string().contains("AOF__"), "{e}");
}

/// A container's node: bind every interface, advertise its name, discovery by seeds.
#[test]
fn container_node_from_the_environment() {
    let env = [
        ("AOF__SERVER__HOST", "0.0.0.0"),
        ("AOF__SERVER__PORT", "3000"),
        ("AOF__CLUSTER__API_ADDR", "0.0.0.0:5000"),
        ("AOF__CLUSTER__GRPC_ADDR", "0.0.0.0:4000"),
        ("AOF__CLUSTER__PEER_ADDR", "0.0.0.0:6000"),
        ("AOF__CLUSTER__DATA_DIR", "/var/lib/aof/data"),
        ("AOF__CLUSTER__DISCOVERY__SEEDS", "[\"aof-1:6000\", \"aof-2:6000\", \"aof-3:6000\"]"),
        ("AOF__CLUSTER__DISCOVERY__MAX_VOTERS", "5"),
        ("AOF__CLUSTER__PEER_TLS__CA_FILE", "/etc/aof/certs/ca.crt"),
        ("AOF__CLUSTER__PEER_TLS__CERT_FILE", "/etc/aof/certs/node{node_id}.crt"),
        ("AOF__CLUSTER__PEER_TLS__KEY_FILE", "/etc/aof/certs/node{node_id}.key"),
        ("AOF__PLATFORMS__GITHUB__ENABLED", "true"),
        ("AOF__PLATFORMS__GITHUB__WEBHOOK_SECRET_ENV", "GITHUB_WEBHOOK_SECRET"),
        ("AOF__CLUSTER__NODE_ID", "2"),
        ("AOF__CLUSTER__ADVERTISE__PEER_ADDR", "aof-2:6000"),
        ("AOF__CLUSTER__ADVERTISE__API_ADDR", "aof-2:5000"),
        ("AOF_ADMIN_TOKEN", "admin-0123456789abcdef"),
    ];
    let cfg = Loader::new()
        .cwd(CWD)
        .hostname(Some("c0ffee"))
        .env_vars(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .load()
        .unwrap();
    assert_eq!(cfg.spec.cluster.node_id, 2);
    assert_eq!(cfg.spec.cluster.discovery.as_ref().unwrap().seeds, ["aof-1:6000", "aof-2:6000", "aof-3:6000"]);
    assert_eq!(cfg.spec.cluster.peer_tls.as_ref().unwrap().key_file, PathBuf::from("/etc/aof/certs/node2.key"));
    assert_eq!(cfg.self_member(), addrs("c0ffee:3000", "aof-2:5000", "c0ffee:4000", "aof-2:6000"));
    let auth = cfg.spec.auth.resolve_with(|v| env.iter().find(|(k, _)| *k == v).map(|(_, t)| t.to_string())).unwrap();
    assert!(auth.has_role(Role::Admin) && !auth.has_role(Role::Worker));
}

#[test]
fn environment_errors_name_the_variable() {
    let e = env_err(Some(NODE1), &[("AOF__CLUSTER__NODE_ID", "three")]);
    assert_eq!(e.keys(), vec!["spec.cluster.node_id"], "{e}");
    let msg = e.to_string();
    assert!(msg.starts_with("environment variable AOF__CLUSTER__NODE_ID: spec.cluster.node_id: wrong type"), "{msg}");
    assert!(!msg.contains("[line"), "{msg}");

    let e = env_err(Some(NODE1), &[("AOF__CLUSTER__RAFT__HEARTBEAT_INTERVL_MS", "100")]);
    assert_eq!(e.keys(), vec!["spec.cluster.raft.heartbeat_intervl_ms"], "{e}");
    assert!(e.to_string().starts_with("environment variable AOF__CLUSTER__RAFT__HEARTBEAT_INTERVL_MS:"), "{e}");
    assert!(e.to_string().contains("did you mean `heartbeat_interval_ms`?"), "{e}");

    let e = env_err(Some(NODE1), &[("AOF__CLUSTER__INITIAL_MEMBERS", "[{id=1,peer_addr=\"a:6000\"}]")]);
    assert_eq!(e.keys(), vec!["spec.cluster.initial_members[0].grpc_addr"], "{e}");
    assert!(e.to_string().starts_with("environment variable AOF__CLUSTER__INITIAL_MEMBERS:"), "{e}");

    let e = env_err(Some(NODE1), &[("AOF__CLUSTER____NODE_ID", "1")]);
    assert!(e.to_string().starts_with("environment variable AOF__CLUSTER____NODE_ID:"), "{e}");
    assert!(e.to_string().contains("not a key path"), "{e}");
    let e = env_err(Some(NODE1), &[("AOF__SERVER__HOST", &"[".repeat(100))]);
    assert!(e.to_string().contains("nested"), "{e}");

    // a rule broken by a value from the environment names the variable
    let e = env_err(Some(NODE1), &[("AOF__CLUSTER__PEER_ADDR", "127.0.0.1:4001")]);
    assert_eq!(e.keys(), vec!["spec.cluster.peer_addr", "spec.cluster.initial_members[0].peer_addr"], "{e}");
    assert!(e.to_string().contains("(set by environment variable AOF__CLUSTER__PEER_ADDR)"), "{e}");
    // ... and not the ones from the file
    let e = env_err(Some(&NODE1.replace("{ id: 3,", "{ id: 2,")), &[("AOF__SERVER__PORT", "3001")]);
    assert!(!e.to_string().contains("set by environment variable"), "{e}");
}

/// Found by `prop_tests::loader_never_panics`: figment's value parser panics on a
/// quoted string with a non-ASCII character before a backslash.
#[test]
fn environment_value_that_trips_figments_unescaping() {
    let tricky = "\"µ\\n\"";
    let cfg = with_env(Some(NODE1), &[("AOF__PLATFORMS__GITHUB__BOT_NAME", tricky)]).unwrap();
    assert_eq!(cfg.github().unwrap().bot_name, tricky, "taken as plain text");
    let e = env_err(Some(NODE1), &[("AOF__CLUSTER__INITIAL_MEMBERS", "[{id=1,peer_addr=\"µ\\n\"}]")]);
    assert_eq!(e.keys(), vec!["spec.cluster.initial_members"], "{e}");
}

#[cfg(unix)]
#[test]
fn non_utf8_environment_is_an_error() {
    use std::os::unix::ffi::OsStringExt;
    let e = loader(NODE1)
        .env_vars([(std::ffi::OsString::from("AOF__SERVER__HOST"), std::ffi::OsString::from_vec(vec![0xff, 0xfe]))])
        .load()
        .unwrap_err();
    assert_eq!(e.keys(), vec!["spec.server.host"], "{e}");
    assert!(e.to_string().contains("UTF-8"), "{e}");
    // non-UTF-8 variables outside AOF__ are none of the loader's business
    loader(NODE1)
        .env_vars([(std::ffi::OsString::from_vec(vec![b'X', 0xff]), std::ffi::OsString::from("1"))])
        .load()
        .unwrap();
}

// ---------------------------------------------------------------------------
// AOF compatibility
// ---------------------------------------------------------------------------

/// AOF's example daemon.yaml (GitHub integration reference), unchanged, plus a
/// cluster section.
const AOF_DAEMON_YAML: &str = r#"
apiVersion: aof.dev/v1
kind: DaemonConfig
metadata:
  name: aof-daemon
spec:
  server:
    port: 3000
    host: "0.0.0.0"
    cors: true
    timeout_secs: 60

  # Enable platforms - just enables the webhook endpoint
  # Command routing is defined in Triggers
  platforms:
    github:
      enabled: true
      token_env: GITHUB_TOKEN           # Environment variable name
      webhook_secret_env: GITHUB_WEBHOOK_SECRET
      bot_name: aofbot                  # Optional: for @mentions

  # Resource discovery
  triggers:
    directory: ./triggers/
    watch: true

  agents:
    directory: ./agents/

  fleets:
    directory: ./fleets/

  flows:
    directory: ./flows/
    enabled: true

  runtime:
    max_concurrent_tasks: 10
    task_timeout_secs: 300
"#;

#[test]
fn aof_example_daemon_yaml_plus_cluster_loads() {
    // AOF's host 0.0.0.0 is accepted as is: the node advertises its host name.
    let yaml = format!(
        "{AOF_DAEMON_YAML}\n  cluster:\n    node_id: 1\n    data_dir: /var/lib/aof\n    peer_tls: {{ ca_file: /etc/aof/ca.crt, cert_file: /etc/aof/node.crt, key_file: /etc/aof/node.key }}\n    initial_members:\n      - {{ id: 1, peer_addr: \"aof-0.aof:6000\", grpc_addr: \"aof-0.aof:4000\", api_addr: \"aof-0.aof:5000\", http_addr: \"aof-0.aof:3000\" }}\n"
    );
    let cfg = loader(&yaml).hostname(Some("aof-0.aof")).load().unwrap();
    assert_eq!(cfg.metadata.name, "aof-daemon");
    assert!(cfg.spec.server.cors);
    assert_eq!(cfg.spec.server.timeout_secs, 60);
    assert!(cfg.spec.triggers.watch);
    assert_eq!(cfg.spec.triggers.directory, Some(PathBuf::from("/srv/aof/triggers/")));
    assert_eq!(cfg.spec.agents.directory, Some(PathBuf::from("/srv/aof/agents/")));
    assert_eq!(cfg.github().unwrap().bot_name, "aofbot");
    assert_eq!(cfg.http_addr(), "0.0.0.0:3000");
    assert_eq!(cfg.self_member().http_addr, "aof-0.aof:3000");
    // the default tokens: AOF_ADMIN_TOKEN is what to set
    let e = cfg.spec.auth.resolve_with(|_| None).unwrap_err();
    assert!(e.to_string().contains("AOF_ADMIN_TOKEN"), "{e}");
    assert!(cfg.notices().is_empty(), "{:?}", cfg.notices());
    // ... and without even a cluster section, from the environment
    let cfg = Loader::new()
        .yaml("daemon.yaml", AOF_DAEMON_YAML)
        .cwd(CWD)
        .hostname(Some("aof-0.aof"))
        .env_vars([("AOF__CLUSTER__DATA_DIR", "/var/lib/aof"), ("AOF__AUTH__INSECURE", "true")])
        .load()
        .unwrap();
    assert_eq!(cfg.spec.cluster.node_id, 1);
}

#[test]
fn aof_scaling_proposal_keys_accepted_with_notices() {
    let yaml = format!(
        "{NODE1}  mode: gateway\n  queue:\n    type: redis\n    url: redis://redis-cluster:6379\n    stream: aof-events\n    consumer_group: aof-workers\n    max_retries: 5\n    retry_delay_ms: 500\n    dead_letter_queue: aof-dlq\n  gateway:\n    ack_timeout_ms: 15000\n  worker:\n    concurrency: 4\n    prefetch: 2\n"
    );
    let cfg = parse(&yaml).unwrap();
    assert_eq!(cfg.spec.mode, Mode::Gateway);
    assert_eq!(cfg.spec.queue.max_retries, 5);
    assert_eq!(cfg.spec.queue.backend.as_deref(), Some("redis"));
    assert_eq!(cfg.spec.worker, WorkerConfig { concurrency: 4, prefetch: 2 });
    let notices = cfg.notices();
    let keys: Vec<&str> = notices.iter().map(|n| n.key.as_str()).collect();
    assert_eq!(keys, vec!["spec.mode", "spec.queue", "spec.gateway.ack_timeout_ms"]);
    let severities: Vec<Severity> = notices.iter().map(|n| n.severity).collect();
    assert_eq!(severities, vec![Severity::Info, Severity::Info, Severity::Warn]);
    assert_eq!(cfg.spec.queue.retry_delay_ms_for(1), 500);
    assert_eq!(cfg.spec.queue.retry_delay_ms_for(3), 2000);
    assert_eq!(cfg.spec.queue.retry_delay_ms_for(40), 60_000);
}

#[test]
fn github_orgs_rotation_and_other_platforms() {
    let yaml = NODE1.replace(
        "      webhook_secret_env: GITHUB_WEBHOOK_SECRET\n",
        "      webhook_secret_env: GITHUB_WEBHOOK_SECRET\n      webhook_secret_envs: [GITHUB_WEBHOOK_SECRET_NEXT, GITHUB_WEBHOOK_SECRET]\n      orgs:\n        Acme: { webhook_secret_env: ACME_WEBHOOK_SECRET, token_env: ACME_GITHUB_TOKEN }\n    slack:\n      enabled: true\n      bot_token: xoxb-123\n      signing_secret_env: SLACK_SIGNING_SECRET\n",
    );
    let cfg = parse(&yaml).unwrap();
    let g = cfg.github().unwrap();
    assert_eq!(g.secret_env_names(), vec!["GITHUB_WEBHOOK_SECRET", "GITHUB_WEBHOOK_SECRET_NEXT"]);
    assert_eq!(g.org("acme").unwrap().webhook_secret_env.as_deref(), Some("ACME_WEBHOOK_SECRET"));
    assert_eq!(cfg.spec.platforms.unused(), vec!["slack"]);
    // Printing the config does not leak the inline Slack token.
    let printed = serde_yaml::to_string(&cfg).unwrap();
    assert!(!printed.contains("xoxb-123") && printed.contains("SLACK_SIGNING_SECRET"), "{printed}");
    assert!(!format!("{cfg:?}").contains("xoxb-123"));

    // `${VAR}` (Trigger syntax) instead of a variable name
    let e = err(&NODE1.replace("webhook_secret_env: GITHUB_WEBHOOK_SECRET", "webhook_secret_env: ${GITHUB_WEBHOOK_SECRET}"));
    assert_eq!(e.keys(), vec!["spec.platforms.github.webhook_secret_env"], "{e}");
    assert!(e.to_string().contains("instead of"), "{e}");
    // enabled without any secret
    let e = err(&NODE1.replace("      webhook_secret_env: GITHUB_WEBHOOK_SECRET\n", ""));
    assert_eq!(e.keys(), vec!["spec.platforms.github"], "{e}");
    // disabled without a secret is fine
    let off = NODE1
        .replace("      webhook_secret_env: GITHUB_WEBHOOK_SECRET\n", "")
        .replace("enabled: true", "enabled: false");
    assert!(parse(&off).unwrap().github().is_none());
}

#[test]
fn queue_and_worker_rules() {
    let e = err(&format!(
        "{NODE1}  queue: {{ retry_delay_ms: 5000, max_retry_delay_ms: 1000 }}\n  worker: {{ concurrency: 0 }}\n"
    ));
    assert_eq!(e.keys(), vec!["spec.queue.retry_delay_ms", "spec.worker.concurrency"], "{e}");
}

#[test]
fn executors_parse_by_their_type() {
    let cfg = parse(&format!(
        "{NODE1}  runtime:\n    executors:\n      deploy: {{ type: command, command: [./deploy.sh], timeout_secs: 60 }}\n      triage: {{ type: github, labels: [triage] }}\n"
    ))
    .unwrap();
    assert!(matches!(cfg.spec.runtime.executors["deploy"], ExecutorConfig::Command { timeout_secs: Some(60), .. }));
    let e = err(&format!("{NODE1}  runtime:\n    executors:\n      deploy: {{ type: comand, command: [x] }}\n"));
    assert_eq!(e.keys(), vec!["spec.runtime.executors.deploy.type"], "{e}");
    assert!(e.to_string().contains("did you mean `command`?"), "{e}");
    let cfg = parse(&format!(
        "{NODE1}  runtime:\n    executors:\n      reviewer: {{ type: aof, aof_cli: /opt/aof/bin/aofctl, output: json }}\n      helper: {{ type: aof }}\n"
    ))
    .unwrap();
    assert_eq!(
        cfg.spec.runtime.executors["reviewer"],
        ExecutorConfig::Aof { aof_cli: Some("/opt/aof/bin/aofctl".into()), output: Some("json".into()), timeout_secs: None }
    );
    assert_eq!(cfg.spec.runtime.executors["helper"], ExecutorConfig::Aof { aof_cli: None, output: None, timeout_secs: None });
    let e = err(&format!("{NODE1}  runtime:\n    executors:\n      helper: {{ type: aof, aof_path: x }}\n"));
    assert!(e.to_string().contains("aof_path"), "{e}");
}

#[test]
fn serialize_round_trips() {
    for yaml in [NODE1.to_string(), NODE1.replace("  auth:\n", "  auth:\n    metrics_public: true\n")] {
        let cfg = parse(&yaml).unwrap();
        let again = parse(&serde_yaml::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(cfg, again);
    }
}

#[test]
fn programmatic_config_is_valid() {
    let cfg = DaemonConfig::new(7, "127.0.0.1:3007".parse().unwrap(), "127.0.0.1:4007".parse().unwrap(), "/tmp/n7");
    cfg.validate("test").unwrap();
    assert_eq!(cfg.http_addr(), "127.0.0.1:3007");
    assert!(cfg.spec.auth.insecure);
    let rc = cfg.spec.cluster.raft.openraft_config("aof").unwrap();
    assert_eq!(rc.heartbeat_interval, 250);
}

#[test]
fn github_recovery_section() {
    let with = |recovery: &str| {
        NODE1.replace(
            "      webhook_secret_env: GITHUB_WEBHOOK_SECRET\n",
            &format!("      webhook_secret_env: GITHUB_WEBHOOK_SECRET\n      recovery:\n{recovery}"),
        )
    };
    let cfg = parse(&with(
        "        interval: 10m\n        since: 6h\n        hooks:\n          - { repo: acme/api, hook_id: 12 }\n          - { org: Acme, hook_id: 34, token_env: ACME_HOOKS_TOKEN }\n",
    ))
    .unwrap();
    let r = cfg.github().unwrap().recovery.clone().unwrap();
    assert!(r.enabled);
    assert_eq!((r.per_page, r.max_pages), (100, 20));
    assert_eq!(parse_duration(&r.since).unwrap(), std::time::Duration::from_secs(6 * 3600));
    assert_eq!(r.hooks[0].source(), "repo:acme/api/12");
    assert_eq!(r.hooks[1].source(), "org:acme/34");
    assert_eq!(r.hooks[1].api_path(), "orgs/Acme/hooks/34");

    let e = err(&with(
        "        interval: soon\n        per_page: 500\n        hooks:\n          - { repo: acme, hook_id: 0 }\n          - { repo: a/b, org: a, hook_id: 1, token_env: \"${X}\" }\n",
    ));
    assert_eq!(
        e.keys(),
        vec![
            "spec.platforms.github.recovery.interval",
            "spec.platforms.github.recovery.per_page",
            "spec.platforms.github.recovery.hooks[0].repo",
            "spec.platforms.github.recovery.hooks[0].hook_id",
            "spec.platforms.github.recovery.hooks[1]",
            "spec.platforms.github.recovery.hooks[1].token_env",
        ],
        "{e}"
    );
    // A typo in the section is an error, like everywhere.
    let e = err(&with("        intervall: 5m\n"));
    assert!(e.to_string().contains("interval"), "{e}");
}

#[test]
fn queue_max_ready_defaults_to_no_limit_and_bad_values_name_the_key() {
    assert_eq!(parse(NODE1).unwrap().spec.queue.max_ready, crate::config::DEFAULT_MAX_READY);
    let with = |v: &str| format!("{NODE1}  queue:\n    max_ready: {v}\n");
    assert_eq!(parse(&with("0")).unwrap().spec.queue.max_ready, 0);
    assert_eq!(parse(&with("25")).unwrap().spec.queue.max_ready, 25);
    let cfg = with_env(Some(NODE1), &[("AOF__QUEUE__MAX_READY", "7")]).unwrap();
    assert_eq!(cfg.spec.queue.max_ready, 7);
    // Past the cap: named, with what to do.
    let e = err(&with(&(crate::config::MAX_READY_LIMIT + 1).to_string()));
    assert_eq!(e.keys(), vec!["spec.queue.max_ready"], "{e}");
    assert!(e.to_string().contains("0 for no limit"), "{e}");
    // Negative, or not a number: a schema error on the key.
    for v in ["-1", "lots"] {
        let e = err(&with(v));
        assert_eq!(e.keys(), vec!["spec.queue.max_ready"], "{v}: {e}");
    }
}

/// A body limit past the largest payload the replicated state stores is refused
/// with the key named (it would accept bodies only to have them refused in apply).
#[test]
fn gateway_max_body_bytes_is_at_most_what_the_cluster_stores() {
    let with = |v: usize| format!("{NODE1}  gateway:\n    max_body_bytes: {v}\n");
    let max = crate::sm::payload::MAX_RAW_BYTES;
    assert_eq!(parse(&with(max)).unwrap().spec.gateway.max_body_bytes, max);
    let e = err(&with(max + 1));
    assert_eq!(e.keys(), vec!["spec.gateway.max_body_bytes"], "{e}");
    assert!(e.to_string().contains("at most"), "{e}");
}
