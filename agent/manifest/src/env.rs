//! A bottle's `env`, resolved on the client at launch.
//!
//! * `NAME: literal` — the text as written.
//! * `NAME: ?prompt text` — asked on the terminal without echo.
//! * `NAME: ${HOST_VAR}` — taken from the operator's environment. Only a whole value is
//!   substituted; `${` mixed with other text is refused at load time rather than passed on
//!   literally, so a value the operator expected to be filled in never leaks as `${X}`.
//!
//! Values are [`SecretString`]s and never appear in errors or debug output.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;

use bottle_api::policy::is_env_name;

use crate::manifest::EnvSpec;
use crate::secret::SecretString;

/// An `env` value as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvValue {
    Literal(String),
    /// The prompt text (may be empty).
    Prompt(String),
    /// Name of the host environment variable.
    Host(String),
}

impl EnvValue {
    /// Parses a value. The error never repeats the value (it may be a secret).
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        if let Some(prompt) = text.strip_prefix('?') {
            return Ok(Self::Prompt(prompt.trim().to_string()));
        }
        if let Some(inner) = text.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
            if is_env_name(inner) && !inner.contains('}') {
                return Ok(Self::Host(inner.to_string()));
            }
            return Err("`${…}` must hold a host environment variable name \
                        ([A-Za-z_][A-Za-z0-9_]*), as in ${HOST_VAR}"
                .into());
        }
        if text.contains("${") {
            return Err(
                "only a whole value `${HOST_VAR}` is taken from the host environment; \
                        this value mixes `${` with other text"
                    .into(),
            );
        }
        Ok(Self::Literal(text.to_string()))
    }

    /// How the preflight summary shows where the value comes from (never the value).
    pub fn source(&self) -> String {
        match self {
            Self::Literal(_) => "literal".into(),
            Self::Prompt(_) => "prompt".into(),
            Self::Host(var) => format!("${var}"),
        }
    }
}

/// Why a value could not be read from the terminal.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("stdin is not a terminal")]
    NoTerminal,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Asks the operator for a value without echoing it. A trait so tests can answer.
pub trait Prompter {
    /// `name` is the variable, `prompt` the manifest's text after `?` (may be empty).
    fn read_secret(&mut self, name: &str, prompt: &str)
        -> std::result::Result<String, PromptError>;
}

/// Reads from the controlling terminal with echo off.
#[derive(Debug, Default, Clone, Copy)]
pub struct TerminalPrompter;

impl Prompter for TerminalPrompter {
    fn read_secret(
        &mut self,
        name: &str,
        prompt: &str,
    ) -> std::result::Result<String, PromptError> {
        if !std::io::stdin().is_terminal() {
            return Err(PromptError::NoTerminal);
        }
        let text = if prompt.is_empty() {
            format!("{name}: ")
        } else {
            format!("{prompt} ({name}): ")
        };
        Ok(rpassword::prompt_password(text)?)
    }
}

/// A problem resolving `env`. Messages name the variable, never its value.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error(
        "{name} needs a value typed at a terminal (?prompt) but stdin is not a terminal; set \
         it in the manifest or run interactively"
    )]
    NoTerminal { name: String },
    #[error("{name}: reading the value from the terminal failed: {source}")]
    Prompt {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}: nothing was typed; a ?prompt value cannot be empty")]
    EmptyAnswer { name: String },
    #[error(
        "{name} takes its value from the host variable {host_var} (${{{host_var}}}), which is \
         not set; export {host_var} or change `env.{name}` in {file}:{line}"
    )]
    HostVarMissing {
        name: String,
        host_var: String,
        file: String,
        line: usize,
    },
}

pub type Result<T> = std::result::Result<T, EnvError>;

/// Resolved values, by name.
pub type ResolvedEnv = BTreeMap<String, SecretString>;

