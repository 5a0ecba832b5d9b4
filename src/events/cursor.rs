//! A sink's durable position in the journal: the last sequence number it delivered, one small
//! file rewritten in place and synced before the next event is taken as delivered ([`Cursor`]);
//! and [`Position`], that cursor together with the sink's stats, which show it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{EventLog, SinkStats};

/// A sink's place in the journal: its durable cursor and its stats (registered with the log).
pub(crate) struct Position {
    cursor: Cursor,
    stats: Arc<SinkStats>,
}

impl Position {
    /// Opens sink `sink`'s position file `file` (a new one starts at the journal's end: a new sink
    /// does not replay history) and registers its stats; `what` names the sink in the error.
    pub(crate) fn open(
        log: &EventLog,
        sink: &str,
        file: &Path,
        what: &str,
    ) -> Result<Self, String> {
        let cursor = Cursor::open(file, log.last_seq())
            .map_err(|e| format!("{what} position {}: {e}", file.display()))?;
        let stats = log.sink(sink);
        stats.position.store(cursor.get(), Ordering::Relaxed);
        Ok(Position { cursor, stats })
    }

    /// The last sequence number delivered.
    pub(crate) fn get(&self) -> u64 {
        self.cursor.get()
    }

    /// The sink's stats.
    pub(crate) fn stats(&self) -> &Arc<SinkStats> {
        &self.stats
    }

    /// Records `seq` as delivered: synced to the file, then shown in the stats.
    pub(crate) fn advance(&mut self, seq: u64) -> io::Result<()> {
        self.cursor.set(seq)?;
        self.stats.position.store(seq, Ordering::Relaxed);
        Ok(())
    }
}

/// The position file of one sink.
#[derive(Debug)]
pub(crate) struct Cursor {
    file: File,
    value: u64,
}

impl Cursor {
    /// Opens (creating, at `start`) the position file at `path`.
    pub(crate) fn open(path: &Path, start: u64) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        let read = text.trim().parse::<u64>().ok();
        let mut c = Cursor {
            file,
            value: read.unwrap_or(start),
        };
        if read.is_none() {
            c.set(start)?;
        }
        Ok(c)
    }

    pub(crate) fn get(&self) -> u64 {
        self.value
    }

    /// Records `seq` as delivered (synced).
    pub(crate) fn set(&mut self, seq: u64) -> io::Result<()> {
        self.file
            .write_all_at(format!("{seq:020}\n").as_bytes(), 0)?;
        self.file.sync_data()?;
        self.value = seq;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_starts_where_told_and_remembers() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("sinks/mqtt.cursor");
        let mut c = Cursor::open(&p, 7).expect("open");
        assert_eq!(c.get(), 7);
        c.set(12).expect("set");
        drop(c);
        assert_eq!(Cursor::open(&p, 0).expect("reopen").get(), 12);
        assert_eq!(
            std::fs::read_to_string(&p).expect("read"),
            format!("{:020}\n", 12)
        );
    }
}
