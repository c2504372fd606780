//! The namespace model without FUSE: operations on a `State`, a power loss is
//! dropping it and serving the backing dir again.

use super::*;
use std::fs;
use tempfile::TempDir;

const OWNER: (u32, u32) = (0, 0);

fn n(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn serve(dir: &TempDir, meta: MetadataSync) -> State {
    State::serve(dir.path(), meta).unwrap()
}

/// Power loss: everything only in the state's memory is gone.
fn power_loss(dir: &TempDir, state: State) -> State {
    let meta = state.meta;
    drop(state);
    serve(dir, meta)
}

fn ino(s: &mut State, parent: u64, name: &str) -> u64 {
    s.lookup(parent, n(name)).unwrap().ino.0
}

fn names(s: &State, dir: u64) -> Vec<String> {
    s.list(dir)
        .unwrap()
        .into_iter()
        .map(|(_, _, name)| name.to_string_lossy().into_owned())
        .collect()
}

fn read(s: &mut State, parent: u64, name: &str) -> Vec<u8> {
    let i = ino(s, parent, name);
    s.read(i, 0, 1 << 20).unwrap()
}

/// Creates `name` with `data`, fsyncs the file (not the directory).
fn create_synced(s: &mut State, parent: u64, name: &str, data: &[u8]) -> u64 {
    let i = s.create(parent, n(name), 0o644, OWNER).unwrap().ino.0;
    s.write(i, 0, data).unwrap();
    s.fsync(i, true).unwrap();
    s.release(i);
    i
}

fn on_disk(dir: &TempDir) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != STAGING)
        .collect();
    v.sort();
    v
}

#[test]
fn a_created_file_is_durable_only_after_its_directory_is_synced() {
    let dir = TempDir::new().unwrap();
    let mut s = serve(&dir, MetadataSync::OnDirFsync);
    create_synced(&mut s, ROOT, "a", b"data of a");
    assert_eq!(read(&mut s, ROOT, "a"), b"data of a");
    assert_eq!(
        on_disk(&dir),
        Vec::<String>::new(),
        "the name is not in the backing dir yet"
    );
    let mut s = power_loss(&dir, s);
    assert_eq!(
        s.lookup(ROOT, n("a")).unwrap_err(),
        Errno::NOENT,
        "file data synced, name not: gone"
    );

    create_synced(&mut s, ROOT, "b", b"data of b");
    s.fsyncdir(ROOT).unwrap();
    assert_eq!(on_disk(&dir), ["b"]);
    let mut s = power_loss(&dir, s);
    assert_eq!(read(&mut s, ROOT, "b"), b"data of b");
}

