//! Exact-match secrets: values the caller knows (route tokens, host env values
//! marked secret) found verbatim and in the encodings an agent might use to
//! smuggle them: base64 (standard and URL-safe, at each byte alignment), hex
//! (lower/upper) and percent-encoding.
//!
//! Base64 of a secret embedded in a larger blob depends on the secret's offset
//! mod 3, and its first/last characters mix in neighbouring bytes. So for each
//! of the three alignments we register only the "stable inner part": the
//! characters whose 6 bits come entirely from the secret. That string occurs
//! in every base64 text containing the secret at that alignment, padded or
//! not, standalone or embedded.
//!
//! Matching uses a sampled q-gram sieve instead of an automaton: every
//! registered pattern is at least `L` bytes long, so checking one 4-byte
//! window every `L - 3` bytes (against a small bitmap) is enough to see every
//! occurrence. Each occurrence is seen at exactly one sample position (the
//! first at or after its start), so there are no duplicates. This costs a
//! fraction of a byte-by-byte automaton pass and does not slow down as
//! secrets are added (measured: an aho-corasick DFA over ~100+ patterns runs
//! at ~400 MB/s on this machine, below the scan budget).

use std::collections::HashMap;

use crate::scan::{Hit, Source};

/// Secrets shorter than this are refused: they would match by chance.
pub const MIN_SECRET_LEN: usize = 8;
/// Secrets longer than this are refused: it bounds the streaming overlap.
pub const MAX_SECRET_LEN: usize = 4096;

/// Width of the sieve's sampled window.
const GRAM: usize = 4;

/// Errors from registering an exact secret. The builder stays usable after
/// any of them, and nothing is registered for the rejected value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "secret `{id}` is {len} bytes; values shorter than {min} bytes are ignored \
         because they would match ordinary data by chance (nothing was registered)"
    )]
    TooShort { id: String, len: usize, min: usize },
    #[error(
        "secret `{id}` is {len} bytes; at most {max} bytes are supported \
         (register a distinctive part of it instead)"
    )]
    TooLong { id: String, len: usize, max: usize },
    #[error("secret id is empty; give every secret an id so findings can name it")]
    EmptyId,
}

/// How a registered secret appeared in the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SecretEncoding {
    /// The value itself.
    Raw,
    /// Base64; `alignment` is the secret's byte offset mod 3 within the
    /// encoded blob. Only the stable inner part is matched.
    Base64 {
        url_safe: bool,
        alignment: u8,
    },
    HexLower,
    HexUpper,
    /// Percent-encoding with `%XX` in the given hex case.
    PercentEncoded {
        upper_hex: bool,
        style: PercentStyle,
    },
}

/// Which bytes a percent-encoding escapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PercentStyle {
    /// Every byte outside RFC 3986 "unreserved" (`A-Za-z0-9-._~`).
    Rfc3986,
    /// As `Rfc3986`, but space as `+` (HTML form encoding).
    Form,
    /// Every byte that is not ASCII alphanumeric (over-eager encoders).
    AllSymbols,
}

impl std::fmt::Display for SecretEncoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Raw => f.write_str("raw"),
            Self::Base64 {
                url_safe,
                alignment,
            } => {
                let alphabet = if *url_safe { "base64url" } else { "base64" };
                write!(f, "{alphabet}@{alignment}")
            }
            Self::HexLower => f.write_str("hex"),
            Self::HexUpper => f.write_str("HEX"),
            Self::PercentEncoded { upper_hex, style } => {
                let case = if *upper_hex { "upper" } else { "lower" };
                let style = match style {
                    PercentStyle::Rfc3986 => "",
                    PercentStyle::Form => ",form",
                    PercentStyle::AllSymbols => ",all-symbols",
                };
                write!(f, "percent({case}{style})")
            }
        }
    }
}

/// One byte string to look for.
struct Pattern {
    secret: usize,
    encoding: SecretEncoding,
    bytes: Vec<u8>,
}

/// Registered secrets, before the sieve is built.
#[derive(Default)]
pub(crate) struct SecretsBuilder {
    entries: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for SecretsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.entries.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("SecretsBuilder").field("ids", &ids).finish()
    }
}

