//! Results: one [`Row`] per load phase, rendered as Markdown tables (all phases,
//! aof-cluster / JetStream ratios, three nodes / one node, the targets), printed and
//! optionally appended to docs/BENCHMARKS.md.

use std::fmt::Write as _;
use std::path::Path;

use crate::load::{Lat, Window};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Aof3,
    Aof1,
    Nats,
}

impl System {
    pub fn label(self) -> &'static str {
        match self {
            System::Aof3 => "aof-cluster ×3",
            System::Aof1 => "aof-cluster ×1",
            System::Nats => "JetStream R3",
        }
    }
    pub fn short(self) -> &'static str {
        match self {
            System::Aof3 => "aof3",
            System::Aof1 => "aof1",
            System::Nats => "nats",
        }
    }
}

/// What load a phase ran.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    /// C senders back to back.
    Closed { concurrency: usize },
    /// A fixed rate, `fraction` of the reference maximum.
    Open { fraction: f64, rate: f64 },
}

impl Load {
    pub fn label(&self) -> String {
        match self {
            Load::Closed { concurrency } => format!("closed C={concurrency}"),
            Load::Open { fraction, rate } => format!("open {:.0}% ({rate:.0}/s)", fraction * 100.0),
        }
    }
}

pub struct Row {
    pub system: System,
    pub load: Load,
    pub window: Window,
    pub http: Lat,
    pub claim: Lat,
    pub complete: Lat,
    /// Non-202 answers (or NATS duplicates) and transport errors / timeouts.
    pub rejected: u64,
    pub errors: u64,
    /// Deliveries accepted in the window but not completed within the drain time.
    pub not_done: u64,
    /// CPU of each node process, % of one core (whole phase).
    pub cpu: Vec<f64>,
    /// RSS of each node at the end of the phase, MiB.
    pub rss_mib: Vec<f64>,
    /// CPU of the load generator + workers (this process), % of one core.
    pub bench_cpu: f64,
    /// CPU used meanwhile by everything else on the machine, % of one core.
    pub other_cpu: f64,
    /// Growth of the data dirs per 1 000 accepted events, KiB, average per node.
    pub disk_kib_per_1k: f64,
    /// Bytes each node wrote to disk (`/proc/<pid>/io` `write_bytes`, phase + drain)
    /// per 1 000 accepted events, KiB.
    pub write_kib_per_1k: Vec<f64>,
    /// aof-cluster: log entries per flush (fsync) in this phase, on the leader and on
    /// average on the followers: the group-commit batch size.
    pub leader_entries_per_flush: Option<(f64, f64)>,
    /// aof-cluster: Raft log entries committed per accepted event.
    pub entries_per_event: Option<f64>,
    pub error_samples: Vec<String>,
}

impl Row {
    /// CPU milliseconds the cluster's processes (all nodes together) spent per
    /// accepted event: the cost that decides how far a given number of cores goes,
    /// and much less sensitive than throughput to other load on the machine.
    pub fn node_cpu_ms_per_event(&self) -> f64 {
        let rate = self.window.accepted_rate();
        if rate <= 0.0 {
            return f64::NAN;
        }
        self.cpu.iter().filter(|c| !c.is_nan()).sum::<f64>() / 100.0 * 1000.0 / rate
    }

    /// Sustained throughput: what was accepted AND completed per second.
    pub fn sustained(&self) -> f64 {
        self.window.accepted_rate().min(self.window.completed_rate())
    }
}

