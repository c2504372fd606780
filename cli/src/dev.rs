//! `aofctl dev`: a local 3-node cluster for development.
//!
//! Starts nodes 1-3 as child processes (`<this binary> serve --config
//! DIR/nodeN.yaml`), each logging to `data/logs/nodeN.log`, waits until all
//! three are ready, prints the cluster status and what to try next, then runs
//! until Ctrl-C (SIGINT) or SIGTERM and stops the nodes (SIGTERM, then SIGKILL
//! after 10 s). Every wait is bounded.
//!
//! The children run in their own process group, so a Ctrl-C in the terminal
//! reaches only `aofctl dev`, which then stops them in order. On Linux they also
//! get SIGTERM if `aofctl dev` itself dies.
//!
//! Webhooks: the local configs verify signatures with `$GITHUB_WEBHOOK_SECRET`.
//! When it is unset, `dev` generates a random secret for the three nodes and
//! prints it; either way it prints a signed `curl` delivery (to a node's public
//! listener) that works as printed.
//!
//! Credentials, so that the configs' real security works locally too:
//! - the peer certificates the configs name (`spec.cluster.peer_tls`,
//!   `./data/certs/`) are created with `aofctl certs init` when missing;
//! - `AOF_ADMIN_TOKEN`, `AOF_READ_TOKEN` and `AOF_WORKER_TOKEN` are taken from the
//!   environment, or generated when unset, passed to the nodes and printed;
//! - a context named `dev` (the nodes' API and gRPC endpoints, the admin and
//!   worker tokens) is written to aofctl's config file and made current, so
//!   `aofctl cluster status` or `aofctl worker -- cat` in another terminal need no
//!   flags.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use aof_client::{Client, Consistency};
use clap::Args;
use tokio::process::{Child, Command};

use crate::context::{self, ConfigFile, Context as AofContext};
use crate::signals::Shutdown;
use crate::GlobalArgs;

const NODES: [u64; 3] = [1, 2, 3];
const LOG_DIR: &str = "data/logs";
const STOP_GRACE: Duration = Duration::from_secs(10);
const LOG_TAIL_LINES: usize = 30;

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Directory with node1.yaml, node2.yaml, node3.yaml (and node4.yaml to try a join).
    #[arg(long, value_name = "DIR", default_value = "cluster-configs/local")]
    pub configs: PathBuf,
    /// How long to wait for all three nodes to be ready.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = crate::parse_duration)]
    pub ready_timeout: Duration,
}

/// What `dev` needs from a node's config file (read leniently: the node
/// itself validates it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddrs {
    pub node_id: u64,
    /// host:port of its public listener (webhooks, /health, /ready), as reached
    /// from this machine.
    pub http_addr: String,
    /// host:port of its API listener.
    pub api_addr: String,
    /// host:port of its workers' gRPC listener.
    pub grpc_addr: String,
    /// host:port of its peer listener.
    pub peer_addr: String,
}

/// Reads `spec.server.{host,port}` and `spec.cluster.{node_id,api_addr,grpc_addr,
/// peer_addr}`, defaulting to the local layout (public 300N, gRPC 400N, API 500N,
/// peers 600N) where absent; a bind on every interface is reached on 127.0.0.1.
pub fn node_addrs(text: &str, n: u64) -> NodeAddrs {
    let v: serde_yaml::Value = serde_yaml::from_str(text).unwrap_or(serde_yaml::Value::Null);
    let spec = &v["spec"];
    let host = match spec["server"]["host"].as_str() {
        None | Some("0.0.0.0") | Some("::") | Some("[::]") | Some("") => "127.0.0.1",
        Some(h) => h,
    };
    let port = spec["server"]["port"].as_u64().unwrap_or(3000 + n);
    let addr = |key: &str, base: u64| {
        spec["cluster"][key]
            .as_str()
            .map(|a| a.replace("0.0.0.0:", "127.0.0.1:").replace("[::]:", "127.0.0.1:"))
            .unwrap_or_else(|| format!("127.0.0.1:{}", base + n))
    };
    NodeAddrs {
        node_id: spec["cluster"]["node_id"].as_u64().unwrap_or(n),
        http_addr: format!("{host}:{port}"),
        api_addr: addr("api_addr", 5000),
        grpc_addr: addr("grpc_addr", 4000),
        peer_addr: addr("peer_addr", 6000),
    }
}

