//! What the benchmark reads from the machine: CPU time and RSS of processes
//! (`/proc/<pid>/stat`, `/proc/<pid>/status`), bytes on disk of data dirs (like
//! `du`), free loopback ports, and a description of the machine and checkout.

use std::path::Path;
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Make a child process die with this one (`PR_SET_PDEATHSIG`), so nodes and
/// servers never outlive a killed benchmark. Spawn from a thread that lives as
/// long as the process (the runtime's `block_on` thread does).
pub fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// A free TCP port on 127.0.0.1, never the same one twice in this process.
pub use aof_contract::ports::free_port;

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// User + system CPU seconds a process has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks_per_sec())
}

/// Resident set size and its peak (VmRSS, VmHWM), bytes.
pub fn rss_bytes(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:").unwrap_or(0)))
}

/// Bytes a process has caused to be written to the storage layer so far
/// (`write_bytes` of `/proc/<pid>/io`: what reaches the disk, page-cache writeback
/// included, unlike the data dir's growth, which misses rewrites and deletions).
pub fn write_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines().find_map(|l| l.strip_prefix("write_bytes:")).and_then(|v| v.trim().parse().ok())
}

/// Bytes allocated on disk under `dir` (like `du -s --block-size=1`).
pub fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    // Bounded: data dirs hold a handful of files; stop at 100 000 entries anyway.
    let mut seen = 0usize;
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            seen += 1;
            if seen > 100_000 {
                return total;
            }
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

/// CPU seconds the whole machine has been busy (all cores; `/proc/stat`, everything
/// but idle and iowait).
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = cpu.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle) as f64 / clock_ticks_per_sec())
}

/// CPU use of a set of processes, and of the whole machine, over a window.
pub struct CpuProbe {
    pids: Vec<u32>,
    start: Vec<Option<f64>>,
    machine: Option<f64>,
    t0: Instant,
}

impl CpuProbe {
    pub fn start(pids: &[u32]) -> Self {
        CpuProbe {
            pids: pids.to_vec(),
            start: pids.iter().map(|p| cpu_seconds(*p)).collect(),
            machine: machine_busy_seconds(),
            t0: Instant::now(),
        }
    }

    /// CPU use of each process since `start`, and of the whole machine, in % of one core.
    pub fn finish(&self) -> (Vec<f64>, f64) {
        let wall = self.t0.elapsed().as_secs_f64().max(1e-6);
        let per = self
            .pids
            .iter()
            .zip(&self.start)
            .map(|(p, s)| match (s, cpu_seconds(*p)) {
                (Some(a), Some(b)) => (b - a) / wall * 100.0,
                _ => f64::NAN,
            })
            .collect();
        let machine = match (self.machine, machine_busy_seconds()) {
            (Some(a), Some(b)) => (b - a) / wall * 100.0,
            _ => f64::NAN,
        };
        (per, machine)
    }
}

/// `/proc/loadavg`'s 1-minute load average.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| s.split_whitespace().next()?.parse().ok()).unwrap_or(f64::NAN)
}

/// The machine, for the report header.
pub struct Machine {
    pub cores: usize,
    pub mem_gib: f64,
    pub cpu_model: String,
    pub kernel: String,
}

impl Machine {
    pub fn detect() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| m.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
            .unwrap_or(0);
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| c.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string()))
            .unwrap_or_else(|| "unknown CPU".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default();
        Machine { cores, mem_gib: mem_kb as f64 / 1024.0 / 1024.0, cpu_model, kernel }
    }

    pub fn describe(&self) -> String {
        format!("{} cores ({}), {:.1} GiB RAM, Linux {}", self.cores, self.cpu_model, self.mem_gib, self.kernel)
    }
}

/// `git rev-parse --short HEAD` of the checkout, with `+dirty` when the work tree
/// has changes (the numbers then belong to uncommitted code).
pub fn git_commit(repo: &Path) -> String {
    let run = |args: &[&str]| Command::new("git").arg("-C").arg(repo).args(args).output().ok().filter(|o| o.status.success());
    let Some(head) = run(&["rev-parse", "--short", "HEAD"]) else { return "unknown".into() };
    let mut s = String::from_utf8_lossy(&head.stdout).trim().to_string();
    if run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|o| !o.stdout.is_empty()) {
        s.push_str("+dirty");
    }
    s
}

/// Current UTC date and time, `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_some());
        let (rss, hwm) = rss_bytes(pid).unwrap();
        assert!(rss > 0 && hwm >= rss / 2);
        assert!(write_bytes(pid).is_some(), "/proc/self/io is readable");
    }

    #[test]
    fn date_is_formatted() {
        let s = utc_now();
        assert_eq!(s.len(), "2025-01-01 00:00 UTC".len(), "{s}");
        assert!(s.starts_with("20"));
    }
}
