//! Cross-module tests: streaming vs whole-buffer equivalence, chunk
//! boundaries, memory bounds, decompression, and secrecy of outputs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::io::Write;
use std::sync::Arc;

use crate::{
    DecodeError, DecodeLimits, DecodingScanner, Finding, FindingKind, LineCol, RuleSet,
    RuleSetBuilder,
};

/// Small deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn string(&mut self, charset: &[u8], len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| charset[self.below(charset.len())])
            .collect()
    }
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const TOKEN: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

const EXACT: &[u8] = b"route-token-7f3a9c2e51b8d4";

/// A user config exercising keyword-less rules, anchors, boundaries and
/// allowlists, so the equivalence test covers those paths too.
const USER_RULES: &str = r#"
[[rules]]
id = "user-anchored"
regex = '''(?m)^secret:\s*([a-z0-9]{12})$'''
keywords = ["secret:"]

[[rules]]
id = "user-boundary"
regex = '''\bkey_([A-Z]{10})\b'''
keywords = ["key_"]
[rules.allowlist]
regexTarget = "line"
regexes = ['''nolint''']

[[rules]]
id = "user-keywordless"
regex = '''zz[0-9]{6}zz'''

[[rules]]
id = "user-unbounded"
regex = '''begin([a-z]+)end'''
keywords = ["begin"]
"#;

fn full_rules() -> RuleSet {
    let mut b = RuleSetBuilder::new().with_builtin_rules();
    b.add_secret("exact", EXACT).unwrap();
    b.add_gitleaks_toml(USER_RULES, "user.toml").unwrap();
    b.build().unwrap()
}

fn b64(data: &[u8]) -> Vec<u8> {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize]);
            } else {
                out.push(b'=');
            }
        }
    }
    out
}

/// Random snippets: secrets, keywords, near-misses, separators.
fn snippet(rng: &mut Rng) -> Vec<u8> {
    match rng.below(16) {
        0 => [b"ghp_".as_slice(), &rng.string(ALNUM, 36)].concat(),
        1 => [
            b"AKIA".as_slice(),
            &rng.string(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16),
        ]
        .concat(),
        2 => EXACT.to_vec(),
        3 => {
            let lead = rng.below(7);
            let mut blob = rng.string(ALNUM, lead);
            blob.extend_from_slice(EXACT);
            let trail = rng.below(5);
            blob.extend(rng.string(ALNUM, trail));
            b64(&blob)
        }
        // Dense keyword hits: exercises window merging and the group span cap.
        4 => b"key_ABCDEFGHIJ ".repeat(rng.below(4000) + 1),
        5 => [b"\nsecret: ".as_slice(), &rng.string(b"abc123", 12), b"\n"].concat(),
        6 => [b" key_".as_slice(), &rng.string(b"ABCDEFGHIJ", 10), b" "].concat(),
        7 => [b"zz".as_slice(), &rng.string(b"0123456789", 6), b"zz"].concat(),
        8 => {
            let n = rng.below(6000);
            [b"begin".as_slice(), &rng.string(b"abc", n), b"end"].concat()
        }
        9 => [
            b"-----BEGIN RSA PRIVATE KEY-----\n".as_slice(),
            &rng.string(TOKEN, 64),
            b"\n",
        ]
        .concat(),
        10 => [
            b"eyJhbGciOiJIUzI1NiJ9.eyJ".as_slice(),
            &rng.string(TOKEN, 30),
            b".",
            &rng.string(TOKEN, 43),
        ]
        .concat(),
        11 => [b"aws_secret_access_key=".as_slice(), &rng.string(ALNUM, 40)].concat(),
        12 => {
            let n = rng.below(4) + 1;
            rng.string(b"\n \t", n)
        }
        13 => match rng.below(3) {
            // Short keywords (own searcher) next to long ones.
            0 => [
                b"hf_".as_slice(),
                &rng.string(b"abcdefghijklmnopqrstuvwxyzABC", 34),
            ]
            .concat(),
            1 => [
                b"SG.".as_slice(),
                &rng.string(TOKEN, 22),
                b".",
                &rng.string(TOKEN, 43),
            ]
            .concat(),
            _ => b"xoxb-".repeat(rng.below(20) + 1),
        },
        14 => [b"sk-ant-api03-".as_slice(), &rng.string(TOKEN, 95)].concat(),
        _ => (0..rng.below(3000)).map(|_| rng.next() as u8).collect(),
    }
}

