//! `aofctl cluster status|join|leave`: membership of the Raft cluster.
//!
//! `join` is the safe way to grow the cluster: the node is added as a learner
//! first, and promoted to voter only once it has caught up with the log, so the
//! quorum never waits on a node that is still copying history. The new member is
//! known by its four advertised addresses (peer, workers' gRPC, API, public); the
//! leader adds it only if it answers on its peer address with a certificate of the
//! cluster CA that names its id.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use aof_client::{Client, ClusterStatus, Consistency, MemberAddrs, NodeId, Role};
use clap::{Args, Subcommand};

use crate::output::{print_structured, OutputFormat, Table};
use crate::{parse_duration, ConsistencyArg, GlobalArgs};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show members, roles, the leader and replication progress.
    Status(StatusArgs),
    /// Add a running node: as a learner, then as a voter once it has caught up.
    #[command(after_help = "Example (node 4 of the local configs):\n  aofctl cluster join --endpoint http://127.0.0.1:5001 --node-id 4 --peer-addr 127.0.0.1:6004 \\\n      --grpc-addr 127.0.0.1:4004 --api-addr 127.0.0.1:5004 --http-addr 127.0.0.1:3004")]
    Join(JoinArgs),
    /// Remove a node (voter or learner, the leader too) from the cluster.
    #[command(after_help = "Examples:\n  aofctl cluster leave --endpoint http://127.0.0.1:5001 --node-id 4\n  \
                            # Kubernetes preStop hook: leave only when the StatefulSet was scaled below this pod\n  \
                            aofctl cluster leave --self --if-scaled-down")]
    Leave(LeaveArgs),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// `stale` answers from the node's local state even without a leader.
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The new node's id (its `spec.cluster.node_id`).
    #[arg(long)]
    pub node_id: NodeId,
    /// The new node's peer address, host:port (its spec.cluster.peer_addr, as the
    /// other nodes reach it: Raft and snapshots, over mutual TLS).
    #[arg(long, value_name = "HOST:PORT")]
    pub peer_addr: String,
    /// The new node's workers' gRPC address, host:port (spec.cluster.grpc_addr).
    #[arg(long, value_name = "HOST:PORT")]
    pub grpc_addr: String,
    /// The new node's API address, host:port (spec.cluster.api_addr).
    #[arg(long, value_name = "HOST:PORT")]
    pub api_addr: String,
    /// The new node's public address, host:port (spec.server host and port:
    /// webhooks, /health).
    #[arg(long, value_name = "HOST:PORT")]
    pub http_addr: String,
    /// Give up if the node has not caught up and been promoted by then.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Promote once the node is at most this many entries behind the commit index.
    #[arg(long, default_value_t = 10)]
    pub max_lag: u64,
}

#[derive(Debug, Args)]
pub struct LeaveArgs {
    /// The id of the node to remove.
    #[arg(long, required_unless_present = "this", conflicts_with = "this")]
    pub node_id: Option<NodeId>,
    /// This node: its id from AOF__CLUSTER__NODE_ID, else the host name's StatefulSet
    /// ordinal plus one (aof-2 -> 3).
    #[arg(long = "self", id = "this")]
    pub this: bool,
    /// Only when this pod's StatefulSet was scaled below it (ordinal >= spec.replicas,
    /// read from the Kubernetes API with the pod's service account); otherwise (a
    /// restart, rolling update, eviction) do nothing: the node stays a member.
    #[arg(long, requires = "this")]
    pub if_scaled_down: bool,
}

pub async fn run(cmd: ClusterCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    let client = global.client();
    match cmd {
        ClusterCommand::Status(args) => {
            let status = status_via_leader(&client, args.consistency.into(), &|eps| {
                global.client_for(eps, global.request_timeout)
            })
            .await
            .context("reading cluster status")?;
            if !print_structured(args.output, &status)? {
                print!("{}", render_status(&status));
            }
            Ok(())
        }
        ClusterCommand::Join(args) => join(&client, args, global).await,
        ClusterCommand::Leave(args) => {
            let node_id = match args.node_id {
                Some(id) => id,
                None => crate::leave::self_node_id()?,
            };
            if args.if_scaled_down {
                let (gone, replicas, set) = crate::leave::scaled_down(node_id).await?;
                if !gone {
                    println!("node {node_id} stays a member: StatefulSet {set} has {replicas} replicas (a restart, not a scale-down)");
                    return Ok(());
                }
                println!("StatefulSet {set} has {replicas} replicas: node {node_id} was scaled away and leaves the cluster");
            }
            let r = client
                .remove_member(node_id)
                .await
                .with_context(|| format!("removing node {node_id} from the cluster"))?;
            println!(
                "node {} removed from the cluster (log index {})",
                r.node_id, r.log_index
            );
            Ok(())
        }
    }
}

