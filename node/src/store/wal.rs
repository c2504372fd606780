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
//! the first one being its name:
//!
//! ```text
//! [index: u64 LE][len: u32 LE][crc32 of index bytes + payload: u32 LE][payload: len bytes]
//! ```
//!
//! The payload is the entry encoded with [`crate::codec`] (so it carries the format
//! version like every other record).
//!
//! ### To ensure correctness
//!
//! - [`Wal::append`] writes its records at the end of the current segment and calls
//!   `fdatasync` before it returns; only then are the entries published to readers.
//!   A new segment file is created (and the directory synced) when the current one
//!   is full or when the appended index does not follow the last one (after a purge
//!   of everything, or on the first append).
//! - [`Wal::truncate`] cuts the segment holding the index at that record's offset,
//!   deletes all later segments, and syncs.
//! - [`Wal::purge`] forgets entries up to an index and deletes segments all of whose
//!   entries are at or below it; [`Wal::forget`] and [`Wal::delete_forgotten`] are its
//!   two halves, so a caller can make the state that replaces those entries (the
//!   snapshot) durable in between.
//! - [`Wal::open`] reads every segment. A short or checksum-failing record at the end
//!   of the last segment is a torn append (the process died before `fdatasync`
//!   returned, so it was never acknowledged) and is cut off; a bad record anywhere
//!   else is an error. Segments after a gap replace what came before (a gap only
//!   appears where everything earlier was purged).
//! - Appends, truncates and purges come from openraft's `&mut self` log-storage
//!   calls, one at a time; readers (replication) only see published entries.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A segment is closed once it grows past this size.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Recent entries kept decoded in memory for replication (count and encoded bytes).
const CACHE_ENTRIES: usize = 1024;
const CACHE_BYTES: usize = 32 << 20;
const HEADER: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("write-ahead log {path}: bad record at offset {offset}: {what}; the log is damaged (restore the data dir from a backup, or start this node with an empty data dir so it catches up from the cluster)")]
    Corrupt { path: PathBuf, offset: u64, what: String },
    #[error("write-ahead log: append of index {got} does not follow the last index {last}")]
    Gap { got: u64, last: u64 },
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
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.wal"))
}

