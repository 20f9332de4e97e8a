//! DLP scan throughput benchmark.
//!
//! Generates a deterministic ~100 MB mixed corpus (source code, JSON, logs,
//! base64 blobs) with a handful of planted synthetic secrets, times
//! `RuleSet::scan` on one thread, and prints machine-readable lines:
//!
//! ```text
//! dlp_scan_mb_per_s=<best MB/s, 1 MB = 10^6 bytes>
//! dlp_scan_mb_per_s_median=<median>
//! planted_found=<found>/<planted>
//! dlp_stream_mb_per_s=<best, streaming in 16 KiB chunks (in-memory mode only)>
//! dlp_stream_max_buffered_bytes=<largest per-stream tail seen>
//! unplanted_findings=<findings not on a planted secret>
//! ```
//!
//! Options:
//! * `--corpus-dir DIR`: write the corpus as files into DIR (plus
//!   `MANIFEST.tsv` with planted offsets, never the values) and exit, so other
//!   scanners can run on the same files.
//! * `--scan-dir DIR`: scan the files in DIR (e.g. written by `--corpus-dir`)
//!   instead of generating; each file is one `scan` call.
//! * `--size-mb N` (default 100), `--iterations N` (default 5).
//!
//! Run: `cargo run --release -p bottle-dlp --example dlp_bench`

// The PRNG deliberately truncates to bytes/indexes.
#![allow(clippy::cast_possible_truncation)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use bottle_dlp::{Finding, RuleSet, RuleSetBuilder};

const MANIFEST: &str = "MANIFEST.tsv";

struct Options {
    corpus_dir: Option<PathBuf>,
    scan_dir: Option<PathBuf>,
    size_mb: usize,
    iterations: usize,
}

