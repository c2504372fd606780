//! The nemesis: a schedule of faults, generated from the seed (same seed, same
//! schedule and same random picks), executed against the cluster while the
//! workloads run. One fault at a time: quiet interval, fault held for a while,
//! fault undone. `--nemesis all` mixes every kind (the combined schedule).
//!
//! | name | fault |
//! |---|---|
//! | `partition-halves` | the nodes split at random into a majority and a minority |
//! | `partition-leader` | the current leader is cut off from every other node |
//! | `partition-node` | a random node is cut off |
//! | `partition-ring` | every node sees a majority, each a different one (non-transitive, one-way drops) |
//! | `partition-bridge` | two halves that only one node connects |
//! | `kill-one`, `kill-leader`, `kill-minority`, `kill-all` | SIGKILL, restart at the end of the hold |
//! | `pause-one`, `pause-leader` | SIGSTOP, SIGCONT at the end of the hold |
//! | `membership` | a node (sometimes the leader) is removed from the cluster; its machine comes back as a new node (fresh data, new id) that joins as learner and is promoted to voter |
//! | `slow` | every link gets slow and lossy (netem delay+loss, or tbf + random drop) |
//! | `disk-full` | a node's data dir (its own tmpfs) is filled until writes fail; freed at the end of the hold |
//! | `lose-unsynced` | power loss of a node: SIGKILL, and its disk (faultfs) drops everything not fsynced; restarted at the end of the hold |
//! | `lose-unsynced-all` | the same for every node at once (coordinated power loss) |
//! | `corrupt` | a stopped minority node gets bytes flipped in a WAL segment or snapshot file; restarted: it must refuse to start (then it is replaced by a new node, as an operator would) or recover |
//! | `kill-snapshot` | SIGKILL a node while it writes a snapshot file (building or installing one); restarted at the end of the hold |
//!
//! Group names: `partition`, `kill`, `pause` (all of their kind), `disk` (the
//! five disk faults), `all`, `none`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::json;

use crate::cluster::Db;
use crate::history::Recorder;
use crate::net::Net;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    PartitionHalves,
    PartitionLeader,
    PartitionNode,
    PartitionRing,
    PartitionBridge,
    KillOne,
    KillLeader,
    KillMinority,
    KillAll,
    PauseOne,
    PauseLeader,
    Membership,
    Slow,
    DiskFull,
    LoseUnsynced,
    LoseUnsyncedAll,
    Corrupt,
    KillSnapshot,
}

impl Fault {
    pub const ALL: [Fault; 18] = [
        Fault::PartitionHalves,
        Fault::PartitionLeader,
        Fault::PartitionNode,
        Fault::PartitionRing,
        Fault::PartitionBridge,
        Fault::KillOne,
        Fault::KillLeader,
        Fault::KillMinority,
        Fault::KillAll,
        Fault::PauseOne,
        Fault::PauseLeader,
        Fault::Membership,
        Fault::Slow,
        Fault::DiskFull,
        Fault::LoseUnsynced,
        Fault::LoseUnsyncedAll,
        Fault::Corrupt,
        Fault::KillSnapshot,
    ];

    /// The disk faults.
    pub const DISK: [Fault; 5] = [
        Fault::DiskFull,
        Fault::LoseUnsynced,
        Fault::LoseUnsyncedAll,
        Fault::Corrupt,
        Fault::KillSnapshot,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::PartitionHalves => "partition-halves",
            Fault::PartitionLeader => "partition-leader",
            Fault::PartitionNode => "partition-node",
            Fault::PartitionRing => "partition-ring",
            Fault::PartitionBridge => "partition-bridge",
            Fault::KillOne => "kill-one",
            Fault::KillLeader => "kill-leader",
            Fault::KillMinority => "kill-minority",
            Fault::KillAll => "kill-all",
            Fault::PauseOne => "pause-one",
            Fault::PauseLeader => "pause-leader",
            Fault::Membership => "membership",
            Fault::Slow => "slow",
            Fault::DiskFull => "disk-full",
            Fault::LoseUnsynced => "lose-unsynced",
            Fault::LoseUnsyncedAll => "lose-unsynced-all",
            Fault::Corrupt => "corrupt",
            Fault::KillSnapshot => "kill-snapshot",
        }
    }

    /// Needs each node's data dir on its own size-limited tmpfs.
    pub fn needs_tmpfs(self) -> bool {
        self == Fault::DiskFull
    }

    /// Needs each node's data dir on an `aof-faultfs` mount.
    pub fn needs_faultfs(self) -> bool {
        matches!(self, Fault::LoseUnsynced | Fault::LoseUnsyncedAll)
    }

    /// Needs network namespaces.
    pub fn needs_network(self) -> bool {
        matches!(
            self,
            Fault::PartitionHalves
                | Fault::PartitionLeader
                | Fault::PartitionNode
                | Fault::PartitionRing
                | Fault::PartitionBridge
                | Fault::Slow
        )
    }

    /// Relative weight in a mixed schedule (kill-all is rarer).
    fn weight(self) -> u32 {
        match self {
            Fault::KillAll | Fault::LoseUnsyncedAll => 1,
            _ => 3,
        }
    }
}

