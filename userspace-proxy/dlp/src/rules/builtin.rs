//! Built-in rules for well-known credential formats.
//!
//! Written from each provider's documented token format (prefix, alphabet,
//! length). Every rule has a keyword that is a literal part of every match, so
//! the aho-corasick pre-filter decides cheaply where the regex must run. Where a
//! format has a fixed length, a `tail` check (the byte after the secret must
//! not continue the token) replaces the look-ahead the regex engine lacks.
//!
//! Keywords are kept at 4+ bytes where the format allows (all but `hf_` and
//! `sg.`) so the SIMD (Teddy) pre-filter can use 4-byte fingerprints; shorter
//! ones go to a second, small searcher. Keywords whose first bytes are common
//! in text (like a bare `aws`) were avoided: every hit costs a regex window.

use super::{compile_pattern, BuiltinChecks, Rule, RuleError, SecretGroup};

/// Origin string reported for built-in rules.
pub(crate) const BUILTIN_ORIGIN: &str = "builtin";

/// One built-in rule, before compilation.
struct Spec {
    id: &'static str,
    description: &'static str,
    regex: &'static str,
    keywords: &'static [&'static str],
    /// Capture group holding the secret (0 = whole match).
    secret_group: usize,
    min_entropy: Option<f64>,
    tail: Option<fn(u8) -> bool>,
    validate: Option<fn(&[u8]) -> bool>,
}

fn alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

/// `[A-Za-z0-9_-]`: URL-safe token alphabet.
fn token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// `[A-Za-z0-9+/=]`: standard base64 alphabet with padding.
fn base64_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'='
}

/// Random 40-char AWS secrets contain both cases; hex digests and words
/// of that length usually do not.
fn mixed_case(s: &[u8]) -> bool {
    s.iter().any(u8::is_ascii_uppercase) && s.iter().any(u8::is_ascii_lowercase)
}

const fn spec(
    id: &'static str,
    description: &'static str,
    regex: &'static str,
    keywords: &'static [&'static str],
) -> Spec {
    Spec {
        id,
        description,
        regex,
        keywords,
        secret_group: 0,
        min_entropy: None,
        tail: None,
        validate: None,
    }
}

const fn with_tail(mut s: Spec, tail: fn(u8) -> bool) -> Spec {
    s.tail = Some(tail);
    s
}

