//! The compiled, immutable rule set and its builder.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use crate::exact::{ExactSecrets, SecretError, SecretsBuilder};
use crate::finding::{redacted_preview, LineIndex, TextFinding};
use crate::keywords::KeywordFinder;
use crate::rules::builtin::compile_builtins;
use crate::rules::gitleaks::{self, GitleaksError};
use crate::rules::{Allowlist, Rule, RuleError};
use crate::scan::{sort_dedup, Chunk, Hit, ScanState, Source};
use crate::stream::{OwnedStreamScanner, StreamScanner};
use crate::{Finding, FindingKind};

/// Errors from building a [`RuleSet`].
#[derive(Debug, thiserror::Error)]
pub enum DlpError {
    /// An exact secret was refused (too short, too long, no id). The builder
    /// is still usable; the value was not registered.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// A gitleaks TOML config could not be read.
    #[error(transparent)]
    Gitleaks(#[from] GitleaksError),
    /// A rule regex failed to compile.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// A `[[allowlists]]` entry targets a rule id that no source defines.
    #[error(
        "{origin}: allowlist targets rule `{rule_id}`, which is not defined by the built-ins \
         or any loaded config; fix the id in targetRules"
    )]
    UnknownAllowlistTarget { rule_id: String, origin: String },
    /// The keyword automaton could not be built (pathologically many keywords).
    #[error("cannot build the keyword pre-filter: {0}; reduce the number of rule keywords")]
    Automaton(#[from] aho_corasick::BuildError),
}

/// Collects rules and secrets; [`build`](Self::build) compiles them.
#[derive(Debug, Default)]
pub struct RuleSetBuilder {
    builtins: bool,
    rules: Vec<Rule>,
    global_allowlists: Vec<Allowlist>,
    targeted_allowlists: Vec<(String, String, Allowlist)>,
    secrets: SecretsBuilder,
}

impl RuleSetBuilder {
    /// An empty builder: no rules, no secrets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Includes the built-in rules (compiled in [`build`](Self::build)).
    pub fn with_builtin_rules(mut self) -> Self {
        self.builtins = true;
        self
    }

    /// Registers an exact secret under `id`. It will be found verbatim and
    /// base64/hex/percent-encoded. Values shorter than
    /// [`crate::MIN_SECRET_LEN`] bytes are refused with
    /// [`SecretError::TooShort`] (non-fatal: nothing is registered and the
    /// builder stays usable; callers typically log and continue). Several
    /// values may share one id.
    pub fn add_secret(&mut self, id: &str, value: &[u8]) -> Result<(), DlpError> {
        Ok(self.secrets.add(id, value)?)
    }

    /// Adds the rules and allowlists of a gitleaks TOML config. `origin`
    /// (e.g. the file path) is used in error messages. A rule whose id was
    /// already defined (built-in or earlier config) replaces the earlier one.
    pub fn add_gitleaks_toml(&mut self, toml_text: &str, origin: &str) -> Result<(), DlpError> {
        let config = gitleaks::parse(toml_text, origin)?;
        self.rules.extend(config.rules);
        self.global_allowlists.extend(config.global_allowlists);
        self.targeted_allowlists.extend(
            config
                .targeted_allowlists
                .into_iter()
                .map(|(rule_id, a)| (rule_id, origin.to_string(), a)),
        );
        Ok(())
    }

    /// Compiles everything into an immutable [`RuleSet`]. The pattern part of a set made of
    /// the built-in rules alone is compiled once per process and shared: a host with a
    /// hundred bottles holds one copy, not a hundred, and building a bottle's set costs only
    /// its secrets.
    pub fn build(self) -> Result<RuleSet, DlpError> {
        let builtin_only = self.builtins
            && self.rules.is_empty()
            && self.global_allowlists.is_empty()
            && self.targeted_allowlists.is_empty();
        let secrets = self.secrets.build();
        let patterns = if builtin_only {
            static BUILTIN: OnceLock<Arc<Patterns>> = OnceLock::new();
            match BUILTIN.get() {
                Some(p) => p.clone(),
                None => {
                    let compiled =
                        Arc::new(compile_patterns(true, Vec::new(), Vec::new(), Vec::new())?);
                    BUILTIN.get_or_init(|| compiled).clone()
                }
            }
        } else {
            Arc::new(compile_patterns(
                self.builtins,
                self.rules,
                self.global_allowlists,
                self.targeted_allowlists,
            )?)
        };
        Ok(RuleSet { patterns, secrets })
    }
}

