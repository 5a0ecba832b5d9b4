//! The durable event journal: NDJSON segment files under `<state_dir>/events/`, each named by
//! the sequence number of its first event (`00000000000000000001.ndjson`), appended and synced
//! (`fdatasync`) before an event is acknowledged, with retention by count and bytes (whole
//! segments, oldest first). A writer killed mid-line leaves a partial last line, which `open`
//! cuts off. The newest events are also kept in memory, so followers and sinks that keep up never
//! read the disk. Blocking I/O: callers run it on a thread of their own or the blocking pool.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

/// Events kept in memory for readers that keep up.
const TAIL_EVENTS: usize = 4096;
/// Segments a retention limit is split into (one is dropped at a time).
const SEGMENTS_PER_LIMIT: u64 = 8;

/// Errors of the journal.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JournalError {
    #[error("event journal {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("no event journal: {0}")]
    Unavailable(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Retention: whichever limit is reached first drops the oldest segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retention {
    pub max_events: u64,
    pub max_bytes: u64,
}

#[derive(Debug)]
struct Segment {
    first: u64,
    path: PathBuf,
    bytes: u64,
}

/// The journal (one writer; readers take it briefly).
#[derive(Debug)]
pub(crate) struct Journal {
    dir: PathBuf,
    retention: Retention,
    segments: VecDeque<Segment>,
    file: Option<File>,
    next_seq: u64,
    tail: VecDeque<(u64, Bytes)>,
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.ndjson")
}

/// The sequence number an event line starts with (`{"seq":N,`).
pub(crate) fn seq_of(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

impl Journal {
    /// Opens (creating) the journal in `dir`: segments listed, a partial last line cut off.
    pub(crate) fn open(dir: &Path, retention: Retention) -> Result<Self, JournalError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut segments: Vec<Segment> = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let name = entry.file_name();
            let Some(first) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".ndjson"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
            segments.push(Segment {
                first,
                path: entry.path(),
                bytes,
            });
        }
        segments.sort_by_key(|s| s.first);
        let mut j = Journal {
            dir: dir.to_path_buf(),
            retention,
            segments: segments.into(),
            file: None,
            next_seq: 1,
            tail: VecDeque::new(),
        };
        j.recover_last()?;
        Ok(j)
    }

    /// Cuts a partial last line off the newest segment and finds the next sequence number.
    fn recover_last(&mut self) -> Result<(), JournalError> {
        let Some(last) = self.segments.back_mut() else {
            return Ok(());
        };
        let mut data = Vec::new();
        File::open(&last.path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(io_err(&last.path))?;
        let keep = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if keep < data.len() {
            tracing::warn!(file = %last.path.display(), cut = data.len() - keep, "event journal: a partial last line (a killed writer) is cut off");
            let f = OpenOptions::new()
                .write(true)
                .open(&last.path)
                .map_err(io_err(&last.path))?;
            f.set_len(keep as u64).map_err(io_err(&last.path))?;
            f.sync_data().map_err(io_err(&last.path))?;
            last.bytes = keep as u64;
        }
        let lines = data[..keep]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty());
        let last_seq = lines.filter_map(seq_of).next_back();
        self.next_seq = match last_seq {
            Some(s) => s + 1,
            None => last.first,
        };
        Ok(())
    }

    /// The sequence number the next event gets.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The oldest sequence number still kept (`next_seq` when none is).
    pub(crate) fn oldest(&self) -> u64 {
        self.segments.front().map_or(self.next_seq, |s| s.first)
    }

    /// Appends lines made by `make(seq)` for `n` events, synced, then applies retention; returns
    /// the last sequence number written.
    pub(crate) fn append(
        &mut self,
        n: usize,
        mut make: impl FnMut(u64) -> Bytes,
    ) -> Result<u64, JournalError> {
        let mut buf = Vec::new();
        let mut lines = Vec::with_capacity(n);
        for _ in 0..n {
            let seq = self.next_seq;
            let line = make(seq);
            buf.extend_from_slice(&line);
            lines.push((seq, line));
            self.next_seq += 1;
        }
        if lines.is_empty() {
            return Ok(self.next_seq - 1);
        }
        let first = lines[0].0;
        self.roll_if_full(first)?;
        let (path, file) = self.current(first)?;
        file.write_all(&buf).map_err(io_err(&path))?;
        file.sync_data().map_err(io_err(&path))?;
        if let Some(seg) = self.segments.back_mut() {
            seg.bytes += buf.len() as u64;
        }
        for l in lines {
            if self.tail.len() == TAIL_EVENTS {
                self.tail.pop_front();
            }
            self.tail.push_back(l);
        }
        self.apply_retention();
        Ok(self.next_seq - 1)
    }

    /// Starts a new segment when the current one holds its share of either limit.
    fn roll_if_full(&mut self, first: u64) -> Result<(), JournalError> {
        let Some(seg) = self.segments.back() else {
            return Ok(());
        };
        let count = first.saturating_sub(seg.first);
        let full = seg.bytes >= (self.retention.max_bytes / SEGMENTS_PER_LIMIT).max(1)
            || count >= (self.retention.max_events / SEGMENTS_PER_LIMIT).max(1);
        if full {
            self.file = None;
            self.new_segment(first)?;
        }
        Ok(())
    }

    /// The open current segment (created, with its folder synced, when there is none).
    fn current(&mut self, first: u64) -> Result<(PathBuf, &mut File), JournalError> {
        if self.segments.is_empty() {
            self.new_segment(first)?;
        }
        let path = self
            .segments
            .back()
            .map(|s| s.path.clone())
            .unwrap_or_default();
        if self.file.is_none() {
            let f = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(&path)
                .map_err(io_err(&path))?;
            self.file = Some(f);
        }
        match self.file.as_mut() {
            Some(f) => Ok((path, f)),
            None => Err(JournalError::Io {
                path,
                source: io::Error::other("no open segment"),
            }),
        }
    }

    fn new_segment(&mut self, first: u64) -> Result<(), JournalError> {
        let path = self.dir.join(segment_name(first));
        OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        self.segments.push_back(Segment {
            first,
            path,
            bytes: 0,
        });
        Ok(())
    }

    /// Drops the oldest segments while either limit is exceeded (the current one stays).
    fn apply_retention(&mut self) {
        loop {
            let count = self.next_seq.saturating_sub(self.oldest());
            let bytes: u64 = self.segments.iter().map(|s| s.bytes).sum();
            let over = count > self.retention.max_events || bytes > self.retention.max_bytes;
            if !over || self.segments.len() < 2 {
                let oldest = self.oldest();
                while self.tail.front().is_some_and(|(s, _)| *s < oldest) {
                    self.tail.pop_front();
                }
                return;
            }
            if let Some(old) = self.segments.pop_front() {
                if let Err(e) = fs::remove_file(&old.path) {
                    tracing::warn!(file = %old.path.display(), error = %e, "event journal: cannot remove an old segment");
                }
            }
        }
    }

    /// Up to `max` events after `after` (oldest first): from memory when the tail holds them,
    /// else from the segments. Events dropped by retention are skipped.
    pub(crate) fn read_after(
        &self,
        after: u64,
        max: usize,
    ) -> Result<Vec<(u64, Bytes)>, JournalError> {
        if after.saturating_add(1) >= self.next_seq {
            return Ok(Vec::new());
        }
        if let Some(&(first, _)) = self.tail.front() {
            if first <= after.saturating_add(1) {
                return Ok(self
                    .tail
                    .iter()
                    .filter(|(s, _)| *s > after)
                    .take(max)
                    .cloned()
                    .collect());
            }
        }
        self.read_disk(after, max)
    }

    fn read_disk(&self, after: u64, max: usize) -> Result<Vec<(u64, Bytes)>, JournalError> {
        let mut out = Vec::new();
        let segs: Vec<&Segment> = self.segments.iter().collect();
        for (i, seg) in segs.iter().enumerate() {
            let next_first = segs.get(i + 1).map_or(u64::MAX, |s| s.first);
            if next_first <= after.saturating_add(1) {
                continue;
            }
            let f = File::open(&seg.path).map_err(io_err(&seg.path))?;
            let mut r = BufReader::new(f);
            r.seek(SeekFrom::Start(0)).map_err(io_err(&seg.path))?;
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = r.read_until(b'\n', &mut line).map_err(io_err(&seg.path))?;
                if n == 0 || line.last() != Some(&b'\n') {
                    break;
                }
                match seq_of(&line) {
                    Some(s) if s > after => out.push((s, Bytes::copy_from_slice(&line))),
                    _ => {}
                }
                if out.len() >= max {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: u64) -> Bytes {
        Bytes::from(format!("{{\"seq\":{seq},\"type\":\"new\"}}\n"))
    }

    fn seqs(v: &[(u64, Bytes)]) -> Vec<u64> {
        v.iter().map(|(s, _)| *s).collect()
    }

    const BIG: Retention = Retention {
        max_events: 1_000_000,
        max_bytes: 1 << 30,
    };

    #[test]
    fn events_survive_reopening_and_a_partial_line_is_cut() {
        let dir = tempfile::tempdir().expect("test step");
        let mut j = Journal::open(dir.path(), BIG).expect("test step");
        assert_eq!(j.append(3, line).expect("test step"), 3);
        drop(j);
        // A writer killed mid-line.
        let seg = dir.path().join(segment_name(1));
        let mut f = OpenOptions::new()
            .append(true)
            .open(&seg)
            .expect("test step");
        f.write_all(b"{\"seq\":4,\"ty").expect("test step");
        let mut j = Journal::open(dir.path(), BIG).expect("test step");
        assert_eq!(j.next_seq(), 4);
        assert_eq!(
            seqs(&j.read_after(0, 100).expect("test step")),
            vec![1, 2, 3]
        );
        assert_eq!(j.append(1, line).expect("test step"), 4);
        let text = fs::read_to_string(&seg).expect("test step");
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(text.lines().all(|l| l.ends_with('}')));
    }

    #[test]
    fn retention_drops_whole_old_segments_by_count_and_bytes() {
        let dir = tempfile::tempdir().expect("test step");
        let r = Retention {
            max_events: 80,
            max_bytes: 1 << 30,
        };
        let mut j = Journal::open(dir.path(), r).expect("test step");
        for _ in 0..200 {
            j.append(1, line).expect("test step");
        }
        // Segments of 10 events; at most 80 kept (plus the current segment's share).
        let kept = 201 - j.oldest();
        assert!((71..=90).contains(&kept), "kept {kept}");
        assert_eq!(
            j.read_after(0, 1000)
                .expect("test step")
                .first()
                .map(|x| x.0),
            Some(j.oldest())
        );
        let files = fs::read_dir(dir.path()).expect("test step").count();
        assert!((8..=9).contains(&files), "{files} segments");
        let r = Retention {
            max_events: 1_000_000,
            max_bytes: 2000,
        };
        let dir = tempfile::tempdir().expect("test step");
        let mut j = Journal::open(dir.path(), r).expect("test step");
        for _ in 0..500 {
            j.append(1, line).expect("test step");
        }
        let bytes: u64 = fs::read_dir(dir.path())
            .expect("test step")
            .map(|e| e.expect("test step").metadata().expect("test step").len())
            .sum();
        assert!(
            bytes <= 2000 + 2000 / SEGMENTS_PER_LIMIT + 40,
            "{bytes} bytes"
        );
    }

    #[test]
    fn readers_behind_the_memory_tail_read_the_disk_in_order() {
        let dir = tempfile::tempdir().expect("test step");
        let mut j = Journal::open(dir.path(), BIG).expect("test step");
        let n = TAIL_EVENTS as u64 + 100;
        for _ in 0..n / 50 {
            j.append(50, line).expect("test step");
        }
        j.append((n % 50) as usize, line).expect("test step");
        let got = j.read_after(10, 30).expect("test step");
        assert_eq!(seqs(&got), (11..=40).collect::<Vec<_>>());
        assert_eq!(got[0].1, line(11));
        let all = j.read_after(0, usize::MAX).expect("test step");
        assert_eq!(seqs(&all), (1..=n).collect::<Vec<_>>());
        assert_eq!(j.read_after(n, 10).expect("test step"), vec![]);
        assert_eq!(
            j.read_after(u64::MAX, 10).expect("test step"),
            vec![],
            "no overflow"
        );
        assert_eq!(seq_of(b"{\"seq\":42,\"x\":1}"), Some(42));
        assert_eq!(seq_of(b"{\"x\":1}"), None);
    }
}