fn random_corpus(rng: &mut Rng, target: usize) -> Vec<u8> {
    let mut data = Vec::new();
    while data.len() < target {
        data.extend(snippet(rng));
    }
    data
}

fn sorted(mut f: Vec<Finding>) -> Vec<(u64, usize, String)> {
    f.sort_by(|a, b| (a.offset, a.len, &a.rule_id).cmp(&(b.offset, b.len, &b.rule_id)));
    f.into_iter()
        .map(|f| (f.offset, f.len, f.rule_id))
        .collect()
}

fn stream_scan(rules: &RuleSet, data: &[u8], cuts: &[usize]) -> Vec<Finding> {
    let mut s = rules.stream();
    let mut found = Vec::new();
    let mut prev = 0;
    for &cut in cuts {
        found.extend(s.feed(&data[prev..cut]));
        prev = cut;
    }
    found.extend(s.feed(&data[prev..]));
    found.extend(s.finish());
    found
}

#[test]
fn random_chunkings_give_the_same_findings_as_whole_buffer() {
    let rules = full_rules();
    // DLP_FUZZ_SEEDS=500 cargo test --release … for a longer run.
    let seeds: u64 = std::env::var("DLP_FUZZ_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    for seed in 0..seeds {
        let mut rng = Rng::new(seed);
        let size = 60_000 + rng.below(200_000);
        let data = random_corpus(&mut rng, size);
        let whole = sorted(rules.scan(&data));
        assert!(!whole.is_empty());
        for _ in 0..3 {
            let mut cuts = Vec::new();
            let mut at = 0;
            loop {
                at += match rng.below(4) {
                    0 => rng.below(8) + 1,
                    1 => rng.below(300) + 1,
                    2 => rng.below(5000) + 1,
                    _ => rng.below(100_000) + 1,
                };
                if at >= data.len() {
                    break;
                }
                cuts.push(at);
            }
            let streamed = sorted(stream_scan(&rules, &data, &cuts));
            assert_eq!(streamed, whole, "seed {seed}, {} cuts", cuts.len());
        }
    }
}

#[test]
fn random_bytes_never_panic_and_stream_matches_whole() {
    let rules = full_rules();
    let seeds: u64 = std::env::var("DLP_FUZZ_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    for seed in 100..100 + seeds {
        let mut rng = Rng::new(seed);
        let len = rng.below(20_000);
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let whole = sorted(rules.scan(&data));
        let cuts: Vec<usize> = {
            let mut c: Vec<usize> = (0..rng.below(50)).map(|_| rng.below(len.max(1))).collect();
            c.sort_unstable();
            c
        };
        assert_eq!(sorted(stream_scan(&rules, &data, &cuts)), whole);
    }
}

#[test]
fn secrets_split_at_every_offset_are_found_exactly_once() {
    let rules = full_rules();
    let mut rng = Rng::new(7);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "github-pat",
            [b"ghp_".as_slice(), &rng.string(ALNUM, 36)].concat(),
        ),
        ("aws-access-key-id", b"AKIAIOSFODNN7EXAMPLE".to_vec()),
        ("exact", EXACT.to_vec()),
        ("exact", b64(&[b"xy".as_slice(), EXACT, b"!"].concat())),
        (
            "private-key",
            [
                b"-----BEGIN OPENSSH PRIVATE KEY-----\n".as_slice(),
                &rng.string(ALNUM, 70),
            ]
            .concat(),
        ),
        ("user-anchored", b"\nsecret: abc123abc123\n".to_vec()),
    ];
    for (rule, secret) in cases {
        let mut data = b"some leading text, more text\n".repeat(3);
        let start = data.len();
        data.extend_from_slice(&secret);
        data.extend_from_slice(b"\ntrailing text follows here\n");
        let end = start + secret.len();
        let expect = rules
            .scan(&data)
            .into_iter()
            .filter(|f| f.rule_id == rule)
            .count();
        assert_eq!(expect, 1, "{rule} not found in whole buffer");
        for cut in start.saturating_sub(1)..=end + 1 {
            let found = stream_scan(&rules, &data, &[cut]);
            let n = found.iter().filter(|f| f.rule_id == rule).count();
            assert_eq!(n, 1, "{rule} split at {cut}: {found:?}");
        }
        // Two cuts inside the secret, and byte-at-a-time.
        for a in start..end {
            let b = (a + 7).min(end);
            let found = stream_scan(&rules, &data, &[a, b]);
            assert_eq!(found.iter().filter(|f| f.rule_id == rule).count(), 1);
        }
        let all: Vec<usize> = (1..data.len()).collect();
        let found = stream_scan(&rules, &data, &all);
        assert_eq!(found.iter().filter(|f| f.rule_id == rule).count(), 1);
    }
}

