//! The Raft log as append-only segment files in `<data dir>/wal/`.
//!
//! Log entries are written once, read back a few times for replication, and dropped
//! in bulk — the access pattern of a write-ahead log, not of a B-tree. In a sled tree
//! every batched entry (up to a MiB of webhook payloads) was rewritten with its leaf
//! page on each consolidation, and each append flushed the whole database (all the
//! state machine's dirty pages too). Here an append is one `pwrite` and one
//! `fdatasync` of the segment file, and purging deletes whole files.
//!
//! A segment `<first index, 20 digits>.wal` holds records for consecutive indexes,
//! the first one being its name. It starts with a file header, then the records:
//!
//! ```text
//! file header: [magic "aof-wal\0": 8][format version = 2: u32 LE][follows: u64 LE][crc32 of the 20 bytes before: u32 LE]
//! record:      [index: u64 LE][len: u32 LE][crc32 of payload: u32 LE][crc32 of the 16 bytes before: u32 LE][payload: len bytes]
//! ```
//!
//! Every byte of a record is covered by a checksum, its length included, so a
//! damaged length cannot pass for the end of the log. `follows` is the index of the
//! log's last record when the segment was started (`u64::MAX`: none, the log started
//! afresh after everything was purged), so a lost or emptied segment before it shows
//! as a break in the chain. Segments written by older
//! builds have no file header and records `[index][len][crc32 of index + payload]
//! [payload]` (format 1); they are still read, and appends go to a new segment.
//! The payload is the entry encoded with [`crate::codec`] (so it carries the format
//! version like every other record).
//!
//! ### To ensure correctness
//!
//! - [`Wal::append`] writes its records at the end of the current segment and calls
//!   `fdatasync` before it returns; only then are the entries published to readers.
//!   A new segment file is created (header written, directory synced) when the
//!   current one is full, is in the old format, or when the appended index does not
//!   follow the last one (after a purge of everything, or on the first append).
//! - A full disk (`ENOSPC`, `EDQUOT`) does not fail an append: it raises the storage
//!   alarm ([`super::disk`]), waits until space is freed and writes the same bytes
//!   at the same offset again (whatever part of them reached the file is
//!   overwritten), then syncs. Nothing is acknowledged meanwhile.
//! - [`Wal::truncate`] deletes all segments after the one holding the index (newest
//!   first, syncing the directory after each, so a crash leaves no gap), then cuts
//!   that segment at the record's offset and syncs it and the directory.
//! - [`Wal::purge`] forgets entries up to an index and deletes segments all of whose
//!   entries are at or below it (then syncs the directory); [`Wal::forget`] and
//!   [`Wal::delete_forgotten`] are its two halves, so a caller can make the state
//!   that replaces those entries (the snapshot) durable in between.
//! - [`Wal::open`] reads every segment. A bad record (short, failing a checksum, or a
//!   length running past the end of the file) is a torn append — the process died
//!   before `fdatasync` returned, so it was never acknowledged — only if it is in the
//!   last segment **and no valid record follows it** (an incomplete final record, a
//!   garbled final record, a zero-filled tail); it is then cut off. Anything else is
//!   [`WalError::Corrupt`], naming the file and the offset, and the node does not
//!   start: silently dropping records after damage could drop acknowledged entries.
//!   Segments after a gap replace what came before (a gap only appears where
//!   everything earlier was purged).
//! - Appends, truncates and purges come from openraft's `&mut self` log-storage
//!   calls, one at a time; readers (replication) only see published entries.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::disk::{self, DiskAlarm};

/// A segment is closed once it grows past this size.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Recent entries kept decoded in memory for replication (count and encoded bytes).
const CACHE_ENTRIES: usize = 1024;
const CACHE_BYTES: usize = 32 << 20;

/// The first bytes of a segment in the current format.
const MAGIC: [u8; 8] = *b"aof-wal\0";
/// The segment format this build writes.
const FORMAT_VERSION: u32 = 2;
/// `[magic][version][follows][crc]`.
const FILE_HEADER: usize = 24;

/// The record layout of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// Older builds: no file header, `[index][len][crc32 of index + payload]`.
    V1,
    /// `[index][len][crc32 of payload][crc32 of the header]`, after a file header.
    V2,
}

impl Format {
    fn record_header(self) -> usize {
        match self {
            Format::V1 => 16,
            Format::V2 => 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("write-ahead log {path}: bad record at offset {offset}: {what}; the log is damaged (restore the data dir from a backup, or start this node with an empty data dir so it catches up from the cluster)")]
    Corrupt { path: PathBuf, offset: u64, what: String },
    #[error("write-ahead log: append of index {got} does not follow the last index {last}")]
    Gap { got: u64, last: u64 },
    #[error("write-ahead log {path}: closed while an append waited for disk space; the append was not written")]
    Closed { path: PathBuf },
}

fn ioe(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io { path: path.to_path_buf(), source }
}

#[derive(Clone, Copy, Debug)]
struct Loc {
    segment: u64,
    offset: u64,
    len: u32,
}

struct Segment {
    path: PathBuf,
    file: Arc<File>,
    len: u64,
    /// Index of its last record, if it has any.
    last: Option<u64>,
    format: Format,
}

#[derive(Default)]
struct Inner {
    /// Segments by the index of their first record.
    segments: BTreeMap<u64, Segment>,
    /// Where each entry is. Consecutive in practice; openraft's storage test suite
    /// also appends with gaps, which work as well.
    locs: BTreeMap<u64, Loc>,
    /// Decoded payloads of the newest entries: `(index, bytes)`, ascending.
    cache: VecDeque<(u64, Arc<Vec<u8>>)>,
    cache_bytes: usize,
}

impl Inner {
    fn last(&self) -> Option<u64> {
        self.locs.last_key_value().map(|(k, _)| *k)
    }
    fn first(&self) -> Option<u64> {
        self.locs.first_key_value().map(|(k, _)| *k)
    }

