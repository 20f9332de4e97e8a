//! The per-bottle audit log: one JSON object per line, size-capped with rotation. Entries
//! carry hosts, paths without their query, decisions and rule ids — never a secret, a header
//! value or a body.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

pub const AUDIT_FILE: &str = "audit.log";
/// Rotated generations kept besides the live file.
const KEEP: u32 = 2;

/// One decision.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditEvent<'a> {
    /// `dns`, `tls`, `http`, `dlp`, `tunnel`.
    pub kind: &'a str,
    pub host: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<&'a str>,
    /// Path without the query string (queries often carry secrets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// `allowed`, `denied`, `dlp_blocked`, `dlp_warned`, `error`.
    pub decision: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
}

#[derive(Serialize)]
struct Line<'a> {
    time_ms: u64,
    #[serde(flatten)]
    event: &'a AuditEvent<'a>,
}

struct Writer {
    file: Option<File>,
    size: u64,
}

/// One bottle's log file; written only by the shared writer thread.
struct Sink {
    path: PathBuf,
    max_bytes: u64,
    writer: Mutex<Writer>,
}

impl Sink {
    fn rotate(&self, w: &mut Writer) {
        w.file = None;
        for gen in (1..KEEP).rev() {
            let _ = std::fs::rename(
                self.path.with_extension(format!("log.{gen}")),
                self.path.with_extension(format!("log.{}", gen + 1)),
            );
        }
        let _ = std::fs::rename(&self.path, self.path.with_extension("log.1"));
        w.file = open(&self.path);
        w.size = 0;
    }

    /// Writes whole lines, as few writes as the size cap allows: rotation happens between
    /// lines, never inside one.
    fn write(&self, lines: &[u8]) {
        let mut w = match self.writer.lock() {
            Ok(w) => w,
            Err(p) => p.into_inner(),
        };
        let mut start = 0;
        let mut end = 0;
        for line in lines.split_inclusive(|&b| b == b'\n') {
            if w.size + (end - start + line.len()) as u64 > self.max_bytes {
                Self::append(&mut w, &lines[start..end]);
                self.rotate(&mut w);
                start = end;
            }
            end += line.len();
        }
        Self::append(&mut w, &lines[start..end]);
    }

    fn append(w: &mut Writer, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if let Some(f) = w.file.as_mut() {
            if f.write_all(bytes).is_ok() {
                w.size += bytes.len() as u64;
            }
        }
    }
}

enum Job {
    Line(Arc<Sink>, Vec<u8>),
    /// Answered once every earlier line is on disk.
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// Lines waiting for the writer, across all bottles. When full, new lines are dropped and
/// counted: a slow disk must never stall a proxy.
const QUEUE: usize = 65_536;

fn writer() -> Option<&'static SyncSender<Job>> {
    static WRITER: OnceLock<Option<SyncSender<Job>>> = OnceLock::new();
    WRITER
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(QUEUE);
            std::thread::Builder::new()
                .name("bottle-audit".into())
                .spawn(move || write_loop(rx))
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// Drains the queue, batching consecutive lines of the same bottle into one write.
fn write_loop(rx: Receiver<Job>) {
    let mut pending: Vec<(Arc<Sink>, Vec<u8>)> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut flushes = Vec::new();
        let mut push = |job: Job, pending: &mut Vec<(Arc<Sink>, Vec<u8>)>| match job {
            Job::Line(sink, line) => match pending.last_mut() {
                Some((last, buf)) if Arc::ptr_eq(last, &sink) && buf.len() < 256 * 1024 => {
                    buf.extend_from_slice(&line)
                }
                _ => pending.push((sink, line)),
            },
            Job::Flush(done) => flushes.push(done),
        };
        push(first, &mut pending);
        while let Ok(job) = rx.try_recv() {
            push(job, &mut pending);
            if pending.len() >= 64 {
                break;
            }
        }
        for (sink, lines) in pending.drain(..) {
            sink.write(&lines);
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

pub struct AuditLog {
    sink: Arc<Sink>,
    dropped: AtomicU64,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.sink.path)
            .finish()
    }
}

fn open(path: &Path) -> Option<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .ok()
}

impl AuditLog {
    /// Appends to `<dir>/audit.log`, rotating when it passes `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> Self {
        let path = dir.join(AUDIT_FILE);
        let file = open(&path);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        Self {
            sink: Arc::new(Sink {
                path,
                max_bytes,
                writer: Mutex::new(Writer { file, size }),
            }),
            dropped: AtomicU64::new(0),
        }
    }

    pub fn path(&self) -> &Path {
        &self.sink.path
    }

    /// Lines lost because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Queues one event for the writer thread; never blocks.
    pub fn record(&self, event: &AuditEvent<'_>) {
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or_default();
        let Ok(mut line) = serde_json::to_vec(&Line { time_ms, event }) else {
            return;
        };
        line.push(b'\n');
        let queued = match writer() {
            Some(tx) => tx.try_send(Job::Line(self.sink.clone(), line)).is_ok(),
            None => {
                // No writer thread could be started: write inline rather than lose it.
                self.sink.write(&line);
                true
            }
        };
        if !queued {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits (at most `timeout`) until every line queued so far is written.
    pub fn flush(&self, timeout: std::time::Duration) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        if let Some(w) = writer() {
            if w.try_send(Job::Flush(tx)).is_ok() {
                let _ = rx.recv_timeout(timeout);
            }
        }
    }
}

/// `path` without its query string or fragment.
pub fn path_without_query(path_and_query: &str) -> &str {
    path_and_query
        .split(['?', '#'])
        .next()
        .unwrap_or(path_and_query)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn writes_json_lines_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), 400);
        for i in 0..20 {
            let path = format!("/v1/item/{i}");
            log.record(&AuditEvent {
                kind: "http",
                host: "api.example.com",
                method: Some("GET"),
                path: Some(path_without_query(&format!("{path}?token=secret"))),
                status: Some(200),
                decision: "allowed",
                ..AuditEvent::default()
            });
        }
        log.flush(std::time::Duration::from_secs(5));
        let live = std::fs::read_to_string(dir.path().join(AUDIT_FILE)).unwrap();
        assert!(live.len() <= 400);
        assert!(dir.path().join("audit.log.1").exists());
        assert!(
            !dir.path().join("audit.log.3").exists(),
            "bounded generations"
        );
        for line in live.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["kind"], "http");
            assert!(!line.contains("secret"));
        }
    }
}