/// Parse a `--nemesis` list: names and group names, comma-separated.
pub fn parse_list(s: &str) -> Result<Vec<Fault>> {
    let mut out: BTreeSet<Fault> = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let group: Vec<Fault> = match part {
            "none" => vec![],
            "all" => Fault::ALL.to_vec(),
            "partition" => Fault::ALL.iter().copied().filter(|f| f.name().starts_with("partition-")).collect(),
            "kill" => Fault::ALL.iter().copied().filter(|f| f.name().starts_with("kill-")).collect(),
            "pause" => Fault::ALL.iter().copied().filter(|f| f.name().starts_with("pause-")).collect(),
            "crash" => vec![Fault::KillOne, Fault::KillLeader, Fault::KillMinority],
            "disk" => Fault::DISK.to_vec(),
            name => match Fault::ALL.iter().find(|f| f.name() == name) {
                Some(f) => vec![*f],
                None => bail!(
                    "unknown nemesis {name:?}; use all, none, partition, kill, pause, disk, membership, slow or one of {}",
                    Fault::ALL.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
                ),
            },
        };
        out.extend(group);
    }
    Ok(out.into_iter().collect())
}

/// One scheduled fault.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// Start, from the beginning of the fault phase.
    pub at_ms: u64,
    pub fault: Fault,
    pub hold_ms: u64,
    /// Seed of this step's random picks (which nodes, which halves).
    pub pick: u64,
}

/// The fault schedule for `faults` within `time_limit`: quiet `interval`, fault
/// held for `hold` (each ±50 %, from the seeded RNG).
pub fn schedule(
    faults: &[Fault],
    seed: u64,
    time_limit: Duration,
    interval: Duration,
    hold: Duration,
) -> Vec<Step> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x006e_656d_6573_6973);
    let mut out = Vec::new();
    if faults.is_empty() {
        return out;
    }
    let total: u32 = faults.iter().map(|f| f.weight()).sum();
    let jitter = |rng: &mut ChaCha8Rng, d: Duration| -> u64 {
        let ms = d.as_millis() as u64;
        rng.random_range(ms / 2..=ms + ms / 2).max(1)
    };
    let limit = time_limit.as_millis() as u64;
    let mut t = jitter(&mut rng, interval);
    // Bounded: every step advances t by at least 2 ms.
    while t < limit {
        let mut w = rng.random_range(0..total);
        let mut fault = faults[0];
        for f in faults {
            if w < f.weight() {
                fault = *f;
                break;
            }
            w -= f.weight();
        }
        let hold = jitter(&mut rng, hold).min(limit.saturating_sub(t)).max(1);
        out.push(Step {
            at_ms: t,
            fault,
            hold_ms: hold,
            pick: rng.random(),
        });
        t += hold + jitter(&mut rng, interval);
    }
    out
}

/// What is to be undone at the end of a step.
enum Undo {
    Nothing,
    Heal,
    Restart(Vec<usize>),
    Resume(Vec<usize>),
    Join(usize),
    Slow,
    FreeDisk(usize),
    /// Restart a node whose data was corrupted; replace it if it refuses to start.
    StartCorrupted(usize),
}

impl Undo {
    /// The slots that must answer `/ready` again once the fault is undone (all `n`
    /// for network faults; none when nothing happened).
    fn nodes(&self, n: usize) -> Vec<usize> {
        match self {
            Undo::Nothing => vec![],
            Undo::Heal | Undo::Slow => (0..n).collect(),
            Undo::Restart(v) | Undo::Resume(v) => v.clone(),
            Undo::Join(s) | Undo::FreeDisk(s) | Undo::StartCorrupted(s) => vec![*s],
        }
    }
}