    fn cache_push(&mut self, index: u64, bytes: Arc<Vec<u8>>) {
        self.cache_bytes += bytes.len();
        self.cache.push_back((index, bytes));
        while self.cache.len() > CACHE_ENTRIES || (self.cache_bytes > CACHE_BYTES && self.cache.len() > 1) {
            if let Some((_, b)) = self.cache.pop_front() {
                self.cache_bytes -= b.len();
            }
        }
    }

    fn cache_retain(&mut self, keep: impl Fn(u64) -> bool) {
        self.cache.retain(|(i, _)| keep(*i));
        self.cache_bytes = self.cache.iter().map(|(_, b)| b.len()).sum();
    }
}

/// An entry as stored: its index and its encoded bytes.
pub type Record = (u64, Arc<Vec<u8>>);

/// The write-ahead log of one node. Shared by the log store and its readers.
pub struct Wal {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// Raised when the disk is full; appends wait while it is.
    alarm: Arc<DiskAlarm>,
    /// A segment is closed once it grows past this ([`SEGMENT_BYTES`]; smaller in tests).
    segment_bytes: u64,
}

/// The planted bug `ack-before-fsync` (see [`crate::planted`]): skip this
/// append's `fdatasync` unless the last one was a second ago or more. Always
/// `false` without the bug.
fn planted_skip_sync() -> bool {
    if !crate::planted::active(crate::planted::Bug::AckBeforeFsync) {
        return false;
    }
    static LAST_SYNC: Mutex<Option<std::time::Instant>> = Mutex::new(None);
    let mut last = LAST_SYNC.lock().unwrap_or_else(|p| p.into_inner());
    if last.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1)) {
        return true;
    }
    *last = Some(std::time::Instant::now());
    false
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.wal"))
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

