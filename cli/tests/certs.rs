//! `aofctl certs init` end to end: the files it writes, their modes, refusing to
//! overwrite, and adding a node from the existing CA.

use std::path::Path;
use std::process::Output;

use aof_node::tls::{self, PeerTls};

fn aofctl(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_aofctl"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run aofctl")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every file in `dir` with its contents, sorted by name.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn load(dir: &Path, id: u64) -> Result<PeerTls, tls::TlsError> {
    PeerTls::load(
        tls::ca_cert_path(dir),
        tls::node_cert_path(dir, id),
        tls::node_key_path(dir, id),
    )
}

#[test]
fn certs_init_writes_refuses_to_overwrite_and_adds_nodes_from_the_same_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    let dir_s = dir.to_str().unwrap();

    let out = aofctl(&["certs", "init", "--dir", dir_s, "--san", "node.example"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let mut expected = vec!["ca.crt".to_string(), "ca.key".to_string()];
    for id in 1..=5 {
        expected.push(format!("node{id}.crt"));
        expected.push(format!("node{id}.key"));
    }
    expected.sort();
    let names: Vec<String> = snapshot(&dir).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, expected);
    for name in &expected {
        let want = if name.ends_with(".key") { 0o600 } else { 0o644 };
        assert_eq!(mode(&dir.join(name)), want, "{name}");
        let path = dir.join(name).display().to_string();
        assert!(stdout.contains(&path), "{path} not reported:\n{stdout}");
    }
    // How the configs reference the files.
    assert!(stdout.contains("peer_tls:"), "{stdout}");
    assert!(
        stdout.contains(&format!("ca_file: {}", dir.join("ca.crt").display())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "cert_file: {}",
            dir.join("node{node_id}.crt").display()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "key_file: {}",
            dir.join("node{node_id}.key").display()
        )),
        "{stdout}"
    );
    for id in 1..=5 {
        assert_eq!(load(&dir, id).unwrap().node_id(), id);
    }

    // A second run changes nothing and says how to go on.
    let before = snapshot(&dir);
    let out = aofctl(&["certs", "init", "--dir", dir_s]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("refusing to overwrite") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(snapshot(&dir), before);

    // --nodes 6: node 6 from the same CA, nothing else touched.
    let out = aofctl(&["certs", "init", "--dir", dir_s, "--nodes", "6"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("existing CA") && stdout.contains("node 6"),
        "{stdout}"
    );
    let after = snapshot(&dir);
    assert_eq!(after.len(), before.len() + 2);
    for file in &before {
        assert!(after.contains(file), "{} changed", file.0);
    }
    assert_eq!(mode(&tls::node_key_path(&dir, 6)), 0o600);
    assert_eq!(load(&dir, 6).unwrap().node_id(), 6);

    // A certificate of another CA does not pass as this cluster's.
    let other = tmp.path().join("other");
    let out = aofctl(&[
        "certs",
        "init",
        "--dir",
        other.to_str().unwrap(),
        "--nodes",
        "1",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(PeerTls::load(
        tls::ca_cert_path(&dir),
        tls::node_cert_path(&other, 1),
        tls::node_key_path(&other, 1)
    )
    .is_err());

    // --force: a new CA; the old node 6 no longer belongs to it.
    let out = aofctl(&["certs", "init", "--dir", dir_s, "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_ne!(
        std::fs::read(tls::ca_cert_path(&dir)).unwrap(),
        before.iter().find(|f| f.0 == "ca.crt").unwrap().1
    );
    assert_eq!(load(&dir, 5).unwrap().node_id(), 5);
    assert!(load(&dir, 6).is_err());
}

#[test]
fn certs_init_rejects_bad_arguments_without_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    let dir_s = dir.to_str().unwrap();
    let out = aofctl(&["certs", "init", "--dir", dir_s, "--nodes", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = aofctl(&["certs", "init", "--dir", dir_s, "--san", "aof-node-9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("aof-node-9"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dir.exists());
}
