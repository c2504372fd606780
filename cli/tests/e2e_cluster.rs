//! End to end with real processes: three `aofctl serve` nodes on loopback with real
//! tokens and peer certificates made for this run, SIGKILL of the leader, restart
//! with data, and `aofctl config set-context`, `cluster join/leave/status`,
//! `apply/get/delete` and `doctor` as a user runs them — against the API listeners,
//! with the tokens a user would have.

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use aof_client::{Client, Consistency};

mod common;
use common::{aofctl_cmd, write_config, Auth, Creds, Ports};

struct Proc {
    id: u64,
    ports: Ports,
    config: PathBuf,
    log: PathBuf,
    creds: Creds,
    child: Option<Child>,
}

impl Proc {
    fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.api)
    }
    fn public(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.http)
    }
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut cmd = common::serve(&self.config);
        self.creds.node_env(&mut cmd);
        let child = cmd
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn aofctl serve");
        self.child = Some(child);
    }
    /// SIGKILL: no graceful shutdown, no flush beyond what the node already did.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
    /// `--peer-addr ... --http-addr ...` of `cluster join`.
    fn join_args(&self) -> Vec<String> {
        let a = |p: u16| format!("127.0.0.1:{p}");
        [
            ("--node-id", self.id.to_string()),
            ("--peer-addr", a(self.ports.peer)),
            ("--grpc-addr", a(self.ports.grpc)),
            ("--api-addr", a(self.ports.api)),
            ("--http-addr", a(self.ports.http)),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_string(), v])
        .collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `aofctl ARGS` with aofctl's config file in `dir` (its contexts) and nothing