/// How long the nemesis waits for the nodes of a fault to answer `/ready` again
/// after it is undone (its recovery time; see [`crate::report::recovery_stats`]).
pub const RECOVERY_WAIT: Duration = Duration::from_secs(30);

pub struct Nemesis {
    pub db: Arc<Db>,
    pub net: Option<Arc<Net>>,
    pub rec: Recorder,
    /// Membership changes not completed (slot whose new node still has to join).
    pending_join: std::sync::Mutex<BTreeSet<usize>>,
    /// Slots whose node refused to start on damaged data but could not be removed
    /// yet (another membership change was still in flight): replaced at the heal.
    pending_replace: std::sync::Mutex<BTreeSet<usize>>,
}

/// A grudge for a symmetric split into `a` and `b`.
pub fn split(a: &[usize], b: &[usize]) -> BTreeMap<usize, BTreeSet<usize>> {
    let mut g: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for &x in a {
        for &y in b {
            g.entry(x).or_default().insert(y);
            g.entry(y).or_default().insert(x);
        }
    }
    g
}

/// Jepsen's majorities ring: in a shuffled ring, each node sees the majority
/// centred on itself and drops packets from every other node.
pub fn majorities_ring(order: &[usize]) -> BTreeMap<usize, BTreeSet<usize>> {
    let n = order.len();
    let m = n / 2 + 1;
    let mut g = BTreeMap::new();
    for (pos, &node) in order.iter().enumerate() {
        let start = pos + n - (m - 1) / 2;
        let visible: BTreeSet<usize> = (0..m).map(|j| order[(start + j) % n]).collect();
        let drops: BTreeSet<usize> = order
            .iter()
            .copied()
            .filter(|x| !visible.contains(x))
            .collect();
        if !drops.is_empty() {
            g.insert(node, drops);
        }
    }
    g
}

/// Two halves joined by one bridge node (for 3 nodes: the ends cannot talk).
pub fn bridge(order: &[usize]) -> BTreeMap<usize, BTreeSet<usize>> {
    let n = order.len();
    let mid = n / 2;
    split(&order[..mid], &order[mid + 1..])
}

impl Nemesis {
    pub fn new(db: Arc<Db>, net: Option<Arc<Net>>, rec: Recorder) -> Self {
        Nemesis {
            db,
            net,
            rec,
            pending_join: Default::default(),
            pending_replace: Default::default(),
        }
    }

    async fn leader_or(&self, rng: &mut ChaCha8Rng) -> usize {
        match self.db.leader().await {
            Some(l) => l,
            None => rng.random_range(0..self.db.len()),
        }
    }