#[test]
fn stream_memory_stays_bounded() {
    let rules = full_rules();
    let mut rng = Rng::new(42);
    let mut stream = rules.stream();
    let mut max = 0;
    let mut fed = 0usize;
    while fed < 6_000_000 {
        let size = rng.below(200_000) + 1;
        let chunk = random_corpus(&mut rng, size);
        fed += chunk.len();
        stream.feed(&chunk);
        max = max.max(stream.buffered_bytes());
    }
    assert_eq!(stream.bytes_seen(), fed as u64);
    // Tail + one 64 KiB slice; generous bound, far below the 6 MB fed.
    assert!(max < 512 * 1024, "buffered up to {max} bytes");
    stream.finish();
}

#[test]
fn findings_and_debug_output_never_contain_secrets() {
    let exact = b"Sup3rS3cretRouteValue!";
    let token = format!(
        "ghp_{}",
        String::from_utf8(Rng::new(9).string(ALNUM, 36)).unwrap()
    );
    let mut builder = RuleSetBuilder::new().with_builtin_rules();
    builder.add_secret("route", exact).unwrap();
    let builder_debug = format!("{builder:?}");
    let rules = Arc::new(builder.build().unwrap());
    let body = format!(
        "Authorization: Bearer {}\n{token}\n{}\n",
        String::from_utf8_lossy(exact),
        String::from_utf8_lossy(&b64(exact))
    );

    let findings = rules.scan(body.as_bytes());
    assert_eq!(findings.len(), 3, "{findings:?}");
    let mut stream = rules.stream();
    let streamed = stream.feed(&body.as_bytes()[..body.len() - 30]);
    let stream_debug = format!("{stream:?}");
    let mut owned = rules.stream_owned();
    owned.feed(body.as_bytes());
    let owned_debug = format!("{owned:?}");
    let mut decoding = DecodingScanner::new(&rules, "identity", DecodeLimits::default()).unwrap();
    decoding.feed(body.as_bytes()).unwrap();
    let decoding_debug = format!("{decoding:?}");
    let short_err = RuleSetBuilder::new()
        .add_secret("pin", b"1234567")
        .unwrap_err();

    let outputs = [
        format!("{findings:?}"),
        findings
            .iter()
            .map(|f| f.redacted.clone())
            .collect::<Vec<_>>()
            .join(" "),
        format!("{streamed:?}"),
        format!("{rules:?}"),
        builder_debug,
        stream_debug,
        owned_debug,
        decoding_debug,
        format!("{short_err} {short_err:?}"),
    ];
    let exact_text = String::from_utf8_lossy(exact).to_string();
    let exact_b64 = String::from_utf8_lossy(&b64(exact)).to_string();
    for out in &outputs {
        assert!(!out.contains(&exact_text), "exact secret leaked: {out}");
        assert!(
            !out.contains(&exact_text[..8]),
            "exact secret prefix leaked: {out}"
        );
        assert!(
            !out.contains(&exact_b64[..12]),
            "encoded secret leaked: {out}"
        );
        assert!(!out.contains(&token[..9]), "token leaked: {out}");
        assert!(!out.contains("1234567"), "refused secret leaked: {out}");
    }
    for f in &findings {
        match f.kind {
            FindingKind::Secret { .. } => assert!(f.redacted.starts_with('…'), "{}", f.redacted),
            FindingKind::Rule => assert_eq!(f.redacted, format!("ghp_…({})", token.len())),
        }
    }
}

#[test]
fn scan_text_reports_line_and_column() {
    let rules = RuleSetBuilder::new().with_builtin_rules().build().unwrap();
    let text = "line one\nline two\n  key = AKIAIOSFODNN7EXAMPLE\n";
    let found = rules.scan_text(text);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].position, LineCol { line: 3, column: 9 });
}

#[test]
fn rule_set_and_scanners_are_thread_safe() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<RuleSet>();
    send::<crate::OwnedStreamScanner>();
    send::<DecodingScanner>();
    let rules = Arc::new(full_rules());
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let rules = Arc::clone(&rules);
            std::thread::spawn(move || rules.scan(b"AKIAIOSFODNN7EXAMPLE").len())
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 1);
    }
}

// --- decompression ---------------------------------------------------------

