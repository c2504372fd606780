//! The nodes' disks, for the disk-fault nemeses. Each slot's data dirs live on a
//! [`SlotDisk`]: a plain directory, a size-limited tmpfs (`disk-full`), an
//! `aof-faultfs` mount that keeps unsynced writes in memory (`lose-unsynced`,
//! `lose-unsynced-all`), or both (faultfs over a backing dir on the tmpfs).
//!
//! Layout under the slot's directory `nK/`:
//!
//! | path | what |
//! |---|---|
//! | `nK/tmpfs/` | the tmpfs mount (only with a size limit) |
//! | `nK/tmpfs/backing/` or `nK/backing/` | where the durable bytes are |
//! | `nK/tmpfs/filler-*` | files that fill the disk (`disk-full`), beside the backing dir so faultfs never sees them |
//! | `nK/mnt/` | the faultfs mount over `backing/` (only with faultfs) |
//!
//! The node's data dir is `<root>/data-<id>`, where root is `mnt/` with faultfs
//! and `backing/` without.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use aof_faultfs::{FaultFs, MountOptions};
use rand::Rng;
use serde_json::{json, Value};

/// How the slots' disks are made.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskOpts {
    /// A tmpfs of this many MiB under each slot (for `disk-full`).
    pub tmpfs_mib: Option<u64>,
    /// An `aof-faultfs` mount (this binary) over each slot's backing dir.
    pub faultfs: Option<PathBuf>,
}

impl DiskOpts {
    pub fn is_plain(&self) -> bool {
        self.tmpfs_mib.is_none() && self.faultfs.is_none()
    }
}

/// Whether this process may mount a tmpfs and a FUSE filesystem: root and
/// `/dev/fuse` (for faultfs). The reason when not.
pub fn mounts_available(fuse: bool) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("mounting a tmpfs or FUSE filesystem needs root".into());
    }
    if fuse && !Path::new("/dev/fuse").exists() {
        return Err("no /dev/fuse (in a container: --device /dev/fuse --cap-add SYS_ADMIN)".into());
    }
    Ok(())
}

/// One slot's disk. Dropping it unmounts (faultfs cleanly, then the tmpfs).
pub struct SlotDisk {
    /// Where the node's data dirs go.
    root: PathBuf,
    backing: PathBuf,
    tmpfs: Option<PathBuf>,
    fs: Option<FaultFs>,
    fillers: Vec<PathBuf>,
}

impl SlotDisk {
    /// Make the disk of the slot whose directory is `sdir`.
    pub fn create(sdir: &Path, o: &DiskOpts) -> Result<SlotDisk> {
        let tmpfs = match o.tmpfs_mib {
            Some(mib) => {
                let t = sdir.join("tmpfs");
                std::fs::create_dir_all(&t)?;
                let status = Command::new("mount")
                    .args([
                        "-t",
                        "tmpfs",
                        "-o",
                        &format!("size={mib}m,mode=0700"),
                        "aof-jepsen-disk",
                    ])
                    .arg(&t)
                    .status()
                    .context("running mount -t tmpfs")?;
                if !status.success() {
                    bail!(
                        "mounting a {mib} MiB tmpfs on {} failed ({status}); disk-full needs root",
                        t.display()
                    );
                }
                Some(t)
            }
            None => None,
        };
        let backing = tmpfs.as_deref().unwrap_or(sdir).join("backing");
        std::fs::create_dir_all(&backing)?;
        let mut disk = SlotDisk {
            root: backing.clone(),
            backing: backing.clone(),
            tmpfs,
            fs: None,
            fillers: Vec::new(),
        };
        if let Some(program) = &o.faultfs {
            let mnt = sdir.join("mnt");
            std::fs::create_dir_all(&mnt)?;
            let mut mo = MountOptions::new(program, &backing, &mnt);
            mo.log = Some(sdir.join("faultfs.log"));
            let fs = FaultFs::mount(mo)
                .with_context(|| format!("mounting aof-faultfs at {}", mnt.display()))?;
            disk.root = fs.mountpoint().to_path_buf();
            disk.fs = Some(fs);
        }
        Ok(disk)
    }

