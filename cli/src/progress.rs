//! Progress bars of long commands (`cluster join` catch-up, `dlq redrive`), drawn
//! on stderr with indicatif — only for a person at a terminal: never when stdout
//! or stderr is not a terminal (a pipe, a file, a script capturing the output) nor
//! with a machine-readable `-o json|yaml`, so such output stays parseable.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressFinish, ProgressStyle};

/// Whether to draw progress: a person is watching, and no structured output was asked for.
pub fn wanted(structured: bool) -> bool {
    !structured && std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
}

/// A bar of `len` steps (`{pos}/{len}`) with `msg` in front, or `None` when
/// progress is not [`wanted`].
pub fn bar(len: u64, msg: &str, structured: bool) -> Option<ProgressBar> {
    if !wanted(structured) {
        return None;
    }
    // Cleared when dropped, whichever way the command ends.
    let pb = ProgressBar::new(len).with_finish(ProgressFinish::AndClear);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({elapsed})")
            .expect("a valid progress template")
            .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(Duration::from_millis(200));
    Some(pb)
}
