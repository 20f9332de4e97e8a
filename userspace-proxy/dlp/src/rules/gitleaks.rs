//! User rules from a gitleaks (v8) TOML config.
//!
//! Users already maintain gitleaks configs, so we read that format rather than
//! invent one. Keys are matched case-insensitively, as gitleaks (via viper)
//! does. What is supported:
//!
//! * `[[rules]]`: `id`, `description`, `regex`, `keywords`, `entropy`,
//!   `secretGroup`, `skipReport` (such rules are dropped), the older
//!   `[rules.allowlist]` table and the newer `[[rules.allowlists]]` array.
//! * Global `[allowlist]` and `[[allowlists]]` (with optional `targetRules`,
//!   which attach the allowlist to those rules; a target may be a built-in).
//! * Allowlist keys: `regexes`, `stopwords`, `regexTarget`
//!   (`secret` default, `match`, `line`), `condition` (`OR` default, `AND`).
//!
//! One semantic difference: gitleaks runs a rule's regex over the whole file
//! when any of its keywords appears anywhere in it; we only look within the
//! regex's maximum match length (capped at 4096 bytes) around each keyword
//! occurrence. For rules whose keywords are part of what they match (the
//! gitleaks convention) the results are the same. Rules without keywords run
//! over all data (correct, but a full regex pass each).
//!
//! Ignored on purpose: `title`, `[extend]` (gitleaks' own default rules are
//! not bundled; use our built-ins), rule `path`/`tags`, `[[rules.required]]`
//! (the primary rule reports on its own, which errs towards reporting),
//! allowlist `paths`/`commits`/`description` (we scan bytes, not files), and
//! rules without a `regex` (path-only rules). The inline `gitleaks:allow`
//! marker is deliberately NOT honoured: an agent could append it to smuggle a
//! secret out.

use toml::{Table, Value};

use super::{
    compile_allowlist_regex, compile_pattern, Allowlist, BuiltinChecks, RegexTarget, Rule,
    RuleError, SecretGroup,
};

/// Errors from reading a gitleaks TOML config. Each names the origin (file)
/// and, where there is one, the rule.
#[derive(Debug, thiserror::Error)]
pub enum GitleaksError {
    #[error("{origin}: not valid TOML: {detail}")]
    Toml { origin: String, detail: String },
    #[error("{origin}: `{location}` must be {expected}")]
    WrongType {
        origin: String,
        location: String,
        expected: &'static str,
    },
    #[error("{origin}: rule #{index} has no `id`; every [[rules]] entry needs a unique string id")]
    MissingId { origin: String, index: usize },
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error(
        "rule `{rule_id}` ({origin}): secretGroup = {group} but the regex has only \
         {available} capture group(s); point secretGroup at an existing group or remove it"
    )]
    SecretGroupOutOfRange {
        origin: String,
        rule_id: String,
        group: i64,
        available: usize,
    },
    #[error("{scope} ({origin}): allowlist condition `{value}` is not one of AND, &&, OR, ||")]
    InvalidCondition {
        origin: String,
        scope: String,
        value: String,
    },
    #[error(
        "{scope} ({origin}): allowlist regexTarget `{value}` is not one of secret, match, line"
    )]
    InvalidRegexTarget {
        origin: String,
        scope: String,
        value: String,
    },
    #[error(
        "{scope} ({origin}): allowlist has none of regexes, stopwords, paths, commits; \
         add a check or remove the allowlist"
    )]
    EmptyAllowlist { origin: String, scope: String },
}

/// A parsed config: rules, global allowlists, and allowlists aimed at
/// specific rule ids (resolved by the builder, since targets may be
/// built-ins or rules from other files).
pub(crate) struct GitleaksConfig {
    pub(crate) rules: Vec<Rule>,
    pub(crate) global_allowlists: Vec<Allowlist>,
    pub(crate) targeted_allowlists: Vec<(String, Allowlist)>,
}