    /// Where the node's data dirs go.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn has_faultfs(&self) -> bool {
        self.fs.is_some()
    }

    pub fn has_tmpfs(&self) -> bool {
        self.tmpfs.is_some()
    }

    /// Power loss: the faultfs daemon is killed (everything not fsynced is gone)
    /// and the disk mounted again. Stop the node first. Returns what was lost.
    pub fn lose_unsynced(&mut self) -> Result<Value> {
        let Some(fs) = &mut self.fs else {
            bail!("lose-unsynced needs the faultfs disk")
        };
        let lost = fs
            .lose_unsynced()
            .context("power loss (aof-faultfs) and remount")?;
        Ok(match lost {
            Some(s) => {
                json!({ "dirty_files": s.dirty_files, "dirty_bytes": s.dirty_bytes, "pending_entries": s.pending_entries })
            }
            None => json!({ "lost": "unknown (the daemon did not answer before the kill)" }),
        })
    }

    /// Fill the tmpfs: allocate every free byte in a new filler file. Returns the
    /// bytes taken.
    pub fn fill(&mut self) -> Result<u64> {
        let Some(t) = &self.tmpfs else {
            bail!("disk-full needs the tmpfs disk")
        };
        let free = free_bytes(t)?;
        let path = t.join(format!("filler-{}", self.fillers.len()));
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        self.fillers.push(path);
        // tmpfs pages: allocate down to the last page; whatever is left fails the writes.
        let mut taken = 0u64;
        let mut want = free;
        // Bounded: at most 16 halvings.
        for _ in 0..16 {
            if want < 4096 {
                break;
            }
            // SAFETY: fallocate on an open descriptor; no memory is passed.
            let rc = unsafe {
                libc::fallocate(f.as_raw_fd(), 0, taken as libc::off_t, want as libc::off_t)
            };
            if rc == 0 {
                taken += want;
                want = free_bytes(t)?;
            } else {
                want /= 2;
            }
        }
        // Whatever fallocate left (less than a page or two): write it.
        let _ = f.write_all_at(&vec![0u8; free_bytes(t)? as usize], taken);
        Ok(taken)
    }

    /// Free what [`fill`](Self::fill) took. Returns how much is free now.
    pub fn free(&mut self) -> Result<u64> {
        for p in self.fillers.drain(..) {
            let _ = std::fs::remove_file(&p);
        }
        match &self.tmpfs {
            Some(t) => free_bytes(t),
            None => Ok(0),
        }
    }

    /// Free bytes on the tmpfs.
    pub fn free_now(&self) -> Option<u64> {
        self.tmpfs.as_deref().and_then(|t| free_bytes(t).ok())
    }

    /// Flip bytes in a WAL segment or snapshot file of the data dir `data` (the
    /// node must be stopped): `flips` random bytes, each XORed with a random
    /// non-zero value, at offsets in the file's first 80 % past its header (so
    /// valid records follow the damage: corruption, not a torn tail). The change
    /// is written and fsynced through the mount (durable). Returns what was done,
    /// or `None` if there is no such file.
    pub fn corrupt(data: &Path, rng: &mut impl Rng, flips: usize) -> Result<Option<Value>> {
        let mut files = Vec::new();
        for (sub, ext) in [("wal", None), ("snapshots", Some("snap"))] {
            if let Ok(rd) = std::fs::read_dir(data.join(sub)) {
                for e in rd.flatten() {
                    let p = e.path();
                    let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                    let ok_ext = ext.is_none_or(|x| p.extension().is_some_and(|e| e == x));
                    if ok_ext && len > 64 {
                        files.push((p, len));
                    }
                }
            }
        }
        files.sort();
        if files.is_empty() {
            return Ok(None);
        }
        let (path, len) = files[rng.random_range(0..files.len())].clone();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        let start = 32.min(len / 2);
        let end = (len * 8 / 10).max(start + 1);
        let mut offsets = Vec::new();
        for _ in 0..flips {
            let off = rng.random_range(start..end);
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, off)?;
            b[0] ^= rng.random_range(1..=255u8);
            f.write_all_at(&b, off)?;
            offsets.push(off);
        }
        f.sync_all()?;
        Ok(Some(
            json!({ "file": path.display().to_string(), "len": len, "offsets": offsets }),
        ))
    }

    /// Unmount everything; with `keep`, copy the backing dir to `keep` first.
    pub fn teardown(&mut self, keep: Option<&Path>) {
        if let Some(fs) = self.fs.take() {
            if let Err(e) = fs.unmount() {
                eprintln!("jepsen: unmounting aof-faultfs: {e}");
            }
        }
        if let (Some(dest), Some(_)) = (keep, &self.tmpfs) {
            let _ = Command::new("cp")
                .arg("-a")
                .arg(&self.backing)
                .arg(dest)
                .status();
        }
        if let Some(t) = self.tmpfs.take() {
            let ok = Command::new("umount")
                .arg(&t)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&t).status();
            }
        }
    }
}