pub(crate) fn f(x: f64) -> String {
    if x.is_nan() {
        "–".into()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn list(xs: &[f64]) -> String {
    xs.iter().map(|x| if x.is_nan() { "–".to_string() } else { format!("{x:.0}") }).collect::<Vec<_>>().join(" / ")
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_nan() || b.is_nan() || b == 0.0 || a == 0.0 {
        "–".into()
    } else {
        format!("{:.2}×", a / b)
    }
}

/// The main table: every phase of every system.
pub fn phases_table(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str("| system | load | accepted/s | completed/s | 202 p50 | 202 p99 | 202 p99.9 | 202 max | claim p50 | claim p99 | complete p50 | complete p99 | errors | not done | CPU % per node | node CPU ms / event | RSS MiB per node | bench CPU % | other CPU % | disk KiB / 1k ev | written KiB / 1k ev per node | entries / fsync (leader / followers) | entries / event |\n");
    s.push_str("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {} | {} | {} | {} |",
            r.system.label(),
            r.load.label(),
            r.window.accepted_rate(),
            r.window.completed_rate(),
            f(r.http.p50),
            f(r.http.p99),
            f(r.http.p999),
            f(r.http.max),
            f(r.claim.p50),
            f(r.claim.p99),
            f(r.complete.p50),
            f(r.complete.p99),
            r.rejected + r.errors,
            r.not_done,
            list(&r.cpu),
            f(r.node_cpu_ms_per_event()),
            list(&r.rss_mib),
            r.bench_cpu,
            r.other_cpu,
            f(r.disk_kib_per_1k),
            list(&r.write_kib_per_1k),
            r.leader_entries_per_flush.map_or("–".into(), |(l, fo)| format!("{} / {}", f(l), f(fo))),
            r.entries_per_event.map_or("–".into(), f),
        );
    }
    s
}

/// The best closed-loop phase of a system (highest sustained throughput).
pub fn best_closed(rows: &[Row], sys: System) -> Option<&Row> {
    rows.iter()
        .filter(|r| r.system == sys && matches!(r.load, Load::Closed { .. }))
        .max_by(|a, b| a.sustained().total_cmp(&b.sustained()))
}

fn open_at(rows: &[Row], sys: System, fraction: f64) -> Option<&Row> {
    rows.iter().find(|r| r.system == sys && matches!(r.load, Load::Open { fraction: fr, .. } if (fr - fraction).abs() < 1e-9))
}

/// `a` against `b`, side by side: throughput and latency ratios per load level.
pub fn ratio_table(rows: &[Row], a: System, b: System, fractions: &[f64]) -> Option<String> {
    let (ba, bb) = (best_closed(rows, a)?, best_closed(rows, b)?);
    let mut s = String::new();
    let _ = writeln!(s, "| load | metric | {} | {} | ratio {} / {} |", a.label(), b.label(), a.short(), b.short());
    s.push_str("|---|---|--:|--:|--:|\n");
    let _ = writeln!(
        s,
        "| max (closed loop) | sustained events/s | {:.0} | {:.0} | {} |",
        ba.sustained(),
        bb.sustained(),
        ratio(ba.sustained(), bb.sustained())
    );
    let _ = writeln!(s, "| max (closed loop) | 202 / ack p99 ms | {} | {} | {} |", f(ba.http.p99), f(bb.http.p99), ratio(ba.http.p99, bb.http.p99));
    let _ = writeln!(
        s,
        "| max (closed loop) | node CPU ms / event | {} | {} | {} |",
        f(ba.node_cpu_ms_per_event()),
        f(bb.node_cpu_ms_per_event()),
        ratio(ba.node_cpu_ms_per_event(), bb.node_cpu_ms_per_event())
    );
    for &fr in fractions {
        let (Some(ra), Some(rb)) = (open_at(rows, a, fr), open_at(rows, b, fr)) else { continue };
        let rate = match ra.load {
            Load::Open { rate, .. } => rate,
            _ => 0.0,
        };
        let load = format!("open {:.0}% ({rate:.0}/s)", fr * 100.0);
        let lines: [(&str, f64, f64); 7] = [
            ("202 / ack p50 ms", ra.http.p50, rb.http.p50),
            ("202 / ack p99 ms", ra.http.p99, rb.http.p99),
            ("202 / ack p99.9 ms", ra.http.p999, rb.http.p999),
            ("event→claim p50 ms", ra.claim.p50, rb.claim.p50),
            ("event→claim p99 ms", ra.claim.p99, rb.claim.p99),
            ("event→complete p50 ms", ra.complete.p50, rb.complete.p50),
            ("event→complete p99 ms", ra.complete.p99, rb.complete.p99),
        ];
        let _ = writeln!(s, "| {load} | accepted events/s | {:.0} | {:.0} | {} |", ra.window.accepted_rate(), rb.window.accepted_rate(), ratio(ra.window.accepted_rate(), rb.window.accepted_rate()));
        for (m, x, y) in lines {
            let _ = writeln!(s, "| {load} | {m} | {} | {} | {} |", f(x), f(y), ratio(x, y));
        }
    }
    Some(s)
}

/// The targets, checked against aof-cluster ×3.
pub fn targets(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str("| target | measured | verdict |\n|---|---|---|\n");
    let verdict = |ok: bool| if ok { "met" } else { "**not met**" };
    if let Some(b) = best_closed(rows, System::Aof3) {
        let _ = writeln!(s, "| sustained throughput ≥ 8 300 events/s | {:.0} events/s | {} |", b.sustained(), verdict(b.sustained() >= 8300.0));
        if let Some(n) = best_closed(rows, System::Nats) {
            let _ = writeln!(
                s,
                "| throughput ≥ JetStream R3 | {:.0} vs {:.0} events/s ({}) | {} |",
                b.sustained(),
                n.sustained(),
                ratio(b.sustained(), n.sustained()),
                verdict(b.sustained() >= n.sustained())
            );
        }
    }
    if let Some(r) = open_at(rows, System::Aof3, 0.5) {
        let _ = writeln!(s, "| webhook 202 p99 ≤ 5 ms at 50 % of max | {} ms | {} |", f(r.http.p99), verdict(r.http.count > 0 && r.http.p99 <= 5.0));
        let _ = writeln!(s, "| event→claim p99 ≤ 10 ms (at 50 % of max) | {} ms | {} |", f(r.claim.p99), verdict(r.claim.count > 0 && r.claim.p99 <= 10.0));
    }
    s
}

/// Everything, as Markdown.
pub fn render(rows: &[Row], fractions: &[f64], header: &str, notes: &[String]) -> String {
    let mut s = String::new();
    s.push_str(header);
    s.push_str("\n\n");
    s.push_str(&phases_table(rows));
    if let Some(t) = ratio_table(rows, System::Aof3, System::Nats, fractions) {
        s.push_str("\naof-cluster ×3 against JetStream R3 (same payloads, same absolute rates; for latency a ratio above 1 means aof-cluster is slower):\n\n");
        s.push_str(&t);
    }
    if let Some(t) = ratio_table(rows, System::Aof3, System::Aof1, fractions) {
        s.push_str("\nThree nodes against one:\n\n");
        s.push_str(&t);
    }
    s.push_str("\nTargets (aof-cluster ×3):\n\n");
    s.push_str(&targets(rows));
    if !notes.is_empty() {
        s.push('\n');
        for n in notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}

/// Append `text` to the results log, creating the file with a title if needed.
pub fn append_doc(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let exists = path.exists();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    if !exists {
        writeln!(f, "# Benchmarks\n\n## Results log\n")?;
    }
    writeln!(f, "\n{}", text.trim_end())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(system: System, load: Load, acc: u64, p99: f64) -> Row {
        Row {
            system,
            load,
            window: Window { secs: 1.0, accepted: acc, completed: acc, sent: acc },
            http: Lat { count: acc, p50: 1.0, p99, p999: p99, max: p99 },
            claim: Lat { count: acc, p50: 1.0, p99: 2.0, p999: 2.0, max: 2.0 },
            complete: Lat::default(),
            rejected: 0,
            errors: 0,
            not_done: 0,
            cpu: vec![50.0, 20.0, f64::NAN],
            rss_mib: vec![30.0],
            bench_cpu: 10.0,
            other_cpu: 0.0,
            disk_kib_per_1k: 12.5,
            write_kib_per_1k: vec![20.0, 18.0, 18.0],
            leader_entries_per_flush: Some((1.0, 4.0)),
            entries_per_event: None,
            error_samples: vec![],
        }
    }

    #[test]
    fn renders_tables_and_ratios() {
        let rows = vec![
            row(System::Aof3, Load::Closed { concurrency: 8 }, 1000, 3.0),
            row(System::Aof3, Load::Open { fraction: 0.5, rate: 500.0 }, 500, 4.0),
            row(System::Nats, Load::Closed { concurrency: 8 }, 2000, 1.0),
            row(System::Nats, Load::Open { fraction: 0.5, rate: 500.0 }, 500, 2.0),
        ];
        let out = render(&rows, &[0.5], "### run", &[]);
        assert!(out.contains("| aof-cluster ×3 | closed C=8 | 1000 | 1000 |"), "{out}");
        assert!(out.contains("| max (closed loop) | sustained events/s | 1000 | 2000 | 0.50× |"), "{out}");
        assert!(out.contains("| open 50% (500/s) | 202 / ack p99 ms | 4.00 | 2.00 | 2.00× |"), "{out}");
        assert!(out.contains("| webhook 202 p99 ≤ 5 ms at 50 % of max | 4.00 ms | met |"), "{out}");
        assert!(out.contains("**not met**"), "{out}");
    }
}
