//! The filesystem as programs see it through the mount (the *volatile* state),
//! kept over the backing directory (the *durable* state). No FUSE here: the
//! `fuse` module only translates requests into these calls.
//!
//! - File data: each regular file has an [`Overlay`] of unsynced writes and size
//!   changes; `fsync` applies it to the backing file.
//! - Names: each directory has `changes`, its entries that differ from the
//!   backing directory (`Removed`, or `Points` to an inode). `fsyncdir` makes the
//!   backing directory match ([`State::persist_dir`]), then fsyncs it.
//! - Inodes: every inode the kernel knows holds an fd on its backing inode, so
//!   its data stays reachable whatever happens to backing names. An inode that
//!   has no durable name yet (created, or its last durable name removed while
//!   the mount still shows it) has a link in the staging dir `.faultfs/` of the
//!   backing root instead. Staging is emptied when a mount starts: what was only
//!   there had no durable name, so the power loss took it.
//! - Inode numbers are the backing inode numbers (the backing root's number is
//!   swapped with 1, the FUSE root), so a backing tree must be one filesystem.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo, TimeOrNow};
use rustix::fs::{
    self as rfs, AtFlags, FlockOperation, Mode, OFlags, Stat, Timespec, Timestamps, CWD,
};
use rustix::io::{Errno, Result};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::overlay::Overlay;

/// Name of the staging dir in the backing root (hidden from the mount).
pub const STAGING: &str = ".faultfs";
/// The FUSE root inode.
pub const ROOT: u64 = 1;

/// When creates, renames, unlinks, links and mkdirs become durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum MetadataSync {
    /// Only once their directory is fsynced (POSIX: a new file's name is
    /// durable after an fsync of its directory, not of the file).
    #[default]
    OnDirFsync,
    /// At once, as if every directory were synced after every change (what
    /// LazyFS models: only file data is lost).
    Immediate,
}

/// What the daemon holds in memory (lost on a power loss) and what it did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Files with writes or size changes not yet fsynced.
    pub dirty_files: u64,
    /// Bytes written and not yet fsynced.
    pub dirty_bytes: u64,
    /// Directory entries created, removed or renamed since their directory's
    /// last fsync.
    pub pending_entries: u64,
    pub writes: u64,
    pub bytes_written: u64,
    pub fsyncs: u64,
    pub bytes_synced: u64,
    pub dir_fsyncs: u64,
}

/// A volatile directory entry that differs from the backing directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    Removed,
    Points(u64),
}

struct Inode {
    /// Regular files: read-write; directories: read-only; others: `O_PATH`.
    fd: Arc<OwnedFd>,
    kind: FileType,
    /// Regular files only.
    data: Option<Overlay>,
    /// Directories only.
    changes: BTreeMap<OsString, Change>,
    /// Names the mount shows for it (0: unlinked).
    links: u32,
    /// Kernel references (lookups not yet forgotten).
    lookups: u64,
    opens: u32,
    /// Its link in the staging dir, if it has one.
    staged: Option<OsString>,
}

impl Inode {
    fn new(fd: OwnedFd, kind: FileType, data: Option<Overlay>, links: u32) -> Self {
        Inode {
            fd: Arc::new(fd),
            kind,
            data,
            changes: BTreeMap::new(),
            links,
            lookups: 0,
            opens: 0,
            staged: None,
        }
    }
}

/// Attribute changes (`setattr`). Mode, owner and times go to the backing inode
/// at once; `size` is a volatile truncate.
#[derive(Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
}

pub struct State {
    inodes: HashMap<u64, Inode>,
    /// Backing inode number of the root (shown as [`ROOT`]).
    root_backing: u64,
    dev: u64,
    staging: Arc<OwnedFd>,
    seq: u64,
    meta: MetadataSync,
    /// Cumulative counters (the dirty fields are computed by `stats`).
    counters: Stats,
}