/// The directory of the peer certificates a node config names
/// (`spec.cluster.peer_tls.ca_file`'s directory); `None` without `peer_tls`.
pub fn certs_dir(text: &str) -> Option<PathBuf> {
    let v: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
    let ca = v["spec"]["cluster"]["peer_tls"]["ca_file"].as_str()?;
    Some(Path::new(ca).parent().map(Path::to_path_buf).unwrap_or_default())
}

/// Creates the CA and node certificates in `dir` unless the CA and nodes 1-3's
/// files are all there; what was done, for the user.
pub fn ensure_certs(dir: &Path) -> anyhow::Result<Option<String>> {
    use aof_node::tls;
    let complete = tls::ca_cert_path(dir).exists()
        && NODES.iter().all(|&id| tls::node_cert_path(dir, id).exists() && tls::node_key_path(dir, id).exists());
    if complete {
        return Ok(None);
    }
    match tls::init_certs(&tls::CertsInit::new(dir)) {
        Ok(r) => Ok(Some(format!(
            "{} the peer certificates of nodes {} in {} (as `aofctl certs init --dir {}` does)",
            if r.ca_created { "created a cluster CA and" } else { "issued from the existing CA" },
            r.issued.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
            dir.display(),
            dir.display()
        ))),
        Err(tls::CertsError::NothingMissing { .. }) => Ok(None),
        Err(e) => Err(e).with_context(|| {
            format!("creating the dev cluster's peer certificates in {} (see `aofctl certs init --help`)", dir.display())
        }),
    }
}

struct Node {
    id: u64,
    addrs: NodeAddrs,
    log: PathBuf,
    child: Child,
    /// Exit status once it has exited.
    exited: Option<ExitStatus>,
}

impl Node {
    fn check_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
            }
        }
        self.exited
    }
}

/// The last `n` lines of a log file.
fn tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

fn report_exit(node: &Node, status: ExitStatus) {
    eprintln!(
        "node {} exited ({status}); last lines of {}:\n{}\n",
        node.id,
        node.log.display(),
        indent(&tail(&node.log, LOG_TAIL_LINES))
    );
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The environment variable the shipped configs read the webhook secret from.
pub const SECRET_ENV: &str = "GITHUB_WEBHOOK_SECRET";

/// The webhook secret of the dev cluster, and whether `dev` generated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevSecret {
    pub value: String,
    pub generated: bool,
}

impl DevSecret {
    /// `$GITHUB_WEBHOOK_SECRET` if set and not empty, else a new random one.
    pub fn from_env() -> anyhow::Result<DevSecret> {
        match std::env::var(SECRET_ENV) {
            Ok(v) if !v.is_empty() => Ok(DevSecret {
                value: v,
                generated: false,
            }),
            _ => Ok(DevSecret {
                value: crate::webhook::random_secret()?,
                generated: true,
            }),
        }
    }
}

/// A token of the dev cluster, and whether `dev` generated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevToken {
    /// The environment variable the local configs read it from.
    pub env: &'static str,
    pub value: String,
    pub generated: bool,
}

/// The three tokens of the local configs: admin, read, worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevTokens {
    pub admin: DevToken,
    pub read: DevToken,
    pub worker: DevToken,
}

impl DevTokens {
    /// `$AOF_ADMIN_TOKEN`, `$AOF_READ_TOKEN`, `$AOF_WORKER_TOKEN` where set and not
    /// empty, else new random ones.
    pub fn from_env() -> anyhow::Result<DevTokens> {
        let one = |env: &'static str| -> anyhow::Result<DevToken> {
            Ok(match std::env::var(env) {
                Ok(v) if !v.trim().is_empty() => DevToken { env, value: v.trim().to_string(), generated: false },
                _ => DevToken { env, value: crate::webhook::random_secret()?, generated: true },
            })
        };
        Ok(DevTokens { admin: one("AOF_ADMIN_TOKEN")?, read: one("AOF_READ_TOKEN")?, worker: one("AOF_WORKER_TOKEN")? })
    }

    fn all(&self) -> [&DevToken; 3] {
        [&self.admin, &self.read, &self.worker]
    }
}

