//! Workloads: concurrent client processes that run operations against random
//! nodes and record them in the history.
//!
//! - `register` — a linearizable register per key (triggers; write, read, CAS);
//! - `queue` — webhook deliveries in, worker leases out, including zombie workers
//!   that outlive their lease (`queue.rs`), and the status reads of `status.rs`.

pub mod queue;
pub mod register;
pub mod status;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::Db;

/// Disjoint ranges of process ids (a process that crashed continues under a new
/// id in its own range, so ids never collide across workloads).
pub const REGISTER_PROCESSES: u64 = 0;
pub const PRODUCER_PROCESSES: u64 = 1_000_000_000;
pub const LEASE_PROCESSES: u64 = 2_000_000_000;
pub const FINAL_READ_PROCESSES: u64 = 3_000_000_000;
use crate::history::Recorder;

/// What every client process shares.
#[derive(Clone)]
pub struct Ctx {
    pub db: Arc<Db>,
    pub rec: Recorder,
    /// Unique per run; prefixes keys and delivery ids.
    pub run: String,
    pub seed: u64,
    pub stop: Arc<AtomicBool>,
    /// Bound of one client request.
    pub timeout: Duration,
}

impl Ctx {
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Sleep until `next` (pacing to the rate), or until stopped.
    pub async fn pace(&self, next: &mut Instant, interval: Duration) {
        let now = Instant::now();
        if *next > now {
            let mut left = *next - now;
            // Wake up regularly to notice a stop.
            while left > Duration::ZERO && !self.stopped() {
                let step = left.min(Duration::from_millis(100));
                tokio::time::sleep(step).await;
                left = left.saturating_sub(step);
            }
        }
        *next = (*next + interval).max(Instant::now() - interval);
    }
}