fn compile_patterns(
    builtins: bool,
    user_rules: Vec<Rule>,
    global_allowlists: Vec<Allowlist>,
    targeted_allowlists: Vec<(String, String, Allowlist)>,
) -> Result<Patterns, DlpError> {
    let mut all = if builtins {
        compile_builtins()?
    } else {
        Vec::new()
    };
    all.extend(user_rules);

    // Later definitions replace earlier ones, keeping the first position.
    let mut rules: Vec<Rule> = Vec::with_capacity(all.len());
    let mut position: HashMap<String, usize> = HashMap::new();
    for rule in all {
        match position.get(&rule.id) {
            Some(&i) => {
                if let Some(slot) = rules.get_mut(i) {
                    *slot = rule;
                }
            }
            None => {
                position.insert(rule.id.clone(), rules.len());
                rules.push(rule);
            }
        }
    }
    for (rule_id, origin, allowlist) in targeted_allowlists {
        match position.get(&rule_id).and_then(|&i| rules.get_mut(i)) {
            Some(rule) => rule.allowlists.push(allowlist),
            None => return Err(DlpError::UnknownAllowlistTarget { rule_id, origin }),
        }
    }

    let keywords = KeywordFinder::build(&rules)?;
    let keywordless = rules
        .iter()
        .enumerate()
        .filter(|(_, r)| r.keywords.is_empty())
        .map(|(i, _)| i)
        .collect();
    let max_reach = rules.iter().map(|r| r.reach as u64).max().unwrap_or(0);
    Ok(Patterns {
        rules,
        keywords,
        keywordless,
        max_reach,
        global_allowlists,
    })
}

/// The pattern half of a [`RuleSet`]: compiled rules and their keyword pre-filter.
/// Immutable, and shared between rule sets (see [`RuleSetBuilder::build`]).
pub struct Patterns {
    pub(crate) rules: Vec<Rule>,
    pub(crate) keywords: Option<KeywordFinder>,
    /// Indexes of rules without keywords (scanned segment by segment).
    pub(crate) keywordless: Vec<usize>,
    /// Largest rule reach.
    pub(crate) max_reach: u64,
    pub(crate) global_allowlists: Vec<Allowlist>,
}

/// Compiled rules and secrets. Immutable, `Send + Sync`; share it with
/// `Arc`. All scans are independent.
pub struct RuleSet {
    pub(crate) patterns: Arc<Patterns>,
    pub(crate) secrets: ExactSecrets,
}

impl std::ops::Deref for RuleSet {
    type Target = Patterns;

    fn deref(&self) -> &Patterns {
        &self.patterns
    }
}

impl std::fmt::Debug for RuleSet {
    // Lists ids only: never the secret values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field("rules", &self.rule_ids().collect::<Vec<_>>())
            .field("keywords", &self.keywords)
            .field("secrets", &self.secrets)
            .finish_non_exhaustive()
    }
}

impl RuleSet {
    /// Scans a whole buffer. Findings are sorted by offset.
    pub fn scan(&self, data: &[u8]) -> Vec<Finding> {
        let mut state = ScanState::new(self);
        let mut hits = Vec::new();
        let chunk = Chunk {
            data,
            base: 0,
            is_final: true,
        };
        state.process(self, &chunk, &mut hits);
        sort_dedup(&mut hits);
        hits.iter().map(|h| self.finding(h)).collect()
    }

    /// Scans a text and attaches 1-based line/column positions.
    pub fn scan_text(&self, text: &str) -> Vec<TextFinding> {
        let index = LineIndex::new(text.as_bytes());
        self.scan(text.as_bytes())
            .into_iter()
            .map(|finding| TextFinding {
                position: index.line_col(finding.offset),
                finding,
            })
            .collect()
    }

    /// A streaming scanner borrowing this rule set.
    pub fn stream(&self) -> StreamScanner<'_> {
        StreamScanner::new(self)
    }

    /// A streaming scanner owning a reference (for `'static` async tasks).
    pub fn stream_owned(self: &Arc<Self>) -> OwnedStreamScanner {
        OwnedStreamScanner::new(Arc::clone(self))
    }

    /// Ids of the pattern rules (built-in and gitleaks), in order.
    pub fn rule_ids(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.id.as_str())
    }

    /// Ids of registered exact secrets (one per registered value).
    pub fn secret_ids(&self) -> impl Iterator<Item = &str> {
        self.secrets.ids()
    }

    /// Description of a pattern rule.
    pub fn rule_description(&self, rule_id: &str) -> Option<&str> {
        self.rules
            .iter()
            .find(|r| r.id == rule_id)
            .map(|r| r.description.as_str())
    }

    pub(crate) fn finding(&self, hit: &Hit) -> Finding {
        match hit.source {
            Source::Rule(i) => Finding {
                rule_id: self
                    .rules
                    .get(i as usize)
                    .map(|r| r.id.clone())
                    .unwrap_or_default(),
                kind: FindingKind::Rule,
                offset: hit.offset,
                len: hit.len,
                redacted: redacted_preview(hit.prefix(), hit.len),
            },
            Source::Secret(p) => {
                let (id, encoding) = self
                    .secrets
                    .describe(p)
                    .unwrap_or(("", crate::SecretEncoding::Raw));
                Finding {
                    rule_id: id.to_string(),
                    kind: FindingKind::Secret { encoding },
                    offset: hit.offset,
                    len: hit.len,
                    redacted: redacted_preview(&[], hit.len),
                }
            }
        }
    }
}
