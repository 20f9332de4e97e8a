//! Findings: what the engine reports. They never contain the secret; at most
//! a 4-byte prefix (and never more than a quarter of the secret) for rule
//! matches, nothing at all for exact secrets.

use crate::exact::SecretEncoding;

/// One detected secret.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Finding {
    /// Rule id, or the id given to [`crate::RuleSetBuilder::add_secret`].
    pub rule_id: String,
    /// Pattern rule or exact secret (and in which encoding).
    pub kind: FindingKind,
    /// Byte offset of the secret in the scanned stream (for decoded bodies:
    /// in the decoded stream).
    pub offset: u64,
    /// Length of the secret in bytes (of its encoded form, for encodings).
    pub len: usize,
    /// Safe preview, e.g. `ghp_…(40)`; exact secrets: `…(40)`.
    pub redacted: String,
}

/// What produced a finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FindingKind {
    /// A built-in or gitleaks pattern rule.
    Rule,
    /// A registered exact secret, seen in this encoding.
    Secret { encoding: SecretEncoding },
}

/// Builds the preview: printable prefix bytes (others as `?`), `…`, length.
pub(crate) fn redacted_preview(prefix: &[u8], len: usize) -> String {
    let mut out: String = prefix
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect();
    out.push('…');
    out.push_str(&format!("({len})"));
    out
}

/// 1-based line and column (in bytes) of an offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LineCol {
    pub line: usize,
    pub column: usize,
}

/// Maps byte offsets to line/column, for the git-gate (e.g. to point at the
/// added line of a diff). Built once per text; lookups are binary searches.
#[derive(Clone, Debug)]
pub struct LineIndex {
    /// Offsets of each line start.
    starts: Vec<u64>,
}

impl LineIndex {
    pub fn new(text: &[u8]) -> Self {
        let mut starts = vec![0];
        starts.extend(
            text.iter()
                .enumerate()
                .filter(|(_, &b)| b == b'\n')
                .map(|(i, _)| i as u64 + 1),
        );
        LineIndex { starts }
    }

    /// Line/column of `offset`; offsets past the end land on the last line.
    pub fn line_col(&self, offset: u64) -> LineCol {
        let line_index = self
            .starts
            .partition_point(|&s| s <= offset)
            .saturating_sub(1);
        let start = self.starts.get(line_index).copied().unwrap_or(0);
        LineCol {
            line: line_index + 1,
            column: usize::try_from(offset - start.min(offset)).unwrap_or(usize::MAX) + 1,
        }
    }
}

/// A finding with its position in a text (see [`crate::RuleSet::scan_text`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TextFinding {
    pub finding: Finding,
    pub position: LineCol,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn line_index_maps_offsets() {
        let idx = LineIndex::new(b"ab\ncd\n\nef");
        assert_eq!(idx.line_col(0), LineCol { line: 1, column: 1 });
        assert_eq!(idx.line_col(2), LineCol { line: 1, column: 3 });
        assert_eq!(idx.line_col(3), LineCol { line: 2, column: 1 });
        assert_eq!(idx.line_col(6), LineCol { line: 3, column: 1 });
        assert_eq!(idx.line_col(8), LineCol { line: 4, column: 2 });
        assert_eq!(
            idx.line_col(100),
            LineCol {
                line: 4,
                column: 94
            }
        );
    }

    #[test]
    fn preview_masks_unprintable_bytes() {
        assert_eq!(redacted_preview(b"gh\x00_", 40), "gh?_…(40)");
        assert_eq!(redacted_preview(b"", 12), "…(12)");
    }
}
