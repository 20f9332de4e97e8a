//! Turning findings into a decision. The engine only reports; the caller
//! picks a [`Mode`] per route or repository and applies the [`Verdict`].

use crate::decode::DecodeError;
use crate::Finding;

/// What to do when something is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Stop the request / push.
    Block,
    /// Let it through but report.
    Warn,
}

/// Outcome for one request body, header set or push.
#[derive(Debug)]
pub enum Verdict {
    Clean,
    Warn(Vec<Finding>),
    Block(Vec<Finding>),
    /// The body could not be decoded within bounds (too large after
    /// decompression, corrupt, or an unsupported encoding). Always blocks,
    /// whatever the mode: content we cannot inspect must not leave.
    Undecodable(DecodeError),
}

impl Mode {
    pub fn judge(self, findings: Vec<Finding>) -> Verdict {
        match (findings.is_empty(), self) {
            (true, _) => Verdict::Clean,
            (false, Mode::Block) => Verdict::Block(findings),
            (false, Mode::Warn) => Verdict::Warn(findings),
        }
    }

    /// Like [`judge`](Self::judge) for a [`crate::DecodingScanner`] result.
    pub fn judge_decoded(self, result: Result<Vec<Finding>, DecodeError>) -> Verdict {
        match result {
            Ok(findings) => self.judge(findings),
            Err(e) => Verdict::Undecodable(e),
        }
    }
}

impl Verdict {
    /// Whether the caller must stop the request / push.
    pub fn blocks(&self) -> bool {
        matches!(self, Verdict::Block(_) | Verdict::Undecodable(_))
    }

    pub fn findings(&self) -> &[Finding] {
        match self {
            Verdict::Warn(f) | Verdict::Block(f) => f,
            Verdict::Clean | Verdict::Undecodable(_) => &[],
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::FindingKind;

    fn finding() -> Finding {
        Finding {
            rule_id: "r".into(),
            kind: FindingKind::Rule,
            offset: 0,
            len: 8,
            redacted: "ab…(8)".into(),
        }
    }

    #[test]
    fn modes_map_to_verdicts() {
        assert!(!Mode::Block.judge(vec![]).blocks());
        assert!(Mode::Block.judge(vec![finding()]).blocks());
        let warn = Mode::Warn.judge(vec![finding()]);
        assert!(!warn.blocks());
        assert_eq!(warn.findings().len(), 1);
        let undecodable = Mode::Warn.judge_decoded(Err(DecodeError::TooLarge { limit: 1 }));
        assert!(undecodable.blocks());
    }
}
