//! The crate stays light: nothing in its dependency tree pulls an async runtime,
//! gRPC, Raft or another crate of the workspace (they all depend on it).

#[test]
fn no_heavy_dependencies() {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--manifest-path",
            manifest,
            "-p",
            "aof-contract",
        ])
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"hmac"), "unexpected tree:\n{tree}");
    for banned in [
        "tokio",
        "tonic",
        "openraft",
        "sled",
        "axum",
        "hyper",
        "prost",
        "mio",
        "reqwest",
        "aof-core",
        "aof-node",
        "aof-client",
        "aof-proto",
    ] {
        assert!(
            !crates.contains(&banned),
            "aof-contract depends on {banned}:\n{tree}"
        );
    }
}
