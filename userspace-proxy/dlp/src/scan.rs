//! The scanning core shared by whole-buffer and streaming scans.
//!
//! Results are defined purely by the bytes of the stream, never by how it was
//! chunked, so streaming and whole-buffer scans agree exactly:
//!
//! 1. Every keyword occurrence at offset `s` (length `k`) opens a window
//!    `[s + k - reach, s + reach)` for each rule with that keyword: exactly the
//!    region a match of at most `reach` bytes containing the keyword can
//!    occupy.
//! 2. Overlapping windows of one rule merge into a group (up to
//!    [`GROUP_SPAN_LIMIT`]), so dense keywords cost one regex pass, not one per
//!    hit. The regex runs over the group's span with [`CONTEXT`] bytes of
//!    look-around context on each side (so `\b`, `^`, `$` see real neighbours;
//!    `$`/`\z` only match at the true end of the stream).
//! 3. Rules without keywords scan fixed 64 KiB segments (plus `reach` overlap).
//! 4. Exact secrets are checked at sample positions that are multiples of the
//!    sieve stride.
//!
//! A streaming caller only processes a keyword once enough bytes after it are
//! buffered (`lag`) to cover its window plus context, or when the stream ends;
//! it keeps everything a future window could still need (`keep_from`).

use regex_automata::util::captures::Captures;

use crate::rules::{shannon_entropy, Rule, SecretGroup};
use crate::RuleSet;

/// Look-around / allowlist line context around a regex span, in bytes.
pub(crate) const CONTEXT: u64 = 256;
/// Keyword search works on blocks of this size (scratch lowercase buffer).
const BLOCK: u64 = 64 * 1024;
/// Merged windows of one rule stop growing past this span.
pub(crate) const GROUP_SPAN_LIMIT: u64 = 32 * 1024;
/// Segment size for rules without keywords.
pub(crate) const SEGMENT: u64 = 64 * 1024;

/// Where a hit came from: a pattern rule or an exact-secret pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Source {
    Rule(u32),
    Secret(u32),
}

/// A finding before it is turned into a public [`crate::Finding`]. Holds at
/// most a 4-byte prefix of the secret for the redacted preview.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Hit {
    pub(crate) offset: u64,
    pub(crate) len: usize,
    pub(crate) source: Source,
    prefix: [u8; 4],
    prefix_len: u8,
}

impl std::fmt::Debug for Hit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hit")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Hit {
    /// `secret` is the matched secret; a prefix of at most 4 bytes and at most
    /// a quarter of its length is kept for the preview. Pass `&[]` for none.
    pub(crate) fn new(offset: u64, len: usize, source: Source, secret: &[u8]) -> Self {
        let keep = (secret.len() / 4).min(4);
        let mut prefix = [0u8; 4];
        for (slot, &b) in prefix.iter_mut().zip(secret.iter().take(keep)) {
            *slot = b;
        }
        Hit {
            offset,
            len,
            source,
            prefix,
            prefix_len: u8::try_from(keep).unwrap_or(0),
        }
    }

    pub(crate) fn key(&self) -> (u64, usize, Source) {
        (self.offset, self.len, self.source)
    }

    pub(crate) fn prefix(&self) -> &[u8] {
        &self.prefix[..usize::from(self.prefix_len).min(4)]
    }
}

/// Bytes available to one processing step: the stream from offset `base`,
/// and whether the stream ends with them.
pub(crate) struct Chunk<'a> {
    pub(crate) data: &'a [u8],
    pub(crate) base: u64,
    pub(crate) is_final: bool,
}

impl Chunk<'_> {
    fn end(&self) -> u64 {
        self.base + self.data.len() as u64
    }

    /// Bytes `[start, end)` in absolute offsets, if buffered.
    fn slice(&self, start: u64, end: u64) -> Option<&[u8]> {
        let from = usize::try_from(start.checked_sub(self.base)?).ok()?;
        let to = usize::try_from(end.checked_sub(self.base)?).ok()?;
        self.data.get(from..to)
    }
}

/// Merged keyword windows of one rule, absolute offsets.
#[derive(Clone, Copy, Debug)]
struct Group {
    start: u64,
    end: u64,
}

/// Progress of one scan (one stream, or one whole buffer).
pub(crate) struct ScanState {
    keyword_next: u64,
    sample_next: u64,
    segment_next: u64,
    open: Vec<Option<Group>>,
    lowered: Vec<u8>,
    captures: Vec<Option<Captures>>,
}

impl std::fmt::Debug for ScanState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanState")
            .field("keyword_next", &self.keyword_next)
            .field("sample_next", &self.sample_next)
            .field("segment_next", &self.segment_next)
            .finish_non_exhaustive()
    }
}

impl ScanState {
    pub(crate) fn new(rules: &RuleSet) -> Self {
        ScanState {
            keyword_next: 0,
            sample_next: 0,
            segment_next: 0,
            open: vec![None; rules.rules.len()],
            lowered: Vec::new(),
            captures: (0..rules.rules.len()).map(|_| None).collect(),
        }
    }