fn checksum(index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn encode_record(out: &mut Vec<u8>, index: u64, payload: &[u8]) {
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&checksum(index, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(ioe(dir))
}

impl Wal {
    /// Open (or create) the log in `dir`, recovering from a torn last append.
    pub fn open(dir: &Path) -> Result<Wal, WalError> {
        std::fs::create_dir_all(dir).map_err(ioe(dir))?;
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
            if let Some(prev) = inner.last().filter(|prev| *prev >= first) {
                return Err(WalError::Corrupt { path, offset: 0, what: format!("segment starts at index {first}, at or before the previous segment's last index {prev}") });
            }
            let mut offset = 0usize;
            let mut expected = first;
            while offset < data.len() {
                let bad = |what: String| WalError::Corrupt { path: path.clone(), offset: offset as u64, what };
                let header = data.get(offset..offset + HEADER).map(|h| {
                    let index = u64::from_le_bytes(h[0..8].try_into().expect("8 bytes"));
                    let len = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
                    let crc = u32::from_le_bytes(h[12..16].try_into().expect("4 bytes"));
                    (index, len, crc)
                });
                let end = header.map(|(_, len, _)| offset + HEADER + len as usize);
                let payload = end.and_then(|end| data.get(offset + HEADER..end));
                let valid = match (header, payload) {
                    (Some((index, _, crc)), Some(p)) => checksum(index, p) == crc,
                    _ => false,
                };
                if valid {
                    let (index, len, _) = header.expect("valid record has a header");
                    if index != expected {
                        return Err(bad(format!("index {index}, expected {expected}")));
                    }
                    inner.locs.insert(index, Loc { segment: first, offset: offset as u64, len });
                    offset += HEADER + len as usize;
                    expected += 1;
                    continue;
                }
                // A torn append: only at the end of the last segment, and only as an
                // incomplete record, a bad final record, or a zero-filled tail.
                let torn = last_segment
                    && (payload.is_none() || end == Some(data.len()) || data[offset..].iter().all(|b| *b == 0));
                if !torn {
                    return Err(bad("checksum mismatch".into()));
                }
                tracing::warn!(path = %path.display(), offset, "cutting off a torn record at the end of the write-ahead log (an append that was never acknowledged)");
                file.set_len(offset as u64).map_err(ioe(&path))?;
                file.sync_all().map_err(ioe(&path))?;
                data.truncate(offset);
            }
            let last = (expected > first).then(|| expected - 1);
            inner.segments.insert(first, Segment { path, file: Arc::new(file), len: data.len() as u64, last });
        }
        Ok(Wal { dir: dir.to_path_buf(), inner: Mutex::new(inner) })
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
    /// Blocking (file IO): call it from a blocking context.
    pub fn append(&self, entries: Vec<(u64, Vec<u8>)>) -> Result<(), WalError> {
        let Some(&(start, _)) = entries.first() else { return Ok(()) };
        let (segment, file, path, base) = {
            let mut inner = self.lock();
            let last = inner.last();
            let follows = last.is_some_and(|l| l + 1 == start);
            if let Some(l) = last {
                if start <= l {
                    return Err(WalError::Gap { got: start, last: l });
                }
            }
            let current = inner.segments.iter().next_back().map(|(k, s)| (*k, s.len));
            let rotate = !follows || current.is_none_or(|(_, len)| len >= SEGMENT_BYTES);
            if rotate {
                let path = segment_path(&self.dir, start);
                let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).map_err(ioe(&path))?;
                sync_dir(&self.dir)?;
                inner.segments.insert(start, Segment { path, file: Arc::new(file), len: 0, last: None });
            }
            let (k, s) = inner.segments.iter().next_back().expect("a current segment");
            (*k, s.file.clone(), s.path.clone(), s.len)
        };
        let mut buf = Vec::with_capacity(entries.iter().map(|(_, p)| HEADER + p.len()).sum());
        let mut locs = Vec::with_capacity(entries.len());
        for (n, (index, payload)) in entries.iter().enumerate() {
            if *index != start + n as u64 {
                return Err(WalError::Gap { got: *index, last: start + n as u64 - 1 });
            }
            locs.push(Loc { segment, offset: base + buf.len() as u64, len: payload.len() as u32 });
            encode_record(&mut buf, *index, payload);
        }
        file.write_all_at(&buf, base).map_err(ioe(&path))?;
        file.sync_data().map_err(ioe(&path))?;
        let mut inner = self.lock();
        if let Some(s) = inner.segments.get_mut(&segment) {
            s.len = base + buf.len() as u64;
            s.last = Some(start + locs.len() as u64 - 1);
        }
        for (n, loc) in locs.into_iter().enumerate() {
            inner.locs.insert(start + n as u64, loc);
        }
        for (index, payload) in entries {
            inner.cache_push(index, Arc::new(payload));
        }
        Ok(())
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
                        to_read.push((index, loc, seg.file.clone(), seg.path.clone()));
                    }
                }
            }
        }
        let mut from_disk = Vec::with_capacity(to_read.len());
        for (index, loc, file, path) in to_read {
            let mut rec = vec![0u8; HEADER + loc.len as usize];
            file.read_exact_at(&mut rec, loc.offset).map_err(ioe(&path))?;
            let crc = u32::from_le_bytes(rec[12..16].try_into().expect("4 bytes"));
            let payload = rec.split_off(HEADER);
            if checksum(index, &payload) != crc {
                return Err(WalError::Corrupt { path, offset: loc.offset, what: format!("checksum mismatch at index {index}") });
            }
            from_disk.push((index, Arc::new(payload)));
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
        let later: Vec<u64> = inner.segments.range(cut.segment + 1..).map(|(k, _)| *k).collect();
        for k in later {
            if let Some(s) = inner.segments.remove(&k) {
                std::fs::remove_file(&s.path).map_err(ioe(&s.path))?;
            }
        }
        if let Some(s) = inner.segments.get_mut(&cut.segment) {
            s.file.set_len(cut.offset).map_err(ioe(&s.path))?;
            s.file.sync_all().map_err(ioe(&s.path))?;
            s.len = cut.offset;
            s.last = new_last;
        }
        sync_dir(&self.dir)
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
    /// than the newest (appends go there).
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
        for k in dead {
            if let Some(s) = inner.segments.remove(&k) {
                std::fs::remove_file(&s.path).map_err(ioe(&s.path))?;
            }
        }
        Ok(())
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
        first_bad[HEADER + 2] ^= 0xff;
        assert!(matches!(reopen(&first_bad), Err(WalError::Corrupt { offset: 0, .. })));
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
}