const SPECS: &[Spec] = &[
    // --- AWS -------------------------------------------------------------
    with_tail(
        spec(
            "aws-access-key-id",
            "AWS access key ID (long-term AKIA or temporary ASIA)",
            r"(?:AKIA|ASIA)[A-Z0-9]{16}",
            &["akia", "asia"],
        ),
        alnum,
    ),
    Spec {
        secret_group: 1,
        min_entropy: Some(3.0),
        tail: Some(base64_char),
        validate: Some(mixed_case),
        ..spec(
            "aws-secret-access-key",
            "AWS secret access key (40 base64 chars after an AWS secret key name)",
            r"(?i:aws[_\-. ]?secret|secret[_\-]?access[_\-]?key)[^\r\n]{0,48}?[^A-Za-z0-9/+]([A-Za-z0-9/+]{40})",
            &[
                "secretaccesskey",
                "secret_access_key",
                "secret-access-key",
                "aws_secret",
                "aws-secret",
                "awssecret",
                "aws.secret",
                "aws secret",
            ],
        )
    },
    // --- GitHub ----------------------------------------------------------
    spec(
        "github-pat",
        "GitHub personal access token (classic)",
        r"ghp_[A-Za-z0-9]{36,251}",
        &["ghp_"],
    ),
    spec(
        "github-oauth-token",
        "GitHub OAuth access token",
        r"gho_[A-Za-z0-9]{36,251}",
        &["gho_"],
    ),
    spec(
        "github-user-to-server-token",
        "GitHub App user-to-server token",
        r"ghu_[A-Za-z0-9]{36,251}",
        &["ghu_"],
    ),
    spec(
        "github-server-to-server-token",
        "GitHub App installation (server-to-server) token",
        r"ghs_[A-Za-z0-9]{36,251}",
        &["ghs_"],
    ),
    spec(
        "github-refresh-token",
        "GitHub App refresh token",
        r"ghr_[A-Za-z0-9]{36,251}",
        &["ghr_"],
    ),
    spec(
        "github-fine-grained-pat",
        "GitHub fine-grained personal access token",
        r"github_pat_[A-Za-z0-9_]{82,244}",
        &["github_pat_"],
    ),
    // --- GitLab ----------------------------------------------------------
    spec(
        "gitlab-pat",
        "GitLab personal/project/group access token",
        r"glpat-[A-Za-z0-9_\-.]{20,250}",
        &["glpat-"],
    ),
    spec(
        "gitlab-token",
        "GitLab token (OAuth secret, deploy, runner, CI job, trigger, feed, \
         incoming mail, agent, SCIM, feature flag, runner registration)",
        r"(?:(?:gloas|gldt|glrtr?|glcbt|glptt|glft|glimt|glagent|glsoat|glffct)-|GR1348941)[A-Za-z0-9_\-.]{20,250}",
        &[
            "gloas-",
            "gldt-",
            "glrt",
            "glcbt-",
            "glptt-",
            "glft-",
            "glimt-",
            "glagent-",
            "glsoat-",
            "glffct-",
            "gr1348941",
        ],
    ),
    // --- Slack -----------------------------------------------------------
    spec(
        "slack-token",
        "Slack bot/user/app/refresh/config token (xoxb-, xoxp-, xoxa-, xoxr-, xoxs-, xoxe-)",
        r"xox(?:e\.xox[bp]|[abeoprs])-[0-9]{1,40}-[0-9A-Za-z\-]{8,250}",
        &[
            "xoxa-", "xoxb-", "xoxe-", "xoxe.", "xoxo-", "xoxp-", "xoxr-", "xoxs-",
        ],
    ),
    spec(
        "slack-app-token",
        "Slack app-level token",
        r"xapp-[0-9]{1,4}-[0-9A-Za-z\-]{8,250}",
        &["xapp-"],
    ),
    spec(
        "slack-webhook-url",
        "Slack incoming webhook / workflow trigger URL",
        r"hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_]{6,32}/[A-Za-z0-9_]{6,32}/[A-Za-z0-9_/]{16,160}",
        &["hooks.slack.com"],
    ),
    // --- Stripe ----------------------------------------------------------
    spec(
        "stripe-live-key",
        "Stripe live secret or restricted key",
        r"(?:sk|rk)_live_[0-9A-Za-z]{10,247}",
        &["k_live_"],
    ),
    spec(
        "stripe-test-key",
        "Stripe test-mode secret or restricted key",
        r"(?:sk|rk)_test_[0-9A-Za-z]{10,247}",
        &["k_test_"],
    ),
    // --- Google ----------------------------------------------------------
    with_tail(
        spec(
            "google-api-key",
            "Google API key",
            r"AIza[0-9A-Za-z_\-]{35}",
            &["aiza"],
        ),
        token_char,
    ),
    with_tail(
        spec(
            "google-oauth-client-secret",
            "Google OAuth client secret",
            r"GOCSPX-[0-9A-Za-z_\-]{28}",
            &["gocspx-"],
        ),
        token_char,
    ),
    // --- OpenAI ----------------------------------------------------------
    spec(
        "openai-project-key",
        "OpenAI project API key",
        r"sk-proj-[A-Za-z0-9_\-]{20,250}",
        &["sk-proj-"],
    ),
    spec(
        "openai-service-account-key",
        "OpenAI service account key",
        r"sk-svcacct-[A-Za-z0-9_\-]{20,250}",
        &["sk-svcacct-"],
    ),
    spec(
        "openai-admin-key",
        "OpenAI admin key",
        r"sk-admin-[A-Za-z0-9_\-]{20,250}",
        &["sk-admin-"],
    ),
    with_tail(
        spec(
            "openai-legacy-key",
            "OpenAI legacy user API key (contains T3BlbkFJ)",
            r"sk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}",
            &["t3blbkfj"],
        ),
        alnum,
    ),
    // --- Anthropic -------------------------------------------------------
    spec(
        "anthropic-api-key",
        "Anthropic API key",
        r"sk-ant-api[0-9]{2}-[A-Za-z0-9_\-]{32,250}",
        &["sk-ant-"],
    ),
    spec(
        "anthropic-oauth-token",
        "Anthropic OAuth access or refresh token",
        r"sk-ant-o[ar]t[0-9]{2}-[A-Za-z0-9_\-]{32,250}",
        &["sk-ant-"],
    ),
    spec(
        "anthropic-admin-key",
        "Anthropic admin API key",
        r"sk-ant-admin[0-9]{2}-[A-Za-z0-9_\-]{32,250}",
        &["sk-ant-"],
    ),
    // --- Private keys, JWTs ----------------------------------------------
    // Header, then (possibly JSON-escaped) line breaks and RFC 1421 style
    // header lines, then the start of the base64 body. Requiring body bytes
    // keeps code that merely mentions the header from matching.
    spec(
        "private-key",
        "PEM/OpenSSH/PGP private key block",
        r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----(?:\\[nrt]|[^A-Za-z0-9+/=]){1,80}(?:[A-Za-z][A-Za-z0-9\-]{1,40}: [^\r\n\\]{0,120}(?:\\[nrt]|[^A-Za-z0-9+/=]){1,20}){0,4}[A-Za-z0-9+/]{32}",
        &["private key"],
    ),
    spec(
        "jwt",
        "JSON Web Token (signed: header.payload.signature)",
        r"eyJ[A-Za-z0-9_\-]{10,500}\.eyJ[A-Za-z0-9_\-]{2,2500}\.[A-Za-z0-9_\-]{16,1000}",
        // The payload always starts ".eyJ"; 4 bytes keep the pre-filter fast.
        &[".eyj"],
    ),
    // --- Package registries, ML hubs ---------------------------------------
    with_tail(
        spec(
            "npm-access-token",
            "npm access token",
            r"npm_[A-Za-z0-9]{36}",
            &["npm_"],
        ),
        alnum,
    ),
    spec(
        "pypi-upload-token",
        "PyPI / TestPyPI upload token (macaroon)",
        r"pypi-(?:AgEIcHlwaS5vcmc|AgENdGVzdC5weXBpLm9yZw)[A-Za-z0-9_\-]{50,1000}",
        &["pypi-ageichlwas5vcmc", "pypi-agendgvzdc5wexbplm9yzw"],
    ),
    with_tail(
        spec(
            "huggingface-token",
            "Hugging Face user or org access token",
            r"(?:hf_|api_org_)[A-Za-z]{34}",
            &["hf_", "api_org_"],
        ),
        alnum,
    ),
    // --- SaaS APIs -------------------------------------------------------
    with_tail(
        spec(
            "sendgrid-api-key",
            "SendGrid API key",
            r"SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}",
            &["sg."],
        ),
        token_char,
    ),
    with_tail(
        spec(
            "digitalocean-token",
            "DigitalOcean personal access, OAuth or refresh token",
            r"do[por]_v1_[a-f0-9]{64}",
            &["dop_v1_", "doo_v1_", "dor_v1_"],
        ),
        alnum,
    ),
    with_tail(
        spec(
            "shopify-token",
            "Shopify access token, custom/private app token or shared secret",
            r"shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}",
            &["shpat_", "shpca_", "shppa_", "shpss_"],
        ),
        alnum,
    ),
    with_tail(
        spec(
            "linear-api-key",
            "Linear API key",
            r"lin_api_[A-Za-z0-9]{40}",
            &["lin_api_"],
        ),
        alnum,
    ),
    with_tail(
        spec(
            "databricks-token",
            "Databricks personal access token",
            r"dapi[a-f0-9]{32}",
            &["dapi"],
        ),
        alnum,
    ),
    with_tail(
        spec(
            "postman-api-key",
            "Postman API key",
            r"PMAK-[a-f0-9]{24}-[a-f0-9]{34}",
            &["pmak-"],
        ),
        alnum,
    ),
    with_tail(
        spec(
            "age-secret-key",
            "age encryption secret key",
            r"AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}",
            &["age-secret-key-1"],
        ),
        alnum,
    ),
    spec(
        "hashicorp-vault-token",
        "HashiCorp Vault service or batch token",
        r"hv[sb]\.[A-Za-z0-9_\-]{24,250}",
        &["hvs.", "hvb."],
    ),
    spec(
        "terraform-cloud-token",
        "Terraform Cloud / Enterprise API token",
        r"[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_=\-]{60,70}",
        &["atlasv1"],
    ),
    with_tail(
        spec(
            "grafana-service-account-token",
            "Grafana service account token",
            r"glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8}",
            &["glsa_"],
        ),
        alnum,
    ),
    spec(
        "sentry-token",
        "Sentry organization or user auth token",
        r"sntrys_eyJ[A-Za-z0-9+/=_\-]{60,400}|sntryu_[a-f0-9]{64}",
        &["sntrys_", "sntryu_"],
    ),
];

