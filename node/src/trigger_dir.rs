//! `spec.triggers.directory`: AOF Trigger files applied to the registry at start,
//! idempotently (an unchanged document keeps its revision), and re-applied when a
//! file changes if `watch: true` (polled every [`WATCH_INTERVAL`]). Files removed
//! from the directory do not delete triggers (like `kubectl apply` without
//! `--prune`); use `aofctl delete trigger`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aof_contract::yamldir;
use tokio::sync::watch;

use crate::node::Node;
use crate::types::Command;
use aof_core::answers::TriggerPut;

pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// One Trigger document read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct FileTrigger {
    pub name: String,
    pub doc_json: String,
    pub origin: String,
}

/// Read every `*.yaml` / `*.yml` / `*.json` file of `dir` (sorted, multi-document;
/// the shared loader of [`aof_contract::yamldir`]), keep `kind: Trigger` documents
/// and validate them. Errors name the file, the document and the field; a file
/// that is not valid YAML is left out whole.
pub fn read_dir(dir: &Path) -> (Vec<FileTrigger>, Vec<String>) {
    let (docs, load_errors) = yamldir::load_each(dir);
    let mut errors: Vec<String> = load_errors.iter().map(ToString::to_string).collect();
    let mut out = Vec::new();
    for doc in docs.iter().filter(|d| d.kind() == Some("Trigger")) {
        let origin = doc.source();
        let Some(name) = doc.name().map(str::to_string) else {
            errors.push(format!("{origin}: metadata.name: required"));
            continue;
        };
        let body = match doc.to_json() {
            Ok(v) => serde_json::to_vec(&v).expect("JSON value serializes"),
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        match crate::registry::canonical_trigger(&name, &body) {
            Ok(doc_json) => out.push(FileTrigger { name, doc_json, origin }),
            Err(e) => errors.push(format!("{origin}: trigger {name:?}: {e}")),
        }
    }
    (out, errors)
}

/// Apply the directory once; returns how many triggers were created or changed.
pub async fn apply_once(node: &Node, dir: &Path) -> usize {
    let (triggers, errors) = read_dir(dir);
    for e in &errors {
        tracing::error!("refusing trigger document: {e}");
    }
    let mut changed = 0;
    for t in triggers {
        match node.propose(Command::put_trigger(t.name.clone(), t.doc_json, None)).await {
            Ok(TriggerPut::Put { unchanged: false, created, revision, .. }) => {
                changed += 1;
                tracing::info!("trigger/{} {} from {} (revision {revision})", t.name, if created { "created" } else { "configured" }, t.origin);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("could not apply trigger/{} from {}: {e}", t.name, t.origin),
        }
    }
    changed
}

fn fingerprint(dir: &Path) -> BTreeMap<PathBuf, (SystemTime, u64)> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let m = e.metadata().ok()?;
                    Some((e.path(), (m.modified().ok()?, m.len())))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Wait until the node is ready, apply the directory, then (with `watch`) re-apply on change.
pub async fn run(node: Arc<Node>, dir: PathBuf, watch_changes: bool, mut stop: watch::Receiver<bool>) {
    loop {
        if node.readiness().is_ok() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
    let mut seen = fingerprint(&dir);
    apply_once(&node, &dir).await;
    if !watch_changes {
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(WATCH_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = fingerprint(&dir);
        if now != seen {
            seen = now;
            tracing::info!("{} changed; re-applying triggers", dir.display());
            apply_once(&node, &dir).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRIGGER: &str = "apiVersion: aof.dev/v1\nkind: Trigger\nmetadata:\n  name: NAME\nspec:\n  type: GitHub\n  config: {github_events: [push]}\n  default_agent: bot\n";

    #[test]
    fn triggers_of_a_directory_with_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let two = format!("{}---\nkind: Agent\nmetadata: {{name: skipped}}\n", TRIGGER.replace("NAME", "b"));
        std::fs::write(dir.path().join("b.yaml"), two).unwrap();
        std::fs::write(dir.path().join("a.yml"), TRIGGER.replace("NAME", "a")).unwrap();
        std::fs::write(dir.path().join("bad.yaml"), "kind: [Trigger\n").unwrap();
        std::fs::write(dir.path().join("noname.yaml"), "kind: Trigger\nspec: {}\n").unwrap();
        let (triggers, errors) = read_dir(dir.path());
        let names: Vec<(&str, &str)> = triggers.iter().map(|t| (t.name.as_str(), t.origin.as_str())).collect();
        let b = format!("{} (document 1)", dir.path().join("b.yaml").display());
        assert_eq!(names, [("a", dir.path().join("a.yml").display().to_string().as_str()), ("b", b.as_str())]);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with(&format!("{}: invalid YAML", dir.path().join("bad.yaml").display())), "{errors:?}");
        assert_eq!(errors[1], format!("{}: metadata.name: required", dir.path().join("noname.yaml").display()));
        let (none, errors) = read_dir(&dir.path().join("missing"));
        assert!(none.is_empty() && errors[0].starts_with("cannot read"), "{errors:?}");
    }
}
