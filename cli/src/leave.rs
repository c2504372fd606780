//! `aofctl cluster leave --self [--if-scaled-down]`: a node removing itself, from
//! the Kubernetes preStop hook (deploy/k8s/base/statefulset.yaml) or a VM's stop
//! script.
//!
//! A StatefulSet pod is stopped for many reasons: a rolling update, an eviction, a
//! reschedule — after which it comes back with its data and must still be a member —
//! or a scale-down, after which it never comes back and must leave so the quorum does
//! not wait for it. `--if-scaled-down` tells them apart the way the StatefulSet
//! controller does: the pod's ordinal is at or above `spec.replicas` only when it is
//! being scaled away. The replica count is read from the Kubernetes API with the
//! pod's service account (RBAC: `get` on its own StatefulSet,
//! deploy/k8s/base/serviceaccount.yaml).

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use aof_client::NodeId;

/// Where a pod finds its service account.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// This host's pod name: `$HOSTNAME` (set in every pod), else the system's host name.
fn pod_name() -> anyhow::Result<String> {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(aof_node::config::system_hostname)
        .context("cannot tell this host's name (set HOSTNAME)")
}

/// This node's id: `AOF__CLUSTER__NODE_ID` (what the node itself is configured with),
/// else the StatefulSet ordinal of the host name plus one (`aof-2` → 3), as the node
/// derives it.
pub fn self_node_id() -> anyhow::Result<NodeId> {
    if let Ok(v) = std::env::var("AOF__CLUSTER__NODE_ID") {
        return v
            .trim()
            .parse()
            .with_context(|| format!("AOF__CLUSTER__NODE_ID={v:?} is not a node id"));
    }
    let host = pod_name()?;
    aof_node::config::statefulset_node_id(&host).with_context(|| {
        format!(
            "this node's id is not in AOF__CLUSTER__NODE_ID and the host name {host:?} has no StatefulSet \
             ordinal (NAME-N); use --node-id"
        )
    })
}

/// Whether this pod's StatefulSet was scaled below it: its ordinal is at or above
/// the StatefulSet's `spec.replicas`.
pub async fn scaled_down(node_id: NodeId) -> anyhow::Result<(bool, u64, String)> {
    let host = pod_name()?;
    let first = host.split('.').next().unwrap_or(&host);
    let set = match std::env::var("AOF_STATEFULSET") {
        Ok(s) if !s.is_empty() => s,
        _ => first
            .rsplit_once('-')
            .map(|(p, _)| p.to_string())
            .context("cannot tell the StatefulSet's name: set AOF_STATEFULSET")?,
    };
    let sa = PathBuf::from(std::env::var("AOF_KUBE_SERVICE_ACCOUNT_DIR").unwrap_or_else(|_| SERVICE_ACCOUNT_DIR.into()));
    let read = |name: &str| {
        std::fs::read_to_string(sa.join(name))
            .map(|s| s.trim().to_string())
            .with_context(|| format!("reading the pod's service account ({}); is automountServiceAccountToken on?", sa.join(name).display()))
    };
    let token = read("token")?;
    let namespace = read("namespace")?;
    // In a pod: the API server's Service; AOF_KUBE_API overrides it (tests, proxies).
    let api = match std::env::var("AOF_KUBE_API") {
        Ok(a) if !a.is_empty() => a,
        _ => {
            let h = std::env::var("KUBERNETES_SERVICE_HOST").context("not in a Kubernetes pod (KUBERNETES_SERVICE_HOST unset)")?;
            let p = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
            format!("https://{h}:{p}")
        }
    };
    let mut b = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10));
    if let Ok(pem) = std::fs::read(sa.join("ca.crt")) {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem).context("the service account's ca.crt")?);
    }
    let url = format!("{}/apis/apps/v1/namespaces/{namespace}/statefulsets/{set}", api.trim_end_matches('/'));
    let resp = b
        .build()?
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("asking the Kubernetes API for StatefulSet {namespace}/{set}"))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        bail!("the Kubernetes API answered {status} for StatefulSet {namespace}/{set}: {body}; the pod's service account needs `get` on it (deploy/k8s/base/serviceaccount.yaml)");
    }
    let v: serde_json::Value = resp.json().await.context("the StatefulSet is not JSON")?;
    let replicas = v["spec"]["replicas"].as_u64().unwrap_or(1);
    // node id = ordinal + 1: the pod is beyond the set when ordinal >= replicas.
    Ok((node_id > replicas, replicas, format!("{namespace}/{set}")))
}