/// Compiles every built-in rule. Failure here is a bug in this file; it is
/// still reported as an error rather than a panic.
pub(crate) fn compile_builtins() -> Result<Vec<Rule>, RuleError> {
    SPECS.iter().map(compile_spec).collect()
}

fn compile_spec(spec: &Spec) -> Result<Rule, RuleError> {
    let compiled = compile_pattern(spec.regex).map_err(|detail| RuleError::InvalidRegex {
        rule_id: spec.id.to_string(),
        origin: BUILTIN_ORIGIN.to_string(),
        detail,
    })?;
    Ok(Rule {
        id: spec.id.to_string(),
        description: spec.description.to_string(),
        origin: BUILTIN_ORIGIN.to_string(),
        regex: compiled.regex,
        keywords: spec
            .keywords
            .iter()
            .map(|k| k.to_ascii_lowercase())
            .collect(),
        secret_group: SecretGroup::Index(spec.secret_group),
        min_entropy: spec.min_entropy,
        allowlists: Vec::new(),
        checks: BuiltinChecks {
            tail: spec.tail,
            validate: spec.validate,
        },
        reach: compiled.reach,
    })
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]
mod tests {
    use crate::{Finding, RuleSet, RuleSetBuilder};

    const ALNUM: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    const UPPER_DIGIT: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    const TOKEN: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
    const HEX: &str = "0123456789abcdef";
    const ALPHA: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    const B64: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    /// Deterministic made-up string over `charset` (never a real key).
    fn synth(charset: &str, len: usize, seed: u64) -> String {
        let chars: Vec<char> = charset.chars().collect();
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chars[(x % chars.len() as u64) as usize]
            })
            .collect()
    }

    fn rules() -> RuleSet {
        RuleSetBuilder::new().with_builtin_rules().build().unwrap()
    }

    fn ids(findings: &[Finding]) -> Vec<&str> {
        findings.iter().map(|f| f.rule_id.as_str()).collect()
    }

    /// (rule id, text that must hit, text that must not hit that rule)
    fn vectors() -> Vec<(&'static str, String, String)> {
        let s = synth;
        vec![
            (
                "aws-access-key-id",
                format!("key_id = AKIA{}", s(UPPER_DIGIT, 16, 1)),
                format!("key_id = AKIA{}", s(UPPER_DIGIT, 15, 1)),
            ),
            (
                "aws-access-key-id",
                format!("\"AccessKeyId\": \"ASIA{}\"", s(UPPER_DIGIT, 16, 2)),
                format!("id = akia{}", s(UPPER_DIGIT, 16, 2).to_lowercase()),
            ),
            (
                "aws-secret-access-key",
                format!("aws_secret_access_key = {}", s(B64, 38, 3) + "aB"),
                // A 40-char lowercase hex digest is not a key.
                format!("aws_secret_access_key = {}", s(HEX, 40, 3)),
            ),
            (
                "aws-secret-access-key",
                format!("export AWS_SECRET_KEY=\"{}Qq\"", s(B64, 38, 5)),
                // 41 chars: not a secret key.
                format!("export AWS_SECRET_KEY=\"{}Qq\"", s(B64, 39, 5)),
            ),
            (
                "aws-secret-access-key",
                format!("{{\"SecretAccessKey\": \"{}Zz\"}}", s(B64, 38, 4)),
                // Right length, no AWS context.
                format!("token = \"{}Zz\"", s(B64, 38, 4)),
            ),
            (
                "github-pat",
                format!("ghp_{}", s(ALNUM, 36, 5)),
                format!("ghp_{}", s(ALNUM, 35, 5)),
            ),
            (
                "github-oauth-token",
                format!("gho_{}", s(ALNUM, 36, 6)),
                format!("gho-{}", s(ALNUM, 36, 6)),
            ),
            (
                "github-user-to-server-token",
                format!("ghu_{}", s(ALNUM, 36, 7)),
                format!("ghu_{}", s(ALNUM, 20, 7)),
            ),
            (
                "github-server-to-server-token",
                format!("ghs_{}", s(ALNUM, 36, 8)),
                format!("ghs_{}!", s(ALNUM, 30, 8)),
            ),
            (
                "github-refresh-token",
                format!("ghr_{}", s(ALNUM, 76, 9)),
                format!("ghx_{}", s(ALNUM, 76, 9)),
            ),
            (
                "github-fine-grained-pat",
                format!("github_pat_{}_{}", s(ALNUM, 22, 10), s(ALNUM, 59, 11)),
                format!("github_pat_{}", s(ALNUM, 40, 10)),
            ),
            (
                "gitlab-pat",
                format!("glpat-{}", s(TOKEN, 20, 12)),
                format!("glpat-{}", s(TOKEN, 12, 12)),
            ),
            (
                "gitlab-token",
                format!("glrt-{}", s(TOKEN, 20, 13)),
                format!("glxx-{}", s(TOKEN, 20, 13)),
            ),
            (
                "gitlab-token",
                format!("GR1348941{}", s(TOKEN, 20, 14)),
                format!("GR1348941{}", s(TOKEN, 10, 14)),
            ),
            (
                "slack-token",
                format!("xoxb-{}-{}-{}", s("0123456789", 12, 15), s("0123456789", 13, 16), s(ALNUM, 24, 17)),
                format!("xoxb-{}-{}", s(ALPHA, 8, 15), s(ALNUM, 24, 17)),
            ),
            (
                "slack-token",
                format!("xoxp-{}-{}-{}-{}", s("0123456789", 12, 18), s("0123456789", 12, 19), s("0123456789", 12, 20), s(HEX, 32, 21)),
                "xoxp-1234-short".to_string(),
            ),
            (
                "slack-app-token",
                format!("xapp-1-A{}-{}-{}", s(UPPER_DIGIT, 10, 22), s("0123456789", 13, 23), s(HEX, 64, 24)),
                "xapp-1-abc".to_string(),
            ),
            (
                "slack-webhook-url",
                format!("https://hooks.slack.com/services/T{}/B{}/{}", s(UPPER_DIGIT, 8, 25), s(UPPER_DIGIT, 10, 26), s(ALNUM, 24, 27)),
                "see https://hooks.slack.com/services/ for setup".to_string(),
            ),
            (
                "stripe-live-key",
                format!("sk_live_{}", s(ALNUM, 24, 28)),
                // Publishable keys are not secret.
                format!("pk_live_{}", s(ALNUM, 24, 28)),
            ),
            (
                "stripe-live-key",
                format!("rk_live_{}", s(ALNUM, 99, 29)),
                "sk_live_short".to_string(),
            ),
            (
                "stripe-test-key",
                format!("sk_test_{}", s(ALNUM, 24, 30)),
                format!("pk_test_{}", s(ALNUM, 24, 30)),
            ),
            (
                "google-api-key",
                format!("key=AIza{}", s(TOKEN, 35, 31)),
                format!("key=AIza{}", s(TOKEN, 34, 31)),
            ),
            (
                "google-oauth-client-secret",
                format!("\"client_secret\": \"GOCSPX-{}\"", s(TOKEN, 28, 32)),
                format!("GOCSPX-{}", s(TOKEN, 20, 32)),
            ),
            (
                "openai-project-key",
                format!("sk-proj-{}", s(TOKEN, 156, 33)),
                "sk-proj-tooshort".to_string(),
            ),
            (
                "openai-service-account-key",
                format!("sk-svcacct-{}", s(TOKEN, 120, 34)),
                "sk-svcacct-".to_string(),
            ),
            (
                "openai-admin-key",
                format!("sk-admin-{}", s(TOKEN, 100, 35)),
                "sk-admin-x".to_string(),
            ),
            (
                "openai-legacy-key",
                format!("sk-{}T3BlbkFJ{}", s(ALNUM, 20, 36), s(ALNUM, 20, 37)),
                format!("sk-{}T3BlbkFJ{}", s(ALNUM, 19, 36), s(ALNUM, 20, 37)),
            ),
            (
                "anthropic-api-key",
                format!("sk-ant-api03-{}AA", s(TOKEN, 93, 38)),
                "sk-ant-api03-short".to_string(),
            ),
            (
                "anthropic-oauth-token",
                format!("sk-ant-oat01-{}AA", s(TOKEN, 93, 39)),
                format!("sk-ant-oat1-{}", s(TOKEN, 93, 39)),
            ),
            (
                "anthropic-oauth-token",
                format!("sk-ant-ort01-{}", s(TOKEN, 93, 40)),
                "sk-ant-ort01-".to_string(),
            ),
            (
                "anthropic-admin-key",
                format!("sk-ant-admin01-{}AA", s(TOKEN, 93, 41)),
                "sk-ant-admin01-abc".to_string(),
            ),
            (
                "private-key",
                format!("-----BEGIN RSA PRIVATE KEY-----\n{}\n{}\n-----END RSA PRIVATE KEY-----\n", s(B64, 64, 42), s(B64, 64, 43)),
                format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", s(B64, 64, 42)),
            ),
            (
                "private-key",
                format!("{{\"private_key\": \"-----BEGIN PRIVATE KEY-----\\n{}\\n\"}}", s(B64, 64, 44)),
                "if line == \"-----BEGIN PRIVATE KEY-----\" {".to_string(),
            ),
            (
                "private-key",
                format!("-----BEGIN OPENSSH PRIVATE KEY-----\r\n{}\r\n", s(B64, 70, 45)),
                format!("-----BEGIN CERTIFICATE-----\n{}\n", s(B64, 64, 45)),
            ),
            (
                "private-key",
                format!("-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,{}\n\n{}\n", s(HEX, 32, 46).to_uppercase(), s(B64, 64, 47)),
                "-----BEGIN EC PRIVATE KEY-----\n...\n".to_string(),
            ),
            (
                "private-key",
                format!("-----BEGIN PGP PRIVATE KEY BLOCK-----\nVersion: Synthetic 1.0\n\n{}\n", s(B64, 64, 48)),
                format!("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n{}\n", s(B64, 64, 48)),
            ),
            (
                "private-key",
                format!("-----BEGIN DSA PRIVATE KEY-----\n{}", s(B64, 40, 49)),
                format!("-----BEGIN DSA PRIVATE KEY-----\n{}", s(B64, 20, 49)),
            ),
            (
                "private-key",
                format!("-----BEGIN ENCRYPTED PRIVATE KEY-----\n{}", s(B64, 64, 50)),
                format!("-----BEGIN SECRET PRIVATE KEY-----\n{}", s(B64, 64, 50)),
            ),
            (
                "jwt",
                format!("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJ{}.{}", s(TOKEN, 40, 51), s(TOKEN, 43, 52)),
                // Unsigned / truncated tokens are not credentials.
                format!("eyJhbGciOiJub25lIn0.eyJ{}.", s(TOKEN, 40, 51)),
            ),
            (
                "npm-access-token",
                format!("//registry.npmjs.org/:_authToken=npm_{}", s(ALNUM, 36, 53)),
                format!("npm_{}", s(ALNUM, 37, 53)),
            ),
            (
                "pypi-upload-token",
                format!("password = pypi-AgEIcHlwaS5vcmc{}", s(TOKEN, 150, 54)),
                format!("pypi-AgEIcHlwaS5vcmc{}", s(TOKEN, 20, 54)),
            ),
            (
                "huggingface-token",
                format!("HF_TOKEN=hf_{}", s(ALPHA, 34, 55)),
                format!("hf_{}", s(ALPHA, 33, 55)),
            ),
            (
                "huggingface-token",
                format!("api_org_{}", s(ALPHA, 34, 56)),
                format!("api_org_{}1", s(ALPHA, 34, 56)),
            ),
            (
                "sendgrid-api-key",
                format!("SG.{}.{}", s(TOKEN, 22, 57), s(TOKEN, 43, 58)),
                format!("msg.{}.{}", s(TOKEN, 10, 57), s(TOKEN, 43, 58)),
            ),
            (
                "digitalocean-token",
                format!("dop_v1_{}", s(HEX, 64, 59)),
                format!("dop_v1_{}", s(HEX, 63, 59)),
            ),
            (
                "shopify-token",
                format!("shpat_{}", s(HEX, 32, 60)),
                format!("shpxx_{}", s(HEX, 32, 60)),
            ),
            (
                "linear-api-key",
                format!("lin_api_{}", s(ALNUM, 40, 61)),
                format!("lin_api_{}", s(ALNUM, 39, 61)),
            ),
            (
                "databricks-token",
                format!("dapi{}", s(HEX, 32, 62)),
                format!("dapi{}", s(HEX, 31, 62)),
            ),
            (
                "postman-api-key",
                format!("PMAK-{}-{}", s(HEX, 24, 63), s(HEX, 34, 64)),
                format!("PMAK-{}", s(HEX, 24, 63)),
            ),
            (
                "age-secret-key",
                format!("AGE-SECRET-KEY-1{}", s("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L", 58, 65)),
                format!("AGE-SECRET-KEY-1{}", s("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L", 50, 65)),
            ),
            (
                "hashicorp-vault-token",
                format!("VAULT_TOKEN=hvs.{}", s(TOKEN, 90, 66)),
                "hvs.short".to_string(),
            ),
            (
                "terraform-cloud-token",
                format!("{}.atlasv1.{}", s(ALNUM, 14, 67), s(ALNUM, 67, 68)),
                format!("{}.atlasv1.{}", s(ALNUM, 14, 67), s(ALNUM, 20, 68)),
            ),
            (
                "grafana-service-account-token",
                format!("glsa_{}_{}", s(ALNUM, 32, 69), s(HEX, 8, 70)),
                format!("glsa_{}", s(ALNUM, 32, 69)),
            ),
            (
                "sentry-token",
                format!("sntryu_{}", s(HEX, 64, 71)),
                format!("sntryu_{}", s(HEX, 32, 71)),
            ),
        ]
    }

    #[test]
    fn every_builtin_rule_has_a_hit_and_a_near_miss() {
        let rules = rules();
        let vectors = vectors();
        for id in rules.rule_ids() {
            assert!(
                vectors.iter().any(|(v, _, _)| *v == id),
                "built-in rule {id} has no test vector"
            );
        }
        for (id, hit, miss) in &vectors {
            let found = rules.scan(hit.as_bytes());
            assert!(
                ids(&found).contains(id),
                "{id}: expected a hit, got {found:?}"
            );
            let missed = rules.scan(miss.as_bytes());
            assert!(
                !ids(&missed).contains(id),
                "{id}: near-miss matched: {missed:?}"
            );
        }
    }

    #[test]
    fn aws_documentation_example_is_a_hit() {
        let rules = rules();
        let found = rules.scan(b"aws_access_key_id = AKIAIOSFODNN7EXAMPLE\n");
        assert_eq!(ids(&found), ["aws-access-key-id"]);
        assert_eq!(found[0].offset, 20);
        assert_eq!(found[0].len, 20);
        let found =
            rules.scan(b"aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n");
        assert_eq!(ids(&found), ["aws-secret-access-key"]);
        assert_eq!(found[0].offset, 24);
    }

    #[test]
    fn finding_offsets_cover_the_secret() {
        let rules = rules();
        let token = format!("ghp_{}", synth(ALNUM, 36, 99));
        let text = format!("token: {token}\n");
        let found = rules.scan(text.as_bytes());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].offset, 7);
        assert_eq!(found[0].len, token.len());
    }

    #[test]
    fn matching_is_not_case_folded_for_case_sensitive_formats() {
        // The keyword pre-filter is case-insensitive, the regex is not.
        let rules = rules();
        let text = format!("GHP_{}", synth(ALNUM, 36, 98));
        assert!(rules.scan(text.as_bytes()).is_empty());
    }
}
