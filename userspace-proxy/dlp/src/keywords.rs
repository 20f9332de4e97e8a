//! Keyword pre-filter: one pass over the data that says where regexes need to
//! run.
//!
//! Keywords match case-insensitively (as in gitleaks). Rather than asking
//! aho-corasick for ASCII case folding, which disables its SIMD "Teddy"
//! searcher, the scanner lowercases each 64 KiB block into a scratch buffer and
//! searches lowercase keywords case-sensitively; Teddy handles up to 128
//! patterns this way (measured ~1.4 GB/s vs ~0.5 GB/s for the folded DFA).
//! Beyond 128 distinct keywords a DFA takes over (slower, still correct).
//!
//! Leftmost-longest search reports one keyword per start position; shorter
//! keywords that are prefixes of it are implied (see `targets`), and the search
//! resumes one byte after each hit so overlapping keywords are all seen.
//! Keywords under 4 bytes get their own searcher (see [`SHORT_KEYWORD`]).

use aho_corasick::{packed, AhoCorasick, AhoCorasickKind, MatchKind};

use crate::rules::Rule;

/// (rule index, keyword length) pairs triggered by one keyword hit.
pub(crate) type Targets = [(u32, u32)];

/// Keywords shorter than this go to a separate searcher: Teddy fingerprints
/// `min(4, shortest pattern)` bytes, so one 3-byte keyword among 4-byte ones
/// makes every candidate check weaker (measured ~2x slower on mixed text).
const SHORT_KEYWORD: usize = 4;

pub(crate) struct KeywordFinder {
    /// One searcher per length class (long, short), each with its targets.
    searchers: Vec<ClassSearcher>,
    max_len: usize,
    count: usize,
}

struct ClassSearcher {
    searcher: Searcher,
    /// Per pattern: every (rule, keyword length) whose keyword is a prefix of
    /// (or equal to) the pattern, within this class.
    targets: Vec<Vec<(u32, u32)>>,
}

enum Searcher {
    Packed(packed::Searcher),
    Automaton(AhoCorasick),
}

impl std::fmt::Debug for KeywordFinder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds: Vec<&str> = self
            .searchers
            .iter()
            .map(|s| match s.searcher {
                Searcher::Packed(_) => "teddy",
                Searcher::Automaton(_) => "dfa",
            })
            .collect();
        f.debug_struct("KeywordFinder")
            .field("keywords", &self.count)
            .field("searchers", &kinds)
            .finish()
    }
}

impl KeywordFinder {
    /// Builds the finder for all rules that have keywords; `None` if none do.
    pub(crate) fn build(rules: &[Rule]) -> Result<Option<Self>, aho_corasick::BuildError> {
        let mut patterns: Vec<&str> = rules
            .iter()
            .flat_map(|r| r.keywords.iter().map(String::as_str))
            .filter(|k| !k.is_empty())
            .collect();
        patterns.sort_unstable();
        patterns.dedup();
        if patterns.is_empty() {
            return Ok(None);
        }
        let max_len = patterns.iter().map(|p| p.len()).max().unwrap_or(1);
        let count = patterns.len();
        let (short, long): (Vec<&str>, Vec<&str>) =
            patterns.into_iter().partition(|p| p.len() < SHORT_KEYWORD);
        let mut searchers = Vec::new();
        for class in [long, short] {
            if !class.is_empty() {
                searchers.push(ClassSearcher::build(rules, &class)?);
            }
        }
        Ok(Some(Self {
            searchers,
            max_len,
            count,
        }))
    }

    /// Longest keyword in bytes.
    pub(crate) fn max_len(&self) -> usize {
        self.max_len
    }

    /// Calls `on_hit(start, targets)` for every keyword occurrence in the
    /// (already lowercased) `hay` that starts before `starts_end`, in order of
    /// position (ties in a fixed order), so results never depend on how the
    /// data was split into blocks.
    pub(crate) fn for_each_hit(
        &self,
        hay: &[u8],
        starts_end: usize,
        mut on_hit: impl FnMut(usize, &Targets),
    ) {
        match self.searchers.as_slice() {
            [only] => only.for_each_hit(hay, starts_end, |pos, pattern| {
                if let Some(t) = only.targets.get(pattern) {
                    on_hit(pos, t);
                }
            }),
            many => {
                let mut hits: Vec<(usize, usize, usize)> = Vec::new();
                for (class, searcher) in many.iter().enumerate() {
                    searcher.for_each_hit(hay, starts_end, |pos, pattern| {
                        hits.push((pos, class, pattern))
                    });
                }
                hits.sort_unstable();
                for (pos, class, pattern) in hits {
                    if let Some(t) = many.get(class).and_then(|s| s.targets.get(pattern)) {
                        on_hit(pos, t);
                    }
                }
            }
        }
    }
}

impl ClassSearcher {
    fn build(rules: &[Rule], patterns: &[&str]) -> Result<Self, aho_corasick::BuildError> {
        let targets = patterns
            .iter()
            .map(|pattern| {
                let mut t = Vec::new();
                for (index, rule) in rules.iter().enumerate() {
                    let Ok(index) = u32::try_from(index) else {
                        continue;
                    };
                    for k in &rule.keywords {
                        let same_class = patterns.contains(&k.as_str());
                        if same_class && pattern.starts_with(k.as_str()) {
                            let len = u32::try_from(k.len()).unwrap_or(u32::MAX);
                            t.push((index, len));
                        }
                    }
                }
                t
            })
            .collect();
        let mut builder = packed::Config::new()
            .match_kind(packed::MatchKind::LeftmostLongest)
            .heuristic_pattern_limits(false)
            .builder();
        builder.extend(patterns);
        let searcher = match builder.build() {
            Some(s) => Searcher::Packed(s),
            None => Searcher::Automaton(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .kind(Some(AhoCorasickKind::DFA))
                    .build(patterns)?,
            ),
        };
        Ok(ClassSearcher { searcher, targets })
    }

    /// Calls `on_hit(start, pattern)` for every occurrence starting before
    /// `starts_end`, resuming one byte after each hit (overlaps included).
    fn for_each_hit(&self, hay: &[u8], starts_end: usize, mut on_hit: impl FnMut(usize, usize)) {
        let mut at = 0;
        while at < starts_end && at < hay.len() {
            let found = match &self.searcher {
                Searcher::Packed(s) => s
                    .find_in(hay, aho_corasick::Span::from(at..hay.len()))
                    .map(|m| (m.start(), m.pattern().as_usize())),
                Searcher::Automaton(ac) => ac
                    .find(aho_corasick::Input::new(hay).span(at..hay.len()))
                    .map(|m| (m.start(), m.pattern().as_usize())),
            };
            let Some((start, pattern)) = found else {
                break;
            };
            if start >= starts_end {
                break;
            }
            on_hit(start, pattern);
            at = start + 1;
        }
    }
}