impl SecretsBuilder {
    pub(crate) fn add(&mut self, id: &str, value: &[u8]) -> Result<(), SecretError> {
        if id.is_empty() {
            return Err(SecretError::EmptyId);
        }
        if value.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort {
                id: id.to_string(),
                len: value.len(),
                min: MIN_SECRET_LEN,
            });
        }
        if value.len() > MAX_SECRET_LEN {
            return Err(SecretError::TooLong {
                id: id.to_string(),
                len: value.len(),
                max: MAX_SECRET_LEN,
            });
        }
        self.entries.push((id.to_string(), value.to_vec()));
        Ok(())
    }

    pub(crate) fn build(self) -> ExactSecrets {
        let mut ids = Vec::with_capacity(self.entries.len());
        let mut patterns: Vec<Pattern> = Vec::new();
        for (secret, (id, value)) in self.entries.into_iter().enumerate() {
            ids.push(id);
            for (encoding, bytes) in encodings(&value) {
                let duplicate = patterns
                    .iter()
                    .any(|p| p.secret == secret && p.bytes == bytes);
                if !duplicate {
                    patterns.push(Pattern {
                        secret,
                        encoding,
                        bytes,
                    });
                }
            }
        }
        let sieve = Sieve::build(&patterns);
        ExactSecrets {
            ids,
            patterns,
            sieve,
        }
    }
}

/// Compiled exact secrets.
pub(crate) struct ExactSecrets {
    ids: Vec<String>,
    patterns: Vec<Pattern>,
    sieve: Option<Sieve>,
}

impl std::fmt::Debug for ExactSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExactSecrets")
            .field("ids", &self.ids)
            .field("patterns", &self.patterns.len())
            .finish()
    }
}

impl ExactSecrets {
    pub(crate) fn ids(&self) -> impl Iterator<Item = &str> {
        self.ids.iter().map(String::as_str)
    }

    /// Secret id and encoding of a pattern (for findings).
    pub(crate) fn describe(&self, pattern: u32) -> Option<(&str, SecretEncoding)> {
        let p = self.patterns.get(usize::try_from(pattern).ok()?)?;
        Some((self.ids.get(p.secret)?.as_str(), p.encoding))
    }

    /// Distance between sample positions (0 = no secrets registered).
    pub(crate) fn stride(&self) -> u64 {
        self.sieve.as_ref().map_or(0, |s| s.stride as u64)
    }

    /// Longest pattern: how far past a sample position a match can end.
    pub(crate) fn max_len(&self) -> usize {
        self.sieve.as_ref().map_or(0, |s| s.max_len)
    }

    /// Checks sample positions `first, first + stride, …` below `end` (all
    /// absolute offsets). `data` holds the stream from offset `base`; it must
    /// reach `stride - 1` bytes before `first` and `max_len` bytes past the
    /// last sample, or matches there are skipped (never a panic).
    pub(crate) fn scan_samples(
        &self,
        data: &[u8],
        base: u64,
        first: u64,
        end: u64,
        out: &mut Vec<Hit>,
    ) {
        let Some(sieve) = &self.sieve else {
            return;
        };
        let (Some(mut at), Some(stop)) = (rel(first, base), rel(end, base)) else {
            return;
        };
        let stop = stop.min(data.len().saturating_sub(GRAM - 1));
        while at < stop {
            if let Some(&[a, b, c, d]) = data.get(at..at + GRAM) {
                let gram = u32::from_le_bytes([a, b, c, d]);
                if sieve.maybe_contains(gram) {
                    self.verify(sieve, gram, data, base, at, out);
                }
            }
            at += sieve.stride;
        }
    }

    fn verify(
        &self,
        sieve: &Sieve,
        gram: u32,
        data: &[u8],
        base: u64,
        at: usize,
        out: &mut Vec<Hit>,
    ) {
        let Some(candidates) = sieve.index.get(&gram) else {
            return;
        };
        for &(pattern, offset) in candidates {
            let Some(start) = at.checked_sub(offset as usize) else {
                continue;
            };
            let Some(p) = self.patterns.get(pattern as usize) else {
                continue;
            };
            if data.get(start..start + p.bytes.len()) == Some(p.bytes.as_slice()) {
                out.push(Hit::new(
                    base + start as u64,
                    p.bytes.len(),
                    Source::Secret(pattern),
                    &[],
                ));
            }
        }
    }
}

fn rel(abs: u64, base: u64) -> Option<usize> {
    usize::try_from(abs.checked_sub(base)?).ok()
}

