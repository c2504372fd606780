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

/// The modules of `node/src/http` (file stem, text without comment lines).
fn http_modules() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../node/src/http");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("read node/src/http") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("read an http module");
            let code: Vec<&str> = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect();
            let stem = path
                .file_stem()
                .expect("file stem")
                .to_string_lossy()
                .into_owned();
            out.push((stem, code.join("\n")));
        }
    }
    out.sort();
    out
}

/// The sibling modules `code` names (`super::x`, `crate::http::x`, `use super::{x, y}`).
fn http_imports(code: &str, modules: &[String]) -> Vec<String> {
    let mut names = Vec::new();
    for prefix in ["super::", "crate::http::"] {
        for (at, _) in code.match_indices(prefix) {
            let rest = &code[at + prefix.len()..];
            let group = if let Some(inner) = rest.strip_prefix('{') {
                inner
                    .split('}')
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .collect()
            } else {
                vec![rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<String>()]
            };
            for name in group {
                let name: String = name
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if modules.contains(&name) && !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    names
}

/// Architecture Invariant check (node's HTTP edge, as tokio's mini-redis lays it out):
/// handlers never import the router (`routes`) nor the assembled state (`state`; they
/// take their parts through `FromRef`), and no two modules of `node/src/http` import
/// each other, directly or through others.
#[test]
fn node_http_modules_form_no_import_circle() {
    let modules = http_modules();
    let names: Vec<String> = modules.iter().map(|(n, _)| n.clone()).collect();
    for expected in ["routes", "state", "ui", "jobs", "webhook"] {
        assert!(
            names.iter().any(|n| n == expected),
            "the scan must see node/src/http/{expected}.rs: {names:?}"
        );
    }
    let edges: Vec<(String, Vec<String>)> = modules
        .iter()
        .filter(|(n, _)| n != "mod")
        .map(|(n, code)| {
            (
                n.clone(),
                http_imports(code, &names)
                    .into_iter()
                    .filter(|m| m != "mod" && m != n)
                    .collect(),
            )
        })
        .collect();
    let wired = ["routes", "state", "serve"];
    let bad: Vec<String> = edges
        .iter()
        .filter(|(n, _)| !wired.contains(&n.as_str()))
        .flat_map(|(n, to)| {
            to.iter()
                .filter(|m| *m == "routes" || *m == "state")
                .map(move |m| format!("{n} -> {m}"))
        })
        .collect();
    assert!(bad.is_empty(), "handlers must not import the router or the assembled state (take parts via FromRef): {bad:?}");

    // Depth-first search for a circle.
    fn visit(
        n: &str,
        edges: &[(String, Vec<String>)],
        path: &mut Vec<String>,
        done: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == n) {
            let mut circle = path[at..].to_vec();
            circle.push(n.to_string());
            return Some(circle);
        }
        if done.iter().any(|d| d == n) {
            return None;
        }
        path.push(n.to_string());
        let to = edges
            .iter()
            .find(|(m, _)| m == n)
            .map(|(_, to)| to.clone())
            .unwrap_or_default();
        for m in to {
            if let Some(c) = visit(&m, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.push(n.to_string());
        None
    }
    let mut done = Vec::new();
    for (n, _) in &edges {
        let circle = visit(n, &edges, &mut Vec::new(), &mut done);
        assert!(
            circle.is_none(),
            "node/src/http modules import each other in a circle: {}",
            circle.unwrap().join(" -> ")
        );
    }
}

#[test]
fn the_http_import_scan_reads_use_groups() {
    let modules: Vec<String> = ["a", "b", "c", "state"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let code = "use super::{a, b::X};\nuse super::state::AppState;\nlet x = crate::http::c::f();\nsuper::super::z";
    assert_eq!(http_imports(code, &modules), ["a", "b", "state", "c"]);
}
