//! Power loss through a real FUSE mount: each test mounts `aof-faultfs` over a
//! temporary backing dir, works through the mount with std::fs, kills the
//! daemon and mounts again. Needs root and /dev/fuse; fails (does not skip)
//! without them.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aof_faultfs::{FaultFs, MetadataSync, MountOptions, Stats};
use tempfile::TempDir;

/// A mounted faultfs; `fs` is declared first so it is unmounted before the
/// temporary dir is removed, also when a test fails.
struct Disk {
    fs: FaultFs,
    mnt: PathBuf,
    backing: PathBuf,
    _dir: TempDir,
}

impl Disk {
    fn new(metadata: MetadataSync) -> Disk {
        assert!(
            rustix::process::geteuid().is_root(),
            "the aof-faultfs tests mount FUSE filesystems and must run as root"
        );
        assert!(
            Path::new("/dev/fuse").exists(),
            "the aof-faultfs tests need /dev/fuse (in a container: --device /dev/fuse --cap-add SYS_ADMIN)"
        );
        let dir = TempDir::new().unwrap();
        let (backing, mnt) = (dir.path().join("disk"), dir.path().join("mnt"));
        fs::create_dir(&backing).unwrap();
        fs::create_dir(&mnt).unwrap();
        let mut opts = MountOptions::new(env!("CARGO_BIN_EXE_aof-faultfs"), &backing, &mnt);
        opts.metadata = metadata;
        let fs = FaultFs::mount(opts).expect("mount aof-faultfs");
        Disk {
            fs,
            mnt,
            backing,
            _dir: dir,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.mnt.join(p)
    }

    /// Kills the daemon and mounts again; returns what it held unsynced.
    fn power_loss(&mut self) -> Stats {
        let lost = self.fs.lose_unsynced().expect("power loss and remount");
        lost.expect("the daemon answered the stats request before the kill")
    }
}

fn sync_dir(path: &Path) {
    File::open(path).unwrap().sync_all().unwrap();
}

fn write_synced(path: &Path, data: &[u8]) {
    let mut f = File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn a_write_and_fsync_survives_a_power_loss() {
    let mut disk = Disk::new(MetadataSync::OnDirFsync);
    let f = disk.path("f");
    write_synced(&f, b"durable");
    sync_dir(&disk.mnt);
    assert_eq!(
        fs::read(disk.backing.join("f")).unwrap(),
        b"durable",
        "fsync wrote the backing file"
    );
    let lost = disk.power_loss();
    assert_eq!(
        (lost.dirty_files, lost.dirty_bytes, lost.pending_entries),
        (0, 0, 0)
    );
    assert_eq!(fs::read(&f).unwrap(), b"durable");
}

#[test]
fn a_write_without_fsync_is_lost() {
    let mut disk = Disk::new(MetadataSync::OnDirFsync);
    let f = disk.path("f");
    write_synced(&f, b"durable");
    sync_dir(&disk.mnt);
    let mut file = OpenOptions::new().append(true).open(&f).unwrap();
    file.write_all(b" but not this").unwrap();
    drop(file); // close(2) syncs nothing
    assert_eq!(
        fs::read(&f).unwrap(),
        b"durable but not this",
        "the mount shows the write at once"
    );
    assert_eq!(
        fs::read(disk.backing.join("f")).unwrap(),
        b"durable",
        "the backing file does not have it"
    );
    let lost = disk.power_loss();
    assert_eq!((lost.dirty_files, lost.dirty_bytes), (1, 13));
    assert_eq!(fs::read(&f).unwrap(), b"durable");
}

#[test]
fn only_the_fsynced_file_of_two_keeps_its_writes() {
    let mut disk = Disk::new(MetadataSync::OnDirFsync);
    let (a, b) = (disk.path("a"), disk.path("b"));
    write_synced(&a, b"a0");
    write_synced(&b, b"b0");
    sync_dir(&disk.mnt);
    let fa = OpenOptions::new().write(true).open(&a).unwrap();
    let fb = OpenOptions::new().write(true).open(&b).unwrap();
    fa.write_all_at(b"a1", 0).unwrap();
    fb.write_all_at(b"b1", 0).unwrap();
    fa.sync_data().unwrap();
    drop((fa, fb));
    disk.power_loss();
    assert_eq!(
        (fs::read(&a).unwrap(), fs::read(&b).unwrap()),
        (b"a1".to_vec(), b"b0".to_vec())
    );
}

#[test]
fn pwrites_at_offsets_and_truncations_are_kept_only_when_synced() {
    let mut disk = Disk::new(MetadataSync::OnDirFsync);
    let path = disk.path("f");
    let mut model: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    write_synced(&path, &model);
    sync_dir(&disk.mnt);

    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let pwrite = |model: &mut Vec<u8>, off: usize, data: &[u8]| {
        f.write_all_at(data, off as u64).unwrap();
        if model.len() < off + data.len() {
            model.resize(off + data.len(), 0);
        }
        model[off..off + data.len()].copy_from_slice(data);
    };
    pwrite(&mut model, 0, b"head");
    pwrite(&mut model, 1000, &[7; 300]);
    pwrite(&mut model, 4090, b"straddles the end");
    pwrite(&mut model, 6000, b"past a hole");
    f.set_len(3000).unwrap();
    model.truncate(3000);
    f.set_len(5000).unwrap(); // the cut bytes come back as zeros
    model.resize(5000, 0);
    pwrite(&mut model, 4500, b"in the regrown part");
    let read_all = |f: &File| {
        let mut buf = vec![0; f.metadata().unwrap().len() as usize];
        f.read_exact_at(&mut buf, 0).unwrap();
        buf
    };
    assert_eq!(f.metadata().unwrap().len(), 5000);
    assert_eq!(read_all(&f), model, "the mount shows the overlay");
    f.sync_all().unwrap();
    let synced = model.clone();
    assert_eq!(fs::read(disk.backing.join("f")).unwrap(), synced);

    pwrite(&mut model, 10, b"lost");
    f.set_len(100).unwrap();
    drop(f);
    let lost = disk.power_loss();
    assert_eq!(lost.dirty_files, 1);
    assert_eq!(fs::read(&path).unwrap(), synced);

    fs::write(&path, b"O_TRUNC").unwrap(); // open(O_TRUNC) of an existing file, no fsync
    assert_eq!(fs::read(&path).unwrap(), b"O_TRUNC");
    disk.power_loss();
    assert_eq!(fs::read(&path).unwrap(), synced);
}

/// Creates, renames, unlinks and mkdirs are durable only after an fsync of
/// their directory; a file's own fsync keeps its data, not its name.
#[test]
fn names_are_durable_only_after_their_directory_is_fsynced() {
    let mut disk = Disk::new(MetadataSync::OnDirFsync);
    write_synced(&disk.path("old"), b"old");
    write_synced(&disk.path("gone"), b"gone");
    sync_dir(&disk.mnt);

    let ops = |disk: &Disk| {
        write_synced(&disk.path("new"), b"new");
        fs::rename(disk.path("old"), disk.path("renamed")).unwrap();
        fs::remove_file(disk.path("gone")).unwrap();
        fs::create_dir(disk.path("dir")).unwrap();
        write_synced(&disk.path("dir/inner"), b"inner");
        sync_dir(&disk.path("dir"));
        assert_eq!(names(&disk.mnt), ["dir", "new", "renamed"]);
    };
    ops(&disk);
    let lost = disk.power_loss();
    assert!(lost.pending_entries >= 4, "{lost:?}");
    assert_eq!(
        names(&disk.mnt),
        ["gone", "old"],
        "no directory fsync: every name change is lost"
    );
    assert_eq!(fs::read(disk.path("old")).unwrap(), b"old");

    ops(&disk);
    sync_dir(&disk.mnt);
    disk.power_loss();
    assert_eq!(names(&disk.mnt), ["dir", "new", "renamed"]);
    assert_eq!(fs::read(disk.path("renamed")).unwrap(), b"old");
    assert_eq!(fs::read(disk.path("dir/inner")).unwrap(), b"inner");
}

/// The snapshot pattern: write a temporary file, fsync it, rename it over the
/// old one, fsync the directory. Without the last step the old file stays, and
/// the temporary file, created after the last directory fsync, is gone too.
#[test]
fn write_fsync_rename_fsync_dir_replaces_a_file_durably() {
    let mut disk = Disk::new(MetadataSync::OnDirFsync);
    fs::create_dir_all(disk.path("snapshots")).unwrap();
    sync_dir(&disk.mnt);
    let dir = disk.path("snapshots");
    let replace = |content: &[u8], sync: bool| {
        write_synced(&dir.join("snap.tmp"), content);
        fs::rename(dir.join("snap.tmp"), dir.join("snap")).unwrap();
        if sync {
            sync_dir(&dir);
        }
    };
    replace(b"first", true);
    replace(b"second", false);
    assert_eq!(fs::read(dir.join("snap")).unwrap(), b"second");
    disk.power_loss();
    assert_eq!(names(&dir), ["snap"]);
    assert_eq!(fs::read(dir.join("snap")).unwrap(), b"first");
    replace(b"third", true);
    disk.power_loss();
    assert_eq!(names(&dir), ["snap"]);
    assert_eq!(fs::read(dir.join("snap")).unwrap(), b"third");
}

#[test]
fn immediate_metadata_keeps_names_and_loses_data() {
    let mut disk = Disk::new(MetadataSync::Immediate);
    write_synced(&disk.path("f"), b"synced");
    fs::create_dir(disk.path("d")).unwrap();
    OpenOptions::new()
        .append(true)
        .open(disk.path("f"))
        .unwrap()
        .write_all(b"+lost")
        .unwrap();
    disk.power_loss();
    assert_eq!(names(&disk.mnt), ["d", "f"]);
    assert_eq!(fs::read(disk.path("f")).unwrap(), b"synced");
}

fn record(i: usize) -> Vec<u8> {
    format!("record {i:06} {}\n", "x".repeat(i % 37)).into_bytes()
}

#[test]
fn appends_after_the_last_fdatasync_are_lost() {
    let mut disk = Disk::new(MetadataSync::OnDirFsync);
    let path = disk.path("log");
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    sync_dir(&disk.mnt);
    let mut synced = Vec::new();
    for i in 0..20 {
        f.write_all(&record(i)).unwrap();
        f.sync_data().unwrap();
        synced.extend(record(i));
    }
    for i in 20..25 {
        f.write_all(&record(i)).unwrap();
    }
    drop(f);
    let lost = disk.power_loss();
    assert_eq!(
        lost.dirty_bytes,
        (20..25).map(|i| record(i).len() as u64).sum::<u64>()
    );
    assert_eq!(fs::read(&path).unwrap(), synced);
}

/// A writer appends records with an fdatasync after each while the power goes
/// out under it: the file keeps exactly the records whose fdatasync returned,
/// plus at most the one whose fdatasync was under way, never a partial one.
#[test]
fn a_writer_cut_off_mid_stream_keeps_exactly_its_synced_prefix() {
    let mut disk = Disk::new(MetadataSync::OnDirFsync);
    let path = disk.path("wal");
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    sync_dir(&disk.mnt);
    let acked = Arc::new(AtomicUsize::new(0));
    let writer = {
        let acked = acked.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            for i in 0..1_000_000 {
                if Instant::now() > deadline
                    || f.write_all(&record(i)).is_err()
                    || f.sync_data().is_err()
                {
                    break;
                }
                acked.store(i + 1, Ordering::SeqCst);
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.load(Ordering::SeqCst) < 50 {
        assert!(
            Instant::now() < deadline,
            "the writer did not sync 50 records in 30 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let acked_before = acked.load(Ordering::SeqCst);
    disk.fs.lose_unsynced().expect("power loss and remount");
    writer.join().unwrap();
    let acked_after = acked.load(Ordering::SeqCst);

    let data = fs::read(&path).unwrap();
    let mut k = 0;
    let mut prefix = Vec::new();
    while prefix.len() < data.len() {
        prefix.extend(record(k));
        k += 1;
    }
    assert_eq!(
        data, prefix,
        "the file is whole records 0..{k}, nothing torn"
    );
    assert!(
        (acked_after..=acked_after + 1).contains(&k) && k >= acked_before,
        "kept {k} records; {acked_after} were acknowledged (at least {acked_before} before the kill)"
    );
}

#[test]
fn a_clean_unmount_makes_everything_durable() {
    let disk = Disk::new(MetadataSync::OnDirFsync);
    fs::create_dir(disk.path("d")).unwrap();
    fs::write(disk.path("d/f"), b"never fsynced").unwrap();
    let Disk {
        fs: faultfs,
        backing,
        _dir,
        ..
    } = disk;
    faultfs.unmount().expect("clean unmount");
    assert_eq!(fs::read(backing.join("d/f")).unwrap(), b"never fsynced");
}

/// sled (the node's state machine and vote store) runs over the mount. Its
/// `flush()` ends in `sync_file_range(2)` on Linux, never fsync: that is not a
/// durability point (no metadata, no device cache flush), the kernel does not
/// pass it to FUSE, and so a power loss takes what was only flushed. An fsync of
/// sled's `db` file through any fd of it makes the flushed data durable.
#[test]
fn sled_data_is_durable_after_an_fsync_of_its_file_not_after_flush() {
    let mut disk = Disk::new(MetadataSync::OnDirFsync);
    let dir = disk.path("db");
    let open = |dir: &Path| {
        sled::Config::new()
            .path(dir)
            .flush_every_ms(None)
            .open()
            .unwrap()
    };
    let put = |db: &sled::Db, value: &[u8]| {
        for i in 0..100u32 {
            db.insert(i.to_be_bytes(), value).unwrap();
        }
        db.flush().unwrap();
    };
    let count = |db: &sled::Db, value: &[u8]| {
        (0..100u32)
            .filter(|i| db.get(i.to_be_bytes()).unwrap().as_deref() == Some(value))
            .count()
    };
    let mut power_loss = |db: sled::Db| {
        disk.fs.power_off().expect("power off");
        std::mem::forget(db); // its files are on the dead mount
        disk.fs.power_on().expect("power on");
    };

    let db = open(&dir);
    // sled fsyncs no directory; a program using it must.
    for d in [dir.join("blobs"), dir.clone(), disk.mnt.clone()] {
        sync_dir(&d);
    }
    put(&db, b"flushed");
    power_loss(db);
    let db = open(&dir);
    assert_eq!(count(&db, b"flushed"), 0, "flush() alone is not durable");

    put(&db, b"flushed and fsynced");
    File::open(dir.join("db")).unwrap().sync_data().unwrap();
    power_loss(db);
    let db = open(&dir);
    assert_eq!(count(&db, b"flushed and fsynced"), 100);
}