impl State {
    /// Serves `backing`: locks and empties its staging dir (what was there had
    /// no durable name).
    pub fn serve(backing: &Path, meta: MetadataSync) -> std::result::Result<State, Error> {
        let at = |what: &str, e: Errno| {
            Error::io(format!("{what} in backing dir {}", backing.display()), e)
        };
        let dir = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let root = rfs::open(backing, dir, Mode::empty()).map_err(|e| at("open", e))?;
        let st = rfs::fstat(&root).map_err(|e| at("stat", e))?;
        match rfs::mkdirat(&root, STAGING, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(at("create .faultfs", e)),
        }
        let staging = rfs::openat(&root, STAGING, dir | OFlags::NOFOLLOW, Mode::empty())
            .map_err(|e| at("open .faultfs", e))?;
        match rfs::flock(&staging, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => return Err(Error::Busy(backing.to_path_buf())),
            Err(e) => return Err(at("lock .faultfs", e)),
        }
        let mut inodes = HashMap::new();
        let mut root_node = Inode::new(root, FileType::Directory, None, 1);
        root_node.lookups = 1;
        inodes.insert(ROOT, root_node);
        let mut state = State {
            inodes,
            root_backing: st.st_ino,
            dev: st.st_dev,
            staging: Arc::new(staging),
            seq: 0,
            meta,
            counters: Stats::default(),
        };
        let staging = state.staging.clone();
        for name in names(&staging).map_err(|e| at("list .faultfs", e))? {
            state
                .remove_backing(&staging, &name)
                .map_err(|e| at("empty .faultfs", e))?;
        }
        Ok(state)
    }

    /// FUSE inode number of a backing inode number (and back: it is its own inverse).
    fn ino(&self, st_ino: u64) -> u64 {
        if st_ino == self.root_backing {
            ROOT
        } else if st_ino == ROOT {
            self.root_backing
        } else {
            st_ino
        }
    }

    fn node(&self, ino: u64) -> Result<&Inode> {
        self.inodes.get(&ino).ok_or(Errno::STALE)
    }