/// Resolves every entry, in name order (so prompts come in a stable order).
/// `host_env` looks up the operator's environment.
pub fn resolve_env(
    env: &BTreeMap<String, EnvSpec>,
    host_env: &dyn Fn(&str) -> Option<String>,
    prompter: &mut dyn Prompter,
) -> Result<ResolvedEnv> {
    let mut out = BTreeMap::new();
    for (name, spec) in env {
        let value = match &spec.value {
            EnvValue::Literal(v) => v.clone(),
            EnvValue::Host(var) => host_env(var).ok_or_else(|| EnvError::HostVarMissing {
                name: name.clone(),
                host_var: var.clone(),
                file: spec.file.display().to_string(),
                line: spec.line,
            })?,
            EnvValue::Prompt(text) => {
                let answer = prompter.read_secret(name, text).map_err(|e| match e {
                    PromptError::NoTerminal => EnvError::NoTerminal { name: name.clone() },
                    PromptError::Io(source) => EnvError::Prompt {
                        name: name.clone(),
                        source,
                    },
                })?;
                if answer.is_empty() {
                    return Err(EnvError::EmptyAnswer { name: name.clone() });
                }
                answer
            }
        };
        out.insert(name.clone(), SecretString::new(value));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    struct Answers(Vec<(String, String, String)>, Vec<String>);

    impl Prompter for Answers {
        fn read_secret(
            &mut self,
            name: &str,
            prompt: &str,
        ) -> std::result::Result<String, PromptError> {
            self.1.push(format!("{name}|{prompt}"));
            match self.0.iter().find(|(n, _, _)| n == name) {
                Some((_, _, v)) => Ok(v.clone()),
                None => Err(PromptError::NoTerminal),
            }
        }
    }

    fn spec(text: &str) -> EnvSpec {
        EnvSpec {
            value: EnvValue::parse(text).unwrap(),
            file: PathBuf::from("/h/bottles/dev.md"),
            line: 4,
        }
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, EnvSpec> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), spec(v)))
            .collect()
    }

    fn host(name: &str) -> Option<String> {
        (name == "HOST_TOKEN").then(|| "from-host".to_string())
    }

    #[test]
    fn parse_values() {
        assert_eq!(EnvValue::parse("x").unwrap(), EnvValue::Literal("x".into()));
        assert_eq!(
            EnvValue::parse("?Your token").unwrap(),
            EnvValue::Prompt("Your token".into())
        );
        assert_eq!(
            EnvValue::parse("?").unwrap(),
            EnvValue::Prompt(String::new())
        );
        assert_eq!(
            EnvValue::parse("${HOST_TOKEN}").unwrap(),
            EnvValue::Host("HOST_TOKEN".into())
        );
        assert!(EnvValue::parse("${1BAD}").is_err());
        let err = EnvValue::parse("pre-${SECRETISH}").unwrap_err();
        assert!(!err.contains("SECRETISH") && !err.contains("pre-"), "{err}");
    }

    #[test]
    fn literal_host_and_prompt() {
        let mut prompter = Answers(
            vec![("ASKED".into(), String::new(), "typed".into())],
            vec![],
        );
        let resolved = resolve_env(
            &env(&[
                ("LIT", "plain"),
                ("FROM", "${HOST_TOKEN}"),
                ("ASKED", "?Say it"),
            ]),
            &host,
            &mut prompter,
        )
        .unwrap();
        assert_eq!(resolved["LIT"].expose(), "plain");
        assert_eq!(resolved["FROM"].expose(), "from-host");
        assert_eq!(resolved["ASKED"].expose(), "typed");
        assert_eq!(prompter.1, ["ASKED|Say it"]);
        assert!(!format!("{resolved:?}").contains("typed"));
    }

    #[test]
    fn prompt_without_terminal() {
        let mut prompter = Answers(vec![], vec![]);
        let err = resolve_env(&env(&[("TOKEN", "?Token")]), &host, &mut prompter).unwrap_err();
        assert_eq!(
            err.to_string(),
            "TOKEN needs a value typed at a terminal (?prompt) but stdin is not a terminal; set \
             it in the manifest or run interactively"
        );
    }

    #[test]
    fn empty_answer_is_refused() {
        let mut prompter = Answers(vec![("T".into(), String::new(), String::new())], vec![]);
        let err = resolve_env(&env(&[("T", "?")]), &host, &mut prompter).unwrap_err();
        assert_eq!(
            err.to_string(),
            "T: nothing was typed; a ?prompt value cannot be empty"
        );
    }

    #[test]
    fn host_var_missing_names_both() {
        let mut prompter = Answers(vec![], vec![]);
        let err =
            resolve_env(&env(&[("API", "${MISSING_VAR}")]), &host, &mut prompter).unwrap_err();
        assert_eq!(
            err.to_string(),
            "API takes its value from the host variable MISSING_VAR (${MISSING_VAR}), which is \
             not set; export MISSING_VAR or change `env.API` in /h/bottles/dev.md:4"
        );
    }
}