fn body_with_secret() -> Vec<u8> {
    let mut body = b"{\"data\": \"".to_vec();
    body.extend(b"lorem ipsum dolor sit amet ".repeat(4000));
    body.extend_from_slice(b"\", \"aws\": \"AKIAIOSFODNN7EXAMPLE\", \"t\": \"");
    body.extend_from_slice(EXACT);
    body.extend_from_slice(b"\"}");
    body
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn raw_deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(data).unwrap();
    }
    out
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).unwrap()
}

fn decode_scan(
    rules: &Arc<RuleSet>,
    encoding: &str,
    body: &[u8],
    chunk: usize,
    limits: DecodeLimits,
) -> Result<Vec<Finding>, DecodeError> {
    let mut s = DecodingScanner::new(rules, encoding, limits)?;
    let mut found = Vec::new();
    for c in body.chunks(chunk.max(1)) {
        found.extend(s.feed(c)?);
    }
    found.extend(s.finish()?);
    Ok(found)
}

fn decoding_rules() -> Arc<RuleSet> {
    let mut b = RuleSetBuilder::new().with_builtin_rules();
    b.add_secret("exact", EXACT).unwrap();
    Arc::new(b.build().unwrap())
}

#[test]
fn compressed_bodies_with_planted_secrets_are_caught() {
    let rules = decoding_rules();
    let body = body_with_secret();
    let plain = sorted(rules.scan(&body));
    assert_eq!(plain.len(), 2);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("gzip", gzip(&body)),
        ("x-gzip", gzip(&body)),
        ("deflate", zlib(&body)),
        ("deflate", raw_deflate(&body)),
        ("br", brotli(&body)),
        ("zstd", zstd(&body)),
        ("gzip, br", brotli(&gzip(&body))),
        ("identity", body.clone()),
        ("", body.clone()),
        ("GZIP, identity", gzip(&body)),
    ];
    for (encoding, encoded) in cases {
        for chunk in [1, 7, 1000, 1 << 20] {
            if chunk == 1 && encoded.len() > 20_000 {
                continue;
            }
            let found = decode_scan(&rules, encoding, &encoded, chunk, DecodeLimits::default())
                .unwrap_or_else(|e| panic!("{encoding} chunk {chunk}: {e}"));
            assert_eq!(sorted(found), plain, "{encoding} chunk {chunk}");
        }
    }
}

#[test]
fn decompression_bombs_hit_the_limit() {
    let rules = decoding_rules();
    let zeros = vec![0u8; 4 << 20];
    let limits = DecodeLimits {
        max_decoded_bytes: 1 << 20,
        ..DecodeLimits::default()
    };
    for (encoding, encoded) in [
        ("gzip", gzip(&zeros)),
        ("deflate", zlib(&zeros)),
        ("br", brotli(&zeros)),
        ("zstd", zstd(&zeros)),
        ("gzip, zstd", zstd(&gzip(&zeros))),
    ] {
        assert!(
            encoded.len() < 64 * 1024,
            "{encoding} bomb is {} bytes",
            encoded.len()
        );
        let err = decode_scan(&rules, encoding, &encoded, 4096, limits).unwrap_err();
        assert!(
            matches!(err, DecodeError::TooLarge { limit } if limit == 1 << 20),
            "{encoding}: {err}"
        );
    }
    // Identity bodies are not decompression and have no limit.
    let found = decode_scan(&rules, "identity", &zeros, 1 << 16, limits).unwrap();
    assert!(found.is_empty());
}

#[test]
fn corrupt_or_truncated_streams_block() {
    let rules = decoding_rules();
    let body = body_with_secret();
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    for (encoding, encoded) in [
        ("gzip", gzip(&body)),
        ("deflate", zlib(&body)),
        ("br", brotli(&body)),
        ("zstd", zstd(&body)),
    ] {
        // Truncated.
        cases.push((encoding, encoded[..encoded.len() / 2].to_vec()));
        // Bytes flipped in the middle.
        let mut flipped = encoded.clone();
        let mid = flipped.len() / 2;
        for b in &mut flipped[mid..mid + 16] {
            *b ^= 0x5a;
        }
        cases.push((encoding, flipped));
        // Not compressed at all.
        cases.push((
            encoding,
            b"this is plain text, not compressed at all".repeat(10),
        ));
    }
    // Trailing garbage after a complete gzip member.
    let mut trailing = gzip(&body);
    trailing.extend_from_slice(b"garbage!");
    cases.push(("gzip", trailing));
    for (encoding, data) in cases {
        let result = decode_scan(&rules, encoding, &data, 777, DecodeLimits::default());
        match result {
            Err(DecodeError::Corrupt { .. }) => {}
            other => panic!("{encoding}: expected Corrupt, got {other:?}"),
        }
    }
}

