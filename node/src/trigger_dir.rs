//! `spec.triggers.directory`: AOF Trigger files applied to the registry at start,
//! idempotently (an unchanged document keeps its revision), and re-applied when a
//! file changes if `watch: true` (polled every [`WATCH_INTERVAL`]). Files removed
//! from the directory do not delete triggers (like `kubectl apply` without
//! `--prune`); use `aofctl delete trigger`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tokio::sync::watch;

use crate::node::Node;
use crate::types::{Command, Response};

pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// One Trigger document read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct FileTrigger {
    pub name: String,
    pub doc_json: String,
    pub origin: String,
}

/// Read every `*.yaml` / `*.yml` / `*.json` file of `dir` (sorted), split multi-document
/// YAML, keep `kind: Trigger` documents and validate them. Errors name the file, the
/// document and the field.
pub fn read_dir(dir: &Path) -> (Vec<FileTrigger>, Vec<String>) {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().and_then(|x| x.to_str()).is_some_and(|x| matches!(x, "yaml" | "yml" | "json")))
            .collect(),
        Err(e) => return (vec![], vec![format!("{}: cannot read the triggers directory: {e}", dir.display())]),
    };
    files.sort();
    let (mut out, mut errors) = (Vec::new(), Vec::new());
    for f in files {
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{}: {e}", f.display()));
                continue;
            }
        };
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let origin = format!("{} (document {})", f.display(), i + 1);
            let value = match serde_json::Value::deserialize(doc) {
                Ok(v) if v.is_null() => continue,
                Ok(v) => v,
                Err(e) => {
                    errors.push(format!("{origin}: invalid YAML: {e}"));
                    continue;
                }
            };
            if value.get("kind").and_then(|k| k.as_str()) != Some("Trigger") {
                continue;
            }
            let Some(name) = value.pointer("/metadata/name").and_then(|n| n.as_str()).map(str::to_string) else {
                errors.push(format!("{origin}: metadata.name: required"));
                continue;
            };
            let body = serde_json::to_vec(&value).expect("JSON value serializes");
            match crate::registry::canonical_trigger(&name, &body) {
                Ok(doc_json) => out.push(FileTrigger { name, doc_json, origin }),
                Err(e) => errors.push(format!("{origin}: trigger {name:?}: {e}")),
            }
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
        match node.write(Command::PutTrigger { name: t.name.clone(), doc_json: t.doc_json, if_match: None }).await {
            Ok((Response::TriggerPut { unchanged: false, created, revision, .. }, _)) => {
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
