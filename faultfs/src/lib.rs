//! `aof-faultfs`: power-loss fault injection for tests.
//!
//! A FUSE pass-through filesystem over a backing directory that writes nothing
//! to the backing directory until it is made durable. Programs see every write
//! at once; the backing directory holds only what was fsynced. Killing the
//! daemon (SIGKILL) is the power loss: what was unsynced was only in its
//! memory. A new mount over the same backing directory shows the last durable
//! state.
//!
//! # What is modelled
//!
//! - **File data and size** (`write`, `pwrite`, `O_APPEND`, `ftruncate`/`set_len`,
//!   extending writes) stay in memory until `fsync`/`fdatasync` of that file,
//!   which applies them to the backing file and fsyncs it there. A file's fsync
//!   does not make its *name* durable.
//! - **Names** (create, mkdir, symlink, link, unlink, rmdir, rename) with
//!   [`MetadataSync::OnDirFsync`] (the default) become durable only when their
//!   directory is fsynced (`File::open(dir)?.sync_all()`): each directory
//!   separately, so a rename between two directories needs both synced (after
//!   only the old one, the file has no durable name). A new directory's own
//!   entries need it fsynced, and its name needs its parent fsynced. A
//!   directory that is renamed has one place in the backing dir: syncing either
//!   parent moves it (the old parent's entry goes with it).
//!   With [`MetadataSync::Immediate`] names are durable at once and only data
//!   is lost (what LazyFS models).
//! - **Attributes** other than size (mode, owner, times) are durable at once.
//! - A **clean unmount** (`umount`, [`FaultFs::unmount`]) makes everything
//!   durable first, as a clean shutdown does.
//! - If the daemon is killed *inside* an fsync, the file may be partly
//!   applied (a torn write, as on a disk); inside a directory fsync, a rename
//!   may show both names (never neither).
//!
//! Not modelled: `sync(2)`/`syncfs(2)` (FUSE does not pass them on); mmap
//! writes are passed on by the kernel as writes but were not tested (sled and
//! the WAL use `pwrite`); space is only checked when data is synced, so
//! `ENOSPC` shows at fsync, not at write; the backing tree must be one
//! filesystem and must not be changed by others while mounted; xattrs, file
//! locks across mounts, special files (mknod of anything but a regular file).
//!
//! # Use from a test harness
//!
//! ```no_run
//! use aof_faultfs::{FaultFs, MountOptions};
//! # fn main() -> Result<(), aof_faultfs::Error> {
//! let opts = MountOptions::new("target/debug/aof-faultfs", "/data/n1.disk", "/data/n1");
//! let mut fs = FaultFs::mount(opts)?; // returns once the mount is live
//! // ... start the node with its data dir under /data/n1, run, SIGKILL the node ...
//! let lost = fs.lose_unsynced()?; // SIGKILL the daemon, detach, mount again
//! println!("lost {:?}", lost); // what was unsynced at the kill, if the daemon answered
//! // ... restart the node ...
//! fs.unmount()?; // or drop `fs`
//! # Ok(()) }
//! ```

mod daemon;
mod error;
mod fuse;
mod mount;
mod overlay;
mod state;

pub use daemon::{control_path, request, serve, ServeConfig};
pub use error::Error;
pub use mount::{default_program, is_mounted, FaultFs, MountOptions};
pub use state::{MetadataSync, Stats, STAGING};

/// Logs to stderr; never fails (a closed stderr must not stop the filesystem).
pub(crate) fn log(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "aof-faultfs: {args}");
}