/// Bitmap pre-check plus exact index of each pattern's first `stride` grams.
struct Sieve {
    stride: usize,
    max_len: usize,
    shift: u32,
    bits: Vec<u64>,
    index: HashMap<u32, Vec<(u32, u32)>>,
}

impl Sieve {
    fn build(patterns: &[Pattern]) -> Option<Self> {
        let min_len = patterns.iter().map(|p| p.bytes.len()).min()?;
        let max_len = patterns.iter().map(|p| p.bytes.len()).max()?;
        // Every pattern is >= MIN_SECRET_LEN >= GRAM bytes long.
        let stride = min_len.checked_sub(GRAM - 1)?.max(1);
        let entries = patterns.len() * stride;
        // ~32 bits per entry keeps false positives near 3%; 2^12..2^22 bits.
        let log2 = (entries * 32)
            .next_power_of_two()
            .trailing_zeros()
            .clamp(12, 22);
        let mut sieve = Sieve {
            stride,
            max_len,
            shift: 32 - log2,
            bits: vec![0; (1usize << log2) / 64],
            index: HashMap::new(),
        };
        for (i, p) in patterns.iter().enumerate() {
            let Ok(pattern) = u32::try_from(i) else {
                break;
            };
            for offset in 0..stride {
                if let Some(&[a, b, c, d]) = p.bytes.get(offset..offset + GRAM) {
                    let gram = u32::from_le_bytes([a, b, c, d]);
                    let slot = sieve.slot(gram);
                    if let Some(word) = sieve.bits.get_mut(slot >> 6) {
                        *word |= 1 << (slot & 63);
                    }
                    sieve
                        .index
                        .entry(gram)
                        .or_default()
                        .push((pattern, u32::try_from(offset).unwrap_or(u32::MAX)));
                }
            }
        }
        Some(sieve)
    }

    #[inline]
    fn slot(&self, gram: u32) -> usize {
        (gram.wrapping_mul(0x9E37_79B1) >> self.shift) as usize
    }

    #[inline]
    fn maybe_contains(&self, gram: u32) -> bool {
        let slot = self.slot(gram);
        self.bits
            .get(slot >> 6)
            .is_some_and(|w| w & (1 << (slot & 63)) != 0)
    }
}

/// All searchable forms of a secret value.
fn encodings(value: &[u8]) -> Vec<(SecretEncoding, Vec<u8>)> {
    let mut out = vec![(SecretEncoding::Raw, value.to_vec())];
    for alignment in 0..3u8 {
        let std = base64_inner(value, alignment);
        if std.len() >= MIN_SECRET_LEN {
            let url: Vec<u8> = std
                .iter()
                .map(|&c| match c {
                    b'+' => b'-',
                    b'/' => b'_',
                    c => c,
                })
                .collect();
            out.push((
                SecretEncoding::Base64 {
                    url_safe: false,
                    alignment,
                },
                std,
            ));
            out.push((
                SecretEncoding::Base64 {
                    url_safe: true,
                    alignment,
                },
                url,
            ));
        }
    }
    out.push((SecretEncoding::HexLower, hex(value, b"0123456789abcdef")));
    out.push((SecretEncoding::HexUpper, hex(value, b"0123456789ABCDEF")));
    for upper_hex in [false, true] {
        for style in [
            PercentStyle::Rfc3986,
            PercentStyle::Form,
            PercentStyle::AllSymbols,
        ] {
            if style == PercentStyle::Form && !value.contains(&b' ') {
                continue;
            }
            out.push((
                SecretEncoding::PercentEncoded { upper_hex, style },
                percent_encode(value, upper_hex, style),
            ));
        }
    }
    out
}

const BASE64_STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Base64 characters that depend only on `value` when it starts `alignment`
/// bytes into a 3-byte group.
fn base64_inner(value: &[u8], alignment: u8) -> Vec<u8> {
    let lead = usize::from(alignment);
    let mut bytes = vec![0u8; lead];
    bytes.extend_from_slice(value);
    let encoded = base64_unpadded(&bytes);
    // Character i covers bits [6i, 6i+6); the secret covers [8*lead, 8*(lead+len)).
    let first = (8 * lead).div_ceil(6);
    let end = (8 * (lead + value.len())) / 6;
    encoded
        .get(first..end)
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

fn base64_unpadded(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            let index = (n >> (18 - 6 * i)) & 63;
            out.push(BASE64_STD[index as usize]);
        }
    }
    out
}

