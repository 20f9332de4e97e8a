//! What a push introduces, and the secrets in it.
//!
//! For each ref update the gate walks only the commits the push adds: `new --not old --not
//! <every ref the mirror has>` (a new branch whose ancestry is already upstream costs
//! nothing, and a secret already upstream is not the push's fault). In each of those commits
//! it scans, with the bottle's DLP engine, the commit message, the names of added or renamed
//! files, every added line of the diff against the first parent, and the whole content of
//! added or changed binary files. An annotated tag the push brings (the ref's new value, and
//! any tag it points at in turn, down to the first the mirror already has) is scanned for its
//! name and message.

use std::collections::HashSet;

use bottle_dlp::RuleSet;
use git2::{Delta, DiffFormat, DiffOptions, Oid, Repository, Sort};

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("the push is missing objects ({0}); push again")]
    Missing(String),
    #[error("git: {0}")]
    Git(String),
    #[error("the push introduces more than {0} commits; push it in smaller parts")]
    TooManyCommits(usize),
    #[error("a tag nests more than {MAX_TAG_DEPTH} tags (a tag of a tag of …); push a plain annotated tag")]
    TagChain,
}

pub type Result<T> = std::result::Result<T, ScanError>;

fn git(e: git2::Error) -> ScanError {
    ScanError::Git(e.message().to_string())
}

/// Where a secret was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The commit, or for a `tag message` the tag object.
    pub commit: String,
    /// `None` for the commit or tag message.
    pub file: Option<String>,
    /// 1-based line in the new file; `None` for messages, names and binary content.
    pub line: Option<usize>,
    pub rule: String,
    /// Redacted preview from the DLP engine (never the secret).
    pub redacted: String,
    /// `commit message`, `tag message`, `file name`, `added line`, `binary file`.
    pub place: &'static str,
}

impl Hit {
    /// One human line for the client's `remote:` output.
    pub fn describe(&self) -> String {
        let short = &self.commit[..self.commit.len().min(12)];
        let what = if self.place == TAG_MESSAGE {
            "tag"
        } else {
            "commit"
        };
        let mut s = format!("{what} {short}");
        match (&self.file, self.line) {
            (Some(f), Some(l)) => s.push_str(&format!(", file {f}, line {l}")),
            (Some(f), None) => s.push_str(&format!(", {} {f}", self.place)),
            (None, _) => s.push_str(&format!(", {}", self.place)),
        }
        s.push_str(&format!(": rule {} ({})", self.rule, self.redacted));
        s
    }
}

/// Totals for stats and the benchmark.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanTotals {
    pub commits: u64,
    pub bytes: u64,
}

/// Bounds of one scan.
#[derive(Debug, Clone, Copy)]
pub struct ScanLimits {
    pub max_commits: usize,
    /// Hits reported per ref (the first ones; the push is refused either way).
    pub max_hits: usize,
    /// Binary blobs larger than this are refused rather than skipped.
    pub max_blob_bytes: usize,
}

