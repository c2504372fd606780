use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },

    #[error(
        "backing dir {0} is already served by another aof-faultfs (its .faultfs dir is locked); \
         unmount that one first"
    )]
    Busy(PathBuf),

    #[error(
        "aof-faultfs did not mount {mountpoint} within {timeout:?}: {detail}. It needs /dev/fuse and \
         the right to mount (root, or fusermount3); its stderr{log} says more"
    )]
    Mount {
        mountpoint: PathBuf,
        timeout: Duration,
        detail: String,
        log: String,
    },

    #[error(
        "aof-faultfs control socket {path}: {source} (is the daemon for this backing dir running?)"
    )]
    Control {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("aof-faultfs daemon answered {command:?} with an error: {message}")]
    Command { command: String, message: String },

    #[error("aof-faultfs daemon (pid {pid}) did not exit within {timeout:?} after SIGKILL")]
    Unkillable { pid: u32, timeout: Duration },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: impl Into<std::io::Error>) -> Self {
        Error::Io {
            what: what.into(),
            source: source.into(),
        }
    }
}