/// Builds a client of some API endpoints (with the command's token, CA, timeout).
pub type MakeClient<'a> = dyn Fn(Vec<String>) -> Client + 'a;

/// Reads the cluster status; if the answering node is not the leader and
/// reports no replication progress, asks the leader (who knows it) directly at
/// its API address, keeping the first answer if the leader cannot be reached.
pub async fn status_via_leader(
    client: &Client,
    consistency: Consistency,
    make: &MakeClient<'_>,
) -> Result<ClusterStatus, aof_client::ClientError> {
    let status = client.cluster_status(consistency).await?;
    if let Some(leader) = leader_client(&status, &client.endpoints(), make, &[]) {
        if let Ok(from_leader) = leader.cluster_status(consistency).await {
            return Ok(from_leader);
        }
    }
    Ok(status)
}

/// A client of the leader's API address (then of `fallback`), when `status` came
/// from another node and lacks the leader-only `matched_index` values. `configured`
/// are the endpoints in use (their scheme is kept).
fn leader_client(
    status: &ClusterStatus,
    configured: &[String],
    make: &MakeClient<'_>,
    fallback: &[String],
) -> Option<Client> {
    let leader = status.leader()?;
    let no_progress = status.members.iter().all(|m| m.matched_index.is_none());
    if leader.id == status.node_id || !no_progress || leader.api_addr.is_empty() {
        return None;
    }
    let endpoints = std::iter::once(crate::api_url(configured, &leader.api_addr))
        .chain(fallback.iter().cloned())
        .collect();
    Some(make(endpoints))
}

/// The `cluster status` table, with a summary line above it.
pub fn render_status(s: &ClusterStatus) -> String {
    let leader = match s.leader_id {
        Some(id) => format!("node {id}"),
        None => "none (election in progress?)".to_string(),
    };
    let mut out = format!(
        "Leader: {leader}   Term: {}   Commit index: {}   Applied: {}   (answered by node {})\n\n",
        s.term, s.commit_index, s.last_applied, s.node_id
    );
    let mut t = Table::new(["ID", "API", "GRPC", "PUBLIC", "PEER", "ROLE", "LEADER", "MATCHED", "LAG"]);
    let or_dash = |a: &String| if a.is_empty() { "-".to_string() } else { a.clone() };
    for m in &s.members {
        let is_leader = m.is_leader || s.leader_id == Some(m.id);
        t.row([
            m.id.to_string(),
            or_dash(&m.api_addr),
            or_dash(&m.grpc_addr),
            or_dash(&m.http_addr),
            or_dash(&m.peer_addr),
            m.role.to_string(),
            if is_leader { "*".into() } else { String::new() },
            m.matched_index.map_or("-".into(), |i| i.to_string()),
            m.lag(s.commit_index).map_or("-".into(), |l| l.to_string()),
        ]);
    }
    out.push_str(&t.render());
    out
}

/// What one poll of the joining node's progress found.
#[derive(Debug, PartialEq, Eq)]
enum Progress {
    /// Caught up enough to promote.
    CaughtUp,
    /// Already a voter (promoted by someone else).
    Voter,
    /// Still copying: matched (if known) of commit.
    Behind { matched: Option<u64>, commit: u64 },
    /// No longer a member.
    Gone,
}

/// Judges the joining node's progress. `prev_commit` is the commit index of
/// the previous poll: having matched it means the node keeps up with a cluster
/// that is busy writing.
fn judge(status: &ClusterStatus, id: NodeId, max_lag: u64, prev_commit: Option<u64>) -> Progress {
    let Some(m) = status.member(id) else {
        return Progress::Gone;
    };
    if m.role == Role::Voter {
        return Progress::Voter;
    }
    let commit = status.commit_index;
    match m.matched_index {
        Some(matched)
            if matched.saturating_add(max_lag) >= commit
                || prev_commit.is_some_and(|p| matched >= p) =>
        {
            Progress::CaughtUp
        }
        matched => Progress::Behind { matched, commit },
    }
}

