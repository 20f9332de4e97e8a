//! `bottle-dlp`: the secret-detection (DLP) engine behind bottle's egress
//! proxy (request headers, URLs, streamed bodies) and git-gate (added lines of
//! pushed commits).
//!
//! The engine only reports [`Finding`]s; callers decide whether to block or
//! warn ([`Mode`], [`Verdict`]).
//!
//! # What it detects
//!
//! * **Built-in rules** for well-known credential formats (AWS, GitHub,
//!   GitLab, Slack, Stripe, Google, OpenAI, Anthropic, private keys, JWTs,
//!   npm, PyPI, Hugging Face, SendGrid, DigitalOcean, Shopify, …), see
//!   [`RuleSet::rule_ids`]. Enable with [`RuleSetBuilder::with_builtin_rules`].
//! * **User rules** from gitleaks TOML configs
//!   ([`RuleSetBuilder::add_gitleaks_toml`]; what is and is not supported is
//!   listed in the `rules::gitleaks` module docs).
//! * **Exact secrets** the caller registers ([`RuleSetBuilder::add_secret`]),
//!   found verbatim and base64 (standard/URL-safe, any alignment in a larger
//!   blob), hex (lower/upper) and percent-encoded. Values under
//!   [`MIN_SECRET_LEN`] (8) bytes are refused with an error the caller can log
//!   and ignore.
//!
//! # Pipeline
//!
//! 1. **Keyword pre-filter**: each 64 KiB block is ASCII-lowercased into a
//!    scratch buffer and searched once for all rule keywords (aho-corasick's
//!    SIMD "Teddy" searcher for up to 128 keywords, a DFA beyond; keywords
//!    under 4 bytes get a second small searcher so they do not weaken the
//!    4-byte fingerprints of the rest).
//! 2. **Windowed regexes**: a keyword hit at offset `s` runs that keyword's
//!    rules only on `[s + len - reach, s + reach)`, where `reach` is the
//!    longest match the rule's regex can produce (capped at 4096 bytes).
//!    Overlapping windows of a rule merge, so dense keywords cost one pass.
//!    Clean data therefore costs one keyword pass.
//! 3. **Exact secrets** use a sampled 4-byte-gram sieve (one bitmap probe
//!    every `L - 3` bytes, `L` = shortest registered encoding), which sees each
//!    occurrence exactly once and does not slow down as secrets are added.
//! 4. Rules without keywords (possible in gitleaks configs) run over the data
//!    in 64 KiB segments: correct but a full regex pass each, so slow.
//!
//! # Bounds
//!
//! * Matches longer than 4096 bytes are only found up to that length.
//! * A streaming scan ([`RuleSet::stream`], [`RuleSet::stream_owned`]) keeps
//!   a bounded tail (whatever a pending window or secret could still need,
//!   roughly 50–200 KiB) regardless of body size, finds secrets split across
//!   chunks, and reports each finding once. Stream and whole-buffer scans of
//!   the same bytes give the same findings, whatever the chunking.
//! * [`DecodingScanner`] decodes `gzip`, `deflate`, `br`, `zstd` (chains of up
//!   to 2) with a cap on decoded bytes (default 64 MiB); exceeding it, corrupt
//!   or truncated input, or an unsupported encoding is a [`DecodeError`], on
//!   which the caller must block.
//! * Nothing panics on any input.
//!
//! # Secrecy
//!
//! Findings carry a rule id, offset, length and a redacted preview: at most a
//! 4-byte prefix (and never more than a quarter of the secret) for pattern
//! rules, no prefix for exact secrets. `Debug` output of every type that holds
//! secrets or scanned bytes omits them.
//!
//! # Example
//!
//! ```
//! use bottle_dlp::{Mode, RuleSetBuilder};
//!
//! let mut builder = RuleSetBuilder::new().with_builtin_rules();
//! builder.add_secret("route:github-token", b"an-injected-route-token").unwrap();
//! let rules = builder.build().unwrap();
//!
//! let findings = rules.scan(b"curl -H 'x: an-injected-route-token' ...");
//! assert_eq!(findings[0].rule_id, "route:github-token");
//! assert!(Mode::Block.judge(findings).blocks());
//!
//! // Streaming: a secret split across chunks is still found once.
//! let mut stream = rules.stream();
//! let mut found = stream.feed(b"key=AKIAIOSFOD");
//! found.extend(stream.feed(b"NN7EXAMPLE\n"));
//! found.extend(stream.finish());
//! assert_eq!(found.len(), 1);
//! ```

mod decode;
mod exact;
mod finding;
mod keywords;
mod rules;
mod ruleset;
mod scan;
mod stream;
mod verdict;

pub use decode::{
    parse_content_encoding, ContentCoding, DecodeError, DecodeLimits, DecodingScanner,
};
pub use exact::{PercentStyle, SecretEncoding, SecretError, MAX_SECRET_LEN, MIN_SECRET_LEN};
pub use finding::{Finding, FindingKind, LineCol, LineIndex, TextFinding};
pub use rules::gitleaks::GitleaksError;
pub use rules::RuleError;
pub use ruleset::{DlpError, RuleSet, RuleSetBuilder};
pub use stream::{OwnedStreamScanner, StreamScanner};
pub use verdict::{Mode, Verdict};

#[cfg(test)]
mod tests;
