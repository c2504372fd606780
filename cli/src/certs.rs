//! `aofctl certs init`: the cluster CA and the node certificates of the peer
//! listener's mutual TLS (and usable as server certificates of the worker and
//! HTTP listeners). The work is done by [`aof_node::tls::init_certs`].

use std::path::PathBuf;

use anyhow::Context;
use aof_node::tls::{self, CertsInit, CertsReport, MAX_NODES};
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a cluster CA and a certificate + key per node id (with an existing CA
    /// in DIR, issue only the node certificates that are missing).
    Init(InitArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory of ca.crt, ca.key and node<ID>.crt / node<ID>.key (created if missing).
    #[arg(long, value_name = "DIR", default_value = "./data/certs")]
    pub dir: PathBuf,
    /// Node certificates for ids 1..=N. With the CA already in DIR, raising N adds
    /// nodes signed by that CA and leaves the existing files alone.
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=MAX_NODES))]
    pub nodes: u64,
    /// More names in every node certificate: a DNS name or an IP address
    /// (repeatable; `aof-node-<id>`, `localhost` and 127.0.0.1 are always there).
    #[arg(long = "san", value_name = "NAME_OR_IP", value_delimiter = ',')]
    pub sans: Vec<String>,
    /// Replace existing files: a new CA and new certificates for all N nodes
    /// (every node then needs its new files).
    #[arg(long)]
    pub force: bool,
    /// Validity of the new certificates, in days.
    #[arg(long, value_name = "DAYS", default_value_t = 3650,
          value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub days: u32,
}

pub fn run(cmd: CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::Init(args) => init(args),
    }
}

fn init(args: InitArgs) -> anyhow::Result<()> {
    let opts = CertsInit {
        dir: args.dir,
        nodes: args.nodes,
        extra_sans: args.sans,
        force: args.force,
        valid_days: args.days,
    };
    let report = tls::init_certs(&opts)
        .with_context(|| format!("creating certificates in {}", opts.dir.display()))?;
    print!("{}", describe(&report, &opts.extra_sans));
    Ok(())
}

/// What was written, and how the node configs reference it.
fn describe(report: &CertsReport, extra_sans: &[String]) -> String {
    let dir = &report.dir;
    let (ca_crt, ca_key) = (tls::ca_cert_path(dir), tls::ca_key_path(dir));
    let mut out = String::new();
    if report.ca_created {
        out.push_str(&format!("Created a cluster CA in {}:\n", dir.display()));
        out.push_str(&format!(
            "  {}  CA certificate (every node's ca_file)\n",
            ca_crt.display()
        ));
        out.push_str(&format!(
            "  {}  CA private key (only needed to issue node certificates; keep it off the nodes)\n",
            ca_key.display()
        ));
    } else {
        out.push_str(&format!(
            "Issued from the existing CA {} (key {}).\n",
            ca_crt.display(),
            ca_key.display()
        ));
    }
    let mut names = vec![
        "aof-node-<id>".to_string(),
        "localhost".into(),
        "127.0.0.1".into(),
    ];
    names.extend(extra_sans.iter().map(|s| s.trim().to_string()));
    out.push_str(&format!(
        "Node certificates (names: {}):\n",
        names.join(", ")
    ));
    for &id in &report.issued {
        out.push_str(&format!(
            "  node {id}: {}  {}\n",
            tls::node_cert_path(dir, id).display(),
            tls::node_key_path(dir, id).display()
        ));
    }
    if !report.kept.is_empty() {
        let kept: Vec<String> = report.kept.iter().map(u64::to_string).collect();
        out.push_str(&format!("Kept as they were: node {}\n", kept.join(", ")));
    }
    out.push_str(&format!(
        "\nEach node's config references them (spec.cluster.peer_tls):\n\
         \x20 spec:\n\
         \x20   cluster:\n\
         \x20     peer_tls:\n\
         \x20       ca_file: {}\n\
         \x20       cert_file: {}\n\
         \x20       key_file: {}\n",
        ca_crt.display(),
        dir.join("node{node_id}.crt").display(),
        dir.join("node{node_id}.key").display(),
    ));
    out.push_str(&format!(
        "To add node N later: aofctl certs init --dir {} --nodes N (reuses this CA).\n",
        dir.display()
    ));
    out
}