/// Records the `dev` context (API and gRPC endpoints, admin and worker tokens)
/// in aofctl's config file and makes it current; the file's path.
pub fn record_context(api: &[String], grpc: &[String], tokens: &DevTokens) -> anyhow::Result<PathBuf> {
    record_context_at(&context::config_path()?, api, grpc, tokens)
}

/// [`record_context`] into the config file at `path`.
pub fn record_context_at(path: &Path, api: &[String], grpc: &[String], tokens: &DevTokens) -> anyhow::Result<PathBuf> {
    let path = path.to_path_buf();
    let mut file = ConfigFile::load(&path)?;
    file.upsert(AofContext {
        name: DEV_CONTEXT.into(),
        api: api.iter().map(|a| format!("http://{a}")).collect(),
        grpc: grpc.iter().map(|a| format!("grpc://{a}")).collect(),
        token: Some(tokens.admin.value.clone()),
        worker_token: Some(tokens.worker.value.clone()),
        ..AofContext::default()
    });
    file.current_context = Some(DEV_CONTEXT.into());
    file.save(&path)?;
    Ok(path)
}

/// The name of the context `dev` records.
pub const DEV_CONTEXT: &str = "dev";

fn spawn(
    exe: &Path,
    config: &Path,
    log: &Path,
    log_level: Option<&str>,
    secret: &DevSecret,
    tokens: &DevTokens,
) -> anyhow::Result<Child> {
    let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .args(["--log-format", "text"]);
    if let Some(level) = log_level {
        cmd.args(["--log-level", level]);
    }
    cmd.env(SECRET_ENV, &secret.value);
    for t in tokens.all() {
        cmd.env(t.env, &t.value);
    }
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true);
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().with_context(|| {
        format!(
            "cannot start {} serve --config {}",
            exe.display(),
            config.display()
        )
    })
}

pub async fn run(args: DevArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let mut signals = Shutdown::new().context("installing SIGINT/SIGTERM handlers")?;
    let exe = std::env::current_exe().context("cannot find the aofctl executable")?;

    let mut plan = Vec::new();
    for n in NODES {
        let config = args.configs.join(format!("node{n}.yaml"));
        let text = std::fs::read_to_string(&config).with_context(|| {
            format!(
                "cannot read {}; run from the repository root or pass --configs DIR",
                config.display()
            )
        })?;
        plan.push((n, config, node_addrs(&text, n)));
    }

    // Nothing may already answer on these addresses (e.g. an earlier `aofctl dev`).
    for (n, _, addrs) in &plan {
        let probe = Client::builder(vec![addrs.http_addr.clone()])
            .request_timeout(Duration::from_secs(1))
            .build();
        if probe.health().await.is_ok() {
            bail!(
                "something already answers on {} (node {n}'s HTTP address); stop it first (another `aofctl dev`?)",
                addrs.http_addr
            );
        }
    }

    // The peer certificates the configs name, when missing.
    let certs = match std::fs::read_to_string(&plan[0].1).ok().as_deref().and_then(certs_dir) {
        Some(dir) => ensure_certs(&dir)?,
        None => None,
    };
    if let Some(note) = &certs {
        eprintln!("{note}");
    }
    let tokens = DevTokens::from_env()?;
    let secret = DevSecret::from_env()?;
    let delivery_id = crate::webhook::random_delivery_id()?;
    std::fs::create_dir_all(LOG_DIR).with_context(|| format!("cannot create {LOG_DIR}"))?;
    let mut nodes = Vec::new();
    for (n, config, addrs) in plan {
        let log = Path::new(LOG_DIR).join(format!("node{n}.log"));
        match spawn(&exe, &config, &log, global.log_level.as_deref(), &secret, &tokens) {
            Ok(child) => {
                eprintln!(
                    "started node {n} (pid {}), log: {}",
                    child.id().unwrap_or(0),
                    log.display()
                );
                nodes.push(Node {
                    id: n,
                    addrs,
                    log,
                    child,
                    exited: None,
                });
            }
            Err(e) => {
                stop_all(&mut nodes).await;
                return Err(e);
            }
        }
    }

    eprintln!(
        "waiting for the nodes to be ready (at most {})...",
        crate::output::human_age(args.ready_timeout)
    );
    match wait_ready(&mut nodes, &mut signals, args.ready_timeout).await {
        Ok(true) => {}
        Ok(false) => {
            // Interrupted by the user.
            stop_all(&mut nodes).await;
            return Ok(ExitCode::from(130));
        }
        Err(e) => {
            stop_all(&mut nodes).await;
            return Err(e);
        }
    }

    let public: Vec<String> = nodes.iter().map(|n| n.addrs.http_addr.clone()).collect();
    let api: Vec<String> = nodes.iter().map(|n| n.addrs.api_addr.clone()).collect();
    let grpc: Vec<String> = nodes.iter().map(|n| n.addrs.grpc_addr.clone()).collect();
    let make = |eps: Vec<String>| {
        Client::builder(eps)
            .token(tokens.admin.value.clone())
            .request_timeout(Duration::from_secs(5))
            .build()
    };
    let client = make(api.iter().map(|a| format!("http://{a}")).collect());
    println!();
    match crate::cluster::status_via_leader(&client, Consistency::Linearizable, &make).await {
        Ok(status) => print!("{}", crate::cluster::render_status(&status)),
        Err(e) => eprintln!("warning: cannot read the cluster status: {e}"),
    }
    let recorded = record_context(&api, &grpc, &tokens);
    if let Err(e) = &recorded {
        eprintln!("warning: cannot record the `{DEV_CONTEXT}` context ({e:#}); pass --endpoint and --token to aofctl instead");
    }
    let addrs = Addrs { public: &public, api: &api, grpc: &grpc };
    println!(
        "{}",
        next_steps(&args.configs, &addrs, &secret, &tokens, recorded.ok().as_deref(), &delivery_id)
    );

    // Run until a signal; report nodes that die meanwhile (stopping one is a
    // fine experiment, so the others keep running).
    let mut code = ExitCode::SUCCESS;
    loop {
        tokio::select! {
            name = signals.recv() => {
                eprintln!("\nreceived {name}; stopping the nodes");
                break;
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                for node in nodes.iter_mut() {
                    let was_running = node.exited.is_none();
                    if let (true, Some(status)) = (was_running, node.check_exit()) {
                        report_exit(node, status);
                    }
                }
                if nodes.iter().all(|n| n.exited.is_some()) {
                    eprintln!("all nodes have exited");
                    code = ExitCode::from(1);
                    break;
                }
            }
        }
    }
    stop_all(&mut nodes).await;
    Ok(code)
}

