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

/// Kinds of state that make a `static` mutable at run time.
const INTERIOR_MUTABILITY: &[&str] = &[
    "Mutex", "RwLock", "Cell", "RefCell", "OnceCell", "OnceLock", "LazyLock", "Lazy", "Atomic", "UnsafeCell",
];

/// Every `static` item (and `thread_local!`) of `text`, as the text up to its `;`,
/// comments dropped.
fn statics(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = [rest.find("static"), rest.find("thread_local!")].into_iter().flatten().min() {
        let before = &rest[..at];
        let after = &rest[at..];
        let end = after.find(';').map_or(after.len(), |e| e + 1);
        // An item, not the `'static` lifetime or part of a longer word.
        let starts_item = !before.ends_with('\'') && !before.ends_with(|c: char| c.is_alphanumeric() || c == '_');
        let word_ends = after["static".len().min(after.len())..].starts_with(|c: char| c.is_whitespace());
        if after.starts_with("thread_local!") || (starts_item && word_ends) {
            out.push(after[..end].split_whitespace().collect::<Vec<_>>().join(" "));
            rest = &after[end..];
        } else {
            rest = &after["static".len().min(after.len())..];
        }
    }
    out
}

fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read a source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Architecture Invariant check: `aof-core` holds no process-global mutable state
/// (a memo, a counter, a lazily built registry): what outlives one call is a value
/// its owner passes in, like `sm::triggers::TriggerCache`.
#[test]
fn aof_core_has_no_static_with_interior_mutability() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 10, "the scan must see core/src: {files:?}");
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read a core module");
        for item in statics(&text) {
            let mutable = item.starts_with("thread_local!")
                || item.contains("static mut ")
                || INTERIOR_MUTABILITY.iter().any(|m| item.contains(m));
            if mutable {
                found.push(format!("{}: {item}", file.strip_prefix(&src).unwrap_or(file).display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "aof-core must hold no global mutable state; make it a value its owner passes in:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_static_scan_sees_items_not_lifetimes() {
    let text = "fn f(x: &'static str) {}\n// static C: Mutex<u8> = ...;\nstatic MEMO: std::sync::LazyLock<Mutex<u8>> =\n    LazyLock::new(Default::default);\npub(crate) static N: u8 = 1;\nthread_local! { static T: u8 = 0; }\n";
    let items = statics(text);
    assert_eq!(items.len(), 3, "{items:?}");
    assert!(items[0].starts_with("static MEMO") && items[0].contains("LazyLock"), "{items:?}");
    assert_eq!(items[1], "static N: u8 = 1;");
    assert!(items[2].starts_with("thread_local!"), "{items:?}");
}