    async fn apply(&self, step: &Step) -> Result<(Undo, serde_json::Value)> {
        let mut rng = ChaCha8Rng::seed_from_u64(step.pick);
        let n = self.db.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        let names = |v: &[usize]| v.iter().map(|&i| self.db.name(i)).collect::<Vec<_>>();
        let net = || {
            self.net
                .clone()
                .ok_or_else(|| anyhow::anyhow!("{} needs network namespaces", step.fault.name()))
        };
        let show_grudge = |g: &BTreeMap<usize, BTreeSet<usize>>| {
            g.iter()
                .map(|(k, v)| {
                    (
                        self.db.name(*k),
                        names(&v.iter().copied().collect::<Vec<_>>()),
                    )
                })
                .collect::<BTreeMap<_, _>>()
        };
        Ok(match step.fault {
            Fault::PartitionHalves
            | Fault::PartitionLeader
            | Fault::PartitionNode
            | Fault::PartitionRing
            | Fault::PartitionBridge => {
                let net = net()?;
                let grudge = match step.fault {
                    Fault::PartitionHalves => split(&order[..n / 2], &order[n / 2..]),
                    Fault::PartitionLeader => {
                        let l = self.leader_or(&mut rng).await;
                        let rest: Vec<usize> = (0..n).filter(|&i| i != l).collect();
                        split(&[l], &rest)
                    }
                    Fault::PartitionNode => {
                        let rest: Vec<usize> = (0..n).filter(|&i| i != order[0]).collect();
                        split(&[order[0]], &rest)
                    }
                    Fault::PartitionRing => majorities_ring(&order),
                    _ => bridge(&order),
                };
                net.partition(&grudge)?;
                (Undo::Heal, json!({ "drops": show_grudge(&grudge) }))
            }
            Fault::KillOne | Fault::KillLeader | Fault::KillMinority | Fault::KillAll => {
                let victims: Vec<usize> = match step.fault {
                    Fault::KillOne => vec![order[0]],
                    Fault::KillLeader => vec![self.leader_or(&mut rng).await],
                    Fault::KillMinority => order[..n.saturating_sub(1) / 2].to_vec(),
                    _ => order.clone(),
                };
                for &v in &victims {
                    self.db.kill(v);
                }
                (
                    Undo::Restart(victims.clone()),
                    json!({ "killed": names(&victims) }),
                )
            }
            Fault::PauseOne | Fault::PauseLeader => {
                let v = if step.fault == Fault::PauseOne {
                    order[0]
                } else {
                    self.leader_or(&mut rng).await
                };
                self.db.pause(v);
                (Undo::Resume(vec![v]), json!({ "paused": names(&[v]) }))
            }
            Fault::Membership => {
                let v = if rng.random_bool(0.3) {
                    self.leader_or(&mut rng).await
                } else {
                    order[0]
                };
                match self.db.leave(v, Duration::from_secs(10)).await {
                    Ok((old, new)) => {
                        self.pending_join.lock().unwrap().insert(v);
                        (
                            Undo::Join(v),
                            json!({ "slot": self.db.name(v), "removed": old, "joining": new }),
                        )
                    }
                    Err(e) => (
                        Undo::Nothing,
                        json!({ "slot": self.db.name(v), "error": e.to_string() }),
                    ),
                }
            }
            Fault::Slow => {
                let how = net()?.slow(&(0..n).collect::<Vec<_>>(), 50, 5)?;
                (Undo::Slow, json!({ "how": how }))
            }
            Fault::DiskFull => {
                let v = order[0];
                let (taken, _) = self.db.fill_disk(v)?;
                // The node gives back its reserve when its alarm goes off: eat that too.
                tokio::time::sleep(Duration::from_millis(500)).await;
                let (taken2, left) = self.db.fill_disk(v)?;
                (
                    Undo::FreeDisk(v),
                    json!({ "node": self.db.name(v), "filled": taken + taken2, "free": left }),
                )
            }
            Fault::LoseUnsynced | Fault::LoseUnsyncedAll => {
                let victims: Vec<usize> = if step.fault == Fault::LoseUnsynced {
                    vec![order[0]]
                } else {
                    order.clone()
                };
                // Every node goes down before any disk drops its data (one power cut).
                for &v in &victims {
                    self.db.kill(v);
                }
                let mut lost = BTreeMap::new();
                for &v in &victims {
                    lost.insert(self.db.name(v), self.db.power_loss(v)?);
                }
                (Undo::Restart(victims), json!({ "lost": lost }))
            }
            Fault::Corrupt => {
                // A minority: one node of 3, two of 5.
                let victims = &order[..n.saturating_sub(1) / 2];
                let v = victims[0];
                // A node left damaged by an earlier step (its removal waited on a
                // membership change) is replaced first, as an operator would.
                let waiting: Vec<usize> = self.pending_replace.lock().unwrap().iter().copied().collect();
                for s in waiting {
                    if let Ok(r) = self.replace(s, Duration::from_secs(10)).await {
                        self.pending_replace.lock().unwrap().remove(&s);
                        self.rec.nemesis("late-replace", json!({ "slot": self.db.name(s), "replaced": r }));
                    }
                }
                // A replacement still a learner leaves the cluster with a voter short:
                // damage now would be a majority fault. Finish its join first.
                let joining: Vec<usize> = self.pending_join.lock().unwrap().iter().copied().collect();
                for s in joining {
                    if self.db.join(s, Duration::from_secs(10)).await.is_ok() {
                        self.pending_join.lock().unwrap().remove(&s);
                        self.rec.nemesis("late-join", json!({ "slot": self.db.name(s), "joined": self.db.node_id(s) }));
                    }
                }
                if !self.pending_join.lock().unwrap().is_empty() || !self.pending_replace.lock().unwrap().is_empty() {
                    return Ok((
                        Undo::Nothing,
                        json!({ "node": self.db.name(v), "corrupted": null, "note": "skipped: a replacement has not joined yet" }),
                    ));
                }
                // Damage on top of a node that is already down would be a majority
                // fault, and the damaged node could not be replaced without quorum.
                if !self.db.all_ready().await {
                    return Ok((
                        Undo::Nothing,
                        json!({ "node": self.db.name(v), "corrupted": null, "note": "skipped: not every node is ready" }),
                    ));
                }
                self.db.kill(v);
                match self.db.corrupt(v, &mut rng)? {
                    Some(what) => (
                        Undo::StartCorrupted(v),
                        json!({ "node": self.db.name(v), "corrupted": what }),
                    ),
                    None => (
                        Undo::Restart(vec![v]),
                        json!({ "node": self.db.name(v), "corrupted": null, "note": "no WAL segment or snapshot file yet" }),
                    ),
                }
            }
            Fault::KillSnapshot => {
                let db = self.db.clone();
                let limit = Duration::from_millis(step.hold_ms.max(500));
                let seen = tokio::task::spawn_blocking(move || catch_snapshot_write(&db, limit))
                    .await
                    .unwrap_or(None);
                match seen {
                    Some((v, file, waited)) => (
                        Undo::Restart(vec![v]),
                        json!({ "killed": self.db.name(v), "writing": file, "waited_ms": waited }),
                    ),
                    None => (
                        Undo::Nothing,
                        json!({ "killed": null, "note": format!("no snapshot file was being written within {limit:?}") }),
                    ),
                }
            }
        })
    }

