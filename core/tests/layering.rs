//! Architecture Invariant check: the crates depend on each other only as
//! docs/ARCHITECTURE.md draws them.
//!
//! * `aof-client` (the HTTP API and the gRPC work queue for workers) never depends
//!   on `aof-node`: a worker pulls in no Raft, no storage engine, no node runtime.
//! * `aofctl` depends on `aof-node` to run one (`aofctl serve`) and for the few
//!   node-side operations it performs offline; each use is listed in [`CLI_NODE_USES`]
//!   with its reason, and a new module reaching into `aof-node` fails this test.

use std::path::Path;
use std::process::Command;

/// Crates of `aof-client`'s normal dependency tree that would mean it pulled in
/// the node.
const CLIENT_FORBIDDEN: &[&str] = &["aof-node", "aof-core", "openraft", "sled"];

/// The `aofctl` modules that may name `aof_node`, and why.
const CLI_NODE_USES: &[(&str, &str)] = &[
    (
        "serve.rs",
        "`aofctl serve`: load the config and run a node (`aof_node::server::run`)",
    ),
    (
        "main.rs",
        "logging and OTLP traces shared with the node it serves (`aof_node::telemetry`)",
    ),
    (
        "certs.rs",
        "`aofctl certs init`: the node's certificate layout (`aof_node::tls`)",
    ),
    (
        "dev.rs",
        "`aofctl dev up`: certificates for a local cluster (`aof_node::tls`)",
    ),
    (
        "snapshot.rs",
        "`aofctl snapshot restore`: writes a node's data dir offline (`aof_node::backup`, config)",
    ),
    (
        "leave.rs",
        "`aofctl leave`: a node's own id from its config or StatefulSet host name",
    ),
    (
        "triggers.rs",
        "client-side Trigger validation (`aof_node::github::trigger`, the core's parser)",
    ),
];

fn tree(package: &str, depth: Option<u32>) -> Vec<String> {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let mut args = vec![
        "tree",
        "--offline",
        "--locked",
        "-e",
        "normal",
        "--prefix",
        "none",
        "--format",
        "{p}",
        "--manifest-path",
        manifest,
        "-p",
        package,
    ];
    let depth = depth.map(|d| d.to_string());
    if let Some(d) = &depth {
        args.extend(["--depth", d.as_str()]);
    }
    let out = Command::new(env!("CARGO"))
        .args(&args)
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn the_client_does_not_depend_on_the_node() {
    let names = tree("aof-client", None);
    assert!(
        names.iter().any(|n| n == "aof-proto"),
        "the check must see aof-client's real dependencies: {names:?}"
    );
    let found: Vec<&str> = CLIENT_FORBIDDEN
        .iter()
        .copied()
        .filter(|f| names.iter().any(|n| n == f))
        .collect();
    assert!(
        found.is_empty(),
        "aof-client must stay light (workers embed it) but depends on {found:?}"
    );
}

#[test]
fn aofctl_reaches_into_the_node_only_where_listed() {
    let direct = tree("aofctl", Some(1));
    assert!(
        direct.iter().any(|n| n == "aof-node"),
        "aofctl runs a node (`aofctl serve`), so it depends on aof-node: {direct:?}"
    );
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cli/src");
    let mut users = Vec::new();
    for entry in std::fs::read_dir(&src).expect("read cli/src") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("read a cli module");
            let uses = text
                .lines()
                .map(str::trim_start)
                .filter(|l| !l.starts_with("//"))
                .any(|l| l.contains("aof_node::"));
            if uses {
                users.push(
                    path.file_name()
                        .expect("file name")
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    users.sort();
    assert!(
        users.iter().any(|u| u == "serve.rs"),
        "the scan must see `aofctl serve`: {users:?}"
    );
    let unlisted: Vec<&String> = users
        .iter()
        .filter(|u| !CLI_NODE_USES.iter().any(|(f, _)| f == u))
        .collect();
    assert!(
        unlisted.is_empty(),
        "cli/src/{unlisted:?} use aof_node: go through aof-client (the API), aof-contract or aof-core instead, \
         or list the module in core/tests/layering.rs with its reason"
    );
}