    fn node_mut(&mut self, ino: u64) -> Result<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or(Errno::STALE)
    }

    fn kind(&self, ino: u64) -> Result<FileType> {
        Ok(self.node(ino)?.kind)
    }

    fn next_name(&mut self, tag: char) -> OsString {
        self.seq += 1;
        format!("{tag}{}", self.seq).into()
    }

    /// The inode `parent/name` shows now, if any.
    fn resolve(&mut self, parent: u64, name: &OsStr) -> Result<Option<u64>> {
        if parent == ROOT && name == STAGING {
            return Ok(None);
        }
        let p = self.node(parent)?;
        if p.kind != FileType::Directory {
            return Err(Errno::NOTDIR);
        }
        match p.changes.get(name) {
            Some(Change::Removed) => return Ok(None),
            Some(Change::Points(x)) => return Ok(Some(*x)),
            None => {}
        }
        let fd = p.fd.clone();
        match rfs::statat(&*fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => self.materialize(&fd, name, &st).map(Some),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The inode for backing entry `dir/name`, opening it if it is new to us.
    fn materialize(&mut self, dir: &OwnedFd, name: &OsStr, st: &Stat) -> Result<u64> {
        if st.st_dev != self.dev {
            return Err(Errno::XDEV);
        }
        let ino = self.ino(st.st_ino);
        if self.inodes.contains_key(&ino) {
            return Ok(ino);
        }
        let kind = kind_of_mode(st.st_mode);
        let flags = OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let node = match kind {
            FileType::RegularFile => {
                let fd = rfs::openat(dir, name, flags | OFlags::RDWR, Mode::empty())
                    .or_else(|_| rfs::openat(dir, name, flags | OFlags::RDONLY, Mode::empty()))?;
                Inode::new(
                    fd,
                    kind,
                    Some(Overlay::new(st.st_size as u64)),
                    st.st_nlink as u32,
                )
            }
            FileType::Directory => {
                let fd = rfs::openat(
                    dir,
                    name,
                    flags | OFlags::RDONLY | OFlags::DIRECTORY,
                    Mode::empty(),
                )?;
                Inode::new(fd, kind, None, 1)
            }
            _ => Inode::new(
                rfs::openat(dir, name, flags | OFlags::PATH, Mode::empty())?,
                kind,
                None,
                st.st_nlink as u32,
            ),
        };
        self.inodes.insert(ino, node);
        Ok(ino)
    }

    pub fn getattr(&self, ino: u64) -> Result<FileAttr> {
        let n = self.node(ino)?;
        let st = rfs::fstat(&*n.fd)?;
        let (size, changed) = match &n.data {
            Some(d) => (d.len(), d.mtime()),
            None => (st.st_size as u64, None),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time(st.st_atime as i64, st.st_atime_nsec as u32),
            mtime: changed.unwrap_or_else(|| time(st.st_mtime as i64, st.st_mtime_nsec as u32)),
            ctime: changed.unwrap_or_else(|| time(st.st_ctime as i64, st.st_ctime_nsec as u32)),
            crtime: UNIX_EPOCH,
            kind: n.kind,
            perm: (st.st_mode & 0o7777) as u16,
            nlink: if n.kind == FileType::Directory {
                st.st_nlink as u32
            } else {
                n.links
            },
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev as u32,
            blksize: 4096,
            flags: 0,
        })
    }

    pub fn lookup(&mut self, parent: u64, name: &OsStr) -> Result<FileAttr> {
        let ino = self.resolve(parent, name)?.ok_or(Errno::NOENT)?;
        let attr = self.getattr(ino)?;
        self.node_mut(ino)?.lookups += 1;
        Ok(attr)
    }

    pub fn forget(&mut self, ino: u64, n: u64) {
        if let Some(node) = self.inodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
        }
        self.maybe_free(ino);
    }

    pub fn setattr(&mut self, ino: u64, a: SetAttr) -> Result<FileAttr> {
        let n = self.node_mut(ino)?;
        let file_or_dir = matches!(n.kind, FileType::RegularFile | FileType::Directory);
        if let Some(size) = a.size {
            match &mut n.data {
                Some(d) => d.truncate(size),
                None if n.kind == FileType::Directory => return Err(Errno::ISDIR),
                None => return Err(Errno::INVAL),
            }
        }
        if let Some(mode) = a.mode {
            if !file_or_dir {
                return Err(Errno::OPNOTSUPP);
            }
            rfs::fchmod(&*n.fd, Mode::from_raw_mode(mode & 0o7777))?;
        }
        if a.uid.is_some() || a.gid.is_some() {
            rfs::chownat(
                &*n.fd,
                "",
                a.uid.map(rfs::Uid::from_raw),
                a.gid.map(rfs::Gid::from_raw),
                AtFlags::EMPTY_PATH,
            )?;
        }
        if a.atime.is_some() || a.mtime.is_some() {
            if !file_or_dir {
                return Err(Errno::OPNOTSUPP);
            }
            let times = Timestamps {
                last_access: timespec(a.atime),
                last_modification: timespec(a.mtime),
            };
            rfs::futimens(&*n.fd, &times)?;
            if let (Some(d), Some(_)) = (&mut n.data, a.mtime) {
                d.forget_mtime();
            }
        }
        self.getattr(ino)
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let n = self.node(ino)?;
        if n.kind != FileType::Symlink {
            return Err(Errno::INVAL);
        }
        Ok(rfs::readlinkat(&*n.fd, "", Vec::new())?.into_bytes())
    }

    /// Creates and opens a regular file.
    pub fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        owner: (u32, u32),
    ) -> Result<FileAttr> {
        self.check_free_name(parent, name)?;
        let tmp = self.next_name('f');
        let flags = OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC;
        let fd = rfs::openat(
            &*self.staging,
            &*tmp,
            flags,
            Mode::from_raw_mode(mode & 0o7777),
        )?;
        let attr = self.new_entry(parent, name, fd, tmp, FileType::RegularFile, owner)?;
        self.node_mut(attr.ino.0)?.opens += 1;
        Ok(attr)
    }

    pub fn mkdir(
        &mut self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        owner: (u32, u32),
    ) -> Result<FileAttr> {
        self.check_free_name(parent, name)?;
        let tmp = self.next_name('d');
        rfs::mkdirat(&*self.staging, &*tmp, Mode::from_raw_mode(mode & 0o7777))?;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rfs::openat(&*self.staging, &*tmp, flags, Mode::empty())?;
        self.new_entry(parent, name, fd, tmp, FileType::Directory, owner)
    }

    pub fn symlink(
        &mut self,
        parent: u64,
        name: &OsStr,
        target: &Path,
        owner: (u32, u32),
    ) -> Result<FileAttr> {
        self.check_free_name(parent, name)?;
        let tmp = self.next_name('s');
        rfs::symlinkat(target, &*self.staging, &*tmp)?;
        let fd = rfs::openat(
            &*self.staging,
            &*tmp,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        self.new_entry(parent, name, fd, tmp, FileType::Symlink, owner)
    }

    /// Registers an inode just made in staging under `parent/name`.
    fn new_entry(
        &mut self,
        parent: u64,
        name: &OsStr,
        fd: OwnedFd,
        tmp: OsString,
        kind: FileType,
        (uid, gid): (u32, u32),
    ) -> Result<FileAttr> {
        // Give it to the caller; only root may, so this is best effort.
        let _ = rfs::chownat(
            &fd,
            "",
            Some(rfs::Uid::from_raw(uid)),
            Some(rfs::Gid::from_raw(gid)),
            AtFlags::EMPTY_PATH,
        );
        let st = rfs::fstat(&fd)?;
        let ino = self.ino(st.st_ino);
        let data = (kind == FileType::RegularFile).then(|| Overlay::new(0));
        let mut node = Inode::new(fd, kind, data, 1);
        node.lookups = 1;
        node.staged = Some(tmp);
        self.inodes.insert(ino, node);
        self.set_entry(parent, name, Change::Points(ino))?;
        self.after_change(&[parent])?;
        self.getattr(ino)
    }

    pub fn link(&mut self, ino: u64, parent: u64, name: &OsStr) -> Result<FileAttr> {
        if self.kind(ino)? == FileType::Directory {
            return Err(Errno::PERM);
        }
        self.check_free_name(parent, name)?;
        let n = self.node_mut(ino)?;
        n.links += 1;
        n.lookups += 1;
        self.set_entry(parent, name, Change::Points(ino))?;
        self.after_change(&[parent])?;
        self.getattr(ino)
    }

    pub fn unlink(&mut self, parent: u64, name: &OsStr) -> Result<()> {
        let ino = self.resolve(parent, name)?.ok_or(Errno::NOENT)?;
        if self.kind(ino)? == FileType::Directory {
            return Err(Errno::ISDIR);
        }
        self.set_entry(parent, name, Change::Removed)?;
        self.drop_link(ino);
        self.after_change(&[parent])
    }

    pub fn rmdir(&mut self, parent: u64, name: &OsStr) -> Result<()> {
        let ino = self.resolve(parent, name)?.ok_or(Errno::NOENT)?;
        if self.kind(ino)? != FileType::Directory {
            return Err(Errno::NOTDIR);
        }
        if !self.list(ino)?.is_empty() {
            return Err(Errno::NOTEMPTY);
        }
        self.set_entry(parent, name, Change::Removed)?;
        self.drop_link(ino);
        self.after_change(&[parent])
    }

    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        noreplace: bool,
    ) -> Result<()> {
        if new_parent == ROOT && new_name == STAGING {
            return Err(Errno::PERM);
        }
        let src = self.resolve(parent, name)?.ok_or(Errno::NOENT)?;
        let dst = self.resolve(new_parent, new_name)?;
        if dst == Some(src) {
            return Ok(()); // two names of one inode: rename(2) does nothing
        }
        if let Some(dst) = dst {
            if noreplace {
                return Err(Errno::EXIST);
            }
            match (
                self.kind(src)? == FileType::Directory,
                self.kind(dst)? == FileType::Directory,
            ) {
                (true, false) => return Err(Errno::NOTDIR),
                (false, true) => return Err(Errno::ISDIR),
                (true, true) if !self.list(dst)?.is_empty() => return Err(Errno::NOTEMPTY),
                _ => {}
            }
        }
        self.set_entry(parent, name, Change::Removed)?;
        self.set_entry(new_parent, new_name, Change::Points(src))?;
        if let Some(dst) = dst {
            self.drop_link(dst);
        }
        self.after_change(&[parent, new_parent])
    }

    pub fn open(&mut self, ino: u64) -> Result<()> {
        self.node_mut(ino)?.opens += 1;
        Ok(())
    }

    pub fn release(&mut self, ino: u64) {
        if let Some(n) = self.inodes.get_mut(&ino) {
            n.opens = n.opens.saturating_sub(1);
        }
        self.maybe_free(ino);
    }

    pub fn read(&self, ino: u64, off: u64, size: u32) -> Result<Vec<u8>> {
        let n = self.node(ino)?;
        match &n.data {
            Some(d) => d.read(&*n.fd, off, size),
            None if n.kind == FileType::Directory => Err(Errno::ISDIR),
            None => Err(Errno::INVAL),
        }
    }

    pub fn write(&mut self, ino: u64, off: u64, data: &[u8]) -> Result<u32> {
        let n = self.inodes.get_mut(&ino).ok_or(Errno::STALE)?;
        let d = n.data.as_mut().ok_or(if n.kind == FileType::Directory {
            Errno::ISDIR
        } else {
            Errno::INVAL
        })?;
        off.checked_add(data.len() as u64)
            .filter(|&end| end <= i64::MAX as u64)
            .ok_or(Errno::FBIG)?;
        d.write(off, data);
        self.counters.writes += 1;
        self.counters.bytes_written += data.len() as u64;
        Ok(data.len() as u32)
    }

    /// Makes the file's data and size durable (not its name: see `fsyncdir`).
    pub fn fsync(&mut self, ino: u64, datasync: bool) -> Result<()> {
        let n = self.inodes.get_mut(&ino).ok_or(Errno::STALE)?;
        if let Some(d) = &mut n.data {
            self.counters.bytes_synced += d.sync(&*n.fd, datasync)?;
        }
        self.counters.fsyncs += 1;
        Ok(())
    }

    /// Makes the directory's entries durable.
    pub fn fsyncdir(&mut self, ino: u64) -> Result<()> {
        self.persist_dir(ino)?;
        self.counters.dir_fsyncs += 1;
        Ok(())
    }

    /// The entries the mount shows in a directory, sorted by name, without `.` and `..`.
    pub fn list(&self, ino: u64) -> Result<Vec<(u64, FileType, OsString)>> {
        let n = self.node(ino)?;
        if n.kind != FileType::Directory {
            return Err(Errno::NOTDIR);
        }
        let mut out = BTreeMap::new();
        for e in rfs::Dir::read_from(&*n.fd)? {
            let e = e?;
            let name = OsStr::from_bytes(e.file_name().to_bytes());
            if name == "."
                || name == ".."
                || (ino == ROOT && name == STAGING)
                || n.changes.contains_key(name)
            {
                continue;
            }
            let kind = match e.file_type() {
                rfs::FileType::Unknown => kind_of_mode(
                    rfs::statat(&*n.fd, name, AtFlags::SYMLINK_NOFOLLOW)?.st_mode as u32,
                ),
                t => kind_of_mode(t.as_raw_mode()),
            };
            out.insert(name.to_owned(), (self.ino(e.ino()), kind));
        }
        for (name, change) in &n.changes {
            if let Change::Points(x) = *change {
                out.insert(name.clone(), (x, self.kind(x)?));
            }
        }
        Ok(out
            .into_iter()
            .map(|(name, (ino, kind))| (ino, kind, name))
            .collect())
    }

    pub fn statfs(&self) -> Result<rfs::StatVfs> {
        rfs::fstatvfs(&*self.node(ROOT)?.fd)
    }

    /// Makes everything durable, as a clean unmount does.
    pub fn sync_all(&mut self) -> Result<()> {
        let files: Vec<u64> = self
            .inodes
            .iter()
            .filter(|(_, n)| n.data.as_ref().is_some_and(Overlay::is_dirty))
            .map(|(&ino, _)| ino)
            .collect();
        for ino in files {
            let n = self.node_mut(ino)?;
            if let Some(d) = &mut n.data {
                d.sync(&*n.fd, false)?;
            }
        }
        let dirs: Vec<u64> = self
            .inodes
            .iter()
            .filter(|(_, n)| !n.changes.is_empty())
            .map(|(&ino, _)| ino)
            .collect();
        for ino in dirs {
            self.persist_dir(ino)?;
        }
        Ok(())
    }

    pub fn stats(&self) -> Stats {
        let mut s = self.counters.clone();
        for n in self.inodes.values() {
            if let Some(d) = n.data.as_ref().filter(|d| d.is_dirty()) {
                s.dirty_files += 1;
                s.dirty_bytes += d.dirty_bytes();
            }
            s.pending_entries += n.changes.len() as u64;
        }
        s
    }

    fn check_free_name(&mut self, parent: u64, name: &OsStr) -> Result<()> {
        if parent == ROOT && name == STAGING {
            return Err(Errno::PERM);
        }
        match self.resolve(parent, name)? {
            Some(_) => Err(Errno::EXIST),
            None => Ok(()),
        }
    }

    fn set_entry(&mut self, dir: u64, name: &OsStr, change: Change) -> Result<()> {
        self.node_mut(dir)?.changes.insert(name.to_owned(), change);
        Ok(())
    }

    fn after_change(&mut self, dirs: &[u64]) -> Result<()> {
        if self.meta == MetadataSync::Immediate {
            for &dir in dirs {
                self.persist_dir(dir)?;
            }
        }
        Ok(())
    }

    /// One name of `ino` is gone from the mount.
    fn drop_link(&mut self, ino: u64) {
        if let Some(n) = self.inodes.get_mut(&ino) {
            n.links = if n.kind == FileType::Directory {
                0
            } else {
                n.links.saturating_sub(1)
            };
        }
        self.maybe_free(ino);
    }

    /// Forgets an inode nothing refers to any more (no name, no kernel
    /// reference, not open), and removes its staging link.
    fn maybe_free(&mut self, ino: u64) {
        let unused = |n: &Inode| n.lookups == 0 && n.opens == 0 && n.links == 0;
        if ino == ROOT || !self.inodes.get(&ino).is_some_and(unused) {
            return;
        }
        let Some(node) = self.inodes.remove(&ino) else {
            return;
        };
        if let Some(tmp) = node.staged {
            let staging = self.staging.clone();
            if let Err(e) = self.remove_backing(&staging, &tmp) {
                crate::log(format_args!("cannot remove staging entry {tmp:?}: {e}"));
            }
        }
    }

    /// Makes the backing directory show what the mount shows, then fsyncs it.
    /// New names are linked before old ones are removed, so a rename cut short
    /// here leaves both names, never neither.
    fn persist_dir(&mut self, dir: u64) -> Result<()> {
        let n = self.node(dir)?;
        if n.kind != FileType::Directory {
            return Err(Errno::NOTDIR);
        }
        let fd = n.fd.clone();
        let changes: Vec<(OsString, Change)> =
            n.changes.iter().map(|(k, v)| (k.clone(), *v)).collect();
        for (name, change) in &changes {
            if let Change::Points(x) = *change {
                self.place(&fd, name, x)?;
            }
        }
        for (name, change) in &changes {
            if *change == Change::Removed {
                self.remove_backing(&fd, name)?;
            }
        }
        rfs::fsync(&*fd)?;
        let n = self.node_mut(dir)?;
        for (name, change) in changes {
            if n.changes.get(&name) == Some(&change) {
                n.changes.remove(&name);
            }
        }
        Ok(())
    }

    /// Gives inode `x` the backing name `dir/name`.
    fn place(&mut self, dir: &OwnedFd, name: &OsStr, x: u64) -> Result<()> {
        let is_dir = self.kind(x)? == FileType::Directory;
        match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if self.ino(st.st_ino) == x => return Ok(()),
            // A file that nothing shows any more is replaced atomically by the rename below.
            Ok(st) if !is_dir && !is_dir_mode(st.st_mode) && self.live(&st).is_none() => {}
            Ok(_) => self.remove_backing(dir, name)?,
            Err(Errno::NOENT) => {}
            Err(e) => return Err(e),
        }
        let proc_path = PathBuf::from(format!("/proc/self/fd/{}", self.node(x)?.fd.as_raw_fd()));
        if is_dir {
            // A directory has one backing place: move it from there.
            let from = std::fs::read_link(&proc_path)
                .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
            rfs::renameat(CWD, &from, dir, name)?;
            self.node_mut(x)?.staged = None;
        } else {
            let tmp = self.next_name('l');
            rfs::linkat(
                CWD,
                &proc_path,
                &*self.staging,
                &*tmp,
                AtFlags::SYMLINK_FOLLOW,
            )?;
            rfs::renameat(&*self.staging, &*tmp, dir, name)?;
        }
        Ok(())
    }

    /// The inode of a backing entry, if the mount still shows it under some name.
    fn live(&self, st: &Stat) -> Option<u64> {
        let ino = self.ino(st.st_ino);
        self.inodes.get(&ino).filter(|n| n.links > 0).map(|_| ino)
    }

    /// Removes the backing entry `dir/name` (a whole tree for a directory). An
    /// inode the mount still shows keeps its data: if this was its last backing
    /// link, the entry is parked in staging instead.
    fn remove_backing(&mut self, dir: &OwnedFd, name: &OsStr) -> Result<()> {
        let st = match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(e),
        };
        let is_dir = is_dir_mode(st.st_mode);
        if let Some(ino) = self.live(&st) {
            if is_dir || st.st_nlink == 1 {
                let tmp = self.next_name('p');
                rfs::renameat(dir, name, &*self.staging, &*tmp)?;
                self.node_mut(ino)?.staged = Some(tmp);
                return Ok(());
            }
            return rfs::unlinkat(dir, name, AtFlags::empty());
        }
        if is_dir {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let sub = rfs::openat(dir, name, flags, Mode::empty())?;
            for child in names(&sub)? {
                self.remove_backing(&sub, &child)?;
            }
            rfs::unlinkat(dir, name, AtFlags::REMOVEDIR)
        } else {
            rfs::unlinkat(dir, name, AtFlags::empty())
        }
    }
}

