//! The unsynced state of one regular file: the bytes written and the size
//! changes made since its last fsync, kept in memory over the backing file.
//!
//! The backing file holds the durable contents. The overlay holds:
//! - `extents`: written byte ranges, non-overlapping and non-adjacent (a write
//!   next to or over an extent is merged into it);
//! - `len`: the size the file has now;
//! - `floor`: the smallest size the file was cut to since the last sync. Backing
//!   bytes at or after `floor` were cut away and read as zeros unless written again.
//!
//! A read shows extents over backing bytes below `floor`, zeros elsewhere.
//! `sync` applies the overlay to the backing file and fsyncs it; dropping the
//! overlay without `sync` is a power loss for this file.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::time::SystemTime;

use rustix::io::{Errno, Result};

#[derive(Debug)]
pub struct Overlay {
    /// Length of the backing file (as last synced or as found).
    base_len: u64,
    /// Smallest length since the last sync (`<= len`, `<= base_len`).
    floor: u64,
    len: u64,
    extents: BTreeMap<u64, Vec<u8>>,
    /// Time of the last unsynced change, shown by getattr until synced.
    mtime: Option<SystemTime>,
}

impl Overlay {
    /// A clean overlay over a backing file of `base_len` bytes.
    pub fn new(base_len: u64) -> Self {
        Overlay {
            base_len,
            floor: base_len,
            len: base_len,
            extents: BTreeMap::new(),
            mtime: None,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn mtime(&self) -> Option<SystemTime> {
        self.mtime
    }

    /// An explicit mtime was set on the backing file: show that one.
    pub fn forget_mtime(&mut self) {
        self.mtime = None;
    }

    /// Whether a power loss now would change this file.
    pub fn is_dirty(&self) -> bool {
        !self.extents.is_empty() || self.len != self.base_len || self.floor != self.base_len
    }

    /// Bytes written and not synced.
    pub fn dirty_bytes(&self) -> u64 {
        self.extents.values().map(|v| v.len() as u64).sum()
    }

    pub fn write(&mut self, off: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = off + data.len() as u64;
        // The extent that overlaps or touches `off` from the left grows in place
        // (an append to the last extent is amortised O(len)).
        let left = self
            .extents
            .range(..=off)
            .next_back()
            .map(|(&s, v)| (s, s + v.len() as u64));
        let (start, mut buf) = match left {
            Some((s, e)) if e >= off => {
                let mut buf = self.extents.remove(&s).unwrap_or_default();
                if end > e {
                    buf.resize((end - s) as usize, 0);
                }
                buf[(off - s) as usize..(end - s) as usize].copy_from_slice(data);
                (s, buf)
            }
            _ => (off, data.to_vec()),
        };
        // Absorb the extents that the new one now overlaps or touches on the right.
        loop {
            let buf_end = start + buf.len() as u64;
            let next = self
                .extents
                .range(start + 1..=buf_end)
                .next()
                .map(|(&s, _)| s);
            let Some(s) = next else { break };
            let v = self.extents.remove(&s).unwrap_or_default();
            let v_end = s + v.len() as u64;
            if v_end > buf_end {
                buf.extend_from_slice(&v[(buf_end - s) as usize..]);
            }
        }
        self.extents.insert(start, buf);
        self.len = self.len.max(end);
        self.mtime = Some(SystemTime::now());
    }

    pub fn truncate(&mut self, new_len: u64) {
        if new_len < self.len {
            // Drop extents at or after new_len, cut the one across it.
            let _ = self.extents.split_off(&new_len);
            if let Some((&s, v)) = self.extents.iter_mut().next_back() {
                if s + v.len() as u64 > new_len {
                    v.truncate((new_len - s) as usize);
                }
            }
            self.floor = self.floor.min(new_len);
        }
        self.len = new_len;
        self.mtime = Some(SystemTime::now());
    }

    /// Up to `size` bytes at `off` as the file looks now.
    pub fn read(&self, backing: impl AsFd, off: u64, size: u32) -> Result<Vec<u8>> {
        if off >= self.len {
            return Ok(Vec::new());
        }
        let end = self.len.min(off + size as u64);
        let mut buf = vec![0u8; (end - off) as usize];
        let backing_end = end.min(self.floor);
        if off < backing_end {
            read_full_at(backing, &mut buf[..(backing_end - off) as usize], off)?;
        }
        let first = self
            .extents
            .range(..=off)
            .next_back()
            .map(|(&s, _)| s)
            .unwrap_or(off);
        for (&s, v) in self.extents.range(first..end) {
            let (from, to) = (s.max(off), (s + v.len() as u64).min(end));
            if from < to {
                buf[(from - off) as usize..(to - off) as usize]
                    .copy_from_slice(&v[(from - s) as usize..(to - s) as usize]);
            }
        }
        Ok(buf)
    }

    /// Applies the overlay to the backing file and fsyncs it (`fdatasync` when
    /// `datasync`). Returns the bytes written. On error the overlay is kept, so
    /// a later sync applies it again.
    pub fn sync(&mut self, backing: impl AsFd, datasync: bool) -> Result<u64> {
        let fd = backing.as_fd();
        let mut size = self.base_len;
        if self.floor < self.base_len {
            rustix::fs::ftruncate(fd, self.floor)?;
            size = self.floor;
        }
        let mut written = 0;
        for (&s, v) in &self.extents {
            write_full_at(fd, v, s)?;
            written += v.len() as u64;
            size = size.max(s + v.len() as u64);
        }
        if size != self.len {
            rustix::fs::ftruncate(fd, self.len)?;
        }
        if datasync {
            rustix::fs::fdatasync(fd)?;
        } else {
            rustix::fs::fsync(fd)?;
        }
        *self = Overlay::new(self.len);
        Ok(written)
    }
}

/// Reads into all of `buf` at `off`; bytes past the backing file's end stay zero.
fn read_full_at(fd: impl AsFd, mut buf: &mut [u8], mut off: u64) -> Result<()> {
    while !buf.is_empty() {
        match rustix::io::pread(&fd, &mut *buf, off) {
            Ok(0) => break,
            Ok(n) => {
                buf = &mut buf[n..];
                off += n as u64;
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn write_full_at(fd: impl AsFd, mut buf: &[u8], mut off: u64) -> Result<()> {
    while !buf.is_empty() {
        match rustix::io::pwrite(&fd, buf, off) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => {
                buf = &buf[n..];
                off += n as u64;
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::unix::fs::FileExt;

    fn backing(content: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, content).unwrap();
        f
    }

    fn read_all(o: &Overlay, f: &File) -> Vec<u8> {
        o.read(f, 0, u32::MAX).unwrap()
    }

    fn on_disk(f: &File) -> Vec<u8> {
        let mut v = vec![0; f.metadata().unwrap().len() as usize];
        f.read_exact_at(&mut v, 0).unwrap();
        v
    }

    fn extents(o: &Overlay) -> Vec<(u64, usize)> {
        o.extents.iter().map(|(&s, v)| (s, v.len())).collect()
    }

    #[test]
    fn writes_merge_into_non_overlapping_extents() {
        let f = backing(b"");
        let mut o = Overlay::new(0);
        o.write(10, b"bbbb"); // 10..14
        o.write(20, b"cc"); // 20..22
        assert_eq!(extents(&o), vec![(10, 4), (20, 2)]);
        o.write(14, b"x"); // touches the first on the right
        assert_eq!(extents(&o), vec![(10, 5), (20, 2)]);
        o.write(8, b"aa"); // touches the first on the left
        assert_eq!(extents(&o), vec![(8, 7), (20, 2)]);
        o.write(12, b"YYYYYYYYY"); // 12..21: bridges both
        assert_eq!(extents(&o), vec![(8, 14)]);
        o.write(9, b"z"); // inside
        assert_eq!(extents(&o), vec![(8, 14)]);
        let mut want = vec![0u8; 22];
        want[8..10].copy_from_slice(b"az");
        want[10..12].copy_from_slice(b"bb");
        want[12..21].copy_from_slice(b"YYYYYYYYY");
        want[21] = b'c';
        assert_eq!(read_all(&o, &f), want);
        assert_eq!(o.dirty_bytes(), 14);
    }

    #[test]
    fn appends_grow_one_extent() {
        let f = backing(b"head");
        let mut o = Overlay::new(4);
        for i in 0..100u8 {
            o.write(o.len(), &[i]);
        }
        assert_eq!(extents(&o), vec![(4, 100)]);
        let got = read_all(&o, &f);
        assert_eq!(&got[..4], b"head");
        assert_eq!(got[4..], (0..100u8).collect::<Vec<_>>()[..]);
    }

    #[test]
    fn reads_show_backing_below_the_cut_and_zeros_after_it() {
        let f = backing(b"0123456789");
        let mut o = Overlay::new(10);
        assert!(!o.is_dirty());
        o.truncate(4);
        assert!(o.is_dirty());
        assert_eq!(read_all(&o, &f), b"0123");
        o.truncate(8); // extending after a cut shows zeros, not the old bytes
        assert_eq!(read_all(&o, &f), b"0123\0\0\0\0");
        o.write(6, b"ab");
        assert_eq!(read_all(&o, &f), b"0123\0\0ab");
        assert_eq!(o.read(&f, 3, 2).unwrap(), b"3\0");
        assert_eq!(o.read(&f, 8, 10).unwrap(), b"");
        o.write(12, b"Z"); // a hole past the end reads as zeros
        assert_eq!(read_all(&o, &f), b"0123\0\0ab\0\0\0\0Z");
        assert_eq!(
            on_disk(&f),
            b"0123456789",
            "nothing reaches the backing file before sync"
        );
    }

    #[test]
    fn truncate_cuts_extents() {
        let f = backing(b"");
        let mut o = Overlay::new(0);
        o.write(0, b"aaaa");
        o.write(10, b"bbbb");
        o.truncate(2);
        assert_eq!(extents(&o), vec![(0, 2)]);
        assert_eq!(read_all(&o, &f), b"aa");
        o.truncate(0);
        assert_eq!(extents(&o), vec![]);
        assert!(!o.is_dirty(), "back to the backing state: nothing to lose");
    }

    #[test]
    fn sync_applies_and_drop_loses() {
        let f = backing(b"0123456789");
        let mut o = Overlay::new(10);
        o.truncate(3);
        o.write(5, b"xy");
        assert_eq!(o.sync(&f, true).unwrap(), 2);
        assert_eq!(on_disk(&f), b"012\0\0xy");
        assert!(!o.is_dirty());
        o.write(0, b"lost");
        o.truncate(1);
        drop(o); // power loss
        assert_eq!(on_disk(&f), b"012\0\0xy");
    }

    /// Random writes, truncations, reads and syncs against a plain byte-vector
    /// model: reads always match the model, and the backing file always equals
    /// the model as of the last sync.
    #[test]
    fn matches_a_model_under_random_operations() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for round in 0..50 {
            let init: Vec<u8> = (0..rnd(64)).map(|i| i as u8 ^ 0x55).collect();
            let f = backing(&init);
            let mut o = Overlay::new(init.len() as u64);
            let (mut model, mut synced) = (init.clone(), init.clone());
            for _ in 0..200 {
                match rnd(10) {
                    0..=4 => {
                        let off = rnd(96);
                        let data: Vec<u8> = (0..1 + rnd(24)).map(|_| rnd(256) as u8).collect();
                        o.write(off, &data);
                        let end = off as usize + data.len();
                        if model.len() < end {
                            model.resize(end, 0);
                        }
                        model[off as usize..end].copy_from_slice(&data);
                    }
                    5 | 6 => {
                        let len = rnd(100);
                        o.truncate(len);
                        model.resize(len as usize, 0);
                    }
                    7 | 8 => {
                        let (off, size) = (rnd(110), rnd(40) as u32);
                        let got = o.read(&f, off, size).unwrap();
                        let from = (off as usize).min(model.len());
                        let to = (off as usize + size as usize).min(model.len());
                        assert_eq!(got, model[from..to], "round {round}: read {off}+{size}");
                    }
                    _ => {
                        o.sync(&f, rnd(2) == 0).unwrap();
                        synced = model.clone();
                    }
                }
                assert_eq!(o.len(), model.len() as u64);
                assert_eq!(
                    on_disk(&f),
                    synced,
                    "round {round}: the backing file is the last synced state"
                );
            }
        }
    }
}