#[test]
fn unsupported_or_excessive_encodings_are_refused() {
    let rules = decoding_rules();
    let err = DecodingScanner::new(&rules, "compress", DecodeLimits::default()).unwrap_err();
    assert!(
        matches!(err, DecodeError::UnsupportedEncoding { .. }),
        "{err}"
    );
    let err = DecodingScanner::new(&rules, "gzip, br, zstd", DecodeLimits::default()).unwrap_err();
    assert!(
        matches!(err, DecodeError::TooManyLayers { count: 3, max: 2 }),
        "{err}"
    );
}

#[test]
fn failed_decoder_stays_failed() {
    let rules = decoding_rules();
    let mut s = DecodingScanner::new(&rules, "gzip", DecodeLimits::default()).unwrap();
    assert!(s.feed(b"definitely not gzip").is_err());
    assert!(matches!(s.feed(b"more"), Err(DecodeError::AlreadyFailed)));
}

#[test]
fn many_keywords_fall_back_to_a_dfa_and_still_agree() {
    // > 128 distinct keywords: the SIMD searcher gives way to a DFA.
    let mut toml = String::new();
    for i in 0..150 {
        toml.push_str(&format!(
            "[[rules]]\nid = \"r{i}\"\nregex = '''kw{i:03}x_[0-9]{{8}}'''\nkeywords = [\"kw{i:03}x_\"]\n"
        ));
    }
    let mut b = RuleSetBuilder::new().with_builtin_rules();
    b.add_gitleaks_toml(&toml, "many.toml").unwrap();
    let rules = b.build().unwrap();
    assert!(format!("{rules:?}").contains("dfa"), "{rules:?}");
    let mut rng = Rng::new(5);
    let mut data = random_corpus(&mut rng, 50_000);
    data.extend_from_slice(b" kw149x_12345678 kw007x_87654321 ");
    let whole = sorted(rules.scan(&data));
    let ids: Vec<&str> = whole.iter().map(|f| f.2.as_str()).collect();
    assert!(ids.contains(&"r149") && ids.contains(&"r7"), "{ids:?}");
    let cuts: Vec<usize> = (1..data.len()).step_by(997).collect();
    assert_eq!(sorted(stream_scan(&rules, &data, &cuts)), whole);
}

#[test]
fn zstd_windows_over_8_mib_are_refused() {
    let rules = decoding_rules();
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    encoder.window_log(25).unwrap();
    encoder.write_all(&body_with_secret()).unwrap();
    let encoded = encoder.finish().unwrap();
    let err = decode_scan(&rules, "zstd", &encoded, 4096, DecodeLimits::default()).unwrap_err();
    assert!(
        matches!(err, DecodeError::Corrupt { coding: "zstd", .. }),
        "{err}"
    );
}

#[test]
fn builtin_patterns_are_compiled_once_and_shared_secrets_are_not() {
    use std::sync::Arc;
    let mut a = RuleSetBuilder::new().with_builtin_rules();
    a.add_secret("a", b"only-in-set-a-123").unwrap();
    let a = a.build().unwrap();
    let b = RuleSetBuilder::new().with_builtin_rules().build().unwrap();
    assert!(
        Arc::ptr_eq(&a.patterns, &b.patterns),
        "built-in patterns shared"
    );
    assert!(!a.scan(b"x only-in-set-a-123 y").is_empty());
    assert!(
        b.scan(b"x only-in-set-a-123 y").is_empty(),
        "secrets stay per set"
    );
    let mut c = RuleSetBuilder::new().with_builtin_rules();
    c.add_gitleaks_toml(
        "[[rules]]\nid = \"x\"\nregex = '''XQZ-[0-9]{8}'''\nkeywords = [\"xqz-\"]\n",
        "t",
    )
    .unwrap();
    let c = c.build().unwrap();
    assert!(
        !Arc::ptr_eq(&a.patterns, &c.patterns),
        "user rules get their own"
    );
    assert!(!c.scan(b"XQZ-12345678").is_empty());
    assert!(
        !c.scan(b"AKIAIOSFODNN7EXAMPLE").is_empty(),
        "and keep the built-ins"
    );
}