/// Names in a backing directory, without `.` and `..`.
fn names(dir: &OwnedFd) -> Result<Vec<OsString>> {
    let mut out = Vec::new();
    for e in rfs::Dir::read_from(dir)? {
        let name = OsStr::from_bytes(e?.file_name().to_bytes()).to_owned();
        if name != "." && name != ".." {
            out.push(name);
        }
    }
    Ok(out)
}

fn is_dir_mode(mode: u32) -> bool {
    rfs::FileType::from_raw_mode(mode) == rfs::FileType::Directory
}

fn kind_of_mode(mode: u32) -> FileType {
    match rfs::FileType::from_raw_mode(mode) {
        rfs::FileType::Directory => FileType::Directory,
        rfs::FileType::Symlink => FileType::Symlink,
        rfs::FileType::Fifo => FileType::NamedPipe,
        rfs::FileType::Socket => FileType::Socket,
        rfs::FileType::CharacterDevice => FileType::CharDevice,
        rfs::FileType::BlockDevice => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn time(secs: i64, nsecs: u32) -> SystemTime {
    u64::try_from(secs).map_or(UNIX_EPOCH, |s| {
        UNIX_EPOCH + Duration::new(s, nsecs.min(999_999_999))
    })
}

fn timespec(t: Option<TimeOrNow>) -> Timespec {
    match t {
        None => Timespec {
            tv_sec: 0,
            tv_nsec: rfs::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => Timespec {
            tv_sec: 0,
            tv_nsec: rfs::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => {
            let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
            Timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos().into(),
            }
        }
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