fn hex(value: &[u8], digits: &[u8; 16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() * 2);
    for &b in value {
        out.push(digits[usize::from(b >> 4)]);
        out.push(digits[usize::from(b & 15)]);
    }
    out
}

fn percent_encode(value: &[u8], upper_hex: bool, style: PercentStyle) -> Vec<u8> {
    let digits: &[u8; 16] = if upper_hex {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let mut out = Vec::with_capacity(value.len() * 3);
    for &b in value {
        let unreserved =
            matches!(b, b'-' | b'.' | b'_' | b'~') && style != PercentStyle::AllSymbols;
        if b.is_ascii_alphanumeric() || unreserved {
            out.push(b);
        } else if b == b' ' && style == PercentStyle::Form {
            out.push(b'+');
        } else {
            out.push(b'%');
            out.push(digits[usize::from(b >> 4)]);
            out.push(digits[usize::from(b & 15)]);
        }
    }
    out
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]
mod tests {
    use super::*;
    use crate::{FindingKind, RuleSetBuilder};

    const SECRET: &[u8] = b"s3cr3t/Value+with?reserved&chars=1";

    fn base64_padded(data: &[u8], url_safe: bool) -> Vec<u8> {
        let mut out = base64_unpadded(data);
        while out.len() % 4 != 0 {
            out.push(b'=');
        }
        if url_safe {
            for c in &mut out {
                *c = match *c {
                    b'+' => b'-',
                    b'/' => b'_',
                    c => c,
                };
            }
        }
        out
    }

    fn rules() -> crate::RuleSet {
        let mut b = RuleSetBuilder::new();
        b.add_secret("route-token", SECRET).unwrap();
        b.build().unwrap()
    }

    fn found_encodings(data: &[u8]) -> Vec<SecretEncoding> {
        rules()
            .scan(data)
            .into_iter()
            .map(|f| match f.kind {
                FindingKind::Secret { encoding } => encoding,
                FindingKind::Rule => panic!("unexpected rule finding {f:?}"),
            })
            .collect()
    }

    #[test]
    fn base64_matches_reference_encoder() {
        assert_eq!(base64_padded(b"", false), b"");
        assert_eq!(base64_padded(b"f", false), b"Zg==");
        assert_eq!(base64_padded(b"fo", false), b"Zm8=");
        assert_eq!(base64_padded(b"foobar", false), b"Zm9vYmFy");
        assert_eq!(base64_padded(&[0xfb, 0xff], true), b"-_8=");
    }

    #[test]
    fn raw_secret_is_found_with_its_offset() {
        let mut data = b"prefix ".to_vec();
        data.extend_from_slice(SECRET);
        data.extend_from_slice(b" suffix");
        let found = rules().scan(&data);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].rule_id, "route-token");
        assert_eq!(found[0].offset, 7);
        assert_eq!(found[0].len, SECRET.len());
        assert_eq!(found_encodings(&data), [SecretEncoding::Raw]);
    }

    #[test]
    fn base64_is_found_at_every_alignment_in_a_larger_blob() {
        for url_safe in [false, true] {
            for lead in 0..6usize {
                for trail in 0..3usize {
                    let mut blob: Vec<u8> = (0..lead).map(|i| (i * 37 + 11) as u8).collect();
                    blob.extend_from_slice(SECRET);
                    blob.extend((0..trail).map(|i| (i * 91 + 3) as u8));
                    let mut data = b"{\"blob\":\"".to_vec();
                    data.extend_from_slice(&base64_padded(&blob, url_safe));
                    data.extend_from_slice(b"\"}");
                    let expected = SecretEncoding::Base64 {
                        url_safe,
                        alignment: (lead % 3) as u8,
                    };
                    let found = found_encodings(&data);
                    // URL-safe and standard forms coincide when the inner part
                    // has no + or /; either label is then correct.
                    assert!(
                        found.iter().any(|e| *e == expected
                            || matches!(e, SecretEncoding::Base64 { alignment, .. } if *alignment == (lead % 3) as u8)),
                        "lead {lead} trail {trail} url {url_safe}: {found:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn unpadded_standalone_base64_is_found() {
        let data = base64_unpadded(SECRET);
        assert!(!found_encodings(&data).is_empty());
    }

    #[test]
    fn hex_lower_and_upper_are_found() {
        let lower = hex(SECRET, b"0123456789abcdef");
        assert_eq!(found_encodings(&lower), [SecretEncoding::HexLower]);
        let upper = String::from_utf8(lower).unwrap().to_uppercase();
        assert_eq!(
            found_encodings(upper.as_bytes()),
            [SecretEncoding::HexUpper]
        );
    }

    #[test]
    fn percent_encoded_forms_are_found() {
        let lower = format!(
            "GET /x?t={} HTTP/1.1",
            String::from_utf8(percent_encode(SECRET, false, PercentStyle::Rfc3986)).unwrap()
        );
        assert!(lower.contains("%2f"));
        assert_eq!(
            found_encodings(lower.as_bytes()),
            [SecretEncoding::PercentEncoded {
                upper_hex: false,
                style: PercentStyle::Rfc3986
            }]
        );
        let upper = String::from_utf8(percent_encode(SECRET, true, PercentStyle::Rfc3986)).unwrap();
        assert!(upper.contains("%2F"));
        assert_eq!(
            found_encodings(upper.as_bytes()),
            [SecretEncoding::PercentEncoded {
                upper_hex: true,
                style: PercentStyle::Rfc3986
            }]
        );
        // Encoders that also escape unreserved symbols ("-" as %2D).
        let eager = b"route-token.with_symbols~1";
        let mut b = RuleSetBuilder::new();
        b.add_secret("eager", eager).unwrap();
        let rs = b.build().unwrap();
        let data = percent_encode(eager, true, PercentStyle::AllSymbols);
        assert!(data.windows(3).any(|w| w == b"%2D"));
        assert_eq!(rs.scan(&data).len(), 1);
    }

    #[test]
    fn form_encoding_of_spaces_is_found() {
        let mut b = RuleSetBuilder::new();
        b.add_secret("pass", b"correct horse battery").unwrap();
        let rs = b.build().unwrap();
        assert_eq!(rs.scan(b"p=correct+horse+battery&x=1").len(), 1);
        assert_eq!(rs.scan(b"p=correct%20horse%20battery").len(), 1);
    }

    #[test]
    fn short_secrets_are_refused_and_not_registered() {
        let mut b = RuleSetBuilder::new();
        let err = b.add_secret("pin", b"1234567").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("shorter than 8"), "{msg}");
        assert!(!msg.contains("1234567"), "error leaks the secret: {msg}");
        b.add_secret("ok", b"12345678").unwrap();
        let rs = b.build().unwrap();
        assert_eq!(rs.secret_ids().collect::<Vec<_>>(), ["ok"]);
        assert!(rs.scan(b"xx 1234567 xx").is_empty());
        assert_eq!(rs.scan(b"xx 12345678 xx").len(), 1);
        assert!(b_empty_id_refused());
    }

    fn b_empty_id_refused() -> bool {
        RuleSetBuilder::new().add_secret("", b"abcdefghij").is_err()
    }

    #[test]
    fn minimum_length_secret_is_found_in_all_encodings() {
        let value = b"Ab3$9zQ!";
        let mut b = RuleSetBuilder::new();
        b.add_secret("short", value).unwrap();
        let rs = b.build().unwrap();
        for lead in 0..3usize {
            let mut blob = vec![b'x'; lead];
            blob.extend_from_slice(value);
            blob.extend_from_slice(b"tail");
            let data = base64_padded(&blob, false);
            assert_eq!(rs.scan(&data).len(), 1, "lead {lead}");
        }
        assert_eq!(rs.scan(&hex(value, b"0123456789abcdef")).len(), 1);
        assert_eq!(
            rs.scan(&percent_encode(value, true, PercentStyle::Rfc3986))
                .len(),
            1
        );
    }

    #[test]
    fn overlapping_occurrences_are_each_found_once() {
        let mut b = RuleSetBuilder::new();
        b.add_secret("rep", b"abababababab").unwrap();
        let rs = b.build().unwrap();
        // Occurrences at 0, 2, 4.
        let found = rs.scan(b"abababababababababXX");
        let offsets: Vec<u64> = found.iter().map(|f| f.offset).collect();
        assert_eq!(offsets, [0, 2, 4, 6]);
    }
}
