//! Jepsen-style fault-injection harness for aof-cluster.
//!
//! One file per concern: [`net`] (network namespaces, partitions, slow links),
//! [`cluster`] (the `aofctl serve` processes: start, SIGKILL, SIGSTOP, membership),
//! [`disk`] (the nodes' disks: tmpfs for a full disk, faultfs for power loss),
//! [`nemesis`] (the seeded fault schedule), [`history`] (invoke/ok/fail/info
//! records, JSONL), [`workloads`] (register, queue, status), [`checkers`]
//! (linearizability, queue, status), [`report`], and [`run`] (one test, start
//! to finish). [`cleanup`] removes everything a run created, also on Ctrl-C.
//! See docs/JEPSEN.md.

pub mod checkers;
pub mod cleanup;
pub mod cluster;
pub mod disk;
pub mod history;
pub mod http;
pub mod nemesis;
pub mod net;
pub mod report;
pub mod run;
pub mod workloads;
