//! SIGINT/SIGTERM handling shared by `serve` and `dev`.

use std::io;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// SIGINT and SIGTERM, registered when created (signals arriving before the
/// first `recv` are not lost).
pub struct Shutdown {
    int: Signal,
    term: Signal,
}

impl Shutdown {
    pub fn new() -> io::Result<Self> {
        Ok(Shutdown {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for the next SIGINT or SIGTERM; returns its name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }

    /// Resolves on the first signal. After it, a second signal exits
    /// the process at once (exit code 130), for a shutdown that hangs.
    pub async fn first_signal(mut self) {
        let name = self.recv().await;
        tracing::info!(
            signal = name,
            "shutting down; send the signal again to exit immediately"
        );
        tokio::spawn(async move {
            let name = self.recv().await;
            eprintln!("received {name} again; exiting immediately");
            std::process::exit(130);
        });
    }
}
