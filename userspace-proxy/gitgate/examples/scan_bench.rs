//! The git-gate's scanner on its own, for `cargo xtask bench git`.
//!
//! * `--files DIR`: every file under DIR read and scanned with the built-in rules (one scan
//!   per file), like a file scanner would.
//! * `--repo DIR [--rev REV]`: the gate's real path: the commits REV introduces (all of
//!   them: nothing is known), each commit's added lines, names and message, through libgit2.
//!
//! Prints `bytes=`, `secs=`, `mb_per_s=`, then one `hit=<file>:<line>:<rule>` per finding.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use bottle_dlp::RuleSetBuilder;
use bottle_gitgate::scan::{introduced, scan_commits, ScanLimits, ScanTotals};

fn files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            files(&e.path(), out)?;
        } else {
            out.push(e.path());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
    };
    let Ok(rules) = RuleSetBuilder::new().with_builtin_rules().build() else {
        eprintln!("cannot build rules");
        return ExitCode::FAILURE;
    };
    let started = Instant::now();
    let mut bytes = 0u64;
    let mut hits = Vec::new();
    if let Some(dir) = get("--files") {
        let mut list = Vec::new();
        if let Err(e) = files(Path::new(dir), &mut list) {
            eprintln!("{dir}: {e}");
            return ExitCode::FAILURE;
        }
        list.sort();
        for path in list {
            let Ok(data) = std::fs::read(&path) else {
                continue;
            };
            bytes += data.len() as u64;
            for f in rules.scan(&data) {
                let line = usize::try_from(f.offset)
                    .map(|o| {
                        data[..o.min(data.len())]
                            .iter()
                            .filter(|&&b| b == b'\n')
                            .count()
                            + 1
                    })
                    .unwrap_or(0);
                let name = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                hits.push(format!("{name}:{line}:{}", f.rule_id));
            }
        }
    } else if let Some(dir) = get("--repo") {
        let rev = get("--rev").map(String::as_str).unwrap_or("HEAD");
        let result = (|| -> Result<(), String> {
            let repo = git2::Repository::open(dir).map_err(|e| e.to_string())?;
            let new = repo.revparse_single(rev).map_err(|e| e.to_string())?.id();
            let limits = ScanLimits {
                max_hits: usize::MAX,
                ..ScanLimits::default()
            };
            let commits = introduced(&repo, None, new, &[], &limits).map_err(|e| e.to_string())?;
            let mut totals = ScanTotals::default();
            for h in scan_commits(&repo, &commits, &rules, &limits, &mut totals)
                .map_err(|e| e.to_string())?
            {
                hits.push(format!(
                    "{}:{}:{}",
                    h.file.unwrap_or_default(),
                    h.line.unwrap_or(0),
                    h.rule
                ));
            }
            bytes = totals.bytes;
            println!("commits={}", totals.commits);
            Ok(())
        })();
        if let Err(e) = result {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    } else {
        eprintln!("usage: scan_bench --files DIR | --repo DIR [--rev REV]");
        return ExitCode::FAILURE;
    }
    let secs = started.elapsed().as_secs_f64();
    println!("bytes={bytes}");
    println!("secs={secs:.3}");
    println!("mb_per_s={:.1}", bytes as f64 / 1e6 / secs.max(1e-9));
    for h in hits {
        println!("hit={h}");
    }
    ExitCode::SUCCESS
}
