//! Streaming scans: a body fed in arbitrary chunks.
//!
//! The stream keeps a bounded tail of recent bytes (whatever a pending
//! keyword window, merged group, rule segment or secret sample could still
//! need, see [`crate::scan`]), so a secret split across chunks is found, and
//! findings are de-duplicated across feeds. Memory per stream is bounded
//! regardless of body size: roughly the largest rule reach, merged-group span,
//! rule segment and secret length (low hundreds of KiB at most), plus one
//! 64 KiB feed slice. Large chunks are processed in 64 KiB slices.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::scan::{sort_dedup, Chunk, ScanState, Source};
use crate::{Finding, RuleSet};

/// Large chunks are fed to the core in slices of this size, which bounds the
/// buffer regardless of chunk size.
const FEED_SLICE: usize = 64 * 1024;

/// State shared by the borrowed and owned stream scanners.
pub(crate) struct StreamCore {
    buf: Vec<u8>,
    /// Absolute stream offset of `buf[0]`.
    base: u64,
    state: ScanState,
    /// Keys of hits already reported that a later step could report again.
    reported: BTreeSet<(u64, usize, Source)>,
}

impl std::fmt::Debug for StreamCore {
    // Never prints buffered bytes: they may contain secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamCore")
            .field("buffered", &self.buf.len())
            .field("base", &self.base)
            .field("state", &self.state)
            .finish()
    }
}

impl StreamCore {
    pub(crate) fn new(rules: &RuleSet) -> Self {
        StreamCore {
            buf: Vec::new(),
            base: 0,
            state: ScanState::new(rules),
            reported: BTreeSet::new(),
        }
    }

    pub(crate) fn bytes_seen(&self) -> u64 {
        self.base + self.buf.len() as u64
    }

    pub(crate) fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn feed(&mut self, rules: &RuleSet, chunk: &[u8]) -> Vec<Finding> {
        let mut findings = Vec::new();
        for slice in chunk.chunks(FEED_SLICE) {
            self.buf.extend_from_slice(slice);
            findings.extend(self.step(rules, false));
        }
        findings.sort_by(|a, b| (a.offset, a.len, &a.rule_id).cmp(&(b.offset, b.len, &b.rule_id)));
        findings
    }

    pub(crate) fn finish(&mut self, rules: &RuleSet) -> Vec<Finding> {
        let findings = self.step(rules, true);
        self.base += self.buf.len() as u64;
        self.buf = Vec::new();
        self.reported.clear();
        findings
    }

    /// One processing step over the buffer; returns the new findings.
    fn step(&mut self, rules: &RuleSet, is_final: bool) -> Vec<Finding> {
        let mut hits = Vec::new();
        let chunk = Chunk {
            data: &self.buf,
            base: self.base,
            is_final,
        };
        let keep = self.state.process(rules, &chunk, &mut hits);
        sort_dedup(&mut hits);
        hits.retain(|h| self.reported.insert(h.key()));
        // Later steps only produce hits at or after `keep`.
        self.reported = self.reported.split_off(&(keep, 0, Source::Rule(0)));

        let drop = usize::try_from(keep.saturating_sub(self.base))
            .unwrap_or(usize::MAX)
            .min(self.buf.len());
        // Compact only when it frees a good share, to avoid moving the tail
        // on every small feed; the buffer stays bounded either way.
        if drop > 0 && (drop >= FEED_SLICE || drop * 2 >= self.buf.len()) {
            self.buf.drain(..drop);
            self.base += drop as u64;
        }
        hits.iter().map(|h| rules.finding(h)).collect()
    }
}

/// Scans a stream fed in chunks, borrowing the rule set.
///
/// Findings from each [`feed`](Self::feed) are sorted by offset; across feeds
/// offsets are not necessarily increasing (a rule may report a match once
/// enough bytes after it arrived). Offsets are absolute in the stream.
#[derive(Debug)]
pub struct StreamScanner<'a> {
    rules: &'a RuleSet,
    core: StreamCore,
}

impl<'a> StreamScanner<'a> {
    pub(crate) fn new(rules: &'a RuleSet) -> Self {
        StreamScanner {
            rules,
            core: StreamCore::new(rules),
        }
    }

    /// Scans the next chunk; returns findings that became certain.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Finding> {
        self.core.feed(self.rules, chunk)
    }

    /// Ends the stream and returns the remaining findings.
    pub fn finish(mut self) -> Vec<Finding> {
        self.core.finish(self.rules)
    }

    /// Total bytes fed so far.
    pub fn bytes_seen(&self) -> u64 {
        self.core.bytes_seen()
    }

    /// Bytes currently retained (bounded; for tests and metrics).
    pub fn buffered_bytes(&self) -> usize {
        self.core.buffered()
    }
}

/// Like [`StreamScanner`] but owns an `Arc<RuleSet>`, for async tasks.
#[derive(Debug)]
pub struct OwnedStreamScanner {
    rules: Arc<RuleSet>,
    core: StreamCore,
}

impl OwnedStreamScanner {
    pub(crate) fn new(rules: Arc<RuleSet>) -> Self {
        let core = StreamCore::new(&rules);
        OwnedStreamScanner { rules, core }
    }

    /// Scans the next chunk; returns findings that became certain.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Finding> {
        self.core.feed(&self.rules, chunk)
    }

    /// Ends the stream and returns the remaining findings.
    pub fn finish(mut self) -> Vec<Finding> {
        self.core.finish(&self.rules)
    }

    /// Ends the stream without consuming the scanner, for wrappers that
    /// cannot move out of themselves. The scanner must not be fed afterwards.
    pub(crate) fn finish_in_place(&mut self) -> Vec<Finding> {
        self.core.finish(&self.rules)
    }

    /// Total bytes fed so far.
    pub fn bytes_seen(&self) -> u64 {
        self.core.bytes_seen()
    }

    /// Bytes currently retained (bounded; for tests and metrics).
    pub fn buffered_bytes(&self) -> usize {
        self.core.buffered()
    }
}