    async fn undo(&self, u: Undo) -> serde_json::Value {
        match u {
            Undo::Nothing => json!({}),
            Undo::Heal => {
                let r = self.net.as_ref().map(|n| n.heal_partition());
                json!({ "healed": r.map(|r| r.is_ok()) })
            }
            Undo::Restart(v) => {
                let mut errs = Vec::new();
                for &s in &v {
                    if let Err(e) = self.db.start(s) {
                        errs.push(e.to_string());
                    }
                }
                json!({ "restarted": v.iter().map(|&i| self.db.name(i)).collect::<Vec<_>>(), "errors": errs })
            }
            Undo::Resume(v) => {
                for &s in &v {
                    self.db.resume(s);
                }
                json!({ "resumed": v.iter().map(|&i| self.db.name(i)).collect::<Vec<_>>() })
            }
            Undo::Join(s) => match self.db.join(s, Duration::from_secs(15)).await {
                Ok(()) => {
                    self.pending_join.lock().unwrap().remove(&s);
                    json!({ "joined": self.db.node_id(s), "slot": self.db.name(s) })
                }
                Err(e) => json!({ "join_pending": self.db.name(s), "error": e.to_string() }),
            },
            Undo::Slow => {
                let r = self.net.as_ref().map(|n| n.heal_slow());
                json!({ "healed": r.map(|r| r.is_ok()) })
            }
            Undo::FreeDisk(s) => {
                let freed = match self.db.free_disk(s) {
                    Ok(free) => json!({ "freed": self.db.name(s), "free": free }),
                    Err(e) => json!({ "freed": self.db.name(s), "error": e.to_string() }),
                };
                // A node whose sled met the full disk stops (fail-stop, exit code 74);
                // a supervisor restarts it, and so does the nemesis once space is back.
                match self.db.exited(s) {
                    None => freed,
                    Some(status) => {
                        let restarted = self.db.start(s).map_err(|e| e.to_string());
                        json!({ "freed": freed, "exited": status, "restarted": restarted.is_ok(), "error": restarted.err() })
                    }
                }
            }
            Undo::StartCorrupted(s) => self.start_corrupted(s).await,
        }
    }