    /// Processes whatever `chunk` allows, appending hits (possibly with
    /// duplicates, unsorted). Returns the lowest offset a later call may still
    /// need; bytes before it can be dropped.
    pub(crate) fn process(&mut self, rs: &RuleSet, chunk: &Chunk<'_>, out: &mut Vec<Hit>) -> u64 {
        let end = chunk.end();
        let mut keep = end;

        if let Some(finder) = &rs.keywords {
            let lag = finder.max_len() as u64 + rs.max_reach + CONTEXT;
            let limit = if chunk.is_final {
                end
            } else {
                end.saturating_sub(lag)
            };
            while self.keyword_next < limit {
                let block_start = self.keyword_next;
                let block_end = limit.min(block_start + BLOCK);
                let hay_end = end.min(block_end + finder.max_len() as u64);
                let Some(src) = chunk.slice(block_start, hay_end) else {
                    break;
                };
                let mut lowered = std::mem::take(&mut self.lowered);
                lowered.resize(src.len(), 0);
                for (low, &byte) in lowered.iter_mut().zip(src) {
                    *low = byte.to_ascii_lowercase();
                }
                let starts_end = usize::try_from(block_end - block_start).unwrap_or(usize::MAX);
                finder.for_each_hit(&lowered, starts_end, |pos, targets| {
                    for &(rule, keyword_len) in targets {
                        let at = block_start + pos as u64;
                        self.add_window(rs, chunk, rule as usize, at, u64::from(keyword_len), out);
                    }
                });
                self.lowered = lowered;
                self.keyword_next = block_end;
            }
            self.close_groups(rs, chunk, out);
            keep = keep.min(self.keyword_next.saturating_sub(rs.max_reach + CONTEXT));
            for g in self.open.iter().flatten() {
                keep = keep.min(g.start.saturating_sub(CONTEXT));
            }
        }

        if !rs.keywordless.is_empty() {
            loop {
                let start = self.segment_next;
                let ready = if chunk.is_final {
                    start < end
                } else {
                    start + SEGMENT + rs.max_reach + CONTEXT <= end
                };
                if !ready {
                    break;
                }
                for &r in &rs.keywordless {
                    let reach = rs.rules.get(r).map_or(0, |rule| rule.reach as u64);
                    let group = Group {
                        start,
                        end: start + SEGMENT + reach,
                    };
                    self.scan_group(rs, chunk, r, group, out);
                }
                self.segment_next += SEGMENT;
            }
            keep = keep.min(self.segment_next.saturating_sub(CONTEXT));
        }

        let stride = rs.secrets.stride();
        if stride > 0 {
            let stop = if chunk.is_final {
                end
            } else {
                end.saturating_sub(rs.secrets.max_len() as u64)
            };
            if self.sample_next < stop {
                rs.secrets
                    .scan_samples(chunk.data, chunk.base, self.sample_next, stop, out);
                self.sample_next = stop.div_ceil(stride) * stride;
            }
            keep = keep.min(self.sample_next.saturating_sub(stride));
        }

        keep.max(chunk.base)
    }

    /// Adds the window of one keyword hit to the rule's open group, scanning
    /// the previous group if the new window does not merge with it.
    fn add_window(
        &mut self,
        rs: &RuleSet,
        chunk: &Chunk<'_>,
        rule: usize,
        at: u64,
        keyword_len: u64,
        out: &mut Vec<Hit>,
    ) {
        let Some(reach) = rs.rules.get(rule).map(|r| r.reach as u64) else {
            return;
        };
        let start = (at + keyword_len).saturating_sub(reach);
        let end = at + reach;
        let Some(slot) = self.open.get_mut(rule) else {
            return;
        };
        match slot.take() {
            Some(mut g)
                if start <= g.end && end.max(g.end) - start.min(g.start) <= GROUP_SPAN_LIMIT =>
            {
                g.start = g.start.min(start);
                g.end = g.end.max(end);
                *slot = Some(g);
            }
            previous => {
                *slot = Some(Group { start, end });
                if let Some(g) = previous {
                    self.scan_group(rs, chunk, rule, g, out);
                }
            }
        }
    }

    /// Scans groups no future keyword window can merge into.
    fn close_groups(&mut self, rs: &RuleSet, chunk: &Chunk<'_>, out: &mut Vec<Hit>) {
        for rule in 0..self.open.len() {
            let Some(g) = self.open.get(rule).copied().flatten() else {
                continue;
            };
            let reach = rs.rules.get(rule).map_or(0, |r| r.reach as u64);
            // Future windows start after keyword_next - reach.
            if chunk.is_final || g.end + reach <= self.keyword_next {
                if let Some(slot) = self.open.get_mut(rule) {
                    *slot = None;
                }
                self.scan_group(rs, chunk, rule, g, out);
            }
        }
    }