/// Waits until every node answers 200 on /ready. `Ok(false)` if a signal came
/// first; an error if a node exits or the time runs out.
async fn wait_ready(
    nodes: &mut [Node],
    signals: &mut Shutdown,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let deadline = Instant::now() + timeout;
    let clients: Vec<Client> = nodes
        .iter()
        .map(|n| {
            Client::builder(vec![n.addrs.http_addr.clone()])
                .request_timeout(Duration::from_secs(1))
                .build()
        })
        .collect();
    let mut ready = vec![false; nodes.len()];
    let mut last_error: Vec<Option<String>> = vec![None; nodes.len()];
    loop {
        for (i, node) in nodes.iter_mut().enumerate() {
            if let Some(status) = node.check_exit() {
                report_exit(node, status);
                bail!(
                    "node {} exited during startup ({status}); see {}",
                    node.id,
                    node.log.display()
                );
            }
            if !ready[i] {
                match clients[i].ready().await {
                    Ok(r) if r.ready => ready[i] = true,
                    Ok(_) => last_error[i] = Some("not ready yet".into()),
                    Err(e) => last_error[i] = Some(e.to_string()),
                }
            }
        }
        if ready.iter().all(|r| *r) {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            let waiting: Vec<String> = nodes
                .iter()
                .zip(&ready)
                .zip(&last_error)
                .filter(|((_, r), _)| !**r)
                .map(|((n, _), e)| {
                    format!(
                        "node {} ({}): {}",
                        n.id,
                        n.log.display(),
                        e.as_deref().unwrap_or("no answer")
                    )
                })
                .collect();
            bail!(
                "the cluster was not ready within {}; still waiting for {}",
                crate::output::human_age(timeout),
                waiting.join("; ")
            );
        }
        tokio::select! {
            name = signals.recv() => {
                eprintln!("received {name}; stopping the nodes");
                return Ok(false);
            }
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// SIGTERM to every running node, then wait up to [`STOP_GRACE`] for all,
/// then SIGKILL the rest.
async fn stop_all(nodes: &mut [Node]) {
    for node in nodes.iter_mut() {
        if node.check_exit().is_none() {
            if let Some(pid) = node.child.id() {
                // SAFETY: plain kill(2) on our own child's pid.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGTERM);
                }
            }
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    loop {
        let running = nodes
            .iter_mut()
            .map(|n| n.check_exit())
            .filter(Option::is_none)
            .count();
        if running == 0 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for node in nodes.iter_mut() {
        match node.check_exit() {
            Some(status) => eprintln!("node {} stopped ({status})", node.id),
            None => {
                eprintln!(
                    "node {} did not stop within {}s; killing it",
                    node.id,
                    STOP_GRACE.as_secs()
                );
                let _ = node.child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), node.child.wait()).await;
            }
        }
    }
}

/// How to run `aofctl` again: the path it was started with when that is not
/// just `aofctl` on PATH (e.g. `target/debug/aofctl` under cargo run).
fn program_name() -> String {
    let arg0 = std::env::args().next().unwrap_or_else(|| "aofctl".into());
    if arg0.contains('/') {
        arg0
    } else {
        "aofctl".into()
    }
}

/// Where the webhook secret came from, and how to use it elsewhere.
fn secret_note(secret: &DevSecret) -> String {
    if secret.generated {
        format!(
            "{SECRET_ENV} was not set, so the nodes verify webhooks with this generated secret\n\
             (export it to sign your own deliveries, or set it before `dev` to choose one):\n  \
             export {SECRET_ENV}={}\n",
            secret.value
        )
    } else {
        format!("The nodes verify webhooks with ${SECRET_ENV} (from your environment).\n")
    }
}

/// The listeners of the running nodes (`host:port` each), in node order.
pub struct Addrs<'a> {
    pub public: &'a [String],
    pub api: &'a [String],
    pub grpc: &'a [String],
}

/// `export` lines for the generated tokens, and where the others come from.
fn tokens_note(tokens: &DevTokens) -> String {
    let mut out = String::from(
        "The nodes accept three tokens (spec.auth of the local configs): admin (every API call),\n\
         read (API reads, /metrics) and worker (the workers' gRPC service).\n",
    );
    let generated: Vec<&DevToken> = tokens.all().into_iter().filter(|t| t.generated).collect();
    if !generated.is_empty() {
        out.push_str(
            "Generated because unset (export them to use them elsewhere, e.g. for node 4, or set them\n\
             before `dev` to choose them):\n",
        );
        for t in &generated {
            out.push_str(&format!("  export {}={}\n", t.env, t.value));
        }
    }
    for t in tokens.all().into_iter().filter(|t| !t.generated) {
        out.push_str(&format!("${} is taken from your environment.\n", t.env));
    }
    out
}

/// A token for a ready-to-paste command: the value when `dev` generated it (it
/// is printed anyway), else its variable (never echo the user's secret).
fn shown(t: &DevToken) -> String {
    if t.generated {
        t.value.clone()
    } else {
        format!("${}", t.env)
    }
}

fn next_steps(
    configs: &Path,
    addrs: &Addrs<'_>,
    secret: &DevSecret,
    tokens: &DevTokens,
    context_file: Option<&Path>,
    delivery_id: &str,
) -> String {
    let me = program_name();
    let dir = configs.display();
    let node4 = std::fs::read_to_string(configs.join("node4.yaml"))
        .ok()
        .map(|t| node_addrs(&t, 4));
    let node4 = node4.unwrap_or_else(|| node_addrs("", 4));
    let first = |v: &[String], default: &str| v.first().cloned().unwrap_or_else(|| default.to_string());
    let public = first(addrs.public, "127.0.0.1:3001");
    let api = first(addrs.api, "127.0.0.1:5001");
    let api2 = addrs.api.get(1).cloned().unwrap_or_else(|| api.clone());
    let grpc = first(addrs.grpc, "127.0.0.1:4001");
    let join = |prefix: &str, v: &[String]| v.iter().map(|e| format!("{prefix}{e}")).collect::<Vec<_>>().join(",");
    // With the `dev` context, aofctl needs no flags; without it, variables.
    let (context_note, api_env, grpc_env) = match context_file {
        Some(path) => (
            format!(
                "aofctl's context `{DEV_CONTEXT}` (these API and gRPC endpoints, the admin and worker tokens) is\n\
                 recorded in {} and is the current one: aofctl in any terminal uses it\n\
                 (`{me} config get-contexts`).\n",
                path.display()
            ),
            String::new(),
            String::new(),
        ),
        None => (
            String::new(),
            format!("  export AOF_ENDPOINT={} AOF_TOKEN={}\n", join("http://", addrs.api), shown(&tokens.admin)),
            format!("  export AOF_GRPC_ENDPOINT={} AOF_WORKER_TOKEN={}\n", join("grpc://", addrs.grpc), shown(&tokens.worker)),
        ),
    };
    let curl = crate::webhook::curl_command(
        &format!("http://{public}/webhook/github"),
        "push",
        delivery_id,
        secret.value.as_bytes(),
        crate::webhook::SAMPLE_PUSH,
        "  ",
    );
    format!(
        "
The cluster is up (logs in {LOG_DIR}/node{{1,2,3}}.log). Press Ctrl-C to stop it.
Node 1 listens on {public} (public: webhooks, /health), {api} (API: /v1/*, /metrics, with a token),
{grpc} (workers' gRPC) and its peer address (mutual TLS between the nodes); nodes 2 and 3 likewise.

{tokens_note}
{secret_note}
{context_note}
What to try next, in another terminal:
{api_env}  {me} cluster status
  {me} apply -f {dir}/triggers
  {me} get triggers
  curl -s -H 'Authorization: Bearer {admin}' http://{api}/v1/cluster
  curl -s -H 'Authorization: Bearer {read}' 'http://{api2}/v1/triggers?consistency=stale'

  # send a signed webhook to a public listener: a push to main of myorg/api (trigger
  # push-main routes it to the flow deploy-flow; sending it again answers \"duplicate\": true)
{curl}
  {me} describe event --delivery {delivery_id}

  # run a command for each job (payload on stdin, AOF_* variables), then look again
{grpc_env}  {me} worker -- cat
  {me} describe event --delivery {delivery_id}
  {me} get events
  {me} queue stats

  # add a fourth node: start it with the same tokens and secret (the exports above),
  # then join it (learner first, voter once caught up)
  {me} serve --config {dir}/node4.yaml &
  {me} cluster join --node-id {id} --peer-addr {peer4} --grpc-addr {grpc4} --api-addr {api4} --http-addr {http4}
",
        tokens_note = tokens_note(tokens),
        secret_note = secret_note(secret),
        admin = shown(&tokens.admin),
        read = shown(&tokens.read),
        id = node4.node_id,
        peer4 = node4.peer_addr,
        grpc4 = node4.grpc_addr,
        api4 = node4.api_addr,
        http4 = node4.http_addr,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_come_from_the_config() {
        let text = "apiVersion: aof.dev/v1\nkind: DaemonConfig\nspec:\n  server:\n    host: 0.0.0.0\n    port: 3102\n  cluster:\n    node_id: 2\n    api_addr: 0.0.0.0:5102\n    grpc_addr: 127.0.0.1:4102\n    peer_addr: 127.0.0.1:6102\n    peer_tls:\n      ca_file: ./x/certs/ca.crt\n";
        assert_eq!(
            node_addrs(text, 2),
            NodeAddrs {
                node_id: 2,
                http_addr: "127.0.0.1:3102".into(),
                api_addr: "127.0.0.1:5102".into(),
                grpc_addr: "127.0.0.1:4102".into(),
                peer_addr: "127.0.0.1:6102".into(),
            }
        );
        assert_eq!(certs_dir(text), Some(PathBuf::from("./x/certs")));
        assert_eq!(
            node_addrs("not: [yaml", 3),
            NodeAddrs {
                node_id: 3,
                http_addr: "127.0.0.1:3003".into(),
                api_addr: "127.0.0.1:5003".into(),
                grpc_addr: "127.0.0.1:4003".into(),
                peer_addr: "127.0.0.1:6003".into(),
            }
        );
        assert_eq!(certs_dir("spec: {}"), None);
    }

    #[test]
    fn the_shipped_configs_are_read_as_the_local_layout() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster-configs/local");
        for n in 1..=5u64 {
            let text = std::fs::read_to_string(dir.join(format!("node{n}.yaml"))).unwrap();
            assert_eq!(node_addrs(&text, n), node_addrs("", n), "node{n}.yaml");
            assert_eq!(certs_dir(&text), Some(PathBuf::from("./data/certs")), "node{n}.yaml");
        }
    }

    #[test]
    fn certificates_are_created_once_and_completed_when_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        let note = ensure_certs(&dir).unwrap().expect("created");
        assert!(note.contains("created a cluster CA"), "{note}");
        for id in 1..=5 {
            assert!(aof_node::tls::node_cert_path(&dir, id).is_file());
        }
        let ca = std::fs::read(aof_node::tls::ca_cert_path(&dir)).unwrap();
        assert_eq!(ensure_certs(&dir).unwrap(), None, "nothing to do");
        // A lost node certificate is issued again from the same CA.
        std::fs::remove_file(aof_node::tls::node_cert_path(&dir, 2)).unwrap();
        std::fs::remove_file(aof_node::tls::node_key_path(&dir, 2)).unwrap();
        let note = ensure_certs(&dir).unwrap().expect("issued");
        assert!(note.contains("issued from the existing CA") && note.contains("nodes 2 "), "{note}");
        assert_eq!(std::fs::read(aof_node::tls::ca_cert_path(&dir)).unwrap(), ca);
    }

    fn secret(generated: bool) -> DevSecret {
        DevSecret {
            value: "s3cret".into(),
            generated,
        }
    }

    fn tokens(generated: bool) -> DevTokens {
        let t = |env, value: &str| DevToken { env, value: value.into(), generated };
        DevTokens {
            admin: t("AOF_ADMIN_TOKEN", "adm1n"),
            read: t("AOF_READ_TOKEN", "r3ad"),
            worker: t("AOF_WORKER_TOKEN", "w0rk"),
        }
    }

    fn local() -> (Vec<String>, Vec<String>, Vec<String>) {
        let l = |base: u16| (1..=3).map(|n| format!("127.0.0.1:{}", base + n)).collect::<Vec<_>>();
        (l(3000), l(5000), l(4000))
    }

    #[test]
    fn next_steps_use_the_context_and_join_with_four_addresses() {
        let (public, api, grpc) = local();
        let addrs = Addrs { public: &public, api: &api, grpc: &grpc };
        let text = next_steps(
            Path::new("cluster-configs/local"),
            &addrs,
            &secret(false),
            &tokens(true),
            Some(Path::new("/home/u/.config/aofctl/config.yaml")),
            "d-1",
        );
        assert!(text.contains("context `dev`") && text.contains("/home/u/.config/aofctl/config.yaml"), "{text}");
        assert!(text.contains("  export AOF_ADMIN_TOKEN=adm1n\n  export AOF_READ_TOKEN=r3ad\n  export AOF_WORKER_TOKEN=w0rk\n"), "{text}");
        assert!(text.contains(" cluster status\n") && !text.contains("AOF_ENDPOINT") && !text.contains("AOF_GRPC_ENDPOINT"), "{text}");
        assert!(text.contains("apply -f cluster-configs/local/triggers"));
        assert!(text.contains("curl -s -H 'Authorization: Bearer adm1n' http://127.0.0.1:5001/v1/cluster"), "{text}");
        assert!(text.contains("curl -s -H 'Authorization: Bearer r3ad' 'http://127.0.0.1:5002/v1/triggers?consistency=stale'"), "{text}");
        assert!(text.contains("serve --config cluster-configs/local/node4.yaml &"));
        assert!(text.contains(
            "cluster join --node-id 4 --peer-addr 127.0.0.1:6004 --grpc-addr 127.0.0.1:4004 --api-addr 127.0.0.1:5004 --http-addr 127.0.0.1:3004"
        ), "{text}");

        // Without a recorded context: the variables to export instead. Tokens from
        // the environment are never printed.
        let text = next_steps(Path::new("x"), &addrs, &secret(false), &tokens(false), None, "d-1");
        assert!(text.contains("export AOF_ENDPOINT=http://127.0.0.1:5001,http://127.0.0.1:5002,http://127.0.0.1:5003 AOF_TOKEN=$AOF_ADMIN_TOKEN"), "{text}");
        assert!(text.contains("export AOF_GRPC_ENDPOINT=grpc://127.0.0.1:4001,grpc://127.0.0.1:4002,grpc://127.0.0.1:4003 AOF_WORKER_TOKEN=$AOF_WORKER_TOKEN"), "{text}");
        assert!(text.contains("$AOF_ADMIN_TOKEN is taken from your environment"), "{text}");
        for secret_value in ["adm1n", "r3ad", "w0rk"] {
            assert!(!text.contains(secret_value), "{text}");
        }
    }

    #[test]
    fn next_steps_print_a_signed_delivery_to_the_public_listener() {
        let (public, api, grpc) = local();
        let addrs = Addrs { public: &public, api: &api, grpc: &grpc };
        let text = next_steps(
            Path::new("cluster-configs/local"),
            &addrs,
            &secret(true),
            &tokens(true),
            Some(Path::new("/c.yaml")),
            "0f6c7d1e-1111-4222-8333-444455556666",
        );
        assert!(
            text.contains(
                "generated secret\n(export it to sign your own deliveries, or set it before `dev` \
                 to choose one):\n  export GITHUB_WEBHOOK_SECRET=s3cret\n"
            ),
            "{text}"
        );
        let sig = aof_contract::signature::sign(b"s3cret", crate::webhook::SAMPLE_PUSH.as_bytes());
        assert!(
            text.contains("curl -s -X POST http://127.0.0.1:3001/webhook/github \\\n"),
            "{text}"
        );
        assert!(
            text.contains(&format!("-H 'X-Hub-Signature-256: {sig}'")),
            "{text}"
        );
        assert!(
            text.contains("-H 'X-GitHub-Delivery: 0f6c7d1e-1111-4222-8333-444455556666'"),
            "{text}"
        );
        assert!(
            text.contains(&format!("-d '{}'", crate::webhook::SAMPLE_PUSH)),
            "{text}"
        );
        assert!(
            text.contains("describe event --delivery 0f6c7d1e-1111-4222-8333-444455556666"),
            "{text}"
        );
        assert!(text.contains(" worker -- cat\n"), "{text}");
        // A secret from the environment is not printed.
        let text = next_steps(Path::new("x"), &addrs, &secret(false), &tokens(false), None, "d");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(
            text.contains("$GITHUB_WEBHOOK_SECRET (from your environment)"),
            "{text}"
        );
    }

    #[test]
    fn the_dev_context_is_recorded_and_made_current() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("config.yaml");
        let mut f = ConfigFile::default();
        f.upsert(AofContext { name: "prod".into(), api: vec!["https://p:5000".into()], ..AofContext::default() });
        f.current_context = Some("prod".into());
        f.save(&path).unwrap();
        let (_, api, grpc) = local();
        let written = record_context_at(&path, &api, &grpc, &tokens(true)).unwrap();
        assert_eq!(written, path);
        let f = ConfigFile::load(&path).unwrap();
        assert_eq!(f.current_context.as_deref(), Some("dev"));
        assert!(f.get("prod").is_some(), "other contexts stay");
        let dev = f.get("dev").unwrap();
        assert_eq!(dev.api, vec!["http://127.0.0.1:5001", "http://127.0.0.1:5002", "http://127.0.0.1:5003"]);
        assert_eq!(dev.grpc, vec!["grpc://127.0.0.1:4001", "grpc://127.0.0.1:4002", "grpc://127.0.0.1:4003"]);
        assert_eq!((dev.token.as_deref(), dev.worker_token.as_deref()), (Some("adm1n"), Some("w0rk")));
        // What a later command resolves with no flags and no variables.
        let s = context::resolve(&context::Flags::default(), &|_| None, &f).unwrap();
        assert_eq!((s.api, s.token.as_deref()), (dev.api.clone(), Some("adm1n")));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n.log");
        std::fs::write(&p, "a\nb\nc\n").unwrap();
        assert_eq!(tail(&p, 2), "b\nc");
        assert_eq!(tail(&p, 10), "a\nb\nc");
        assert!(tail(&dir.path().join("missing"), 2).starts_with("(cannot read"));
    }
}
