//! When to build a snapshot.
//!
//! A snapshot is a full copy of the state, which holds every retained event (7 days
//! by default), so its cost grows with the state, not with what changed. openraft
//! 0.9 can only count entries (`SnapshotPolicy::LogsSinceLast`), and an entry holds
//! one command at low rates but up to 256 under load: counting entries alone meant a
//! 300 MB snapshot after every 3 000 quiet-time events. So openraft's policy is off
//! (`SnapshotPolicy::Never`) and this task asks for a snapshot when both hold:
//!
//! - at least `snapshot_every` entries were applied since the last snapshot, and
//! - the Raft log on disk has grown to at least `snapshot_log_percent` % of the last
//!   snapshot's size.
//!
//! Each node scales both thresholds by its own stagger (0, 20 or 40 %, by node id),
//! so the members of a group do not all build at the same moment: while one node
//! builds, the others still make a quorum at full speed.
//!
//! The second rule amortizes: the bytes a snapshot writes are at most
//! `100 / snapshot_log_percent` times the bytes written to the log since the last one,
//! and the log on disk stays within that fraction of the state (plus the entries kept
//! behind a snapshot). openraft purges the log after each snapshot as before.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::node::Node;

/// How often the task looks at the log.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// After asking for a snapshot, how long to wait for it before asking again (a
/// build that failed, or a request openraft dropped, must not stop snapshots).
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(30);

/// The rule, from `spec.cluster.raft`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub every_entries: u64,
    pub log_percent: u64,
    /// Extra percent on both thresholds for this node ([`stagger_percent`]).
    pub stagger_percent: u64,
}

/// The stagger of node `id`: 0, 20 or 40 %.
pub fn stagger_percent(id: u64) -> u64 {
    (id % 3) * 20
}

/// What the rule looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// Entries applied since the last snapshot (all of them when there is none).
    pub entries_since: u64,
    /// Bytes of Raft log on disk.
    pub log_bytes: u64,
    /// Bytes of the current snapshot (0 when there is none).
    pub snapshot_bytes: u64,
}

impl Policy {
    /// Whether a snapshot is due.
    pub fn due(&self, s: Sizes) -> bool {
        let scale = 100 + u128::from(self.stagger_percent);
        u128::from(s.entries_since) * 100 >= u128::from(self.every_entries).saturating_mul(scale)
            && u128::from(s.log_bytes) * 100 * 100
                >= u128::from(s.snapshot_bytes).saturating_mul(u128::from(self.log_percent)).saturating_mul(scale)
    }
}

/// Ask openraft for a snapshot whenever [`Policy::due`] says so, until `stop`.
pub async fn run(node: Arc<Node>, store: crate::store::Store, policy: Policy, mut stop: watch::Receiver<bool>) {
    let mut metrics = node.raft().metrics();
    // When, and at which snapshot index, a snapshot was last asked for: not again
    // until a newer one exists or ASK_AGAIN_AFTER has passed (openraft ignores a
    // request while it builds one).
    let mut asked: Option<(Option<u64>, tokio::time::Instant)> = None;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
        let (applied, snapshot) = {
            let m = metrics.borrow_and_update();
            (m.last_applied.map_or(0, |l| l.index), m.snapshot.map(|l| l.index))
        };
        if asked.is_some_and(|(at, when)| at == snapshot && when.elapsed() < ASK_AGAIN_AFTER) {
            continue;
        }
        let sizes = Sizes {
            entries_since: applied.saturating_sub(snapshot.unwrap_or(0)),
            log_bytes: store.log_bytes(),
            snapshot_bytes: store.snapshot_bytes(),
        };
        if policy.due(sizes) {
            tracing::info!(?sizes, "snapshot due");
            if node.raft().trigger().snapshot().await.is_err() {
                return; // Raft has stopped
            }
            asked = Some((snapshot, tokio::time::Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_log_size_must_both_be_reached() {
        let p = Policy { every_entries: 10_000, log_percent: 50, stagger_percent: 0 };
        let at = |entries_since, log_bytes, snapshot_bytes| p.due(Sizes { entries_since, log_bytes, snapshot_bytes });
        // No snapshot yet: entries decide.
        assert!(!at(9_999, 1 << 30, 0));
        assert!(at(10_000, 0, 0));
        // A 300 MB state: 10 000 quiet-time entries (40 MB of log) are not enough...
        assert!(!at(10_000, 40_000_000, 300_000_000));
        // ...half the snapshot's size of log is.
        assert!(at(10_000, 150_000_000, 300_000_000));
        // Many entries never make up for a small log.
        assert!(!at(1_000_000, 149_999_999, 300_000_000));
        // 0 % = count entries only, the behaviour of openraft's own policy.
        let entries_only = Policy { every_entries: 5, log_percent: 0, stagger_percent: 0 };
        assert!(entries_only.due(Sizes { entries_since: 5, log_bytes: 0, snapshot_bytes: u64::MAX }));
        // No overflow at the extremes.
        let p = Policy { every_entries: 1, log_percent: u64::MAX, stagger_percent: u64::MAX };
        assert!(!p.due(Sizes { entries_since: u64::MAX, log_bytes: u64::MAX, snapshot_bytes: u64::MAX }));
    }

    #[test]
    fn members_are_staggered() {
        assert_eq!([1, 2, 3, 4].map(stagger_percent), [20, 40, 0, 20]);
        let node = |id| Policy { every_entries: 10_000, log_percent: 50, stagger_percent: stagger_percent(id) };
        let sizes = |entries_since, log_bytes| Sizes { entries_since, log_bytes, snapshot_bytes: 100_000_000 };
        // Node 3 (0 %) is due first, node 1 (20 %) at 12 000 entries / 60 MB, node 2 at 14 000 / 70 MB.
        assert!(node(3).due(sizes(10_000, 50_000_000)));
        assert!(!node(1).due(sizes(11_999, 60_000_000)));
        assert!(!node(1).due(sizes(12_000, 59_999_999)));
        assert!(node(1).due(sizes(12_000, 60_000_000)));
        assert!(!node(2).due(sizes(13_999, 70_000_000)));
        assert!(node(2).due(sizes(14_000, 70_000_000)));
    }
}
