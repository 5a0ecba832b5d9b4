//! Each track's best snapshot: the JPEG of the frame where the track scored highest, its box
//! drawn, saved under `<state_dir>/snapshots/` by the event writer just before the track's `end`
//! event (so a reader of that event finds the file), with retention by count and bytes (oldest
//! first). Files are named `<stream>-<daemon start, hex ms>-<track id>.jpg`.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::preprocess::Rgb;
use crate::video::draw::{self, Annotation};

/// JPEG quality of saved snapshots.
const QUALITY: u8 = 85;

/// A snapshot to save.
pub(crate) struct Shot {
    /// The file name (see the module's docs).
    pub file: String,
    pub rgb: Arc<Rgb>,
    pub annotation: Annotation,
}

/// Retention of the snapshot folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ShotRetention {
    pub max_files: usize,
    pub max_bytes: u64,
}

/// The snapshot folder.
pub(crate) struct Snapshots {
    dir: PathBuf,
    retention: ShotRetention,
    /// Saved files, oldest first, with their sizes.
    files: VecDeque<(PathBuf, u64)>,
}

/// Whether `name` is a snapshot file name this module makes (no path, no dot-dot).
pub(crate) fn is_shot_name(name: &str) -> bool {
    name.len() <= 200
        && name.ends_with(".jpg")
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'
        })
        && !name.contains("..")
}

impl Snapshots {
    /// Lists the folder (creating it); the oldest files by modification time come first.
    pub(crate) fn open(dir: &Path, retention: ShotRetention) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut found: Vec<(std::time::SystemTime, PathBuf, u64)> = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name();
            if !name.to_str().is_some_and(is_shot_name) {
                continue;
            }
            let m = e.metadata()?;
            found.push((m.modified()?, e.path(), m.len()));
        }
        found.sort();
        Ok(Snapshots {
            dir: dir.to_path_buf(),
            retention,
            files: found.into_iter().map(|(_, p, n)| (p, n)).collect(),
        })
    }

    /// Draws and saves one snapshot, then applies retention.
    pub(crate) fn save(&mut self, shot: &Shot) -> Result<(), String> {
        if !is_shot_name(&shot.file) {
            return Err(format!("bad snapshot name {:?}", shot.file));
        }
        let (w, h) = (shot.rgb.width, shot.rgb.height);
        let mut data = shot.rgb.data.clone();
        draw::annotate(w, h, &mut data, std::slice::from_ref(&shot.annotation))
            .map_err(|e| e.to_string())?;
        let jpeg = draw::encode_jpeg(w, h, &data, QUALITY).map_err(|e| e.to_string())?;
        let path = self.dir.join(&shot.file);
        crate::fsutil::write_file_atomic_mode(&path, &jpeg, 0o640)
            .map_err(|e| format!("cannot save {}: {e}", path.display()))?;
        self.files.retain(|(p, _)| *p != path);
        self.files.push_back((path, jpeg.len() as u64));
        self.apply_retention();
        Ok(())
    }

    fn apply_retention(&mut self) {
        let mut bytes: u64 = self.files.iter().map(|(_, n)| n).sum();
        while self.files.len() > 1
            && (self.files.len() > self.retention.max_files || bytes > self.retention.max_bytes)
        {
            if let Some((p, n)) = self.files.pop_front() {
                bytes -= n;
                if let Err(e) = std::fs::remove_file(&p) {
                    tracing::warn!(file = %p.display(), error = %e, "cannot remove an old snapshot");
                }
            }
        }
    }

    /// The path of a saved snapshot, if `name` is one and exists.
    pub(crate) fn path(&self, name: &str) -> Option<PathBuf> {
        is_shot_name(name)
            .then(|| self.dir.join(name))
            .filter(|p| p.is_file())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shot(file: &str) -> Shot {
        Shot {
            file: file.into(),
            rgb: Arc::new(Rgb {
                width: 32,
                height: 24,
                data: vec![90; 32 * 24 * 3],
            }),
            annotation: Annotation {
                bbox: [4.0, 4.0, 20.0, 20.0],
                label: "a cat".into(),
                score: 0.9,
                track_id: Some(3),
                class: 0,
            },
        }
    }

    #[test]
    fn snapshots_are_jpegs_kept_within_retention() {
        let dir = tempfile::tempdir().expect("tmp");
        let r = ShotRetention {
            max_files: 2,
            max_bytes: 1 << 20,
        };
        let mut s = Snapshots::open(dir.path(), r).expect("open");
        for n in 1..=3 {
            s.save(&shot(&format!("cam-1-{n}.jpg"))).expect("saved");
        }
        assert!(s.path("cam-1-1.jpg").is_none(), "the oldest is gone");
        let p = s.path("cam-1-3.jpg").expect("kept");
        let bytes = std::fs::read(p).expect("read");
        assert_eq!(&bytes[..2], &[0xFF, 0xD8], "a JPEG");
        assert!(s.save(&shot("../x.jpg")).is_err());
        assert!(s.path("../cam-1-3.jpg").is_none());
        let again = Snapshots::open(dir.path(), r).expect("reopen");
        assert_eq!(again.files.len(), 2);
    }
}