impl Default for ScanLimits {
    fn default() -> Self {
        Self {
            max_commits: 100_000,
            max_hits: 20,
            max_blob_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The commits `new` brings that neither `old` nor any of `known` reaches.
pub fn introduced(
    repo: &Repository,
    old: Option<Oid>,
    new: Oid,
    known: &[Oid],
    limits: &ScanLimits,
) -> Result<Vec<Oid>> {
    let mut walk = repo.revwalk().map_err(git)?;
    walk.set_sorting(Sort::TOPOLOGICAL | Sort::REVERSE)
        .map_err(git)?;
    walk.push(new)
        .map_err(|e| ScanError::Missing(e.message().to_string()))?;
    if let Some(old) = old {
        // The old tip may be unknown here (the upstream moved); then only `known` bounds it.
        if repo.find_commit(old).is_ok() {
            walk.hide(old).map_err(git)?;
        }
    }
    for oid in known {
        if repo.find_commit(*oid).is_ok() {
            walk.hide(*oid).map_err(git)?;
        }
    }
    let mut out = Vec::new();
    for oid in walk {
        let oid = oid.map_err(|e| ScanError::Missing(e.message().to_string()))?;
        out.push(oid);
        if out.len() > limits.max_commits {
            return Err(ScanError::TooManyCommits(limits.max_commits));
        }
    }
    Ok(out)
}

/// `Hit::place` of an annotated tag's name and message.
pub const TAG_MESSAGE: &str = "tag message";
/// Most annotated tags one pushed value may nest (a tag of a tag of …).
pub const MAX_TAG_DEPTH: usize = 16;

/// Scans the annotated tags `new` brings: `new` if it is a tag object, then the object it
/// points at if that is a tag too, and so on, stopping at the first tag `is_known` (already
/// in the mirror, so already upstream) or at the first non-tag. Each tag's name and message
/// are scanned; hits name the tag object.
pub fn scan_tags(
    repo: &Repository,
    new: Oid,
    is_known: &dyn Fn(Oid) -> bool,
    rules: &RuleSet,
    limits: &ScanLimits,
    totals: &mut ScanTotals,
) -> Result<Vec<Hit>> {
    let mut hits = Vec::new();
    let mut next = new;
    for _ in 0..=MAX_TAG_DEPTH {
        if is_known(next) {
            return Ok(hits);
        }
        let Ok(tag) = repo.find_tag(next) else {
            // Not a tag (or missing, which the commit walk reports).
            return Ok(hits);
        };
        let mut buf = Buffer::default();
        buf.push(MESSAGE, 0, TAG_MESSAGE, tag.name_bytes());
        buf.push(MESSAGE, 0, TAG_MESSAGE, b"\n");
        buf.push(
            MESSAGE,
            0,
            TAG_MESSAGE,
            tag.message_bytes().unwrap_or_default(),
        );
        flush(&mut buf, rules, next, &mut hits, &mut totals.bytes);
        if hits.len() >= limits.max_hits {
            hits.truncate(limits.max_hits);
            return Ok(hits);
        }
        next = tag.target_id();
    }
    Err(ScanError::TagChain)
}

/// Text of one commit to scan, with a map from offsets back to file and line.
#[derive(Default)]
struct Buffer {
    data: Vec<u8>,
    /// (offset where the segment starts, file index, line or 0, place).
    segments: Vec<(usize, usize, usize, &'static str)>,
    files: Vec<String>,
}

impl Buffer {
    fn push(&mut self, file: usize, line: usize, place: &'static str, bytes: &[u8]) {
        self.segments.push((self.data.len(), file, line, place));
        self.data.extend_from_slice(bytes);
        if !bytes.ends_with(b"\n") {
            self.data.push(b'\n');
        }
    }

    fn file(&mut self, name: &str) -> usize {
        if self.files.last().map(String::as_str) != Some(name) {
            self.files.push(name.to_string());
        }
        self.files.len() - 1
    }

    fn locate(&self, offset: usize) -> Option<&(usize, usize, usize, &'static str)> {
        let idx = self.segments.partition_point(|s| s.0 <= offset);
        self.segments.get(idx.checked_sub(1)?)
    }
}

const MESSAGE: usize = usize::MAX;

/// A commit's collected text is scanned and dropped once it passes this, so a push of
/// hundreds of megabytes never sits in memory whole: at most this plus one blob (itself
/// bounded by `max_blob_bytes`). Segments are never split, so no finding is lost at a flush.
const FLUSH_BYTES: usize = 16 * 1024 * 1024;

/// Scans what `buf` holds, adds its hits, and empties it (file names stay for later hits).
fn flush(buf: &mut Buffer, rules: &RuleSet, oid: Oid, hits: &mut Vec<Hit>, scanned: &mut u64) {
    *scanned += buf.data.len() as u64;
    for f in rules.scan(&buf.data) {
        let Ok(off) = usize::try_from(f.offset) else {
            continue;
        };
        let Some(&(_, file, line, place)) = buf.locate(off) else {
            continue;
        };
        let file = (file != MESSAGE)
            .then(|| buf.files.get(file).cloned())
            .flatten();
        hits.push(Hit {
            commit: oid.to_string(),
            file,
            line: (line > 0).then_some(line),
            rule: f.rule_id.clone(),
            redacted: f.redacted.clone(),
            place,
        });
    }
    buf.data.clear();
    buf.segments.clear();
}

/// Scans the commits in `commits`; returns the first `limits.max_hits` hits.
pub fn scan_commits(
    repo: &Repository,
    commits: &[Oid],
    rules: &RuleSet,
    limits: &ScanLimits,
    totals: &mut ScanTotals,
) -> Result<Vec<Hit>> {
    // Commits are independent: large pushes are scanned on a few threads (each with its own
    // handle on the repository), and the results are merged in commit order, so the outcome
    // (which hits, which error, where the hit limit cuts) is the sequential one.
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(MAX_SCAN_THREADS);
    if threads < 2 || commits.len() < PARALLEL_FROM {
        let mut hits = Vec::new();
        for &oid in commits {
            if absorb(
                &mut hits,
                totals,
                scan_one(repo, oid, rules, limits)?,
                limits,
            ) {
                break;
            }
        }
        return Ok(hits);
    }
    let path = repo.path().to_path_buf();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<CommitScan>>> = commits
        .iter()
        .map(|_| std::sync::Mutex::new(None))
        .collect();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let own = Repository::open_bare(&path);
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&oid) = commits.get(i) else {
                        break;
                    };
                    let r = match &own {
                        Ok(r) => scan_one(r, oid, rules, limits),
                        Err(e) => Err(ScanError::Git(e.message().to_string())),
                    };
                    if let Some(slot) = slots.get(i) {
                        if let Ok(mut g) = slot.lock() {
                            *g = Some(r);
                        }
                    }
                }
            });
        }
    });
    let mut hits = Vec::new();
    for slot in slots {
        let r = slot
            .into_inner()
            .ok()
            .flatten()
            .unwrap_or_else(|| Err(ScanError::Git("a scan thread failed".into())));
        if absorb(&mut hits, totals, r?, limits) {
            break;
        }
    }
    Ok(hits)
}