fn parse_args() -> Result<Options, String> {
    let mut opts = Options {
        corpus_dir: None,
        scan_dir: None,
        size_mb: 100,
        iterations: 5,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--corpus-dir" => opts.corpus_dir = Some(PathBuf::from(value("--corpus-dir")?)),
            "--scan-dir" => opts.scan_dir = Some(PathBuf::from(value("--scan-dir")?)),
            "--size-mb" => {
                opts.size_mb = value("--size-mb")?
                    .parse()
                    .map_err(|e| format!("--size-mb: {e}"))?;
            }
            "--iterations" => {
                opts.iterations = value("--iterations")?
                    .parse::<usize>()
                    .map_err(|e| format!("--iterations: {e}"))?
                    .max(1);
            }
            "-h" | "--help" => {
                return Err("usage: dlp_bench [--corpus-dir DIR | --scan-dir DIR] [--size-mb N] [--iterations N]".into())
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(opts)
}

/// xorshift64*: deterministic, fast, good enough for corpus text.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
    fn chars(&mut self, charset: &[u8], len: usize, out: &mut Vec<u8>) {
        for _ in 0..len {
            out.push(charset[self.below(charset.len())]);
        }
    }
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const TOKEN: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
const HEX: &[u8] = b"0123456789abcdef";
const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

const WORDS: &[&str] = &[
    "request", "response", "user", "account", "config", "value", "buffer", "stream", "client",
    "server", "handler", "result", "error", "context", "session", "token", "key", "secret",
    "password", "cache", "index", "record", "payload", "header", "body", "route", "policy", "aws",
    "region", "bucket", "message", "channel", "worker", "queue", "retry", "timeout", "metrics",
    "span", "trace", "limit", "offset", "cursor", "page", "items", "data", "name",
];

fn source_doc(rng: &mut Rng, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 256);
    while out.len() < size {
        let (a, b, c) = (rng.pick(WORDS), rng.pick(WORDS), rng.pick(WORDS));
        let n = rng.below(10_000);
        let line = match rng.below(10) {
            0 => format!(
                "fn {a}_{b}(&self, {c}: &str) -> Result<{}, Error> {{\n",
                capitalize(a)
            ),
            1 => format!("    let {a} = self.{b}.get_{c}({n})?;\n"),
            2 => format!("    // Resolve the {a} for this {b} before the {c} expires.\n"),
            3 => format!(
                "    if {a}.len() > {n} {{ return Err(Error::{}); }}\n",
                capitalize(b)
            ),
            4 => format!("def {a}_{b}({c}, retries={n}):\n    return {c}.{a}()\n"),
            5 => format!("import {a}.{b} as {c}\n"),
            6 => format!("    {a}_{b}: Option<{}>,\n", capitalize(c)),
            7 => format!(
                "const {}_{}: usize = {n};\n",
                a.to_uppercase(),
                b.to_uppercase()
            ),
            8 => format!(
                "    }}\n}}\n\nimpl {} for {} {{\n",
                capitalize(a),
                capitalize(b)
            ),
            _ => format!("    log::debug!(\"{a} {b} {{}}\", {c});\n"),
        };
        out.extend_from_slice(line.as_bytes());
    }
    out
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

fn json_doc(rng: &mut Rng, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 512);
    out.extend_from_slice(b"[\n");
    while out.len() < size {
        let mut hash = Vec::new();
        rng.chars(HEX, 40, &mut hash);
        let rec = format!(
            "  {{\"id\": {}, \"name\": \"{} {}\", \"email\": \"{}@example.com\", \"created_at\": \"2024-{:02}-{:02}T{:02}:{:02}:00Z\", \"tags\": [\"{}\", \"{}\"], \"data\": {{\"score\": {}.{}, \"hash\": \"{}\", \"active\": {}}}}},\n",
            rng.below(1_000_000),
            capitalize(rng.pick(WORDS)),
            capitalize(rng.pick(WORDS)),
            rng.pick(WORDS),
            rng.below(12) + 1,
            rng.below(28) + 1,
            rng.below(24),
            rng.below(60),
            rng.pick(WORDS),
            rng.pick(WORDS),
            rng.below(100),
            rng.below(1000),
            String::from_utf8_lossy(&hash),
            rng.below(2) == 1,
        );
        out.extend_from_slice(rec.as_bytes());
    }
    out.extend_from_slice(b"  {}\n]\n");
    out
}

fn log_doc(rng: &mut Rng, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 256);
    let levels = ["INFO", "DEBUG", "WARN", "ERROR", "INFO", "INFO"];
    let methods = ["GET", "POST", "PUT", "DELETE", "GET"];
    while out.len() < size {
        let mut rid = Vec::new();
        rng.chars(HEX, 32, &mut rid);
        let line = format!(
            "2024-05-{:02}T{:02}:{:02}:{:02}.{:03}Z {} [worker-{}] request_id={} method={} path=/api/v1/{}/{} status={} duration_ms={}.{} msg=\"{} {} {}\"\n",
            rng.below(28) + 1,
            rng.below(24),
            rng.below(60),
            rng.below(60),
            rng.below(1000),
            levels[rng.below(levels.len())],
            rng.below(16),
            String::from_utf8_lossy(&rid),
            methods[rng.below(methods.len())],
            rng.pick(WORDS),
            rng.below(100_000),
            [200, 200, 201, 204, 400, 404, 500][rng.below(7)],
            rng.below(900),
            rng.below(10),
            rng.pick(WORDS),
            rng.pick(WORDS),
            rng.pick(WORDS),
        );
        out.extend_from_slice(line.as_bytes());
    }
    out
}

fn base64(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / 3 * 4 + 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= c.len() {
                B64[((n >> (18 - 6 * i)) & 63) as usize]
            } else {
                b'='
            });
        }
    }
    out
}

fn blob_doc(rng: &mut Rng, size: usize) -> Vec<u8> {
    let raw: Vec<u8> = (0..size * 3 / 4).map(|_| rng.next() as u8).collect();
    let encoded = base64(&raw);
    let mut out = Vec::with_capacity(encoded.len() + encoded.len() / 76 + 1);
    for line in encoded.chunks(76) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out
}