/// The header of a new segment; `follows` is the log's last index, if the segment
/// continues it.
fn file_header(follows: Option<u64>) -> [u8; FILE_HEADER] {
    let mut h = [0u8; FILE_HEADER];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&follows.unwrap_or(u64::MAX).to_le_bytes());
    let crc = crc32fast::hash(&h[..20]);
    h[20..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The checksum of a format-1 record.
fn v1_checksum(index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Append a record in the current format.
fn encode_record(out: &mut Vec<u8>, index: u64, payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    let header_crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// The record at `offset` of `data`, if it is whole and its checksums hold: its
/// index and where its payload is.
fn parse_record(data: &[u8], offset: usize, format: Format) -> Result<(u64, Range<usize>), &'static str> {
    let hl = format.record_header();
    let rest = data.get(offset..).unwrap_or_default();
    if rest.len() < hl {
        return Err("incomplete record header");
    }
    let index = le_u64(&rest[0..8]);
    let len = le_u32(&rest[8..12]) as usize;
    let crc = le_u32(&rest[12..16]);
    if format == Format::V2 && crc32fast::hash(&rest[..16]) != le_u32(&rest[16..20]) {
        return Err("record header checksum mismatch");
    }
    let Some(payload) = rest.get(hl..hl + len) else {
        return Err("record runs past the end of the file");
    };
    let ok = match format {
        Format::V1 => v1_checksum(index, payload) == crc,
        Format::V2 => crc32fast::hash(payload) == crc,
    };
    if !ok {
        return Err("payload checksum mismatch");
    }
    Ok((index, offset + hl..offset + hl + len))
}

/// The first valid record at or after offset `from` with an index this segment could
/// hold (`min` = its first index, up to as many records as fit): `(offset, index)`.
fn find_valid_record(data: &[u8], from: usize, format: Format, min: u64) -> Option<(usize, u64)> {
    let hl = format.record_header();
    let max = min.saturating_add((data.len() / hl) as u64);
    let mut p = from;
    while p + hl <= data.len() {
        let index = le_u64(&data[p..p + 8]);
        if (min..=max).contains(&index) {
            if let Ok((i, _)) = parse_record(data, p, format) {
                return Some((p, i));
            }
        }
        p += 1;
    }
    None
}

/// What a segment file starts with.
enum Header {
    Empty,
    /// A current-format segment continuing the log at `follows` (if it does).
    V2 { follows: Option<u64> },
    V1,
    /// A current-format header naming a version this build does not know.
    UnknownVersion(u32),
    Bad(&'static str),
}

fn read_header(data: &[u8], first: u64) -> Header {
    if data.is_empty() {
        return Header::Empty;
    }
    if data.len() >= MAGIC.len() && data[..MAGIC.len()] == MAGIC {
        if data.len() < FILE_HEADER {
            return Header::Bad("incomplete segment header");
        }
        if crc32fast::hash(&data[..20]) != le_u32(&data[20..24]) {
            return Header::Bad("segment header checksum mismatch");
        }
        return match le_u32(&data[8..12]) {
            FORMAT_VERSION => Header::V2 { follows: Some(le_u64(&data[12..20])).filter(|f| *f != u64::MAX) },
            v => Header::UnknownVersion(v),
        };
    }
    if data.len() < MAGIC.len() && MAGIC.starts_with(data) {
        return Header::Bad("incomplete segment header");
    }
    if data.len() >= 8 && le_u64(data) == first {
        return Header::V1;
    }
    Header::Bad("unrecognized segment header")
}

/// Why one attempt to append failed.
enum Attempt {
    /// The disk is full: raise the alarm, wait, try again.
    DiskFull { path: PathBuf, source: io::Error },
    Failed(WalError),
}

fn attempt(path: &Path) -> impl FnOnce(io::Error) -> Attempt + '_ {
    move |source| {
        if disk::is_disk_full(&source) {
            Attempt::DiskFull { path: path.to_path_buf(), source }
        } else {
            Attempt::Failed(WalError::Io { path: path.to_path_buf(), source })
        }
    }
}

impl Wal {
    /// Open (or create) the log in `dir`, recovering from a torn last append.
    pub fn open(dir: &Path) -> Result<Wal, WalError> {
        Self::open_with(dir, DiskAlarm::standalone(dir), None)
    }

    /// [`Wal::open`] with the storage alarm of the data dir. `purged`: the log is
    /// purged up to this index, so segments holding only entries up to it may be
    /// gone; any other missing record is damage.
    pub(crate) fn open_with(dir: &Path, alarm: Arc<DiskAlarm>, purged: Option<u64>) -> Result<Wal, WalError> {
        disk::create_dir_all_durable(dir).map_err(ioe(dir))?;
        let mut names: Vec<u64> = std::fs::read_dir(dir)
            .map_err(ioe(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".wal")).and_then(|n| n.parse().ok()))
            .collect();
        names.sort_unstable();
        let mut inner = Inner::default();
        let count = names.len();
        for (k, first) in names.into_iter().enumerate() {
            let path = segment_path(dir, first);
            let file = OpenOptions::new().read(true).write(true).open(&path).map_err(ioe(&path))?;
            let mut data = Vec::new();
            (&file).read_to_end(&mut data).map_err(ioe(&path))?;
            let last_segment = k + 1 == count;
            let corrupt = |offset: usize, what: String| WalError::Corrupt { path: path.clone(), offset: offset as u64, what };
            if let Some(prev) = inner.last().filter(|prev| *prev >= first) {
                return Err(corrupt(0, format!("segment starts at index {first}, at or before the previous segment's last index {prev}")));
            }
            let cut = |data: &mut Vec<u8>, offset: usize, what: &str| -> Result<(), WalError> {
                tracing::warn!(path = %path.display(), offset, "cutting off a torn record at the end of the write-ahead log ({what}; an append that was never acknowledged)");
                file.set_len(offset as u64).map_err(ioe(&path))?;
                file.sync_all().map_err(ioe(&path))?;
                data.truncate(offset);
                Ok(())
            };
            let format = match read_header(&data, first) {
                Header::V2 { follows } => {
                    if let Some(p) = follows {
                        let before = inner.last();
                        // What came before is here, or was purged (its files may be gone).
                        let continues = before == Some(p) || purged.is_some_and(|q| p <= q);
                        if first != p.saturating_add(1) || !continues {
                            let ends = before.map_or("nothing".to_string(), |l| format!("index {l}"));
                            return Err(corrupt(
                                12,
                                format!("segment continues the log after index {p}, but the log before it holds {ends} (purged up to {purged:?}): records are missing"),
                            ));
                        }
                    }
                    Format::V2
                }
                Header::V1 => Format::V1,
                // Empty: no records; appends go to a new segment.
                Header::Empty => Format::V1,
                Header::UnknownVersion(v) => {
                    return Err(corrupt(8, format!("segment format version {v} is not known to this build (written by a newer aof-cluster?)")));
                }
                Header::Bad(what) => {
                    let follows = [Format::V2, Format::V1].into_iter().find_map(|f| find_valid_record(&data, 1, f, first));
                    if let Some((at, index)) = follows {
                        return Err(corrupt(0, format!("{what}; a valid record (index {index}) follows at offset {at}")));
                    }
                    if !last_segment {
                        return Err(corrupt(0, what.into()));
                    }
                    // The segment was being created when the process died.
                    cut(&mut data, 0, what)?;
                    Format::V1
                }
            };
            let mut offset = if format == Format::V2 { FILE_HEADER } else { 0 };
            let mut expected = first;
            while offset < data.len() {
                match parse_record(&data, offset, format) {
                    Ok((index, payload)) => {
                        if index != expected {
                            return Err(corrupt(offset, format!("index {index}, expected {expected}")));
                        }
                        inner.locs.insert(index, Loc { segment: first, offset: offset as u64, len: payload.len() as u32 });
                        offset = payload.end;
                        expected += 1;
                    }
                    Err(what) => {
                        // A torn append: only at the end of the last segment, with no
                        // valid record after it.
                        if let Some((at, index)) = find_valid_record(&data, offset + 1, format, first) {
                            return Err(corrupt(
                                offset,
                                format!("{what}; a valid record (index {index}) follows at offset {at}, so this is damage, not an interrupted append"),
                            ));
                        }
                        if !last_segment {
                            return Err(corrupt(offset, format!("{what}, in a segment that is not the last")));
                        }
                        cut(&mut data, offset, what)?;
                    }
                }
            }
            let last = (expected > first).then(|| expected - 1);
            inner.segments.insert(first, Segment { path, file: Arc::new(file), len: data.len() as u64, last, format });
        }
        Ok(Wal { dir: dir.to_path_buf(), inner: Mutex::new(inner), alarm, segment_bytes: SEGMENT_BYTES })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `(first, last)` index held, if any.
    pub fn bounds(&self) -> Option<(u64, u64)> {
        let inner = self.lock();
        inner.first().zip(inner.last())
    }

    /// Append encoded entries `(index, payload)` with consecutive indexes, durably.
    /// Blocking (file IO): call it from a blocking context. On a full disk it waits
    /// (see the module docs) and returns once the entries are on disk, or
    /// [`WalError::Closed`] if the store is closed meanwhile.
    pub fn append(&self, entries: Vec<(u64, Vec<u8>)>) -> Result<(), WalError> {
        let Some(&(start, _)) = entries.first() else { return Ok(()) };
        if let Some(l) = self.lock().last().filter(|l| start <= *l) {
            return Err(WalError::Gap { got: start, last: l });
        }
        let mut buf = Vec::with_capacity(entries.iter().map(|(_, p)| Format::V2.record_header() + p.len()).sum());
        let mut rel = Vec::with_capacity(entries.len());
        for (n, (index, payload)) in entries.iter().enumerate() {
            if *index != start + n as u64 {
                return Err(WalError::Gap { got: *index, last: start + n as u64 - 1 });
            }
            rel.push((buf.len() as u64, payload.len() as u32));
            encode_record(&mut buf, *index, payload);
        }
        let (segment, base) = loop {
            self.alarm.wait_clear("a log append").map_err(|_| WalError::Closed { path: self.dir.clone() })?;
            match self.write_at_end(start, &buf) {
                Ok(at) => break at,
                Err(Attempt::DiskFull { path, source }) => self.alarm.raise_disk_full(&path, &source),
                Err(Attempt::Failed(e)) => return Err(e),
            }
        };
        let mut inner = self.lock();
        if let Some(s) = inner.segments.get_mut(&segment) {
            s.len = base + buf.len() as u64;
            s.last = Some(start + rel.len() as u64 - 1);
        }
        for (n, (off, len)) in rel.into_iter().enumerate() {
            inner.locs.insert(start + n as u64, Loc { segment, offset: base + off, len });
        }
        for (index, payload) in entries {
            inner.cache_push(index, Arc::new(payload));
        }
        Ok(())
    }

    /// One attempt to write `buf` (the records from index `start` on) at the end of
    /// the log and sync it: `(segment, offset)` where it went.
    fn write_at_end(&self, start: u64, buf: &[u8]) -> Result<(u64, u64), Attempt> {
        let (segment, file, path, base) = {
            let mut inner = self.lock();
            let follows = inner.last().is_some_and(|l| l + 1 == start);
            let rotate = !follows
                || match inner.segments.iter().next_back() {
                    None => true,
                    Some((k, s)) => s.len >= self.segment_bytes || s.format != Format::V2 || (s.last.is_none() && *k != start),
                };
            if rotate {
                let path = segment_path(&self.dir, start);
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)
                    .and_then(|f| f.write_all_at(&file_header(follows.then(|| start - 1)), 0).map(|()| f))
                    .map_err(attempt(&path))?;
                disk::sync_dir(&self.dir).map_err(attempt(&self.dir))?;
                let seg = Segment { path, file: Arc::new(file), len: FILE_HEADER as u64, last: None, format: Format::V2 };
                inner.segments.insert(start, seg);
            }
            let (k, s) = inner.segments.iter().next_back().expect("a current segment");
            (*k, s.file.clone(), s.path.clone(), s.len)
        };
        file.write_all_at(buf, base).map_err(attempt(&path))?;
        if !planted_skip_sync() {
            file.sync_data().map_err(attempt(&path))?;
        }
        Ok((segment, base))
    }

    /// The encoded entries with indexes in `[from, to)` that the log holds.
    pub fn read(&self, from: u64, to: u64) -> Result<Vec<Record>, WalError> {
        let mut out = Vec::new();
        let mut to_read = Vec::new();
        {
            let inner = self.lock();
            let cached_from = inner.cache.front().map_or(u64::MAX, |(i, _)| *i);
            for (&index, &loc) in inner.locs.range(from..to) {
                let cached = (index >= cached_from)
                    .then(|| inner.cache.binary_search_by_key(&index, |(i, _)| *i).ok())
                    .flatten();
                match cached {
                    Some(pos) => out.push((index, inner.cache[pos].1.clone())),
                    None => {
                        let seg = &inner.segments[&loc.segment];
                        to_read.push((index, loc, seg.file.clone(), seg.path.clone(), seg.format));
                    }
                }
            }
        }
        let mut from_disk = Vec::with_capacity(to_read.len());
        for (index, loc, file, path, format) in to_read {
            let hl = format.record_header();
            let mut rec = vec![0u8; hl + loc.len as usize];
            file.read_exact_at(&mut rec, loc.offset).map_err(ioe(&path))?;
            match parse_record(&rec, 0, format) {
                Ok((i, _)) if i == index => {}
                Ok((i, _)) => {
                    return Err(WalError::Corrupt { path, offset: loc.offset, what: format!("index {i}, expected {index}") })
                }
                Err(what) => return Err(WalError::Corrupt { path, offset: loc.offset, what: format!("{what} at index {index}") }),
            }
            from_disk.push((index, Arc::new(rec.split_off(hl))));
        }
        // Disk reads are the older indexes; cached ones follow.
        from_disk.extend(out);
        Ok(from_disk)
    }

    /// Remove every entry with index `>= index`.
    pub fn truncate(&self, index: u64) -> Result<(), WalError> {
        let mut inner = self.lock();
        let Some(last) = inner.last() else { return Ok(()) };
        if index > last {
            return Ok(());
        }
        let cut = inner.locs.range(index..).next().map(|(_, l)| *l);
        let _ = inner.locs.split_off(&index);
        inner.cache_retain(|i| i < index);
        let Some(cut) = cut else { return Ok(()) };
        let new_last = inner.last().filter(|l| *l >= cut.segment);
        // Newest first, each removal durable before the next: a crash leaves a
        // prefix of the segments, never a gap.
        let later: Vec<u64> = inner.segments.range(cut.segment + 1..).map(|(k, _)| *k).collect();
        for k in later.into_iter().rev() {
            if let Some(s) = inner.segments.remove(&k) {
                std::fs::remove_file(&s.path).map_err(ioe(&s.path))?;
                disk::sync_dir(&self.dir).map_err(ioe(&self.dir))?;
            }
        }
        if let Some(s) = inner.segments.get_mut(&cut.segment) {
            s.file.set_len(cut.offset).map_err(ioe(&s.path))?;
            s.file.sync_all().map_err(ioe(&s.path))?;
            s.len = cut.offset;
            s.last = new_last;
        }
        disk::sync_dir(&self.dir).map_err(ioe(&self.dir))
    }

    /// Forget entries with index `<= index`; delete segments holding only those.
    pub fn purge(&self, index: u64) -> Result<(), WalError> {
        self.forget(index);
        self.delete_forgotten(index)
    }

    /// Forget entries with index `<= index` (they are no longer read); their files stay
    /// until [`Wal::delete_forgotten`].
    pub fn forget(&self, index: u64) {
        let mut inner = self.lock();
        inner.locs = inner.locs.split_off(&index.saturating_add(1));
        inner.cache_retain(|i| i > index);
    }

    /// Delete the segments whose records are all `<= index`, and empty ones other
    /// than the newest (appends go there); then sync the directory.
    pub fn delete_forgotten(&self, index: u64) -> Result<(), WalError> {
        let mut inner = self.lock();
        let newest = inner.segments.keys().next_back().copied();
        let dead: Vec<u64> = inner
            .segments
            .iter()
            .filter(|(k, s)| match s.last {
                Some(l) => l <= index && inner.locs.range(..=l).next().is_none(),
                None => Some(**k) != newest,
            })
            .map(|(k, _)| *k)
            .collect();
        if dead.is_empty() {
            return Ok(());
        }
        for k in dead {
            if let Some(s) = inner.segments.remove(&k) {
                std::fs::remove_file(&s.path).map_err(ioe(&s.path))?;
            }
        }
        disk::sync_dir(&self.dir).map_err(ioe(&self.dir))
    }

    /// Bytes of all segment files.
    pub fn size_on_disk(&self) -> u64 {
        self.lock().segments.values().map(|s| s.len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(range: std::ops::Range<u64>) -> Vec<(u64, Vec<u8>)> {
        range.map(|i| (i, format!("entry-{i}").into_bytes())).collect()
    }

    fn indexes(w: &Wal, from: u64, to: u64) -> Vec<u64> {
        w.read(from, to).unwrap().into_iter().map(|(i, _)| i).collect()
    }

    #[test]
    fn append_read_truncate_purge_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let w = Wal::open(dir.path()).unwrap();
        assert_eq!(w.bounds(), None);
        w.append(entries(1..6)).unwrap();
        w.append(entries(6..9)).unwrap();
        assert_eq!(w.bounds(), Some((1, 8)));
        assert_eq!(w.read(3, 5).unwrap()[0].1.as_slice(), b"entry-3");
        assert!(matches!(w.append(entries(5..6)), Err(WalError::Gap { got: 5, last: 8 })));
        w.truncate(6).unwrap();
        assert_eq!(indexes(&w, 0, 100), vec![1, 2, 3, 4, 5]);
        w.append(vec![(6, b"new-6".to_vec())]).unwrap();
        w.purge(2).unwrap();
        drop(w);

        let w = Wal::open(dir.path()).unwrap();
        // Purged entries may still be on disk (their segment holds live ones too); the
        // log store drops them by its recorded last_purged. Truncated ones are gone.
        assert_eq!(w.bounds(), Some((1, 6)));
        assert_eq!(w.read(6, 7).unwrap()[0].1.as_slice(), b"new-6");
        w.purge(6).unwrap();
        assert_eq!(w.bounds(), None);
        // After everything is purged, the log continues at any later index.
        w.append(entries(20..22)).unwrap();
        drop(w);
        let w = Wal::open(dir.path()).unwrap();
        assert_eq!(w.bounds(), Some((20, 21)));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "segments before the gap are deleted");
    }

    #[test]
    fn a_torn_last_append_is_cut_off_and_other_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let seg = segment_path(dir.path(), 1);
        let fresh = || {
            let _ = std::fs::remove_file(&seg);
            Wal::open(dir.path()).unwrap().append(entries(1..4)).unwrap();
            std::fs::read(&seg).unwrap()
        };
        let reopen = |bytes: &[u8]| {
            std::fs::write(&seg, bytes).unwrap();
            Wal::open(dir.path()).map(|w| w.bounds())
        };
        // The process died halfway through writing record 3 ...
        let full = fresh();
        assert_eq!(reopen(&full[..full.len() - 4]).unwrap(), Some((1, 2)));
        // ... and the log goes on from there.
        let w = Wal::open(dir.path()).unwrap();
        w.append(entries(3..5)).unwrap();
        assert_eq!(indexes(&w, 1, 10), vec![1, 2, 3, 4]);
        drop(w);
        // The file grew but the data never reached the disk.
        let full = fresh();
        let zeros = [full.clone(), vec![0u8; 100]].concat();
        assert_eq!(reopen(&zeros).unwrap(), Some((1, 3)));
        // The final record is garbled.
        let full = fresh();
        let mut last_bad = full.clone();
        *last_bad.last_mut().unwrap() ^= 0xff;
        assert_eq!(reopen(&last_bad).unwrap(), Some((1, 2)));
        // A garbled record with good ones after it is damage, not a torn append.
        let full = fresh();
        let mut first_bad = full.clone();
        first_bad[FILE_HEADER + 20 + 2] ^= 0xff;
        assert!(matches!(reopen(&first_bad), Err(WalError::Corrupt { offset, .. }) if offset == FILE_HEADER as u64));
        // So is any bad record in a segment that is not the last.
        let full = fresh();
        let mut tail_bad = full.clone();
        *tail_bad.last_mut().unwrap() ^= 0xff;
        std::fs::write(segment_path(dir.path(), 4), b"").unwrap();
        assert!(matches!(reopen(&tail_bad), Err(WalError::Corrupt { .. })));
    }

    #[test]
    fn segments_rotate_and_purge_deletes_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let w = Wal::open(dir.path()).unwrap();
        let big = vec![0u8; (SEGMENT_BYTES / 2) as usize + 1];
        for i in 1..=5 {
            w.append(vec![(i, big.clone())]).unwrap();
        }
        // Two records fill a segment: [1,2] [3,4] [5].
        let files = || std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files(), 3);
        w.purge(3).unwrap();
        assert_eq!(files(), 2, "only the segment with 1 and 2 is all purged");
        w.purge(4).unwrap();
        assert_eq!(files(), 1);
        assert_eq!(w.bounds(), Some((5, 5)));
        assert_eq!(w.read(0, 10).unwrap()[0].1.len(), big.len());
    }

    /// A format-1 record, as older builds wrote them.
    fn encode_v1(out: &mut Vec<u8>, index: u64, payload: &[u8]) {
        out.extend_from_slice(&index.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&v1_checksum(index, payload).to_le_bytes());
        out.extend_from_slice(payload);
    }

    /// A format-1 segment of `entries(range)` and the offset of each record.
    fn v1_segment(range: std::ops::Range<u64>) -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::new();
        let mut offsets = Vec::new();
        for (i, p) in entries(range) {
            offsets.push(out.len());
            encode_v1(&mut out, i, &p);
        }
        (out, offsets)
    }

    fn set_len_field(bytes: &mut [u8], record_offset: usize, len: u32) {
        bytes[record_offset + 8..record_offset + 12].copy_from_slice(&len.to_le_bytes());
    }

    /// Ten records, each appended (and so acknowledged) on its own; record 3's length
    /// then reads u32::MAX. That is damage, reported with the file and offset, not a
    /// torn tail that would silently drop records 3 to 10.
    #[test]
    fn a_damaged_length_is_corruption_not_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let seg = segment_path(dir.path(), 1);
        let w = Wal::open(dir.path()).unwrap();
        for i in 1..=10 {
            w.append(entries(i..i + 1)).unwrap();
        }
        let off3 = w.lock().locs[&3].offset as usize;
        drop(w);
        let good = std::fs::read(&seg).unwrap();
        let expect_corrupt_at = |bytes: &[u8], at: usize| {
            std::fs::write(&seg, bytes).unwrap();
            match Wal::open(dir.path()) {
                Err(e @ WalError::Corrupt { .. }) => {
                    let WalError::Corrupt { path, offset, .. } = &e else { unreachable!() };
                    assert_eq!((path, *offset), (&seg, at as u64), "{e}");
                    let msg = e.to_string();
                    assert!(msg.contains(&seg.display().to_string()) && msg.contains(&format!("offset {at}")), "{msg}");
                }
                Err(e) => panic!("expected Corrupt, got {e}"),
                Ok(w) => panic!("expected Corrupt, the log opened with {:?}", w.bounds()),
            }
        };
        let mut bad = good.clone();
        set_len_field(&mut bad, off3, u32::MAX);
        expect_corrupt_at(&bad, off3);
        // A wrong length that stays inside the file is caught the same way.
        let mut bad = good.clone();
        set_len_field(&mut bad, off3, 3);
        expect_corrupt_at(&bad, off3);
        // The same damage in a segment written by an older build (no header
        // checksum: the records after it show it is not a torn append).
        let (mut old, offsets) = v1_segment(1..11);
        set_len_field(&mut old, offsets[2], u32::MAX);
        expect_corrupt_at(&old, offsets[2]);
        // Intact, both formats open with all ten records.
        for bytes in [good, v1_segment(1..11).0] {
            std::fs::write(&seg, &bytes).unwrap();
            assert_eq!(indexes(&Wal::open(dir.path()).unwrap(), 0, 100), (1..=10).collect::<Vec<_>>());
        }
    }

    /// Data dirs of older builds: format-1 segments are read (torn tails cut as
    /// before), and new records go to a new segment in the current format.
    #[test]
    fn old_format_segments_are_read_and_appends_go_to_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (old, offsets) = v1_segment(1..4);
        // Died while appending record 3.
        std::fs::write(segment_path(dir.path(), 1), &old[..old.len() - 3]).unwrap();
        let w = Wal::open(dir.path()).unwrap();
        assert_eq!(w.bounds(), Some((1, 2)));
        assert_eq!(std::fs::metadata(segment_path(dir.path(), 1)).unwrap().len(), offsets[2] as u64);
        w.append(entries(3..6)).unwrap();
        assert!(std::fs::read(segment_path(dir.path(), 3)).unwrap().starts_with(&MAGIC));
        drop(w);
        let w = Wal::open(dir.path()).unwrap();
        let got = w.read(0, 100).unwrap();
        assert_eq!(got.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
        assert_eq!(got[0].1.as_slice(), b"entry-1");
        assert_eq!(got[4].1.as_slice(), b"entry-5");
    }

    /// The process died while creating a segment: an empty file or part of its
    /// header. It is cut, and the log goes on. A header of an unknown format version is
    /// an error, never a guess.
    #[test]
    fn interrupted_segment_creation_is_recovered_and_unknown_versions_are_errors() {
        for partial in [0usize, 5, 12, FILE_HEADER - 1] {
            let dir = tempfile::tempdir().unwrap();
            Wal::open(dir.path()).unwrap().append(entries(1..4)).unwrap();
            std::fs::write(segment_path(dir.path(), 4), &file_header(Some(3))[..partial]).unwrap();
            let w = Wal::open(dir.path()).unwrap();
            assert_eq!(w.bounds(), Some((1, 3)), "partial header of {partial} bytes");
            w.append(entries(4..6)).unwrap();
            drop(w);
            assert_eq!(indexes(&Wal::open(dir.path()).unwrap(), 0, 100), vec![1, 2, 3, 4, 5]);
        }
        let dir = tempfile::tempdir().unwrap();
        let mut header = file_header(None);
        header[8..12].copy_from_slice(&3u32.to_le_bytes());
        let crc = crc32fast::hash(&header[..20]);
        header[20..].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(segment_path(dir.path(), 1), header).unwrap();
        let err = Wal::open(dir.path()).err().expect("an unknown version is an error");
        assert!(matches!(err, WalError::Corrupt { offset: 8, .. }) && err.to_string().contains("version 3"), "{err}");
    }

    /// Segments record which index they continue from, so a segment that was lost or
    /// emptied is noticed; segments the store purged may be gone.
    #[test]
    fn a_lost_or_emptied_segment_is_noticed_unless_it_was_purged() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path()).unwrap();
        w.segment_bytes = 100;
        for i in 1..=12 {
            w.append(entries(i..i + 1)).unwrap();
        }
        let firsts: Vec<u64> = w.lock().segments.keys().copied().collect();
        drop(w);
        assert!(firsts.len() >= 4, "{firsts:?}");
        let path = |k: usize| segment_path(dir.path(), firsts[k]);
        let backup: Vec<Vec<u8>> = (0..firsts.len()).map(|k| std::fs::read(path(k)).unwrap()).collect();
        let restore = || (0..firsts.len()).for_each(|k| std::fs::write(path(k), &backup[k]).unwrap());
        let open = |purged| Wal::open_with(dir.path(), DiskAlarm::standalone(dir.path()), purged);

        std::fs::remove_file(path(1)).unwrap();
        assert!(matches!(open(None), Err(WalError::Corrupt { offset: 12, .. })), "a middle segment is gone");
        restore();
        std::fs::write(path(1), b"").unwrap();
        assert!(matches!(open(None), Err(WalError::Corrupt { .. })), "a middle segment is empty");
        restore();
        std::fs::remove_file(path(0)).unwrap();
        assert!(matches!(open(None), Err(WalError::Corrupt { .. })), "the first segment is gone");
        // ... unless the store purged its entries.
        let w = open(Some(firsts[1] - 1)).unwrap();
        assert_eq!(w.bounds(), Some((firsts[1], 12)));
        drop(w);
        restore();
        assert_eq!(indexes(&open(None).unwrap(), 0, 100), (1..=12).collect::<Vec<_>>());
    }

    mod props {
        //! Property tests of the reader: whatever happens to the bytes of the
        //! segments, [`Wal::open`] does not panic, and either reports damage naming a
        //! file and an offset, or returns exactly the records before the first
        //! damaged byte — and then only if no record after the damage survived (that
        //! would make it damage, not a torn append). Runs `PROPTEST_CASES` cases (default 256;
        //! e.g. `PROPTEST_CASES=20000 cargo test -p aof-node --lib wal::tests::props`).
        use super::*;
        use proptest::prelude::*;

        fn cases(default: u32) -> ProptestConfig {
            let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
            ProptestConfig::with_cases(cases)
        }

        #[derive(Clone, Debug)]
        enum Damage {
            Flip { at: usize, mask: u8 },
            PutU32 { at: usize, value: u32 },
            Truncate { at: usize },
            Extend { bytes: Vec<u8> },
            Zero { at: usize, n: usize },
        }

        fn damage() -> impl Strategy<Value = Damage> {
            prop_oneof![
                (any::<usize>(), 1..=255u8).prop_map(|(at, mask)| Damage::Flip { at, mask }),
                (any::<usize>(), prop_oneof![Just(u32::MAX), Just(0u32), 1..100u32, any::<u32>()])
                    .prop_map(|(at, value)| Damage::PutU32 { at, value }),
                any::<usize>().prop_map(|at| Damage::Truncate { at }),
                proptest::collection::vec(any::<u8>(), 1..64).prop_map(|bytes| Damage::Extend { bytes }),
                proptest::collection::vec(Just(0u8), 1..64).prop_map(|bytes| Damage::Extend { bytes }),
                (any::<usize>(), 1..64usize).prop_map(|(at, n)| Damage::Zero { at, n }),
            ]
        }

        fn apply(bytes: &mut Vec<u8>, d: &Damage) {
            let pos = |at: usize, len: usize| if len == 0 { 0 } else { at % len };
            match d {
                Damage::Flip { at, mask } => {
                    if !bytes.is_empty() {
                        let p = pos(*at, bytes.len());
                        bytes[p] ^= mask;
                    }
                }
                Damage::PutU32 { at, value } => {
                    if bytes.len() >= 4 {
                        let p = pos(*at, bytes.len() - 3);
                        bytes[p..p + 4].copy_from_slice(&value.to_le_bytes());
                    }
                }
                Damage::Truncate { at } => {
                    let p = pos(*at, bytes.len() + 1);
                    bytes.truncate(p);
                }
                Damage::Extend { bytes: more } => bytes.extend_from_slice(more),
                Damage::Zero { at, n } => {
                    let p = pos(*at, bytes.len() + 1);
                    let end = (p + n).min(bytes.len());
                    bytes[p..end].fill(0);
                }
            }
        }

        /// Where each appended record is: (segment position in name order, offset, size).
        struct Written {
            dir: tempfile::TempDir,
            payloads: Vec<Vec<u8>>,
            records: Vec<(usize, usize, usize)>,
            segments: Vec<(PathBuf, Vec<u8>)>,
        }

        fn write(payloads: Vec<Vec<u8>>, batch: usize, segment_bytes: u64, old_format: bool) -> Written {
            let dir = tempfile::tempdir().unwrap();
            let mut records = Vec::new();
            if old_format {
                let mut out = Vec::new();
                for (k, p) in payloads.iter().enumerate() {
                    records.push((0, out.len(), 16 + p.len()));
                    encode_v1(&mut out, k as u64 + 1, p);
                }
                std::fs::write(segment_path(dir.path(), 1), &out).unwrap();
            } else {
                let mut w = Wal::open(dir.path()).unwrap();
                w.segment_bytes = segment_bytes;
                let all: Vec<(u64, Vec<u8>)> = payloads.iter().enumerate().map(|(k, p)| (k as u64 + 1, p.clone())).collect();
                for chunk in all.chunks(batch) {
                    w.append(chunk.to_vec()).unwrap();
                }
                let inner = w.lock();
                let order: Vec<u64> = inner.segments.keys().copied().collect();
                for loc in inner.locs.values() {
                    let seg = order.iter().position(|k| *k == loc.segment).unwrap();
                    records.push((seg, loc.offset as usize, 20 + loc.len as usize));
                }
            }
            let mut names: Vec<PathBuf> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
            names.sort();
            let segments = names.into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect();
            Written { dir, payloads, records, segments }
        }

        /// Damage the segments, reopen, and check the outcome.
        fn check(w: &Written, damages: &[(usize, Damage)], must_open: bool) -> Result<(), TestCaseError> {
            let mut bytes: Vec<Vec<u8>> = w.segments.iter().map(|(_, b)| b.clone()).collect();
            for (which, d) in damages {
                let k = which % bytes.len();
                apply(&mut bytes[k], d);
            }
            for ((path, _), b) in w.segments.iter().zip(&bytes) {
                std::fs::write(path, b).unwrap();
            }
            // The first damaged byte: (segment, offset).
            let first_damage = w.segments.iter().zip(&bytes).enumerate().find_map(|(k, ((_, before), after))| {
                let same = before.iter().zip(after).take_while(|(a, b)| a == b).count();
                (same < before.len().max(after.len())).then_some((k, same))
            });
            let intact = w
                .records
                .iter()
                .take_while(|(seg, off, size)| first_damage.is_none_or(|(ds, d)| *seg < ds || (*seg == ds && off + size <= d)))
                .count();
            // A record after the damage whose bytes are all still there.
            let survivor_after_damage = w.records[intact..].iter().position(|(seg, off, size)| {
                let (before, after) = (&w.segments[*seg].1, &bytes[*seg]);
                after.get(*off..off + size).is_some_and(|b| b == &before[*off..off + size])
            });
            match Wal::open(w.dir.path()) {
                Ok(wal) => {
                    let got = match wal.bounds() {
                        None => Vec::new(),
                        Some((a, b)) => wal.read(a, b + 1).map_err(|e| TestCaseError::fail(format!("read after open: {e}")))?,
                    };
                    prop_assert!(got.len() <= intact, "{} records returned, only {intact} are before the damage at {first_damage:?}", got.len());
                    // Nothing intact is dropped: not the records before the damage, and
                    // if a record after it survived, the damage is not a torn append.
                    prop_assert_eq!(got.len(), intact, "records before the damage at {:?} were dropped", first_damage);
                    prop_assert!(
                        survivor_after_damage.is_none(),
                        "record {} survived the damage at {first_damage:?} but was dropped silently",
                        intact + survivor_after_damage.unwrap_or(0) + 1
                    );
                    for (k, (index, payload)) in got.iter().enumerate() {
                        prop_assert_eq!(*index, k as u64 + 1);
                        prop_assert_eq!(payload.as_slice(), w.payloads[k].as_slice());
                    }
                }
                Err(WalError::Corrupt { path, offset, what }) => {
                    prop_assert!(!must_open, "a torn tail reported as damage: {} at {offset}: {what}", path.display());
                    let Some((ds, d)) = first_damage else {
                        return Err(TestCaseError::fail(format!("undamaged log reported as corrupt: {what}")));
                    };
                    let k = w.segments.iter().position(|(p, _)| *p == path);
                    prop_assert!(k.is_some_and(|k| k >= ds), "damage in segment {ds}, reported in {}", path.display());
                    if k == Some(ds) {
                        prop_assert!(offset as usize <= d, "reported at {offset}, damage starts at {d}: {what}");
                    }
                    prop_assert!(offset as usize <= bytes[k.unwrap()].len().max(FILE_HEADER));
                }
                Err(e) => return Err(TestCaseError::fail(format!("unexpected error: {e}"))),
            }
            Ok(())
        }

        fn log() -> impl Strategy<Value = (Vec<Vec<u8>>, usize, u64, bool)> {
            (
                proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..48), 1..24),
                1..4usize,
                prop_oneof![Just(SEGMENT_BYTES), 60..400u64],
                proptest::bool::weighted(0.2),
            )
        }

        proptest! {
            #![proptest_config(cases(256))]

            #[test]
            fn damaged_segments_give_an_error_or_a_prefix_before_the_damage(
                (payloads, batch, segment_bytes, old) in log(),
                damages in proptest::collection::vec((any::<usize>(), damage()), 1..4),
            ) {
                let w = write(payloads, batch, segment_bytes, old);
                check(&w, &damages, false)?;
            }
        }

        proptest! {
            #![proptest_config(cases(128))]

            /// What a crash leaves (the end of the last segment cut anywhere, or
            /// followed by zeros or garbage that holds no record) always opens.
            #[test]
            fn torn_tails_always_open(
                (payloads, batch, segment_bytes, old) in log(),
                cut in any::<usize>(),
                tail in prop_oneof![proptest::collection::vec(Just(0u8), 0..80), proptest::collection::vec(any::<u8>(), 0..80)],
            ) {
                let w = write(payloads, batch, segment_bytes, old);
                let last = w.segments.len() - 1;
                let damages = [(last, Damage::Truncate { at: cut }), (last, Damage::Extend { bytes: tail })];
                check(&w, &damages, true)?;
            }
        }
    }
}