/// Parses and compiles a gitleaks TOML config.
pub(crate) fn parse(toml_text: &str, origin: &str) -> Result<GitleaksConfig, GitleaksError> {
    let root: Table = toml_text
        .parse::<Table>()
        .map_err(|e| GitleaksError::Toml {
            origin: origin.to_string(),
            detail: e.to_string(),
        })?;
    let reader = Reader { origin };
    let mut config = GitleaksConfig {
        rules: Vec::new(),
        global_allowlists: Vec::new(),
        targeted_allowlists: Vec::new(),
    };

    if let Some(rules) = field(&root, "rules") {
        for (index, table) in reader.tables(rules, "rules")?.into_iter().enumerate() {
            if let Some(rule) = reader.rule(table, index)? {
                config.rules.push(rule);
            }
        }
    }

    let mut globals = Vec::new();
    if let Some(v) = field(&root, "allowlist") {
        globals.extend(reader.tables(v, "allowlist")?);
    }
    if let Some(v) = field(&root, "allowlists") {
        globals.extend(reader.tables(v, "allowlists")?);
    }
    for table in globals {
        let targets = reader.strings(table, "targetRules", "allowlists.targetRules")?;
        if targets.is_empty() {
            let allowlist = reader.allowlist(table, "global allowlist")?;
            config.global_allowlists.push(allowlist);
        } else {
            for target in targets {
                let scope = format!("allowlist for rule `{target}`");
                let allowlist = reader.allowlist(table, &scope)?;
                config.targeted_allowlists.push((target, allowlist));
            }
        }
    }
    Ok(config)
}

/// Case-insensitive key lookup (gitleaks reads its config through viper,
/// which lowercases keys).
fn field<'a>(table: &'a Table, key: &str) -> Option<&'a Value> {
    table
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

struct Reader<'a> {
    origin: &'a str,
}