/// Registered exact secrets (synthetic "route tokens").
fn exact_secrets() -> Vec<(String, Vec<u8>)> {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    (0..4)
        .map(|i| {
            let mut v = b"bottle-route-".to_vec();
            rng.chars(ALNUM, 20 + 4 * i, &mut v);
            (format!("route-{i}"), v)
        })
        .collect()
}

/// A planted secret: the text to insert and the rule id that must find it.
fn planted(rng: &mut Rng, secrets: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    let mut s = |prefix: &str, charset: &[u8], len: usize| {
        let mut v = prefix.as_bytes().to_vec();
        rng.chars(charset, len, &mut v);
        v
    };
    let mut items = vec![
        ("github-pat".to_string(), s("ghp_", ALNUM, 36)),
        (
            "aws-access-key-id".to_string(),
            b"AKIAIOSFODNN7EXAMPLE".to_vec(),
        ),
        ("slack-token".to_string(), {
            let mut v = s("xoxb-", b"0123456789", 12);
            v.push(b'-');
            v.extend(s("", b"0123456789", 13));
            v.push(b'-');
            v.extend(s("", ALNUM, 24));
            v
        }),
        ("stripe-live-key".to_string(), s("sk_live_", ALNUM, 24)),
        ("anthropic-api-key".to_string(), {
            let mut v = s("sk-ant-api03-", TOKEN, 93);
            v.extend_from_slice(b"AA");
            v
        }),
        ("openai-project-key".to_string(), s("sk-proj-", TOKEN, 156)),
        ("private-key".to_string(), {
            let mut v = b"-----BEGIN RSA PRIVATE KEY-----\n".to_vec();
            for _ in 0..4 {
                v.extend(s("", &B64[..], 64));
                v.push(b'\n');
            }
            v.extend_from_slice(b"-----END RSA PRIVATE KEY-----");
            v
        }),
        ("jwt".to_string(), {
            let mut v = s("eyJhbGciOiJIUzI1NiJ9.eyJ", TOKEN, 60);
            v.push(b'.');
            v.extend(s("", TOKEN, 43));
            v
        }),
        ("npm-access-token".to_string(), s("npm_", ALNUM, 36)),
    ];
    let (id0, v0) = &secrets[0];
    items.push((id0.clone(), v0.clone()));
    let (id1, v1) = &secrets[1];
    let mut blob = b"{\"cfg\":\"".to_vec();
    blob.extend_from_slice(v1);
    blob.extend_from_slice(b"\"}");
    items.push((id1.clone(), base64(&blob)));
    let (id2, v2) = &secrets[2];
    items.push((
        id2.clone(),
        v2.iter()
            .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]])
            .collect(),
    ));
    let (id3, v3) = &secrets[3];
    let mut pct = b"t=".to_vec();
    for &b in v3.iter() {
        if b.is_ascii_alphanumeric() {
            pct.push(b);
        } else {
            pct.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    items.push((id3.clone(), pct));
    items
}

/// A planted secret's (offset, len, expected rule id).
type Planted = (usize, usize, String);

/// One corpus file: name and bytes, plus planted secrets in it.
struct Doc {
    name: String,
    bytes: Vec<u8>,
    planted: Vec<Planted>,
}

fn generate(size_mb: usize, secrets: &[(String, Vec<u8>)]) -> Vec<Doc> {
    let mut rng = Rng(0x5EED_0FB0_771E);
    let target = size_mb * 1_000_000;
    let mut docs = Vec::new();
    let mut total = 0;
    while total < target {
        let size = (256 * 1024 + rng.below(768 * 1024))
            .min(target - total)
            .max(1);
        let (ext, bytes) = match rng.below(20) {
            0..=6 => ("rs", source_doc(&mut rng, size)),
            7..=11 => ("json", json_doc(&mut rng, size)),
            12..=16 => ("log", log_doc(&mut rng, size)),
            _ => ("b64", blob_doc(&mut rng, size)),
        };
        total += bytes.len();
        docs.push(Doc {
            name: format!("{:04}.{ext}", docs.len()),
            bytes,
            planted: Vec::new(),
        });
    }
    // Spread the planted secrets over evenly spaced documents, mid-document.
    let items = planted(&mut rng, secrets);
    let step = (docs.len() / (items.len() + 1)).max(1);
    for (i, (rule, text)) in items.into_iter().enumerate() {
        let index = ((i + 1) * step).min(docs.len() - 1);
        let Some(doc) = docs.get_mut(index) else {
            continue;
        };
        let mut at = doc.bytes.len() / 2;
        while at < doc.bytes.len() && doc.bytes[at] != b'\n' {
            at += 1;
        }
        let mut insert = b"\n".to_vec();
        let offset = at + 1;
        insert.extend_from_slice(&text);
        insert.push(b'\n');
        let shift = insert.len();
        doc.bytes.splice(at..at, insert);
        for p in &mut doc.planted {
            if p.0 >= at {
                p.0 += shift;
            }
        }
        doc.planted.push((offset, text.len(), rule));
    }
    docs
}

fn build_rules() -> Result<RuleSet, String> {
    let mut b = RuleSetBuilder::new().with_builtin_rules();
    for (id, value) in exact_secrets() {
        b.add_secret(&id, &value).map_err(|e| e.to_string())?;
    }
    b.build().map_err(|e| e.to_string())
}

fn write_corpus(dir: &Path, docs: &[Doc]) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut manifest = String::from("# file\toffset\tlen\texpected_rule\n");
    for d in docs {
        fs::write(dir.join(&d.name), &d.bytes).map_err(|e| format!("{}: {e}", d.name))?;
        for (off, len, rule) in &d.planted {
            manifest.push_str(&format!("{}\t{off}\t{len}\t{rule}\n", d.name));
        }
    }
    fs::write(dir.join(MANIFEST), manifest).map_err(|e| format!("{MANIFEST}: {e}"))?;
    let total: usize = docs.iter().map(|d| d.bytes.len()).sum();
    println!(
        "wrote {} files ({:.1} MB) to {}",
        docs.len(),
        total as f64 / 1e6,
        dir.display()
    );
    Ok(())
}