    /// Start a node whose data was corrupted. It must either refuse to start
    /// (exit with a message) or come up; one that refuses is replaced as an
    /// operator would: removed from the cluster and brought back as a new node
    /// with fresh data.
    async fn start_corrupted(&self, s: usize) -> serde_json::Value {
        if let Err(e) = self.db.start(s) {
            return json!({ "error": e.to_string() });
        }
        let start = Instant::now();
        // Bounded: 15 s of 200 ms polls.
        while start.elapsed() < Duration::from_secs(15) {
            if let Some(status) = self.db.exited(s) {
                let said = self.db.log_tail(s, 3);
                // The removal waits for a membership change still in flight (the
                // previous replacement's, committed once its learner caught up).
                let replaced = match self.replace(s, Duration::from_secs(30)).await {
                    Ok(v) => v,
                    Err(e) => {
                        self.pending_replace.lock().unwrap().insert(s);
                        json!({ "replace_pending": self.db.name(s), "error": e.to_string() })
                    }
                };
                return json!({ "node": self.db.name(s), "refused_to_start": status, "said": said, "replaced": replaced });
            }
            if self.db.ready(s).await {
                return json!({ "node": self.db.name(s), "started": true, "ms": start.elapsed().as_millis() as u64 });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        json!({ "node": self.db.name(s), "started": "running but not ready after 15 s" })
    }

    /// Replace the node of slot `s` as an operator would: remove it from the cluster,
    /// then bring a new node with fresh data into its slot. A removal that cannot be
    /// confirmed within `timeout` is an error (nothing changed); a join that does not
    /// finish is left pending for the heal.
    async fn replace(&self, s: usize, timeout: Duration) -> Result<serde_json::Value> {
        let (old, new) = self.db.leave(s, timeout).await?;
        Ok(match self.db.join(s, Duration::from_secs(20)).await {
            Ok(()) => json!({ "removed": old, "joined": new }),
            Err(e) => {
                self.pending_join.lock().unwrap().insert(s);
                json!({ "removed": old, "join_pending": new, "error": e.to_string() })
            }
        })
    }

    /// Run `steps` from `start` until done or `stop` is set; the current fault is
    /// always undone before returning.
    pub async fn run(
        &self,
        steps: &[Step],
        start: Instant,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> usize {
        let mut done = 0;
        for step in steps {
            let at = start + Duration::from_millis(step.at_ms);
            let mut stop2 = stop.clone();
            tokio::select! {
                _ = tokio::time::sleep_until(at.into()) => {}
                _ = stop2.wait_for(|s| *s) => return done,
            }
            let name = step.fault.name();
            let (undo, info) = match self.apply(step).await {
                Ok(x) => x,
                Err(e) => {
                    self.rec
                        .nemesis(&format!("start-{name}"), json!({ "error": e.to_string() }));
                    continue;
                }
            };
            self.rec.nemesis(&format!("start-{name}"), info);
            done += 1;
            let mut stop3 = stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(step.hold_ms)) => {}
                _ = stop3.wait_for(|s| *s) => {}
            }
            let nodes = undo.nodes(self.db.len());
            let undone = Instant::now();
            let info = self.undo(undo).await;
            self.rec.nemesis(&format!("stop-{name}"), info);
            // Not measured once the run is stopping (the final heal measures that).
            let mut stop4 = stop.clone();
            let ready = if nodes.is_empty() {
                None
            } else {
                tokio::select! {
                    r = self.wait_ready(&nodes, undone, RECOVERY_WAIT) => Some(r),
                    _ = stop4.wait_for(|s| *s) => None,
                }
            };
            if let Some(ready) = ready {
                self.rec.nemesis(
                    &format!("recovered-{name}"),
                    json!({
                        "nodes": nodes.iter().map(|&i| self.db.name(i)).collect::<Vec<_>>(),
                        "ready": ready,
                        "ms": undone.elapsed().as_millis() as u64,
                    }),
                );
            }
        }
        done
    }

    /// Wait until every slot of `nodes` runs and answers `/ready` (polled every
    /// 100 ms), at most `limit` after `since`. Whether they all did.
    async fn wait_ready(&self, nodes: &[usize], since: Instant, limit: Duration) -> bool {
        let mut left: Vec<usize> = nodes.to_vec();
        // Bounded by `limit`.
        while since.elapsed() < limit {
            let mut still = Vec::new();
            for &s in &left {
                if !(self.db.is_running(s) && self.db.ready(s).await) {
                    still.push(s);
                }
            }
            left = still;
            if left.is_empty() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Undo everything: heal the network, resume and restart every node, finish
    /// pending joins. Bounded by `timeout`.
    pub async fn heal_all(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        if let Some(n) = &self.net {
            n.heal()?;
        }
        let mut exited = BTreeMap::new();
        let replace: Vec<usize> = self.pending_replace.lock().unwrap().iter().copied().collect();
        for s in 0..self.db.len() {
            self.db.resume(s);
            if replace.contains(&s) {
                continue; // its data is damaged: replaced below
            }
            // A node that exited by itself (fail-stop) is restarted like a killed one.
            if let Some(status) = self.db.exited(s) {
                exited.insert(self.db.name(s), status);
            }
            self.db.start(s)?;
        }
        for s in replace {
            let left = timeout.saturating_sub(start.elapsed()).max(Duration::from_secs(1));
            let r = self.replace(s, left).await?;
            self.pending_replace.lock().unwrap().remove(&s);
            self.rec.nemesis("heal-replace", json!({ "slot": self.db.name(s), "replaced": r }));
        }
        let pending: Vec<usize> = self.pending_join.lock().unwrap().iter().copied().collect();
        for s in pending {
            let left = timeout
                .saturating_sub(start.elapsed())
                .max(Duration::from_secs(1));
            self.db.join(s, left).await?;
            self.pending_join.lock().unwrap().remove(&s);
        }
        self.rec.nemesis(
            "heal-all",
            json!({ "ms": start.elapsed().as_millis() as u64, "restarted_after_exit": exited }),
        );
        Ok(())
    }
}

/// Polls every running node's `snapshots/` dir for a snapshot file being written
/// (`*.tmp`) for at most `limit`; SIGKILLs the first node seen writing one.
/// Returns (slot, file, ms waited).
fn catch_snapshot_write(db: &Db, limit: Duration) -> Option<(usize, String, u64)> {
    let start = Instant::now();
    let dirs: Vec<(usize, std::path::PathBuf)> = (0..db.len())
        .filter(|&s| db.is_running(s) && !db.is_paused(s))
        .map(|s| (s, db.data_dir(s).join("snapshots")))
        .collect();
    // Bounded by `limit`; ~1 ms per round.
    while start.elapsed() < limit {
        for (s, dir) in &dirs {
            let Ok(rd) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".tmp") {
                    db.kill(*s);
                    return Some((*s, name, start.elapsed().as_millis() as u64));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_schedule() {
        let f = parse_list("all").unwrap();
        let a = schedule(
            &f,
            7,
            Duration::from_secs(60),
            Duration::from_secs(3),
            Duration::from_secs(4),
        );
        let b = schedule(
            &f,
            7,
            Duration::from_secs(60),
            Duration::from_secs(3),
            Duration::from_secs(4),
        );
        let c = schedule(
            &f,
            8,
            Duration::from_secs(60),
            Duration::from_secs(3),
            Duration::from_secs(4),
        );
        let key = |s: &[Step]| {
            s.iter()
                .map(|x| (x.at_ms, x.fault, x.hold_ms, x.pick))
                .collect::<Vec<_>>()
        };
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&c));
        assert!(a.len() >= 5, "{}", a.len());
        for w in a.windows(2) {
            assert!(
                w[0].at_ms + w[0].hold_ms <= w[1].at_ms,
                "one fault at a time"
            );
        }
        assert!(a.iter().all(|s| s.at_ms + s.hold_ms <= 60_000));
    }

    #[test]
    fn nemesis_names_parse() {
        assert_eq!(
            parse_list("kill-leader,partition-node").unwrap(),
            vec![Fault::PartitionNode, Fault::KillLeader]
        );
        assert_eq!(parse_list("partition").unwrap().len(), 5);
        assert_eq!(parse_list("disk").unwrap(), Fault::DISK.to_vec());
        assert_eq!(
            parse_list("lose-unsynced-all,kill-snapshot").unwrap(),
            vec![Fault::LoseUnsyncedAll, Fault::KillSnapshot]
        );
        assert!(parse_list("all").unwrap().contains(&Fault::Corrupt));
        assert_eq!(parse_list("none").unwrap(), vec![]);
        assert!(parse_list("frobnicate").is_err());
    }

    #[test]
    fn grudges() {
        let g = split(&[0], &[1, 2]);
        assert_eq!(g[&0], BTreeSet::from([1, 2]));
        assert_eq!(g[&1], BTreeSet::from([0]));
        // ring of 5: each node drops exactly the two nodes not adjacent to it
        let r = majorities_ring(&[0, 1, 2, 3, 4]);
        assert_eq!(r[&0], BTreeSet::from([2, 3]));
        assert_eq!(r[&2], BTreeSet::from([0, 4]));
        // ring of 3: each node sees itself and its successor
        let r = majorities_ring(&[0, 1, 2]);
        assert!(r.values().all(|d| d.len() == 1));
        // bridge of 3: ends cut, middle sees both
        let b = bridge(&[0, 1, 2]);
        assert_eq!(b[&0], BTreeSet::from([2]));
        assert!(!b.contains_key(&1));
    }
}