#[test]
fn unsynced_data_of_a_durable_file_is_lost() {
    let dir = TempDir::new().unwrap();
    fs::write(dir.path().join("f"), b"old").unwrap();
    let mut s = serve(&dir, MetadataSync::OnDirFsync);
    let f = ino(&mut s, ROOT, "f");
    s.write(f, 3, b"-new").unwrap();
    s.setattr(
        f,
        SetAttr {
            size: Some(5),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(read(&mut s, ROOT, "f"), b"old-n");
    assert_eq!(s.stats().dirty_files, 1);
    let mut s = power_loss(&dir, s);
    assert_eq!(read(&mut s, ROOT, "f"), b"old");
    assert_eq!(s.stats(), Stats::default());
}

#[test]
fn a_rename_is_durable_only_after_its_directory_is_synced() {
    let dir = TempDir::new().unwrap();
    fs::write(dir.path().join("old"), b"content").unwrap();
    let mut s = serve(&dir, MetadataSync::OnDirFsync);
    s.rename(ROOT, n("old"), ROOT, n("new"), false).unwrap();
    assert_eq!(names(&s, ROOT), ["new"]);
    assert_eq!(on_disk(&dir), ["old"]);
    let mut s = power_loss(&dir, s);
    assert_eq!(names(&s, ROOT), ["old"]);

    s.rename(ROOT, n("old"), ROOT, n("new"), false).unwrap();
    assert_eq!(s.stats().pending_entries, 2);
    s.fsyncdir(ROOT).unwrap();
    assert_eq!(s.stats().pending_entries, 0);
    assert_eq!(on_disk(&dir), ["new"]);
    let mut s = power_loss(&dir, s);
    assert_eq!(read(&mut s, ROOT, "new"), b"content");
}

#[test]
fn a_rename_over_a_file_replaces_it() {
    let dir = TempDir::new().unwrap();
    fs::write(dir.path().join("a"), b"A").unwrap();
    fs::write(dir.path().join("b"), b"B").unwrap();
    let mut s = serve(&dir, MetadataSync::OnDirFsync);
    assert_eq!(
        s.rename(ROOT, n("a"), ROOT, n("b"), true).unwrap_err(),
        Errno::EXIST,
        "RENAME_NOREPLACE"
    );
    s.rename(ROOT, n("a"), ROOT, n("b"), false).unwrap();
    assert_eq!(read(&mut s, ROOT, "b"), b"A");
    s.fsyncdir(ROOT).unwrap();
    assert_eq!(on_disk(&dir), ["b"]);
    assert_eq!(fs::read(dir.path().join("b")).unwrap(), b"A");
}

#[test]
fn an_unlink_is_undone_by_a_power_loss_before_the_directory_sync() {
    let dir = TempDir::new().unwrap();
    fs::write(dir.path().join("x"), b"x").unwrap();
    let mut s = serve(&dir, MetadataSync::OnDirFsync);
    s.unlink(ROOT, n("x")).unwrap();
    assert_eq!(s.lookup(ROOT, n("x")).unwrap_err(), Errno::NOENT);
    let mut s = power_loss(&dir, s);
    assert_eq!(read(&mut s, ROOT, "x"), b"x");
    s.unlink(ROOT, n("x")).unwrap();
    s.fsyncdir(ROOT).unwrap();
    assert_eq!(on_disk(&dir), Vec::<String>::new());
    let s = power_loss(&dir, s);
    assert_eq!(names(&s, ROOT), Vec::<String>::new());
}

#[test]
fn a_new_directory_needs_itself_and_its_parent_synced() {
    let dir = TempDir::new().unwrap();
    let mut s = serve(&dir, MetadataSync::OnDirFsync);
    let d = s.mkdir(ROOT, n("d"), 0o755, OWNER).unwrap().ino.0;
    create_synced(&mut s, d, "f", b"f");
    s.fsyncdir(d).unwrap();
    let mut s = power_loss(&dir, s);
    assert_eq!(
        names(&s, ROOT),
        Vec::<String>::new(),
        "parent not synced: the directory is gone"
    );

    let d = s.mkdir(ROOT, n("d"), 0o755, OWNER).unwrap().ino.0;
    create_synced(&mut s, d, "f", b"f");
    s.fsyncdir(ROOT).unwrap();
    let mut s = power_loss(&dir, s);
    let d = ino(&mut s, ROOT, "d");
    assert_eq!(
        names(&s, d),
        Vec::<String>::new(),
        "directory itself not synced: empty"
    );

    create_synced(&mut s, d, "f", b"f");
    s.fsyncdir(d).unwrap();
    let mut s = power_loss(&dir, s);
    let d = ino(&mut s, ROOT, "d");
    assert_eq!(read(&mut s, d, "f"), b"f");
    assert_eq!(s.rmdir(ROOT, n("d")).unwrap_err(), Errno::NOTEMPTY);
}

#[test]
fn a_file_moved_between_directories_needs_both_synced() {
    let dir = TempDir::new().unwrap();
    fs::create_dir(dir.path().join("d1")).unwrap();
    fs::create_dir(dir.path().join("d2")).unwrap();
    fs::write(dir.path().join("d1/f"), b"moving").unwrap();
    let mut s = serve(&dir, MetadataSync::OnDirFsync);
    let (d1, d2) = (ino(&mut s, ROOT, "d1"), ino(&mut s, ROOT, "d2"));
    s.rename(d1, n("f"), d2, n("f"), false).unwrap();
    s.fsyncdir(d1).unwrap();
    assert!(!dir.path().join("d1/f").exists() && !dir.path().join("d2/f").exists());
    assert_eq!(
        read(&mut s, d2, "f"),
        b"moving",
        "parked in staging meanwhile"
    );
    s.fsyncdir(d2).unwrap();
    assert_eq!(fs::read(dir.path().join("d2/f")).unwrap(), b"moving");

    s.rename(d2, n("f"), d1, n("f"), false).unwrap();
    s.fsyncdir(d2).unwrap();
    let s = power_loss(&dir, s);
    let mut s = s;
    let (d1, d2) = (ino(&mut s, ROOT, "d1"), ino(&mut s, ROOT, "d2"));
    assert_eq!(
        (names(&s, d1), names(&s, d2)),
        (vec![], vec![]),
        "only the old directory was synced: no durable name"
    );
}

#[test]
fn a_directory_rename_moves_it_with_its_contents() {
    let dir = TempDir::new().unwrap();
    fs::create_dir_all(dir.path().join("a/sub")).unwrap();
    fs::write(dir.path().join("a/sub/f"), b"deep").unwrap();
    let mut s = serve(&dir, MetadataSync::OnDirFsync);
    s.rename(ROOT, n("a"), ROOT, n("b"), false).unwrap();
    s.fsyncdir(ROOT).unwrap();
    assert_eq!(on_disk(&dir), ["b"]);
    assert_eq!(fs::read(dir.path().join("b/sub/f")).unwrap(), b"deep");
}

#[test]
fn an_open_unlinked_file_keeps_working() {
    let dir = TempDir::new().unwrap();
    let mut s = serve(&dir, MetadataSync::OnDirFsync);
    let f = s.create(ROOT, n("anon"), 0o600, OWNER).unwrap().ino.0; // open
    s.fsyncdir(ROOT).unwrap();
    s.unlink(ROOT, n("anon")).unwrap();
    s.fsyncdir(ROOT).unwrap();
    assert_eq!(on_disk(&dir), Vec::<String>::new());
    s.write(f, 0, b"still here").unwrap();
    s.fsync(f, false).unwrap();
    assert_eq!(s.read(f, 0, 100).unwrap(), b"still here");
    s.release(f);
    s.forget(f, 1);
    assert!(
        !s.inodes.contains_key(&f),
        "freed once closed and forgotten"
    );
    assert_eq!(
        fs::read_dir(dir.path().join(STAGING)).unwrap().count(),
        0,
        "staging link removed"
    );
}

#[test]
fn hard_links_and_symlinks_reach_the_backing_dir() {
    let dir = TempDir::new().unwrap();
    fs::write(dir.path().join("f"), b"linked").unwrap();
    let mut s = serve(&dir, MetadataSync::OnDirFsync);
    let f = ino(&mut s, ROOT, "f");
    assert_eq!(s.link(f, ROOT, n("g")).unwrap().nlink, 2);
    s.unlink(ROOT, n("f")).unwrap();
    let l = s
        .symlink(ROOT, n("l"), Path::new("g"), OWNER)
        .unwrap()
        .ino
        .0;
    assert_eq!(s.readlink(l).unwrap(), b"g");
    s.fsyncdir(ROOT).unwrap();
    assert_eq!(on_disk(&dir), ["g", "l"]);
    assert_eq!(fs::read(dir.path().join("g")).unwrap(), b"linked");
    assert_eq!(fs::read_link(dir.path().join("l")).unwrap(), Path::new("g"));
}

#[test]
fn listing_merges_backing_entries_with_changes_and_hides_staging() {
    let dir = TempDir::new().unwrap();
    fs::write(dir.path().join("a"), b"").unwrap();
    fs::write(dir.path().join("b"), b"").unwrap();
    let mut s = serve(&dir, MetadataSync::OnDirFsync);
    s.create(ROOT, n("c"), 0o644, OWNER).unwrap();
    s.unlink(ROOT, n("a")).unwrap();
    assert_eq!(names(&s, ROOT), ["b", "c"]);
    assert_eq!(s.lookup(ROOT, n(STAGING)).unwrap_err(), Errno::NOENT);
    assert_eq!(
        s.create(ROOT, n(STAGING), 0o644, OWNER).unwrap_err(),
        Errno::PERM
    );
}

#[test]
fn immediate_mode_loses_only_data() {
    let dir = TempDir::new().unwrap();
    let mut s = serve(&dir, MetadataSync::Immediate);
    let f = create_synced(&mut s, ROOT, "f", b"synced");
    s.mkdir(ROOT, n("d"), 0o755, OWNER).unwrap();
    assert_eq!(on_disk(&dir), ["d", "f"]);
    let f2 = s.lookup(ROOT, n("f")).unwrap().ino.0;
    assert_eq!(f, f2);
    s.write(f, 6, b" and not").unwrap();
    let mut s = power_loss(&dir, s);
    assert_eq!(read(&mut s, ROOT, "f"), b"synced");
    assert_eq!(names(&s, ROOT), ["d", "f"]);
}

#[test]
fn sync_all_makes_everything_durable() {
    let dir = TempDir::new().unwrap();
    let mut s = serve(&dir, MetadataSync::OnDirFsync);
    let d = s.mkdir(ROOT, n("d"), 0o755, OWNER).unwrap().ino.0;
    let f = s.create(d, n("f"), 0o644, OWNER).unwrap().ino.0;
    s.write(f, 0, b"unsynced").unwrap();
    s.sync_all().unwrap();
    assert_eq!(s.stats().dirty_bytes, 0);
    let mut s = power_loss(&dir, s);
    let d = ino(&mut s, ROOT, "d");
    assert_eq!(read(&mut s, d, "f"), b"unsynced");
}

#[test]
fn a_backing_dir_is_served_once_and_its_staging_emptied() {
    let dir = TempDir::new().unwrap();
    fs::create_dir(dir.path().join(STAGING)).unwrap();
    fs::write(
        dir.path().join(STAGING).join("leftover"),
        b"no durable name",
    )
    .unwrap();
    let s = serve(&dir, MetadataSync::OnDirFsync);
    assert_eq!(fs::read_dir(dir.path().join(STAGING)).unwrap().count(), 0);
    assert!(matches!(
        State::serve(dir.path(), MetadataSync::OnDirFsync),
        Err(Error::Busy(_))
    ));
    drop(s);
    serve(&dir, MetadataSync::OnDirFsync);
}