fn read_corpus(dir: &Path) -> Result<Vec<Doc>, String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != MANIFEST)
        .collect();
    names.sort();
    let mut docs: Vec<Doc> = names
        .into_iter()
        .map(|name| {
            let bytes = fs::read(dir.join(&name)).map_err(|e| format!("{name}: {e}"))?;
            Ok(Doc {
                name,
                bytes,
                planted: Vec::new(),
            })
        })
        .collect::<Result<_, String>>()?;
    if let Ok(manifest) = fs::read_to_string(dir.join(MANIFEST)) {
        for line in manifest.lines().filter(|l| !l.starts_with('#')) {
            let f: Vec<&str> = line.split('\t').collect();
            if let [file, off, len, rule] = f[..] {
                if let (Some(doc), Ok(off), Ok(len)) = (
                    docs.iter_mut().find(|d| d.name == file),
                    off.parse(),
                    len.parse(),
                ) {
                    doc.planted.push((off, len, rule.to_string()));
                }
            }
        }
    }
    Ok(docs)
}

/// (found, planted, findings not overlapping any planted secret); prints
/// the rule ids of planted secrets that were missed.
fn score(planted: &[Planted], findings: &[Finding]) -> (usize, usize, usize) {
    let overlaps = |f: &Finding, off: usize, len: usize| {
        let start = f.offset as usize;
        start < off + len && off < start + f.len
    };
    let mut found = 0;
    for (off, len, rule) in planted {
        if findings
            .iter()
            .any(|f| &f.rule_id == rule && overlaps(f, *off, *len))
        {
            found += 1;
        } else {
            println!("missed={rule}");
        }
    }
    let stray = findings
        .iter()
        .filter(|f| !planted.iter().any(|(off, len, _)| overlaps(f, *off, *len)))
        .count();
    (found, planted.len(), stray)
}