async fn join(client: &Client, args: JoinArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let id = args.node_id;
    let make = |eps: Vec<String>| global.client_for(eps, global.request_timeout);
    let addrs = MemberAddrs {
        peer_addr: args.peer_addr.clone(),
        grpc_addr: args.grpc_addr.clone(),
        api_addr: args.api_addr.clone(),
        http_addr: args.http_addr.clone(),
    };
    let deadline = Instant::now() + args.timeout;
    let timeout_msg = |what: &str| {
        format!(
            "timed out after {} {what}",
            crate::output::human_age(args.timeout)
        )
    };

    // The node should be up, and be the node we think it is (its public
    // listener's /health says which).
    let target = global.public_client(vec![args.http_addr.clone()], Duration::from_secs(3));
    match target.health().await {
        Ok(h) if h.node_id != id => bail!(
            "the node at {} reports node_id {}, not {id}; check --node-id and --http-addr",
            args.http_addr,
            h.node_id
        ),
        Ok(_) => {}
        Err(e) => eprintln!(
            "warning: node {id} does not answer at {} ({e}); adding it anyway. It must be running \
             (`aofctl serve --config <its config>`) to catch up.",
            args.http_addr
        ),
    }

    let status = bounded(deadline, client.cluster_status(Consistency::Linearizable))
        .await
        .ok_or_else(|| anyhow::anyhow!(timeout_msg("reading the cluster status")))?
        .context("reading cluster status")?;
    match status.member(id) {
        Some(m) if m.role == Role::Voter => {
            println!("node {id} is already a voter");
            return Ok(());
        }
        Some(m) => {
            let same = |have: &str, want: &str| have.is_empty() || have == want;
            if !(same(&m.peer_addr, &args.peer_addr)
                && same(&m.grpc_addr, &args.grpc_addr)
                && same(&m.api_addr, &args.api_addr)
                && same(&m.http_addr, &args.http_addr))
            {
                bail!(
                    "node {id} is already a learner with peer {} grpc {} api {} http {}; remove it first with \
                     `aofctl cluster leave --node-id {id}`",
                    m.peer_addr,
                    m.grpc_addr,
                    m.api_addr,
                    m.http_addr
                );
            }
            eprintln!("node {id} is already a learner; waiting for it to catch up");
        }
        None => {
            let r = bounded(deadline, client.add_learner(id, &addrs))
            .await
            .ok_or_else(|| anyhow::anyhow!(timeout_msg("adding the learner")))?
            .with_context(|| format!("adding node {id} as a learner"))?;
            eprintln!(
                "node {id} added as a learner (log index {}); replicating the log to it",
                r.log_index
            );
        }
    }

    // Poll the leader's view of the learner until it has caught up.
    let mut poller = client.clone();
    let mut prev_commit = None;
    let mut last: Option<(Option<u64>, u64)> = None;
    let mut last_printed = None::<(Option<u64>, u64)>;
    let mut last_print_at = Instant::now() - Duration::from_secs(10);
    let mut last_error: Option<String> = None;
    // On a terminal: a bar of the learner's matched index against the commit index
    // (instead of the "catching up" lines).
    let bar = crate::progress::bar(0, &format!("node {id} catching up"), false);
    loop {
        match bounded(deadline, poller.cluster_status(Consistency::Linearizable)).await {
            None => break,
            Some(Err(e)) => {
                if last_error.as_deref() != Some(&e.to_string()) {
                    let msg = format!("warning: reading cluster status: {e} (retrying)");
                    match &bar {
                        Some(pb) => pb.println(msg),
                        None => eprintln!("{msg}"),
                    }
                }
                last_error = Some(e.to_string());
            }
            Some(Ok(status)) => {
                last_error = None;
                if let Some(leader) = leader_client(&status, &client.endpoints(), &make, &client.endpoints()) {
                    // Only the leader knows how far the learner got: ask it from now on.
                    poller = leader;
                }
                match judge(&status, id, args.max_lag, prev_commit) {
                    Progress::CaughtUp => break,
                    Progress::Voter => {
                        drop(bar);
                        println!("node {id} joined as voter");
                        return Ok(());
                    }
                    Progress::Gone => {
                        bail!("node {id} is no longer a member of the cluster (removed meanwhile?)")
                    }
                    Progress::Behind { matched, commit } => {
                        last = Some((matched, commit));
                        let changed = last_printed != last;
                        if let Some(pb) = &bar {
                            pb.set_length(commit);
                            pb.set_position(matched.unwrap_or(0).min(commit));
                        } else if changed && last_print_at.elapsed() >= Duration::from_millis(900) {
                            match matched {
                                Some(m) => eprintln!("catching up: matched {m}/{commit}"),
                                None => eprintln!("catching up: waiting for the first entries (commit index {commit})"),
                            }
                            last_printed = last;
                            last_print_at = Instant::now();
                        }
                        prev_commit = Some(commit);
                    }
                }
            }
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep((deadline - now).min(Duration::from_millis(300))).await;
    }
    drop(bar);

    if Instant::now() >= deadline {
        let progress = match last {
            Some((Some(m), c)) => format!(" (matched {m}/{c})"),
            Some((None, c)) => format!(" (no entries replicated yet; commit index {c})"),
            None => String::new(),
        };
        let cause = last_error
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default();
        bail!(
            "node {id} did not catch up within {}{progress}{cause}. Is it running and reachable from the leader at {} \
             (its peer address, mutual TLS with a certificate of the cluster CA)? Check its log. It stays a learner: \
             re-run this command to keep waiting, or remove it with `aofctl cluster leave --node-id {id}`.",
            crate::output::human_age(args.timeout),
            args.peer_addr
        );
    }

    let r = bounded(deadline + Duration::from_secs(30), client.promote_voter(id))
        .await
        .ok_or_else(|| anyhow::anyhow!("timed out promoting node {id} to voter"))?
        .with_context(|| format!("promoting node {id} to voter"))?;
    println!("node {id} joined as voter (log index {})", r.log_index);
    Ok(())
}

/// Runs `fut` unless `deadline` passes first (then `None`).
async fn bounded<T>(deadline: Instant, fut: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout_at(deadline.into(), fut).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aof_client::MemberStatus;

    fn member(id: u64, role: Role, matched: Option<u64>, leader: bool) -> MemberStatus {
        MemberStatus {
            id,
            peer_addr: format!("127.0.0.1:600{id}"),
            grpc_addr: format!("127.0.0.1:400{id}"),
            api_addr: format!("127.0.0.1:500{id}"),
            http_addr: format!("127.0.0.1:300{id}"),
            role,
            is_leader: leader,
            matched_index: matched,
        }
    }

    fn status(commit: u64, learner_matched: Option<u64>) -> ClusterStatus {
        ClusterStatus {
            node_id: 1,
            leader_id: Some(1),
            term: 3,
            commit_index: commit,
            last_applied: commit,
            members: vec![
                member(1, Role::Voter, Some(commit), true),
                member(2, Role::Voter, Some(commit.saturating_sub(1)), false),
                member(4, Role::Learner, learner_matched, false),
            ],
        }
    }

    #[test]
    fn status_table() {
        let out = render_status(&status(42, None));
        assert_eq!(
            out,
            "Leader: node 1   Term: 3   Commit index: 42   Applied: 42   (answered by node 1)\n\n\
             ID   API              GRPC             PUBLIC           PEER             ROLE      LEADER   MATCHED   LAG\n\
             1    127.0.0.1:5001   127.0.0.1:4001   127.0.0.1:3001   127.0.0.1:6001   voter     *        42        0\n\
             2    127.0.0.1:5002   127.0.0.1:4002   127.0.0.1:3002   127.0.0.1:6002   voter              41        1\n\
             4    127.0.0.1:5004   127.0.0.1:4004   127.0.0.1:3004   127.0.0.1:6004   learner            -         -\n"
        );
        let mut s = status(0, None);
        s.leader_id = None;
        assert!(render_status(&s).starts_with("Leader: none"));
    }

    #[test]
    fn judging_catch_up() {
        assert_eq!(
            judge(&status(15000, None), 4, 10, None),
            Progress::Behind {
                matched: None,
                commit: 15000
            }
        );
        assert_eq!(
            judge(&status(15000, Some(1200)), 4, 10, Some(14000)),
            Progress::Behind {
                matched: Some(1200),
                commit: 15000
            }
        );
        assert_eq!(
            judge(&status(15000, Some(14995)), 4, 10, None),
            Progress::CaughtUp
        );
        // A busy cluster: behind this poll's commit index, but past the previous one.
        assert_eq!(
            judge(&status(15500, Some(15100)), 4, 10, Some(15050)),
            Progress::CaughtUp
        );
        assert_eq!(
            judge(&status(15000, Some(15000)), 4, 0, None),
            Progress::CaughtUp
        );
        assert_eq!(judge(&status(10, Some(10)), 9, 10, None), Progress::Gone);
        assert_eq!(judge(&status(10, Some(10)), 2, 10, None), Progress::Voter);
    }

    #[test]
    fn asks_the_leader_at_its_api_address_only_when_progress_is_missing() {
        let make = |eps: Vec<String>| Client::new(eps);
        let http = ["http://127.0.0.1:5002".to_string()];
        let mut s = status(42, Some(40));
        assert!(leader_client(&s, &http, &make, &[]).is_none(), "answered by the leader");
        s.node_id = 2;
        assert!(leader_client(&s, &http, &make, &[]).is_none(), "progress is known");
        for m in &mut s.members {
            m.matched_index = None;
        }
        let c = leader_client(&s, &http, &make, &["http://n2".into()]).expect("asks the leader");
        assert_eq!(c.endpoints(), vec!["http://127.0.0.1:5001", "http://n2"]);
        // The scheme of the configured endpoints is kept.
        let c = leader_client(&s, &["https://n2:5002".into()], &make, &[]).unwrap();
        assert_eq!(c.endpoints(), vec!["https://127.0.0.1:5001"]);
    }
}
