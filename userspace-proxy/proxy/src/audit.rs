//! The per-bottle audit log: one JSON object per line, size-capped with rotation. Entries
//! carry hosts, paths without their query, decisions and rule ids — never a secret, a header
//! value or a body.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
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

pub struct AuditLog {
    path: PathBuf,
    max_bytes: u64,
    writer: Mutex<Writer>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
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
            path,
            max_bytes,
            writer: Mutex::new(Writer { file, size }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

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

    pub fn record(&self, event: &AuditEvent<'_>) {
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or_default();
        let Ok(mut line) = serde_json::to_vec(&Line { time_ms, event }) else {
            return;
        };
        line.push(b'\n');
        let mut w = match self.writer.lock() {
            Ok(w) => w,
            Err(p) => p.into_inner(),
        };
        if w.size + line.len() as u64 > self.max_bytes {
            self.rotate(&mut w);
        }
        if let Some(f) = w.file.as_mut() {
            if f.write_all(&line).is_ok() {
                w.size += line.len() as u64;
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