fn run(opts: Options) -> Result<(), String> {
    let secrets = exact_secrets();
    if let Some(dir) = &opts.corpus_dir {
        return write_corpus(dir, &generate(opts.size_mb, &secrets));
    }
    let rules = build_rules()?;

    // In-memory mode scans one buffer; directory mode one buffer per file.
    let (buffers, planted): (Vec<Vec<u8>>, Vec<Vec<Planted>>) = match &opts.scan_dir {
        Some(dir) => read_corpus(dir)?
            .into_iter()
            .map(|d| (d.bytes, d.planted))
            .unzip(),
        None => {
            let docs = generate(opts.size_mb, &secrets);
            let mut all = Vec::with_capacity(docs.iter().map(|d| d.bytes.len()).sum());
            let mut planted = Vec::new();
            for d in docs {
                planted.extend(
                    d.planted
                        .iter()
                        .map(|(o, l, r)| (o + all.len(), *l, r.clone())),
                );
                all.extend_from_slice(&d.bytes);
            }
            (vec![all], vec![planted])
        }
    };
    let total: usize = buffers.iter().map(Vec::len).sum();

    let mut rates = Vec::new();
    let mut last = Vec::new();
    for _ in 0..opts.iterations {
        let start = Instant::now();
        let findings: Vec<Vec<Finding>> = buffers.iter().map(|b| rules.scan(b)).collect();
        let secs = start.elapsed().as_secs_f64();
        rates.push(total as f64 / 1e6 / secs);
        last = findings;
    }
    rates.sort_by(f64::total_cmp);
    let best = rates.last().copied().unwrap_or(0.0);
    let median = rates[rates.len() / 2];
    let (mut found, mut planted_n, mut stray, mut count) = (0, 0, 0, 0);
    for (p, f) in planted.iter().zip(&last) {
        let (a, b, c) = score(p, f);
        found += a;
        planted_n += b;
        stray += c;
        count += f.len();
    }
    if opts.scan_dir.is_none() {
        let mut stream_best: f64 = 0.0;
        let mut max_buffered = 0;
        for _ in 0..opts.iterations {
            let start = Instant::now();
            let mut n = 0;
            for buffer in &buffers {
                let mut stream = rules.stream();
                for chunk in buffer.chunks(16 * 1024) {
                    n += stream.feed(chunk).len();
                    max_buffered = max_buffered.max(stream.buffered_bytes());
                }
                n += stream.finish().len();
            }
            let rate = total as f64 / 1e6 / start.elapsed().as_secs_f64();
            stream_best = stream_best.max(rate);
            if n != count {
                return Err(format!(
                    "stream found {n} findings, whole-buffer scan {count}"
                ));
            }
        }
        println!("dlp_stream_mb_per_s={stream_best:.1}");
        println!("dlp_stream_max_buffered_bytes={max_buffered}");
    }
    println!("dlp_scan_mb_per_s={best:.1}");
    println!("dlp_scan_mb_per_s_median={median:.1}");
    println!("planted_found={found}/{planted_n}");
    println!("unplanted_findings={stray}");
    println!(
        "scanned {:.1} MB in {} buffer(s) x{} iterations on one thread: best {best:.1} MB/s, \
         median {median:.1} MB/s; {count} findings, {found}/{planted_n} planted secrets found, \
         {} rules, {} exact secrets",
        total as f64 / 1e6,
        buffers.len(),
        opts.iterations,
        rules.rule_ids().count(),
        rules.secret_ids().count(),
    );
    Ok(())
}

fn main() -> ExitCode {
    match parse_args().and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dlp_bench: {e}");
            ExitCode::FAILURE
        }
    }
}