    /// Runs the rule's regex over the group's span (with context) and turns
    /// matches into hits.
    fn scan_group(
        &mut self,
        rs: &RuleSet,
        chunk: &Chunk<'_>,
        rule_index: usize,
        g: Group,
        out: &mut Vec<Hit>,
    ) {
        let Some(rule) = rs.rules.get(rule_index) else {
            return;
        };
        let end = chunk.end();
        let span_end = g.end.min(end);
        if g.start >= span_end {
            return;
        }
        let hay_start = g.start.saturating_sub(CONTEXT).max(chunk.base);
        let hay_end = g.end.saturating_add(CONTEXT).min(end);
        let Some(hay) = chunk.slice(hay_start, hay_end) else {
            return;
        };
        let from = usize::try_from(g.start.saturating_sub(hay_start)).unwrap_or(usize::MAX);
        let to = usize::try_from(span_end - hay_start).unwrap_or(usize::MAX);
        if from > to || to > hay.len() {
            return;
        }
        let Some(caps) = self.captures.get_mut(rule_index) else {
            return;
        };
        let caps = caps.get_or_insert_with(|| rule.regex.create_captures());
        let Ok(source_index) = u32::try_from(rule_index) else {
            return;
        };
        let mut at = from;
        while at <= to {
            let input = regex_automata::Input::new(hay).range(at..to);
            rule.regex.search_captures(&input, caps);
            let Some(m) = caps.get_match() else {
                break;
            };
            at = if m.end() > m.start() {
                m.end()
            } else {
                m.end() + 1
            };
            if let Some(hit) = evaluate(rs, rule, source_index, hay, hay_start, caps) {
                out.push(hit);
            }
        }
    }
}

/// Applies secret-group selection, built-in checks, entropy and allowlists
/// to one regex match.
fn evaluate(
    rs: &RuleSet,
    rule: &Rule,
    source: u32,
    hay: &[u8],
    hay_start: u64,
    caps: &Captures,
) -> Option<Hit> {
    let whole = caps.get_match()?.range();
    let secret_range = match rule.secret_group {
        SecretGroup::Index(0) => whole.clone(),
        SecretGroup::Index(group) => caps.get_group(group)?.range(),
        SecretGroup::FirstNonEmpty => (1..caps.group_len())
            .find_map(|g| caps.get_group(g).filter(|s| !s.is_empty()))
            .map_or_else(|| trim_newlines(hay, whole.clone()), |s| s.range()),
    };
    if secret_range.is_empty() {
        return None;
    }
    let secret = hay.get(secret_range.clone())?;
    if let Some(tail) = rule.checks.tail {
        if hay.get(secret_range.end).is_some_and(|&b| tail(b)) {
            return None;
        }
    }
    if let Some(validate) = rule.checks.validate {
        if !validate(secret) {
            return None;
        }
    }
    if let Some(min) = rule.min_entropy {
        if shannon_entropy(secret) <= min {
            return None;
        }
    }
    if !rs.global_allowlists.is_empty() || !rule.allowlists.is_empty() {
        let matched = hay.get(whole.clone())?;
        let line = line_around(hay, whole);
        let allowed = rs
            .global_allowlists
            .iter()
            .chain(&rule.allowlists)
            .any(|a| a.allows(secret, matched, line));
        if allowed {
            return None;
        }
    }
    Some(Hit::new(
        hay_start + secret_range.start as u64,
        secret.len(),
        Source::Rule(source),
        secret,
    ))
}

/// gitleaks trims newlines from the ends of a whole-match secret.
fn trim_newlines(hay: &[u8], mut range: std::ops::Range<usize>) -> std::ops::Range<usize> {
    while range.start < range.end && hay.get(range.start) == Some(&b'\n') {
        range.start += 1;
    }
    while range.start < range.end && hay.get(range.end - 1) == Some(&b'\n') {
        range.end -= 1;
    }
    range
}

/// The line containing `range`, extended at most [`CONTEXT`] bytes each way
/// (so allowlist checks on long lines stay linear, and the result does not
/// depend on how much happens to be buffered).
fn line_around(hay: &[u8], range: std::ops::Range<usize>) -> &[u8] {
    let context = usize::try_from(CONTEXT).unwrap_or(usize::MAX);
    let floor = range.start.saturating_sub(context);
    let ceiling = range.end.saturating_add(context).min(hay.len());
    let start = hay
        .get(floor..range.start)
        .and_then(|before| before.iter().rposition(|&b| b == b'\n'))
        .map_or(floor, |p| floor + p + 1);
    let end = hay
        .get(range.end..ceiling)
        .and_then(|after| after.iter().position(|&b| b == b'\n'))
        .map_or(ceiling, |p| range.end + p);
    hay.get(start..end).unwrap_or_default()
}

/// Sorts hits and removes duplicates (same offset, length and source).
pub(crate) fn sort_dedup(hits: &mut Vec<Hit>) {
    hits.sort_unstable();
    hits.dedup_by_key(|h| h.key());
}
