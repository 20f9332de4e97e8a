//! Pattern rules: the compiled form shared by built-in and gitleaks rules.
//!
//! A rule is a regex plus the cheap checks that turn a regex match into a
//! finding (secret group, entropy, allowlists, and for built-ins a boundary
//! and validator). Its keywords tie it to the aho-corasick pre-filter, and its
//! `reach` (the longest match the regex can produce, capped) bounds how far
//! from a keyword hit a match can lie. That bound is what lets the scanner run
//! the regex on a small window instead of the whole buffer.

pub(crate) mod builtin;
pub(crate) mod gitleaks;

use regex_automata::meta;

/// Upper bound on a rule's reach. Regexes that can match more than this
/// (`.*`, `{11,}`) only find matches that fit in this many bytes.
pub(crate) const MAX_RULE_REACH: usize = 4096;

/// Errors from compiling a rule's regular expressions.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// The rule's main regex is not valid Rust `regex` syntax.
    #[error(
        "rule `{rule_id}` ({origin}): regex does not compile: {detail}. \
         Rules use RE2 syntax as accepted by the Rust regex crate; \
         look-around, back-references and \\C are not supported, rewrite the pattern without them"
    )]
    InvalidRegex {
        rule_id: String,
        origin: String,
        detail: String,
    },
    /// An allowlist regex (per rule or global) is not valid syntax.
    #[error(
        "{scope} ({origin}): allowlist regex `{pattern}` does not compile: {detail}. \
         Fix or remove the allowlist entry"
    )]
    InvalidAllowlistRegex {
        scope: String,
        origin: String,
        pattern: String,
        detail: String,
    },
}

/// Which part of a match is "the secret" (what entropy, stopwords and the
/// redacted preview look at, and what the finding's offset/len cover).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SecretGroup {
    /// gitleaks' default: the first capture group that matched something,
    /// else the whole match.
    FirstNonEmpty,
    /// A specific group (0 = whole match).
    Index(usize),
}

/// What an allowlist's regexes are tested against (gitleaks `regexTarget`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RegexTarget {
    Secret,
    Match,
    Line,
}

/// A gitleaks allowlist. Findings it matches are dropped.
///
/// `paths`/`commits` are accepted but never match: the engine scans bytes,
/// not files. Under `condition = "AND"` such an allowlist therefore never
/// applies, which errs on the side of reporting.
#[derive(Debug)]
pub(crate) struct Allowlist {
    pub(crate) require_all: bool,
    pub(crate) target: RegexTarget,
    pub(crate) regexes: Vec<regex::bytes::Regex>,
    /// Lowercased; matched as substrings of the lowercased secret.
    pub(crate) stopwords: Vec<Vec<u8>>,
    pub(crate) has_unmatchable_criteria: bool,
}

impl Allowlist {
    /// Whether this allowlist drops a finding.
    pub(crate) fn allows(&self, secret: &[u8], matched: &[u8], line: &[u8]) -> bool {
        let target = match self.target {
            RegexTarget::Secret => secret,
            RegexTarget::Match => matched,
            RegexTarget::Line => line,
        };
        let regex_hit = || !target.is_empty() && self.regexes.iter().any(|r| r.is_match(target));
        let stopword_hit = || contains_stopword(secret, &self.stopwords);
        if self.require_all {
            if self.has_unmatchable_criteria {
                return false;
            }
            let mut checked = false;
            if !self.regexes.is_empty() {
                checked = true;
                if !regex_hit() {
                    return false;
                }
            }
            if !self.stopwords.is_empty() {
                checked = true;
                if !stopword_hit() {
                    return false;
                }
            }
            checked
        } else {
            regex_hit() || stopword_hit()
        }
    }
}

fn contains_stopword(secret: &[u8], stopwords: &[Vec<u8>]) -> bool {
    if stopwords.is_empty() || secret.is_empty() {
        return false;
    }
    let lower = secret.to_ascii_lowercase();
    stopwords
        .iter()
        .any(|w| !w.is_empty() && lower.windows(w.len()).any(|win| win == w.as_slice()))
}

/// Extra checks only built-in rules carry; they keep near-misses out without
/// look-around (which the regex engine lacks).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BuiltinChecks {
    /// The byte right after the secret must not satisfy this.
    pub(crate) tail: Option<fn(u8) -> bool>,
    /// The secret must satisfy this.
    pub(crate) validate: Option<fn(&[u8]) -> bool>,
}

/// A compiled pattern rule.
pub(crate) struct Rule {
    pub(crate) id: String,
    pub(crate) description: String,
    /// Where the rule came from ("builtin" or the caller's origin string).
    pub(crate) origin: String,
    pub(crate) regex: meta::Regex,
    /// Lowercased, non-empty. Empty list = runs on all data (slow path).
    pub(crate) keywords: Vec<String>,
    pub(crate) secret_group: SecretGroup,
    /// Findings need entropy strictly above this (gitleaks semantics).
    pub(crate) min_entropy: Option<f64>,
    pub(crate) allowlists: Vec<Allowlist>,
    pub(crate) checks: BuiltinChecks,
    /// Longest match the regex can produce, capped at [`MAX_RULE_REACH`].
    pub(crate) reach: usize,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule")
            .field("id", &self.id)
            .field("origin", &self.origin)
            .field("keywords", &self.keywords)
            .field("reach", &self.reach)
            .finish_non_exhaustive()
    }
}

