//! Append-only, size-capped log files in a bottle's state directory, and the paged reader the
//! API serves them with (`/audit` and `/logs`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::paths::PRIVATE_FILE_MODE;

/// Up to `max` bytes of the file at `path` from `offset`: `(bytes, start, size)`. An offset
/// past the end (the file was rotated meanwhile) restarts from 0; a missing file reads as
/// empty. `whole_lines` keeps only complete lines; otherwise only a UTF-8 sequence cut at the
/// end is held back for the next call.
pub fn read_chunk(path: &Path, offset: u64, max: usize, whole_lines: bool) -> (Vec<u8>, u64, u64) {
    let Ok(mut file) = File::open(path) else {
        return (Vec::new(), 0, 0);
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = if offset > size { 0 } else { offset };
    let mut buf = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_ok() {
        let _ = file.take(max as u64).read_to_end(&mut buf);
    }
    let end = if whole_lines {
        buf.iter()
            .rposition(|&b| b == b'\n')
            .map(|i| i + 1)
            .unwrap_or(0)
    } else {
        match std::str::from_utf8(&buf) {
            // An incomplete sequence at the very end (at most 3 bytes): the rest comes later.
            Err(e) if e.error_len().is_none() && buf.len() - e.valid_up_to() < 4 => e.valid_up_to(),
            _ => buf.len(),
        }
    };
    buf.truncate(end);
    (buf, start, size)
}

/// A log file that never grows past `cap` bytes: when a write would exceed it, the file
/// becomes `<path>.1` (replacing the previous generation) and a new one starts. So at most
/// `2 * cap` bytes are on disk. Write errors are dropped: the log must never stop a workload.
pub struct CappedLog {
    path: PathBuf,
    cap: u64,
    file: Option<File>,
    size: u64,
}

impl CappedLog {
    /// Opens (creating, 0600) the log for appending.
    pub fn open(path: PathBuf, cap: u64) -> Self {
        let file = open_append(&path);
        let size = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| m.len())
            .unwrap_or(0);
        Self {
            path,
            cap: cap.max(1),
            file,
            size,
        }
    }

    pub fn write(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.size >= self.cap {
                self.rotate();
            }
            let room = usize::try_from(self.cap - self.size).unwrap_or(usize::MAX);
            let (now, later) = data.split_at(data.len().min(room));
            match self.file.as_mut() {
                Some(f) => {
                    let _ = f.write_all(now);
                }
                // The directory is gone (the bottle was removed): nothing to keep.
                None => return,
            }
            self.size += now.len() as u64;
            data = later;
        }
    }

    fn rotate(&mut self) {
        self.file = None;
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        let _ = std::fs::rename(&self.path, PathBuf::from(old));
        // Truncate in case the rename failed: the cap holds either way.
        self.file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(PRIVATE_FILE_MODE)
            .open(&self.path)
            .ok();
        self.size = 0;
    }
}

fn open_append(path: &Path) -> Option<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(PRIVATE_FILE_MODE)
        .open(path)
        .ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn capped_log_rotates_once_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.log");
        let mut log = CappedLog::open(path.clone(), 100);
        for _ in 0..50 {
            log.write(&[b'x'; 37]);
        }
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(size(&path) <= 100);
        assert_eq!(size(&dir.path().join("w.log.1")), 100);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn chunks_keep_lines_or_utf8_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        std::fs::write(&path, "one\ntwo\nthr\u{e9}").unwrap();
        let (b, start, size) = read_chunk(&path, 0, 1024, true);
        assert_eq!((b.as_slice(), start, size), (&b"one\ntwo\n"[..], 0, 13));
        // Cut inside the two-byte é: held back.
        let (b, _, _) = read_chunk(&path, 8, 4, false);
        assert_eq!(b, b"thr");
        let (b, _, _) = read_chunk(&path, 8, 1024, false);
        assert_eq!(b, "thr\u{e9}".as_bytes());
        // Past the end (rotated): from 0.
        let (_, start, _) = read_chunk(&path, 99, 4, false);
        assert_eq!(start, 0);
        assert_eq!(read_chunk(&dir.path().join("none"), 5, 4, true).2, 0);
    }
}