impl Drop for SlotDisk {
    fn drop(&mut self) {
        self.teardown(None);
    }
}

/// Free bytes for unprivileged users on the file system holding `path`.
pub fn free_bytes(path: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-param.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statvfs {}", path.display()));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::collections::BTreeSet;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("jepsen-disk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn corrupt_flips_bytes_of_a_wal_segment_or_snapshot_inside_the_bounds() {
        let d = scratch("corrupt");
        std::fs::create_dir_all(d.join("wal")).unwrap();
        std::fs::create_dir_all(d.join("snapshots")).unwrap();
        let orig = vec![0xAAu8; 1000];
        std::fs::write(d.join("wal").join("0.wal"), &orig).unwrap();
        std::fs::write(d.join("snapshots").join("s.snap"), &orig).unwrap();
        // Never a snapshot being written.
        std::fs::write(d.join("snapshots").join("t.tmp"), &orig).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut hit = BTreeSet::new();
        for _ in 0..8 {
            let done = SlotDisk::corrupt(&d, &mut rng, 4)
                .unwrap()
                .expect("a file to damage");
            let file = PathBuf::from(done["file"].as_str().unwrap());
            hit.insert(file.file_name().unwrap().to_string_lossy().into_owned());
            let now = std::fs::read(&file).unwrap();
            let changed: Vec<usize> = (0..now.len()).filter(|&i| now[i] != orig[i]).collect();
            assert!(!changed.is_empty(), "bytes were flipped");
            assert!(
                changed.iter().all(|&i| (32..800).contains(&i)),
                "{changed:?}"
            );
            std::fs::write(&file, &orig).unwrap();
        }
        assert!(!hit.contains("t.tmp"), "{hit:?}");
        assert_eq!(hit.len(), 2, "both kinds of files are picked: {hit:?}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn fill_takes_every_free_byte_of_the_tmpfs_and_free_gives_it_back() {
        if let Err(why) = mounts_available(false) {
            eprintln!("SKIPPED: {why}");
            return;
        }
        let d = scratch("fill");
        let o = DiskOpts {
            tmpfs_mib: Some(16),
            faultfs: None,
        };
        let mut disk = SlotDisk::create(&d, &o).unwrap();
        assert!(
            disk.root().starts_with(d.join("tmpfs")),
            "{}",
            disk.root().display()
        );
        let before = disk.free_now().unwrap();
        assert!(before > 15 << 20, "{before}");
        let taken = disk.fill().unwrap();
        assert!(taken > 15 << 20, "{taken}");
        assert!(
            disk.free_now().unwrap() < 8192,
            "{}",
            disk.free_now().unwrap()
        );
        let e = std::fs::write(disk.root().join("x"), vec![1u8; 64 << 10]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
        assert_eq!(disk.free().unwrap(), before);
        std::fs::write(disk.root().join("x"), vec![1u8; 64 << 10]).unwrap();
        disk.teardown(None);
        assert!(!d.join("tmpfs").join("backing").exists(), "unmounted");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn corrupt_finds_nothing_in_an_empty_data_dir() {
        let d = scratch("empty");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        assert!(SlotDisk::corrupt(&d, &mut rng, 4).unwrap().is_none());
        let _ = std::fs::remove_dir_all(&d);
    }
}
