//! The peer: a three-node NATS JetStream cluster on loopback (`nats-server` from the
//! distribution), a work-queue stream with three replicas on file storage, and a
//! durable pull consumer with explicit acks.
//!
//! Durability differs: nats-server acknowledges a publish once a quorum of replicas
//! has it, and fsyncs its files on a timer (every 2 minutes by default; 2.9 has no
//! `sync_interval: always`), while aof-cluster fsyncs every log append on a quorum
//! before it answers 202. The report says so next to the numbers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, consumer, stream};

use crate::sys::free_port;

pub const STREAM: &str = "WEBHOOKS";
pub const CONSUMER: &str = "workers";

pub struct NatsProc {
    pub name: String,
    pub client_port: u16,
    pub store_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

pub struct NatsCluster {
    pub servers: Vec<NatsProc>,
    pub dir: PathBuf,
    pub version: String,
}

/// The `nats-server` to run: `explicit`, else `nats-server` on PATH, else the
/// Debian location. `None` if there is none.
pub fn find_server(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return p.is_file().then(|| p.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

impl NatsCluster {
    /// Start three servers under `dir`, wait for the JetStream meta leader, create
    /// the stream and the consumer (`max_ack_pending`).
    pub async fn start(bin: &Path, dir: &Path, max_ack_pending: i64) -> anyhow::Result<NatsCluster> {
        std::fs::create_dir_all(dir)?;
        let version = Command::new(bin)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let mut cluster = NatsCluster { servers: Vec::new(), dir: dir.to_path_buf(), version };
        for (i, &(client, route)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store_dir = dir.join(format!("{name}-store"));
            let routes: Vec<String> =
                ports.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, (_, r))| format!("    nats-route://127.0.0.1:{r}")).collect();
            let conf = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{client}\n\njetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 268435456\n  max_file_store: 21474836480\n}}\n\ncluster {{\n  name: aof-bench\n  listen: 127.0.0.1:{route}\n  routes: [\n{}\n  ]\n}}\n",
                store_dir.display(),
                routes.join("\n")
            );
            let conf_path = dir.join(format!("{name}.conf"));
            std::fs::write(&conf_path, conf)?;
            let log = dir.join(format!("{name}.log"));
            let logf = std::fs::File::create(&log)?;
            let mut cmd = Command::new(bin);
            crate::sys::die_with_parent(&mut cmd);
            let child = cmd
                .arg("-c")
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(Stdio::from(logf.try_clone()?))
                .stderr(Stdio::from(logf))
                .spawn()
                .with_context(|| format!("spawning {}", bin.display()))?;
            cluster.servers.push(NatsProc { name, client_port: client, store_dir, log, child: Some(child) });
        }
        cluster.setup(max_ack_pending).await?;
        Ok(cluster)
    }

    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(|s| format!("nats://127.0.0.1:{}", s.client_port)).collect()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.servers.iter().map(|s| s.child.as_ref().map_or(0, Child::id)).collect()
    }

    pub fn data_dirs(&self) -> Vec<PathBuf> {
        self.servers.iter().map(|s| s.store_dir.clone()).collect()
    }

    /// One client connection to each server, in order.
    pub async fn connect_all(&self) -> anyhow::Result<Vec<async_nats::Client>> {
        let mut out = Vec::new();
        for u in self.urls() {
            out.push(connect(&u).await?);
        }
        Ok(out)
    }

    async fn setup(&mut self, max_ack_pending: i64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        while Instant::now() < deadline {
            for s in &mut self.servers {
                if let Some(st) = s.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    bail!("nats-server {} exited ({st}); see {}", s.name, s.log.display());
                }
            }
            match self.try_setup(max_ack_pending).await {
                Ok(()) => return Ok(()),
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        bail!("JetStream cluster not usable within 60 s: {last} (logs in {})", self.dir.display())
    }

    async fn try_setup(&self, max_ack_pending: i64) -> anyhow::Result<()> {
        let client = connect(&self.urls()[0]).await?;
        let js = jetstream::new(client);
        let cfg = stream::Config {
            name: STREAM.into(),
            subjects: vec!["webhooks.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: 3,
            ..Default::default()
        };
        let st = tokio::time::timeout(Duration::from_secs(10), js.get_or_create_stream(cfg)).await.context("create stream timed out")??;
        let ccfg = consumer::pull::Config {
            durable_name: Some(CONSUMER.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_ack_pending,
            ..Default::default()
        };
        tokio::time::timeout(Duration::from_secs(10), st.get_or_create_consumer::<consumer::pull::Config>(CONSUMER, ccfg))
            .await
            .context("create consumer timed out")??;
        Ok(())
    }

    pub fn stop(&mut self) {
        for s in &mut self.servers {
            if let Some(mut c) = s.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

pub async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    let opts = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(5)).request_timeout(Some(Duration::from_secs(10)));
    tokio::time::timeout(Duration::from_secs(10), opts.connect(url))
        .await
        .with_context(|| format!("connecting to {url} timed out"))?
        .with_context(|| format!("connecting to {url}"))
}
