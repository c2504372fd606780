//! Free loopback ports for the processes that the tests, the benchmark and the
//! fault-injection harness start.
//!
//! A port found free (bound to `127.0.0.1:0`, then released) is not held until the
//! node that gets it binds it, and the kernel may offer the same port again in the
//! meantime. A harness picks every port of a cluster before starting any node, so
//! [`free_port`] never hands out the same port twice in one process.

use std::net::TcpListener;
use std::sync::Mutex;

/// A free TCP port on 127.0.0.1 that this process has not handed out before.
///
/// # Panics
/// When loopback cannot be bound, or after 1000 tries that only found ports already
/// handed out.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind 127.0.0.1:0 (is loopback up?)");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no free loopback port that was not handed out already, after 1000 tries")
}

#[cfg(test)]
mod tests {
    #[test]
    fn never_the_same_port_twice() {
        let ports: Vec<u16> = (0..200).map(|_| super::free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len());
    }
}
