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
//! prints it; either way it prints a signed `curl` delivery that works as printed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use aof_client::{Client, Consistency};
use clap::Args;
use tokio::process::{Child, Command};

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
    /// host:port to reach its HTTP server from this machine.
    pub http_addr: String,
    pub grpc_addr: String,
}

/// Reads `spec.server.{host,port}` and `spec.cluster.{node_id,grpc_addr}`,
/// defaulting to the local layout (HTTP 300N, gRPC 400N) where absent.
pub fn node_addrs(text: &str, n: u64) -> NodeAddrs {
    let v: serde_yaml::Value = serde_yaml::from_str(text).unwrap_or(serde_yaml::Value::Null);
    let spec = &v["spec"];
    let host = match spec["server"]["host"].as_str() {
        None | Some("0.0.0.0") | Some("::") | Some("[::]") | Some("") => "127.0.0.1",
        Some(h) => h,
    };
    let port = spec["server"]["port"].as_u64().unwrap_or(3000 + n);
    let grpc_addr = spec["cluster"]["grpc_addr"]
        .as_str()
        .map(|a| a.replace("0.0.0.0:", "127.0.0.1:"))
        .unwrap_or_else(|| format!("127.0.0.1:{}", 4000 + n));
    NodeAddrs {
        node_id: spec["cluster"]["node_id"].as_u64().unwrap_or(n),
        http_addr: format!("{host}:{port}"),
        grpc_addr,
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

fn spawn(
    exe: &Path,
    config: &Path,
    log: &Path,
    log_level: Option<&str>,
    secret: &DevSecret,
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
    cmd.env(SECRET_ENV, &secret.value)
        .stdin(Stdio::null())
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

    let secret = DevSecret::from_env()?;
    let delivery_id = crate::webhook::random_delivery_id()?;
    std::fs::create_dir_all(LOG_DIR).with_context(|| format!("cannot create {LOG_DIR}"))?;
    let mut nodes = Vec::new();
    for (n, config, addrs) in plan {
        let log = Path::new(LOG_DIR).join(format!("node{n}.log"));
        match spawn(&exe, &config, &log, global.log_level.as_deref(), &secret) {
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

    let endpoints: Vec<String> = nodes.iter().map(|n| n.addrs.http_addr.clone()).collect();
    let grpc: Vec<String> = nodes.iter().map(|n| n.addrs.grpc_addr.clone()).collect();
    let client = Client::builder(endpoints.clone())
        .request_timeout(Duration::from_secs(5))
        .build();
    println!();
    match crate::cluster::status_via_leader(
        &client,
        Consistency::Linearizable,
        Duration::from_secs(5),
    )
    .await
    {
        Ok(status) => print!("{}", crate::cluster::render_status(&status)),
        Err(e) => eprintln!("warning: cannot read the cluster status: {e}"),
    }
    println!(
        "{}",
        next_steps(&args.configs, &endpoints, &grpc, &secret, &delivery_id)
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

fn next_steps(
    configs: &Path,
    endpoints: &[String],
    grpc_endpoints: &[String],
    secret: &DevSecret,
    delivery_id: &str,
) -> String {
    let me = program_name();
    let dir = configs.display();
    let node4 = std::fs::read_to_string(configs.join("node4.yaml"))
        .ok()
        .map(|t| node_addrs(&t, 4));
    let node4 = node4.unwrap_or_else(|| node_addrs("", 4));
    let first = endpoints
        .first()
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:3001".into());
    let second = endpoints.get(1).cloned().unwrap_or_else(|| first.clone());
    let env = if first == "127.0.0.1:3001" {
        String::new()
    } else {
        format!(
            "  export AOF_ENDPOINT={}\n",
            endpoints
                .iter()
                .map(|e| format!("http://{e}"))
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    // `aofctl worker` defaults to grpc://127.0.0.1:4001.
    let grpc_env = match grpc_endpoints.first() {
        None => String::new(),
        Some(first) if first == "127.0.0.1:4001" => String::new(),
        Some(_) => format!(
            "  export AOF_GRPC_ENDPOINT={}\n",
            grpc_endpoints
                .iter()
                .map(|e| format!("grpc://{e}"))
                .collect::<Vec<_>>()
                .join(",")
        ),
    };
    let curl = crate::webhook::curl_command(
        &format!("http://{first}/webhook/github"),
        "push",
        delivery_id,
        secret.value.as_bytes(),
        crate::webhook::SAMPLE_PUSH,
        "  ",
    );
    format!(
        "
The cluster is up (logs in {LOG_DIR}/node{{1,2,3}}.log). Press Ctrl-C to stop it.

{secret_note}
What to try next, in another terminal:
{env}  {me} cluster status
  {me} apply -f {dir}/triggers
  {me} get triggers
  curl -s http://{first}/v1/cluster
  curl -s 'http://{second}/v1/triggers?consistency=stale'

  # send a signed webhook: a push to main of myorg/api (trigger push-main routes it
  # to the flow deploy-flow; sending it again answers \"duplicate\": true)
{curl}
  {me} describe event --delivery {delivery_id}

  # run a command for each job (payload on stdin, AOF_* variables), then look again
{grpc_env}  {me} worker -- cat
  {me} describe event --delivery {delivery_id}
  {me} get events
  {me} queue stats

  # add a fourth node: start it, then join it (learner first, voter once caught up)
  {me} serve --config {dir}/node4.yaml &
  {me} cluster join --node-id {id} --grpc-addr {grpc} --http-addr {http}
",
        secret_note = secret_note(secret),
        id = node4.node_id,
        grpc = node4.grpc_addr,
        http = node4.http_addr,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_come_from_the_config() {
        let text = "apiVersion: aof.dev/v1\nkind: DaemonConfig\nspec:\n  server:\n    host: 0.0.0.0\n    port: 3102\n  cluster:\n    node_id: 2\n    grpc_addr: 127.0.0.1:4102\n";
        assert_eq!(
            node_addrs(text, 2),
            NodeAddrs {
                node_id: 2,
                http_addr: "127.0.0.1:3102".into(),
                grpc_addr: "127.0.0.1:4102".into()
            }
        );
        assert_eq!(
            node_addrs("not: [yaml", 3),
            NodeAddrs {
                node_id: 3,
                http_addr: "127.0.0.1:3003".into(),
                grpc_addr: "127.0.0.1:4003".into()
            }
        );
    }

    fn secret(generated: bool) -> DevSecret {
        DevSecret {
            value: "s3cret".into(),
            generated,
        }
    }

    #[test]
    fn next_steps_mentions_the_join_commands() {
        let text = next_steps(
            Path::new("cluster-configs/local"),
            &["127.0.0.1:3001".into(), "127.0.0.1:3002".into()],
            &["127.0.0.1:4001".into(), "127.0.0.1:4002".into()],
            &secret(false),
            "d-1",
        );
        assert!(text.contains("cluster status"));
        assert!(text.contains("apply -f cluster-configs/local/triggers"));
        assert!(text.contains("serve --config cluster-configs/local/node4.yaml &"));
        assert!(text.contains(
            "cluster join --node-id 4 --grpc-addr 127.0.0.1:4004 --http-addr 127.0.0.1:3004"
        ));
        assert!(!text.contains("AOF_ENDPOINT"));
        assert!(!text.contains("AOF_GRPC_ENDPOINT"));
        let text = next_steps(
            Path::new("x"),
            &["127.0.0.1:3101".into()],
            &["127.0.0.1:4101".into()],
            &secret(false),
            "d-1",
        );
        assert!(text.contains("export AOF_ENDPOINT=http://127.0.0.1:3101"));
        assert!(text.contains("export AOF_GRPC_ENDPOINT=grpc://127.0.0.1:4101"));
    }

    #[test]
    fn next_steps_print_a_signed_delivery_and_what_to_do_with_it() {
        let text = next_steps(
            Path::new("cluster-configs/local"),
            &["127.0.0.1:3001".into()],
            &["127.0.0.1:4001".into()],
            &secret(true),
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
        let text = next_steps(
            Path::new("x"),
            &["127.0.0.1:3001".into()],
            &[],
            &secret(false),
            "d",
        );
        assert!(!text.contains("s3cret"), "{text}");
        assert!(
            text.contains("$GITHUB_WEBHOOK_SECRET (from your environment)"),
            "{text}"
        );
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