impl Reader<'_> {
    fn wrong_type(&self, location: &str, expected: &'static str) -> GitleaksError {
        GitleaksError::WrongType {
            origin: self.origin.to_string(),
            location: location.to_string(),
            expected,
        }
    }

    /// A table or an array of tables.
    fn tables<'v>(
        &self,
        value: &'v Value,
        location: &str,
    ) -> Result<Vec<&'v Table>, GitleaksError> {
        match value {
            Value::Table(t) => Ok(vec![t]),
            Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    Value::Table(t) => Ok(t),
                    _ => Err(self.wrong_type(location, "an array of tables")),
                })
                .collect(),
            _ => Err(self.wrong_type(location, "a table or an array of tables")),
        }
    }

    fn string(
        &self,
        table: &Table,
        key: &str,
        location: &str,
    ) -> Result<Option<String>, GitleaksError> {
        match field(table, key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.wrong_type(&format!("{location}.{key}"), "a string")),
        }
    }

    fn strings(
        &self,
        table: &Table,
        key: &str,
        location: &str,
    ) -> Result<Vec<String>, GitleaksError> {
        match field(table, key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(self.wrong_type(&format!("{location}.{key}"), "an array of strings")),
                })
                .collect(),
            Some(_) => Err(self.wrong_type(&format!("{location}.{key}"), "an array of strings")),
        }
    }

    fn rule(&self, table: &Table, index: usize) -> Result<Option<Rule>, GitleaksError> {
        let location = format!("rules[{index}]");
        let id = match self.string(table, "id", &location)? {
            Some(id) if !id.trim().is_empty() => id,
            _ => {
                return Err(GitleaksError::MissingId {
                    origin: self.origin.to_string(),
                    index,
                })
            }
        };
        let location = format!("rules.{id}");
        if matches!(field(table, "skipReport"), Some(Value::Boolean(true))) {
            return Ok(None);
        }
        let pattern = match self.string(table, "regex", &location)? {
            Some(p) if !p.is_empty() => p,
            // Path-only rule: nothing to match in a byte stream.
            _ => return Ok(None),
        };
        let compiled = compile_pattern(&pattern).map_err(|detail| RuleError::InvalidRegex {
            rule_id: id.clone(),
            origin: self.origin.to_string(),
            detail,
        })?;

        let secret_group = match field(table, "secretGroup") {
            None => SecretGroup::FirstNonEmpty,
            Some(Value::Integer(0)) => SecretGroup::FirstNonEmpty,
            Some(Value::Integer(n)) => {
                let group = usize::try_from(*n).ok().filter(|g| *g <= compiled.groups);
                match group {
                    Some(g) => SecretGroup::Index(g),
                    None => {
                        return Err(GitleaksError::SecretGroupOutOfRange {
                            origin: self.origin.to_string(),
                            rule_id: id,
                            group: *n,
                            available: compiled.groups,
                        })
                    }
                }
            }
            Some(_) => {
                return Err(self.wrong_type(&format!("{location}.secretGroup"), "an integer"))
            }
        };
        let min_entropy = match field(table, "entropy") {
            None => None,
            Some(Value::Float(f)) => Some(*f),
            #[allow(clippy::cast_precision_loss)]
            Some(Value::Integer(i)) => Some(*i as f64),
            Some(_) => return Err(self.wrong_type(&format!("{location}.entropy"), "a number")),
        }
        .filter(|e| *e > 0.0);

        let keywords = self
            .strings(table, "keywords", &location)?
            .into_iter()
            .map(|k| k.to_ascii_lowercase())
            .filter(|k| !k.is_empty())
            .collect();

        let scope = format!("rule `{id}`");
        let mut allowlists = Vec::new();
        if let Some(v) = field(table, "allowlist") {
            for t in self.tables(v, &format!("{location}.allowlist"))? {
                allowlists.push(self.allowlist(t, &scope)?);
            }
        }
        if let Some(v) = field(table, "allowlists") {
            for t in self.tables(v, &format!("{location}.allowlists"))? {
                allowlists.push(self.allowlist(t, &scope)?);
            }
        }

        Ok(Some(Rule {
            description: self
                .string(table, "description", &location)?
                .unwrap_or_default(),
            id,
            origin: self.origin.to_string(),
            regex: compiled.regex,
            keywords,
            secret_group,
            min_entropy,
            allowlists,
            checks: BuiltinChecks::default(),
            reach: compiled.reach,
        }))
    }

    fn allowlist(&self, table: &Table, scope: &str) -> Result<Allowlist, GitleaksError> {
        let location = scope.to_string();
        let condition = self
            .string(table, "condition", &location)?
            .unwrap_or_default();
        let require_all = match condition.trim().to_ascii_uppercase().as_str() {
            "" | "OR" | "||" => false,
            "AND" | "&&" => true,
            _ => {
                return Err(GitleaksError::InvalidCondition {
                    origin: self.origin.to_string(),
                    scope: scope.to_string(),
                    value: condition,
                })
            }
        };
        let target_text = self
            .string(table, "regexTarget", &location)?
            .unwrap_or_default();
        let target = match target_text.as_str() {
            "" | "secret" => RegexTarget::Secret,
            "match" => RegexTarget::Match,
            "line" => RegexTarget::Line,
            _ => {
                return Err(GitleaksError::InvalidRegexTarget {
                    origin: self.origin.to_string(),
                    scope: scope.to_string(),
                    value: target_text,
                })
            }
        };
        let regexes = self
            .strings(table, "regexes", &location)?
            .into_iter()
            .map(|pattern| {
                compile_allowlist_regex(&pattern).map_err(|detail| {
                    GitleaksError::Rule(RuleError::InvalidAllowlistRegex {
                        scope: scope.to_string(),
                        origin: self.origin.to_string(),
                        pattern,
                        detail,
                    })
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let stopwords: Vec<Vec<u8>> = self
            .strings(table, "stopwords", &location)?
            .into_iter()
            .map(|w| w.to_ascii_lowercase().into_bytes())
            .filter(|w| !w.is_empty())
            .collect();
        let paths = self.strings(table, "paths", &location)?;
        let commits = self.strings(table, "commits", &location)?;
        if regexes.is_empty() && stopwords.is_empty() && paths.is_empty() && commits.is_empty() {
            return Err(GitleaksError::EmptyAllowlist {
                origin: self.origin.to_string(),
                scope: scope.to_string(),
            });
        }
        Ok(Allowlist {
            require_all,
            target,
            regexes,
            stopwords,
            has_unmatchable_criteria: !paths.is_empty() || !commits.is_empty(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use crate::{DlpError, RuleSetBuilder};

    fn build(toml: &str) -> Result<crate::RuleSet, DlpError> {
        let mut b = RuleSetBuilder::new();
        b.add_gitleaks_toml(toml, "test.toml")?;
        b.build()
    }

    fn rule_hits(rs: &crate::RuleSet, text: &str) -> Vec<String> {
        rs.scan(text.as_bytes())
            .into_iter()
            .map(|f| f.rule_id)
            .collect()
    }

    const SAMPLE: &str = r#"
title = "sample"

[extend]
useDefault = true

[[rules]]
id = "acme-token"
description = "ACME API token"
regex = '''(?i)acme[_-]?token\s*[:=]\s*['"]?([a-z0-9]{24})['"]?'''
secretGroup = 1
entropy = 3.0
keywords = ["ACME_TOKEN", "acme-token"]
tags = ["acme"]
path = '''\.env$'''

[rules.allowlist]
regexes = ['''^0{4}''']
stopwords = ["example"]

[[rules]]
id = "widget-key"
regex = '''widget_[A-Z0-9]{16}'''
keywords = ["widget_"]

[[rules.allowlists]]
regexTarget = "line"
regexes = ['''#\s*test-fixture''']

[[rules.allowlists]]
condition = "AND"
stopwords = ["dummy"]
regexes = ['''^widget_TEST''']

[[rules]]
id = "no-keyword"
regex = '''zq[0-9]{10}zq'''

[[rules]]
id = "path-only"
path = '''id_rsa$'''

[allowlist]
description = "global"
stopwords = ["notasecret"]
regexes = ['''^SAMPLE''']
"#;

    #[test]
    fn sample_config_loads_and_applies_every_feature() {
        let rs = build(SAMPLE).unwrap();
        let ids: Vec<&str> = rs.rule_ids().collect();
        assert_eq!(ids, ["acme-token", "widget-key", "no-keyword"]);

        // keywords (case-insensitive) + secretGroup: offset points at group 1.
        let text = "ACME_TOKEN = 'k3j4h5g6f7d8s9a0q1w2e3r4'";
        let found = rs.scan(text.as_bytes());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].rule_id, "acme-token");
        assert_eq!(found[0].offset, 14);
        assert_eq!(found[0].len, 24);

        // entropy: a low-entropy value is dropped.
        assert!(rule_hits(&rs, "acme_token=aaaaaaaaaaaabbbbbbbbbbbb").is_empty());
        // rule allowlist (old table form): regex and stopword.
        assert!(rule_hits(&rs, "acme_token=0000k3j4h5g6f7d8s9a0q1w2").is_empty());
        assert!(rule_hits(&rs, "acme_token=example1x2y3z4w5v6u7t8s9r0").is_empty());
        // global allowlist: stopword and regex on the secret.
        assert!(rule_hits(&rs, "acme_token=notasecret1x2y3z4w5v6u7t8").is_empty());
        assert!(rule_hits(&rs, "acme_token=SAMPLE1x2y3z4w5v6u7t8s9r0").is_empty());

        // new-style allowlists: line target, and AND condition.
        assert_eq!(
            rule_hits(&rs, "k = widget_ABCDEF0123456789"),
            ["widget-key"]
        );
        assert!(rule_hits(&rs, "k = widget_ABCDEF0123456789 # test-fixture").is_empty());
        // AND: needs both the stopword and the regex to match the secret.
        assert_eq!(rule_hits(&rs, "widget_DUMMY0123456789AB"), ["widget-key"]);
        assert!(rule_hits(&rs, "widget_TESTDUMMY01234567").is_empty());

        // A rule without keywords runs everywhere.
        let mut big = "x".repeat(200_000);
        big.push_str(" zq0123456789zq ");
        assert_eq!(rule_hits(&rs, &big), ["no-keyword"]);
    }

    #[test]
    fn and_allowlist_needs_all_checks() {
        let rs = build(
            r#"
[[rules]]
id = "r"
regex = '''tok_[a-z]{12}'''
keywords = ["tok_"]
[[rules.allowlists]]
condition = "AND"
stopwords = ["dummy"]
regexes = ['''^tok_dummy''']
"#,
        )
        .unwrap();
        assert!(rule_hits(&rs, "tok_dummyabcdefg").is_empty());
        assert_eq!(rule_hits(&rs, "tok_abcdummyefgh"), ["r"]);
    }

    #[test]
    fn global_allowlists_array_and_target_rules() {
        let rs = {
            let mut b = RuleSetBuilder::new().with_builtin_rules();
            b.add_gitleaks_toml(
                r#"
[[allowlists]]
targetRules = ["github-pat"]
regexTarget = "match"
regexes = ['''ghp_0{36}''']
"#,
                "targets.toml",
            )
            .unwrap();
            b.build().unwrap()
        };
        let zeros = format!("ghp_{}", "0".repeat(36));
        assert!(rs.scan(zeros.as_bytes()).is_empty());
        let other = format!("ghp_{}", "1".repeat(36));
        assert_eq!(rs.scan(other.as_bytes()).len(), 1);
    }

    #[test]
    fn unknown_allowlist_target_is_an_error() {
        let err = build(
            r#"
[[allowlists]]
targetRules = ["nope"]
stopwords = ["x"]
"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn bad_regex_error_names_the_rule() {
        let err = build(
            r#"
[[rules]]
id = "broken-rule"
regex = '''foo(bar'''
"#,
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("broken-rule"), "{msg}");
        assert!(msg.contains("test.toml"), "{msg}");
    }

    #[test]
    fn unsupported_re2_or_pcre_syntax_error_names_the_rule() {
        for regex in [r"secret(?=[a-z])", r"(a)\1", r"a\Cb"] {
            let toml = format!("[[rules]]\nid = \"lookahead-rule\"\nregex = '''{regex}'''\n");
            let err = build(&toml).unwrap_err().to_string();
            assert!(err.contains("lookahead-rule"), "{err}");
        }
    }

    #[test]
    fn go_syntax_is_accepted() {
        let rs = build(
            r#"
[[rules]]
id = "quoted"
regex = '''\Qa.b\E(?i)[[:alpha:]]{3}(?P<x>\d+)\z'''
keywords = ["a.b"]
"#,
        )
        .unwrap();
        assert_eq!(rule_hits(&rs, "a.bXyZ123"), ["quoted"]);
        assert!(rule_hits(&rs, "aXbXyZ123").is_empty());
    }

    #[test]
    fn other_config_errors_are_clear() {
        let cases = [
            ("[[rules]]\nregex = 'x'\n", "no `id`"),
            ("[[rules]]\nid = 'g'\nregex = '(a)'\nsecretGroup = 3\n", "secretGroup = 3"),
            ("[[rules]]\nid = 'c'\nregex = 'a'\n[rules.allowlist]\ncondition = 'XOR'\nstopwords = ['x']\n", "XOR"),
            ("[[rules]]\nid = 't'\nregex = 'a'\n[rules.allowlist]\nregexTarget = 'file'\nstopwords = ['x']\n", "file"),
            ("[[rules]]\nid = 'e'\nregex = 'a'\n[rules.allowlist]\ndescription = 'nothing'\n", "none of regexes"),
            ("[[rules]]\nid = 'k'\nregex = 'a'\nkeywords = 'abc'\n", "array of strings"),
            ("[[rules]]\nid = 'a'\nregex = 'a'\n[rules.allowlist]\nregexes = ['(']\n", "allowlist regex"),
            ("rules = [", "not valid TOML"),
        ];
        for (toml, needle) in cases {
            let err = build(toml).unwrap_err().to_string();
            assert!(err.contains(needle), "{toml:?}: {err}");
        }
    }

    #[test]
    fn later_definition_replaces_earlier_rule() {
        let mut b = RuleSetBuilder::new().with_builtin_rules();
        b.add_gitleaks_toml(
            "[[rules]]\nid = 'github-pat'\nregex = '''ghp_X{4}'''\nkeywords = ['ghp_']\n",
            "override.toml",
        )
        .unwrap();
        let rs = b.build().unwrap();
        assert_eq!(rs.rule_ids().filter(|id| *id == "github-pat").count(), 1);
        assert_eq!(rule_hits(&rs, "ghp_XXXX"), ["github-pat"]);
    }
}
