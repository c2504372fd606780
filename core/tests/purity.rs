//! Architecture Invariant check: `aof-core` stays pure. Its normal dependency tree
//! must not contain an async runtime, the Raft library, a storage engine, a network
//! stack or a random source (time and planted bugs come in as parameters).

use std::process::Command;

const FORBIDDEN: &[&str] = &["tokio", "openraft", "sled", "axum", "tonic", "prost", "hyper", "rand", "mio", "reqwest"];

#[test]
fn aof_core_depends_on_no_runtime_storage_or_network_crate() {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "--locked", "-e", "normal", "--prefix", "none", "--format", "{p}", "--manifest-path", manifest, "-p", "aof-core"])
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8(out.stdout).expect("utf-8");
    let names: Vec<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(names.contains(&"aof-core"), "unexpected cargo tree output:\n{tree}");
    assert!(names.contains(&"serde"), "the check must see aof-core's real dependencies:\n{tree}");
    let found: Vec<&str> = FORBIDDEN.iter().copied().filter(|f| names.contains(f)).collect();
    assert!(found.is_empty(), "aof-core must stay pure but depends on {found:?}:\n{tree}");
}
