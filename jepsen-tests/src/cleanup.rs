//! Everything a run creates outside itself — node processes and namespaces (with
//! their interfaces, iptables rules and qdiscs) — is registered here, and removed
//! by [`cleanup_all`]: from the run's [`Guard`] on return or panic, and from the
//! signal handler on Ctrl-C / SIGTERM. Only what this process registered is touched.

use std::collections::BTreeSet;
use std::sync::Mutex;

/// (run prefix, pid)
static PIDS: Mutex<BTreeSet<(String, i32)>> = Mutex::new(BTreeSet::new());
/// (run prefix, namespace)
static NAMESPACES: Mutex<BTreeSet<(String, String)>> = Mutex::new(BTreeSet::new());

pub fn register_pid(run: &str, pid: u32) {
    PIDS.lock().unwrap().insert((run.to_string(), pid as i32));
}

pub fn unregister_pid(run: &str, pid: u32) {
    PIDS.lock().unwrap().remove(&(run.to_string(), pid as i32));
}

pub fn register_namespace(run: &str, ns: &str) {
    NAMESPACES
        .lock()
        .unwrap()
        .insert((run.to_string(), ns.to_string()));
}

pub fn unregister_namespace(run: &str, ns: &str) {
    NAMESPACES
        .lock()
        .unwrap()
        .remove(&(run.to_string(), ns.to_string()));
}

/// SIGKILL every process inside namespace `ns` (e.g. nodes of a crashed run).
pub fn kill_namespace_pids(ns: &str) {
    if let Ok(out) = std::process::Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
    {
        for pid in String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            unsafe {
                libc::kill(pid, libc::SIGCONT);
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Kill every registered process of every run and delete every registered
/// namespace. Idempotent.
pub fn cleanup_all() {
    cleanup(None)
}

/// Remove and return the entries registered for run `run` (all runs: `None`).
fn take_run<T: Ord + Clone>(set: &Mutex<BTreeSet<(String, T)>>, run: Option<&str>) -> Vec<T> {
    let mut g = set.lock().unwrap();
    let mine: Vec<(String, T)> = g
        .iter()
        .filter(|(r, _)| run.is_none_or(|x| x == r))
        .cloned()
        .collect();
    for m in &mine {
        g.remove(m);
    }
    mine.into_iter().map(|(_, v)| v).collect()
}

/// Kill the processes of run `run` (all runs: `None`; SIGCONT first, so stopped
/// ones die too) and delete its namespaces. Idempotent.
pub fn cleanup(run: Option<&str>) {
    let pids = take_run(&PIDS, run);
    for &pid in &pids {
        unsafe {
            libc::kill(pid, libc::SIGCONT);
            libc::kill(pid, libc::SIGKILL);
        }
    }
    for &pid in &pids {
        // Reap, so no zombies remain (ignore errors: maybe already reaped).
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
    let mut namespaces = take_run(&NAMESPACES, run);
    // Hub last: delete node namespaces before the bridge's.
    namespaces.sort_by_key(|n| n.ends_with("-hub"));
    for ns in namespaces {
        kill_namespace_pids(&ns);
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &ns])
            .output();
    }
}

/// Cleans up its run when dropped (also while unwinding from a panic).
pub struct Guard(pub String);

impl Drop for Guard {
    fn drop(&mut self) {
        cleanup(Some(&self.0));
    }
}

/// On Ctrl-C or SIGTERM: clean up and exit 130. Call once, inside a tokio runtime.
pub fn install_signal_handler() {
    tokio::spawn(async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("jepsen: interrupted; removing the run's processes and namespaces");
        cleanup_all();
        std::process::exit(130);
    });
}