/// from the caller's environment.
fn aofctl(dir: &Path, args: &[&str]) -> Output {
    aofctl_cmd(dir).args(args).output().expect("run aofctl")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

async fn wait_until<F, Fut>(what: &str, secs: u64, procs: &[Proc], f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let dump = || {
        for p in procs {
            eprintln!("---- log of node {} ----\n{}", p.id, std::fs::read_to_string(&p.log).unwrap_or_default());
        }
    };
    common::wait_until(what, secs, dump, f).await
}

async fn all_ready(procs: &[Proc]) -> bool {
    common::all_ready(procs.iter().filter(|p| p.child.is_some()).map(Proc::public)).await
}

fn trigger_yaml(name: &str) -> String {
    format!("apiVersion: aof.dev/v1\nkind: Trigger\nmetadata:\n  name: {name}\nspec:\n  type: GitHub\n  config:\n    github_events: [push]\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_survive_sigkill_of_the_leader_and_cli_manages_membership() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let creds = Creds::new(d);
    // Node 5 has a certificate of another CA: the cluster must refuse it.
    let rogue = Creds { certs: Creds::new(&d.join("rogue")).certs, ..creds.clone() };
    let ports: Vec<(u64, Ports)> = (1..=5).map(|id| (id, Ports::free())).collect();
    let initial = &ports[..3];
    let mut procs: Vec<Proc> = ports
        .iter()
        .map(|&(id, p)| {
            let members = if id <= 3 { initial } else { &[][..] };
            let c = if id == 5 { &rogue } else { &creds };
            Proc {
                id,
                ports: p,
                config: write_config(d, "e2e", id, p, members, "", Auth::Secure(c)),
                log: d.join(format!("node{id}.log")),
                creds: c.clone(),
                child: None,
            }
        })
        .collect();
    // Start 1-3 in reverse order: formation must not depend on who comes first.
    for i in (0..3).rev() {
        procs[i].start();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_until("three nodes ready", 60, &procs, || all_ready(&procs[..3])).await;
    let all: Vec<String> = procs[..3].iter().map(Proc::api).collect();
    let client = creds.admin_client(all.clone());

    // A context, as a user records one: afterwards no command needs flags.
    let o = aofctl(d, &["config", "set-context", "e2e", "--api", &all.join(","), "--token", &creds.admin]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("context \"e2e\" created (current)"), "{}", text(&o));
    let o = aofctl(d, &["config", "get-contexts"]);
    assert!(text(&o).contains("*         e2e") && !text(&o).contains(&creds.admin), "{}", text(&o));

    // `aofctl cluster status` prints a table naming every member's listeners.
    let o = aofctl(d, &["cluster", "status"]);
    assert!(o.status.success(), "{}", text(&o));
    let table = text(&o);
    for p in &procs[..3] {
        for port in [p.ports.api, p.ports.grpc, p.ports.http, p.ports.peer] {
            assert!(table.contains(&format!("127.0.0.1:{port}")), "status table lacks node {}'s {port}: {table}", p.id);
        }
    }

    // The tokens decide: none → 401 saying what to set; read → reads only; the
    // public listener is not the API.
    let o = aofctl(d, &["get", "triggers", "--context", "none-such"]);
    assert!(!o.status.success() && text(&o).contains("no context named \"none-such\""), "{}", text(&o));
    let empty = d.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = aofctl(&empty, &["get", "triggers", "--endpoint", &all[0]]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("no token was sent") && text(&o).contains("AOF_TOKEN"), "{}", text(&o));
    let o = aofctl(&empty, &["get", "triggers", "--endpoint", &all[0], "--token", &creds.read]);
    assert!(o.status.success(), "{}", text(&o));
    let o = aofctl(&empty, &["get", "triggers", "--endpoint", &procs[0].public(), "--token", &creds.read]);
    assert!(!o.status.success() && text(&o).contains("does not serve the API"), "{}", text(&o));

    // `aofctl apply -f` a directory of triggers via a follower (context token).
    let tdir = d.join("triggers");
    std::fs::create_dir(&tdir).unwrap();
    std::fs::write(tdir.join("a.yaml"), format!("{}---\n{}", trigger_yaml("alpha"), trigger_yaml("beta"))).unwrap();
    let o = aofctl_cmd(d)
        .args(["apply", "-f", tdir.to_str().unwrap()])
        .env("AOF_TOKEN", &creds.read)
        .output()
        .unwrap();
    assert!(!o.status.success(), "a read token cannot apply: {}", text(&o));
    assert!(text(&o).contains("changes need an admin token"), "{}", text(&o));
    let o = aofctl(d, &["apply", "-f", tdir.to_str().unwrap(), "--endpoint", &all[2]]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("trigger/alpha created") && text(&o).contains("trigger/beta created"), "{}", text(&o));
    let o = aofctl(d, &["apply", "-f", tdir.to_str().unwrap(), "--endpoint", &all[0]]);
    assert!(text(&o).contains("trigger/alpha unchanged"), "{}", text(&o));
    let alpha_rev = client.get_trigger("alpha", Consistency::Linearizable).await.unwrap().revision;

    // A backup: only an admin token may take one (it holds every secret); the file
    // checks out and names the state's last index.
    let snap = d.join("backup.aofsnap");
    let o = aofctl(&empty, &["snapshot", "save", snap.to_str().unwrap(), "--endpoint", &all[0], "--token", &creds.read]);
    assert!(!o.status.success() && text(&o).contains("needs an admin token"), "{}", text(&o));
    assert!(!snap.exists());
    let o = aofctl(d, &["snapshot", "save", snap.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("sha256 "), "{}", text(&o));
    let o = aofctl(d, &["snapshot", "status", snap.to_str().unwrap(), "-o", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(st["last_log_index"].as_u64().unwrap() >= alpha_rev, "{st}");
    assert_eq!(st["members"].as_array().unwrap().len(), 3, "{st}");
    let mut bytes = std::fs::read(&snap).unwrap();
    bytes[20] ^= 1;
    std::fs::write(&snap, &bytes).unwrap();
    let o = aofctl(d, &["snapshot", "status", snap.to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("corrupt"), "{}", text(&o));

    // SIGKILL the leader: a new leader is elected and writes continue.
    let status = client.cluster_status(Consistency::Linearizable).await.unwrap();
    let leader = status.leader_id.expect("a leader");
    let li = procs.iter().position(|p| p.id == leader).unwrap();
    procs[li].kill9();
    let survivors: Vec<String> = procs[..3].iter().filter(|p| p.child.is_some()).map(Proc::api).collect();
    let sclient = creds.admin_client(survivors.clone());
    wait_until("a new leader after SIGKILL", 30, &procs, || async {
        matches!(sclient.cluster_status(Consistency::Linearizable).await, Ok(s) if s.leader_id.is_some_and(|l| l != leader))
    })
    .await;
    let o = aofctl(d, &["apply", "-f", tdir.to_str().unwrap(), "--endpoint", &survivors[0]]);
    assert!(o.status.success(), "write after failover: {}", text(&o));
    let o = aofctl(d, &["delete", "trigger", "beta", "--endpoint", &survivors[1]]);
    assert!(o.status.success(), "{}", text(&o));

    // The killed node restarts from its data: same revisions, and it catches up.
    procs[li].start();
    wait_until("restarted node ready", 60, &procs, || all_ready(&procs[..3])).await;
    let only_restarted = creds.admin_client(vec![procs[li].api()]);
    assert_eq!(only_restarted.get_trigger("alpha", Consistency::Linearizable).await.unwrap().revision, alpha_rev);
    let err = only_restarted.get_trigger("beta", Consistency::Linearizable).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");

    // Node 5 presents a certificate of another CA: the leader refuses to add it
    // (it would receive the whole log otherwise).
    procs[4].start();
    wait_until("node 5 answers /health", 30, &procs, || {
        let c = Client::new(vec![procs[4].public()]);
        async move { c.health().await.is_ok() }
    })
    .await;
    let args5 = procs[4].join_args();
    let mut a: Vec<&str> = vec!["cluster", "join", "--timeout", "20s"];
    a.extend(args5.iter().map(String::as_str));
    let o = aofctl(d, &a);
    assert!(!o.status.success(), "a node of another CA must not join: {}", text(&o));
    assert!(text(&o).contains("did not answer over the peer listener"), "{}", text(&o));
    assert!(client.cluster_status(Consistency::Linearizable).await.unwrap().member(5).is_none());
    procs[4].kill9();

    // Node 4 starts with no initial members: it waits; `aofctl cluster join` adds it.
    procs[3].start();
    wait_until("node 4 answers /health", 30, &procs, || {
        let c = Client::new(vec![procs[3].public()]);
        async move { c.health().await.is_ok() }
    })
    .await;
    let args4 = procs[3].join_args();
    let joined = all.join(",");
    let mut a: Vec<&str> = vec!["cluster", "join", "--endpoint", &joined];
    a.extend(args4.iter().map(String::as_str));
    let o = aofctl(d, &a);
    assert!(o.status.success(), "join: {}", text(&o));
    let s = client.cluster_status(Consistency::Linearizable).await.unwrap();
    assert_eq!(s.members.len(), 4);
    let m4 = s.member(4).expect("node 4 is a member");
    assert_eq!(serde_json::to_value(m4.role).unwrap(), "voter");
    assert_eq!(
        (m4.peer_addr.clone(), m4.api_addr.clone()),
        (format!("127.0.0.1:{}", procs[3].ports.peer), format!("127.0.0.1:{}", procs[3].ports.api))
    );
    wait_until("node 4 ready", 30, &procs, || all_ready(&procs[..4])).await;
    let c4 = creds.admin_client(vec![procs[3].api()]);
    assert_eq!(c4.get_trigger("alpha", Consistency::Linearizable).await.unwrap().revision, alpha_rev);

    // The preStop hook of a StatefulSet pod `aof-3` (node 4): `cluster leave --self
    // --if-scaled-down` asks the Kubernetes API (a fake one here) for the replica
    // count. With 4 replicas it is a restart: the node stays a member. With 3 it
    // was scaled away: it leaves.
    let (kube, replicas, seen_auth) = fake_kube_api().await;
    let sa = d.join("serviceaccount");
    std::fs::create_dir_all(&sa).unwrap();
    std::fs::write(sa.join("token"), "sa-token\n").unwrap();
    std::fs::write(sa.join("namespace"), "prod\n").unwrap();
    let pre_stop = || {
        aofctl_cmd(d)
            .args(["cluster", "leave", "--self", "--if-scaled-down", "--endpoint", &all.join(",")])
            .env("HOSTNAME", "aof-3")
            .env_remove("AOF__CLUSTER__NODE_ID")
            .env("AOF_KUBE_API", &kube)
            .env("AOF_KUBE_SERVICE_ACCOUNT_DIR", &sa)
            .output()
            .unwrap()
    };
    replicas.store(4, std::sync::atomic::Ordering::SeqCst);
    let o = pre_stop();
    assert!(o.status.success() && text(&o).contains("node 4 stays a member"), "{}", text(&o));
    assert_eq!(client.cluster_status(Consistency::Linearizable).await.unwrap().members.len(), 4);
    assert_eq!(seen_auth.lock().unwrap().as_deref(), Some("GET /apis/apps/v1/namespaces/prod/statefulsets/aof Bearer sa-token"));
    replicas.store(3, std::sync::atomic::Ordering::SeqCst);
    let o = pre_stop();
    assert!(o.status.success(), "leave: {}", text(&o));
    assert!(text(&o).contains("node 4 was scaled away"), "{}", text(&o));
    let o = aofctl(d, &["cluster", "status", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    assert_eq!(v["members"].as_array().unwrap().len(), 3, "{v}");

    // `aofctl doctor`: healthy cluster → exit 0 with an OK quorum line, and each
    // member's public and API listeners answered (no WARN about them).
    let o = aofctl(d, &["doctor"]);
    assert!(o.status.success(), "doctor on a healthy cluster: {}", text(&o));
    assert!(text(&o).contains("OK   quorum"), "{}", text(&o));
    for bad in ["WARN public", "WARN metrics", "WARN member"] {
        assert!(!text(&o).contains(bad), "{}", text(&o));
    }
    // A majority down → FAIL and a non-zero exit.
    let down: Vec<usize> = (0..3).filter(|&i| i != li).take(2).collect();
    for &i in &down {
        procs[i].kill9();
    }
    let o = aofctl(d, &["doctor", "--request-timeout", "3s"]);
    assert!(!o.status.success(), "doctor with a majority down must fail: {}", text(&o));
    assert!(text(&o).contains("FAIL quorum"), "{}", text(&o));

    // A command against a dead endpoint list fails with a clear message naming it.
    let o = aofctl(d, &["get", "triggers", "--endpoint", "http://127.0.0.1:1"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("127.0.0.1:1"), "{}", text(&o));
}

/// A Kubernetes API that knows one StatefulSet with a settable replica count; it
/// records the path and bearer token of the last request.
async fn fake_kube_api() -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>, std::sync::Arc<std::sync::Mutex<Option<String>>>) {
    use axum::extract::State;
    type Shared = (std::sync::Arc<std::sync::atomic::AtomicU64>, std::sync::Arc<std::sync::Mutex<Option<String>>>);
    let shared: Shared = Default::default();
    let app = axum::Router::new()
        .fallback(|State((replicas, seen)): State<Shared>, req: axum::extract::Request| async move {
            let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            *seen.lock().unwrap() = Some(format!("{} {} {auth}", req.method(), req.uri().path()));
            axum::Json(serde_json::json!({
                "kind": "StatefulSet",
                "spec": { "replicas": replicas.load(std::sync::atomic::Ordering::SeqCst) }
            }))
        })
        .with_state(shared.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, shared.0, shared.1)
}