/// A regex compiled for windowed scanning, with facts the scanner needs.
pub(crate) struct CompiledPattern {
    pub(crate) regex: meta::Regex,
    pub(crate) reach: usize,
    /// Number of explicit capture groups (excluding group 0).
    pub(crate) groups: usize,
}

/// Compiles a rule regex the way gitleaks' Go RE2 reads it as closely as the
/// Rust engine allows: Perl classes (`\w`, `\d`, `\s`, `\b`) are ASCII like in
/// Go, `\Q…\E` quoting is expanded, and matching is on raw bytes. A pattern
/// that needs Unicode mode (e.g. `\p{L}`) is retried with Unicode enabled.
pub(crate) fn compile_pattern(pattern: &str) -> Result<CompiledPattern, String> {
    let pattern = expand_quoted_literals(pattern);
    let mut first_error = None;
    for unicode in [false, true] {
        let syntax = regex_automata::util::syntax::Config::new()
            .unicode(unicode)
            .utf8(false);
        let built = meta::Builder::new()
            .configure(meta::Config::new().utf8_empty(false))
            .syntax(syntax)
            .build(&pattern);
        match built {
            Ok(regex) => {
                let reach = pattern_reach(&pattern, unicode);
                let groups = regex.captures_len().saturating_sub(1);
                return Ok(CompiledPattern {
                    regex,
                    reach,
                    groups,
                });
            }
            Err(e) => {
                if first_error.is_none() {
                    first_error = Some(match e.syntax_error() {
                        Some(syntax) => syntax.to_string(),
                        None => e.to_string(),
                    });
                }
            }
        }
    }
    Err(first_error.unwrap_or_default())
}

/// Compiles an allowlist regex (plain `regex::bytes`, same syntax rules).
pub(crate) fn compile_allowlist_regex(pattern: &str) -> Result<regex::bytes::Regex, String> {
    let pattern = expand_quoted_literals(pattern);
    let mut first_error = None;
    for unicode in [false, true] {
        match regex::bytes::RegexBuilder::new(&pattern)
            .unicode(unicode)
            .build()
        {
            Ok(r) => return Ok(r),
            Err(e) => {
                if first_error.is_none() {
                    first_error = Some(e.to_string());
                }
            }
        }
    }
    Err(first_error.unwrap_or_default())
}

/// Longest possible match in bytes, capped; unbounded patterns get the cap.
fn pattern_reach(pattern: &str, unicode: bool) -> usize {
    let parsed = regex_syntax::ParserBuilder::new()
        .unicode(unicode)
        .utf8(false)
        .build()
        .parse(pattern);
    match parsed {
        Ok(hir) => hir
            .properties()
            .maximum_len()
            .map_or(MAX_RULE_REACH, |n| n.min(MAX_RULE_REACH)),
        Err(_) => MAX_RULE_REACH,
    }
}

/// Go RE2 supports `\Q…\E` literal quoting; the Rust engine does not.
fn expand_quoted_literals(pattern: &str) -> String {
    if !pattern.contains("\\Q") {
        return pattern.to_string();
    }
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut rest = pattern;
    while let Some(pos) = find_unescaped_q(rest) {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        match after.find("\\E") {
            Some(end) => {
                out.push_str(&regex::escape(&after[..end]));
                rest = &after[end + 2..];
            }
            None => {
                out.push_str(&regex::escape(after));
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Byte index of a `\Q` that is not itself an escaped backslash.
fn find_unescaped_q(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i] == b'\\' {
            if bytes[i + 1] == b'Q' {
                return Some(i);
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    None
}

/// Shannon entropy in bits per byte (gitleaks computes it per character;
/// the two agree on ASCII secrets).
pub(crate) fn shannon_entropy(data: &[u8]) -> f64 {
    if data.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in data {
        counts[usize::from(b)] += 1;
    }
    let len = data.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / len;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn quoted_literals_are_escaped() {
        assert_eq!(expand_quoted_literals(r"a\Q.*\Eb"), r"a\.\*b");
        assert_eq!(expand_quoted_literals(r"\\Q"), r"\\Q");
        assert_eq!(expand_quoted_literals(r"x\Q+"), r"x\+");
    }

    #[test]
    fn reach_is_bounded_and_capped() {
        assert_eq!(compile_pattern("ab[0-9]{3}").unwrap().reach, 5);
        assert_eq!(compile_pattern("ab.*").unwrap().reach, MAX_RULE_REACH);
    }

    #[test]
    fn perl_classes_are_ascii_like_go() {
        let p = compile_pattern(r"^\w+$").unwrap();
        assert!(p.regex.is_match("abc_1"));
        assert!(!p.regex.is_match("é".as_bytes()));
        // A Unicode-only construct still compiles via the Unicode retry.
        assert!(compile_pattern(r"\p{Greek}+").is_ok());
    }

    #[test]
    fn lookaround_is_rejected() {
        assert!(compile_pattern(r"a(?=b)").is_err());
        assert!(compile_pattern(r"(a)\1").is_err());
    }

    #[test]
    fn entropy_matches_known_values() {
        assert_eq!(shannon_entropy(b"aaaa"), 0.0);
        assert!((shannon_entropy(b"abcd") - 2.0).abs() < 1e-9);
    }
}