/// Adds one commit's scan to the running totals and hits; `true` once the hit limit is
/// reached (the hits are cut to it and nothing more is taken).
fn absorb(
    hits: &mut Vec<Hit>,
    totals: &mut ScanTotals,
    (found, bytes): (Vec<Hit>, u64),
    limits: &ScanLimits,
) -> bool {
    totals.commits += 1;
    totals.bytes += bytes;
    hits.extend(found);
    if hits.len() >= limits.max_hits {
        hits.truncate(limits.max_hits);
        return true;
    }
    false
}

/// One commit's hits and scanned bytes.
type CommitScan = Result<(Vec<Hit>, u64)>;

/// Commits at which a scan goes parallel, and the most threads it uses.
const PARALLEL_FROM: usize = 16;
const MAX_SCAN_THREADS: usize = 4;

/// Scans one commit: its hits (at most `limits.max_hits`) and the bytes it scanned.
fn scan_one(
    repo: &Repository,
    oid: Oid,
    rules: &RuleSet,
    limits: &ScanLimits,
) -> Result<(Vec<Hit>, u64)> {
    let mut hits = Vec::new();
    let mut scanned = 0u64;
    {
        let commit = repo
            .find_commit(oid)
            .map_err(|e| ScanError::Missing(e.message().to_string()))?;
        let mut buf = Buffer::default();
        buf.push(MESSAGE, 0, "commit message", commit.message_raw_bytes());
        let new_tree = commit.tree().map_err(git)?;
        let old_tree = match commit.parents().next() {
            Some(p) => Some(p.tree().map_err(git)?),
            None => None,
        };
        let mut opts = DiffOptions::new();
        opts.context_lines(0).ignore_submodules(true);
        let diff = repo
            .diff_tree_to_tree(old_tree.as_ref(), Some(&new_tree), Some(&mut opts))
            .map_err(git)?;
        // A merge brings its other parents' content: only what is new against every parent
        // is the merge's own (an "evil merge"); the rest is scanned in those parents' commits
        // if they are new, and is already upstream if not.
        let others: Vec<git2::Tree> = commit
            .parents()
            .skip(1)
            .map(|p| p.tree())
            .collect::<std::result::Result<_, _>>()
            .map_err(git)?;
        let mut other_added: Vec<HashSet<(String, Vec<u8>)>> = Vec::new();
        for tree in &others {
            let mut o = DiffOptions::new();
            o.context_lines(0).ignore_submodules(true);
            let d = repo
                .diff_tree_to_tree(Some(tree), Some(&new_tree), Some(&mut o))
                .map_err(git)?;
            let mut set = HashSet::new();
            d.print(DiffFormat::Patch, |delta, _, line| {
                if matches!(line.origin(), '+' | 'F') {
                    let path = delta
                        .new_file()
                        .path()
                        .map(|p| p.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let key = if line.origin() == 'F' {
                        Vec::new()
                    } else {
                        line.content().to_vec()
                    };
                    set.insert((path, key));
                }
                true
            })
            .map_err(git)?;
            other_added.push(set);
        }
        let new_everywhere = |path: &str, content: &[u8]| {
            other_added
                .iter()
                .all(|set| set.contains(&(path.to_string(), content.to_vec())))
        };
        let mut cur: Option<usize> = None;
        let mut cur_path = String::new();
        diff.print(DiffFormat::Patch, |delta, _hunk, line| {
            let path = delta
                .new_file()
                .path()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            if cur.is_none() || path != cur_path {
                if matches!(
                    delta.status(),
                    Delta::Added | Delta::Renamed | Delta::Copied
                ) && new_everywhere(&path, b"")
                {
                    let idx = buf.file(&path);
                    buf.push(idx, 0, "file name", path.as_bytes());
                }
                cur = Some(buf.file(&path));
                cur_path = path;
            }
            if line.origin() == '+' && new_everywhere(&cur_path, line.content()) {
                if let (Some(idx), Some(no)) = (cur, line.new_lineno()) {
                    buf.push(idx, no as usize, "added line", line.content());
                }
            }
            if buf.data.len() > FLUSH_BYTES {
                flush(&mut buf, rules, oid, &mut hits, &mut scanned);
            }
            true
        })
        .map_err(git)?;
        // Binary files have no lines: scan what they now contain.
        for delta in diff.deltas() {
            let binary = delta.flags().is_binary() || delta.new_file().is_binary();
            if !binary
                || !matches!(
                    delta.status(),
                    Delta::Added | Delta::Modified | Delta::Renamed | Delta::Copied
                )
            {
                continue;
            }
            let path = delta
                .new_file()
                .path()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            let in_a_parent = others.iter().any(|t| {
                t.get_path(std::path::Path::new(&path))
                    .is_ok_and(|e| e.id() == delta.new_file().id())
            });
            if in_a_parent {
                continue;
            }
            let blob = repo
                .find_blob(delta.new_file().id())
                .map_err(|e| ScanError::Missing(e.message().to_string()))?;
            if blob.size() > limits.max_blob_bytes {
                hits.push(Hit {
                    commit: oid.to_string(),
                    file: Some(path),
                    line: None,
                    rule: "binary-too-large-to-scan".into(),
                    redacted: format!("{} bytes", blob.size()),
                    place: "binary file",
                });
                continue;
            }
            let idx = buf.file(&path);
            buf.push(idx, 0, "binary file", blob.content());
            drop(blob);
            if buf.data.len() > FLUSH_BYTES {
                flush(&mut buf, rules, oid, &mut hits, &mut scanned);
            }
        }
        flush(&mut buf, rules, oid, &mut hits, &mut scanned);
        hits.truncate(limits.max_hits);
        Ok((hits, scanned))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bottle_dlp::RuleSetBuilder;
    use std::path::Path;

    fn commit(repo: &Repository, parent: Option<Oid>, files: &[(&str, &[u8])], msg: &str) -> Oid {
        let mut builder = match parent {
            Some(p) => repo
                .treebuilder(Some(&repo.find_commit(p).unwrap().tree().unwrap()))
                .unwrap(),
            None => repo.treebuilder(None).unwrap(),
        };
        for (name, content) in files {
            let blob = repo.blob(content).unwrap();
            builder.insert(name, blob, 0o100644).unwrap();
        }
        let tree = repo.find_tree(builder.write().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        let parents: Vec<_> = parent
            .map(|p| repo.find_commit(p).unwrap())
            .into_iter()
            .collect();
        let refs: Vec<&git2::Commit> = parents.iter().collect();
        repo.commit(None, &sig, &sig, msg, &tree, &refs).unwrap()
    }

    const KEY: &str = "AKIAZ7QWERTY2345ABCD";

    #[test]
    fn scans_only_what_is_new_and_says_where() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let rules = RuleSetBuilder::new().with_builtin_rules().build().unwrap();
        let dirty = format!("a\nb\naws_key = {KEY}\n");
        let old = commit(
            &repo,
            None,
            &[("config.py", dirty.as_bytes())],
            "old secret",
        );
        let clean = commit(&repo, Some(old), &[("readme", b"hello\n")], "docs");
        let limits = ScanLimits::default();

        // A new branch on top of known history: only the new commit is scanned.
        let commits = introduced(&repo, None, clean, &[old], &limits).unwrap();
        assert_eq!(commits, vec![clean]);
        let mut totals = ScanTotals::default();
        assert!(scan_commits(&repo, &commits, &rules, &limits, &mut totals)
            .unwrap()
            .is_empty());
        assert_eq!(totals.commits, 1);

        // Without the known tip, the whole history counts and the old secret is found.
        let commits = introduced(&repo, None, clean, &[], &limits).unwrap();
        assert_eq!(commits, vec![old, clean]);
        let hits = scan_commits(&repo, &commits, &rules, &limits, &mut totals).unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].file.as_deref(), Some("config.py"));
        assert_eq!(hits[0].line, Some(3));
        assert_eq!(hits[0].commit, old.to_string());
        let text = hits[0].describe();
        assert!(text.contains("config.py, line 3"), "{text}");
        assert!(!text.contains(KEY), "{text}");

        // old..new for an update.
        let leak = commit(
            &repo,
            Some(clean),
            &[("notes", b"x\n")],
            &format!("oops {KEY}"),
        );
        let commits = introduced(&repo, Some(clean), leak, &[], &limits).unwrap();
        assert_eq!(commits, vec![leak]);
        let hits = scan_commits(&repo, &commits, &rules, &limits, &mut totals).unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(
            (hits[0].file.as_deref(), hits[0].place),
            (None, "commit message")
        );

        // A secret in a new file's name, and in a binary file.
        let named = commit(&repo, Some(clean), &[(&format!("{KEY}.txt"), b"x\n")], "n");
        let hits = scan_commits(&repo, &[named], &rules, &limits, &mut totals).unwrap();
        assert_eq!(hits[0].place, "file name");
        let bin = commit(
            &repo,
            Some(clean),
            &[("blob.bin", format!("\0\0{KEY}\0").as_bytes())],
            "b",
        );
        let hits = scan_commits(&repo, &[bin], &rules, &limits, &mut totals).unwrap();
        assert_eq!((hits[0].place, hits[0].line), ("binary file", None));
        let _ = Path::new("");
    }

    fn merge(repo: &Repository, a: Oid, b: Oid, extra: &[(&str, &[u8])]) -> Oid {
        let ta = repo.find_commit(a).unwrap().tree().unwrap();
        let tb = repo.find_commit(b).unwrap().tree().unwrap();
        let mut builder = repo.treebuilder(Some(&ta)).unwrap();
        for e in tb.iter() {
            builder
                .insert(e.name().unwrap(), e.id(), e.filemode())
                .unwrap();
        }
        for (name, content) in extra {
            builder
                .insert(name, repo.blob(content).unwrap(), 0o100644)
                .unwrap();
        }
        let tree = repo.find_tree(builder.write().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        let (ca, cb) = (repo.find_commit(a).unwrap(), repo.find_commit(b).unwrap());
        repo.commit(None, &sig, &sig, "merge", &tree, &[&ca, &cb])
            .unwrap()
    }

    #[test]
    fn a_merge_is_scanned_only_for_what_no_parent_had() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let rules = RuleSetBuilder::new().with_builtin_rules().build().unwrap();
        let base = commit(&repo, None, &[("a", b"a\n")], "base");
        let dirty = format!("k = {KEY}\n");
        // Upstream's main got a secret; a topic branch merges main in.
        let main = commit(&repo, Some(base), &[("old.env", dirty.as_bytes())], "old");
        let topic = commit(&repo, Some(base), &[("t", b"t\n")], "topic");
        let m = merge(&repo, topic, main, &[]);
        let limits = ScanLimits::default();
        let commits = introduced(&repo, Some(topic), m, &[main], &limits).unwrap();
        assert_eq!(commits, vec![m]);
        let mut totals = ScanTotals::default();
        assert!(scan_commits(&repo, &commits, &rules, &limits, &mut totals)
            .unwrap()
            .is_empty());
        // An evil merge (content in neither parent) is the merge's own.
        let evil = merge(&repo, topic, main, &[("evil", dirty.as_bytes())]);
        let hits = scan_commits(&repo, &[evil], &rules, &limits, &mut totals).unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].file.as_deref(), Some("evil"));
    }

    #[test]
    fn a_large_push_scanned_in_parallel_finds_the_same_hits_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let rules = RuleSetBuilder::new().with_builtin_rules().build().unwrap();
        let mut tip = None;
        let mut all = Vec::new();
        for i in 0..(PARALLEL_FROM * 3) {
            let body = if i % 7 == 3 {
                format!("line\nkey_{i} = {KEY}\n")
            } else {
                format!("clean {i}\n")
            };
            let c = commit(&repo, tip, &[(&format!("f{i}"), body.as_bytes())], "c");
            all.push(c);
            tip = Some(c);
        }
        let limits = ScanLimits::default();
        let commits = introduced(&repo, None, all[all.len() - 1], &[], &limits).unwrap();
        assert!(commits.len() >= PARALLEL_FROM);
        let mut totals = ScanTotals::default();
        let hits = scan_commits(&repo, &commits, &rules, &limits, &mut totals).unwrap();
        let want: Vec<String> = commits
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 7 == 3)
            .map(|(_, c)| c.to_string())
            .collect();
        let got: Vec<String> = hits.iter().map(|h| h.commit.clone()).collect();
        assert_eq!(got, want);
        assert_eq!(totals.commits, commits.len() as u64);
        // The hit limit cuts where the sequential scan would.
        let few = ScanLimits {
            max_hits: 2,
            ..limits
        };
        let hits = scan_commits(&repo, &commits, &rules, &few, &mut totals).unwrap();
        let got: Vec<String> = hits.iter().map(|h| h.commit.clone()).collect();
        assert_eq!(got, want[..2].to_vec());
    }

    #[test]
    fn annotated_tag_messages_are_scanned_down_to_the_first_known_tag() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let rules = RuleSetBuilder::new().with_builtin_rules().build().unwrap();
        let limits = ScanLimits::default();
        let c = commit(&repo, None, &[("readme", b"hello\n")], "clean");
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        let target = repo.find_object(c, None).unwrap();
        let leaky = repo
            .tag_annotation_create("v1", &target, &sig, &format!("release\nkey {KEY}\n"))
            .unwrap();
        let leaky_obj = repo.find_object(leaky, None).unwrap();
        let outer = repo
            .tag_annotation_create("v1-signed", &leaky_obj, &sig, "wraps v1\n")
            .unwrap();
        let clean = repo
            .tag_annotation_create("v2", &target, &sig, "nothing here\n")
            .unwrap();
        let nothing_known = |_: Oid| false;
        let mut totals = ScanTotals::default();

        let hits = scan_tags(&repo, leaky, &nothing_known, &rules, &limits, &mut totals).unwrap();
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!(hits[0].commit, leaky.to_string());
        assert_eq!(
            (hits[0].file.as_deref(), hits[0].place),
            (None, TAG_MESSAGE)
        );
        let text = hits[0].describe();
        assert!(
            text.starts_with(&format!("tag {}", &leaky.to_string()[..12])),
            "{text}"
        );
        assert!(text.contains(", tag message: rule "), "{text}");
        assert!(!text.contains(KEY), "{text}");
        // Through a tag of a tag...
        let hits = scan_tags(&repo, outer, &nothing_known, &rules, &limits, &mut totals).unwrap();
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!(hits[0].commit, leaky.to_string());
        // ...but not into a tag already upstream, nor for clean tags and plain commits.
        let known = |o: Oid| o == leaky;
        assert!(
            scan_tags(&repo, outer, &known, &rules, &limits, &mut totals)
                .unwrap()
                .is_empty()
        );
        for oid in [clean, c] {
            assert!(
                scan_tags(&repo, oid, &nothing_known, &rules, &limits, &mut totals)
                    .unwrap()
                    .is_empty()
            );
        }
    }

    #[test]
    fn removed_lines_are_not_scanned() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let rules = RuleSetBuilder::new().with_builtin_rules().build().unwrap();
        let dirty = format!("k = {KEY}\n");
        let a = commit(&repo, None, &[("f", dirty.as_bytes())], "a");
        let b = commit(&repo, Some(a), &[("f", b"k = removed\n")], "b");
        let mut totals = ScanTotals::default();
        let hits = scan_commits(&repo, &[b], &rules, &ScanLimits::default(), &mut totals).unwrap();
        assert!(hits.is_empty());
    }
}
