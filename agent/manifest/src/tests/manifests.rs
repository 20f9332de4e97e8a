//! Manifests on disk: every key at every level, merge rules, extends errors, trust boundary,
//! legacy formats, file names.

use std::path::Path;

use bottle_api::policy::AuthScheme;

use super::{manifest, Fixture};
use crate::env::EnvValue;
use crate::manifest::{Origin, ProviderKind};

const ROUTE_KEYS: &str = "host, path_allowlist, auth, pipelock, role, connect_to";
const AGENT_RULE: &str = "an agent may only set bottle, skills and git-gate.user (a git \
                          identity), never credentials, repos or routes";
const NAME_RULE: &str = "a manifest name is the file name without .md: lowercase letters, \
                         digits and '-', starting with a letter";

fn subst(want: &str, f: &Path, fx: &Fixture) -> String {
    want.replace("{f}", &f.display().to_string())
        .replace("{home}", &fx.home.display().to_string())
}

/// `(front matter of bottles/dev.md, exact error)`; `{f}` is the file, `{home}` the home.
/// YAML line N is file line N + 1.
const BOTTLE_ERRORS: &[(&str, &str)] = &[
    // Unknown keys, at every level.
    (
        "bogus: 1\n",
        "{f}:2: unknown key `bogus`; allowed keys are: env, extends, agent_provider, git-gate, \
         egress, supervise",
    ),
    (
        "agent_provider:\n  templat: codex\n",
        "{f}:3: unknown key `agent_provider.templat`; allowed keys are: template, dockerfile, \
         auth_token, forward_host_credentials",
    ),
    (
        "git-gate:\n  usr: {}\n",
        "{f}:3: unknown key `git-gate.usr`; allowed keys are: user, repos",
    ),
    (
        "git-gate:\n  user:\n    name: A\n    mail: a@example.com\n",
        "{f}:5: unknown key `git-gate.user.mail`; allowed keys are: name, email",
    ),
    (
        "git-gate: {user: {name: A,\n  emial: b}}\n",
        "{f}:3: unknown key `git-gate.user.emial`; allowed keys are: name, email",
    ),
    (
        "git-gate:\n  repos:\n    app:\n      url: ssh://git@h.example.com/x.git\n      identity: k\n      hostkey: x\n",
        "{f}:7: unknown key `git-gate.repos.app.hostkey`; allowed keys are: url, identity, host_key, policy",
    ),
    (
        "egress:\n  route: []\n",
        "{f}:3: unknown key `egress.route`; allowed keys are: routes",
    ),
    (
        "egress:\n  routes:\n    - host: a.example.com\n      hots: x\n",
        "{f}:5: unknown key `egress.routes[0].hots`; allowed keys are: host, path_allowlist, auth, \
         pipelock, role, connect_to",
    ),
    (
        "egress:\n  routes:\n    - host: a.example.com\n    - host: b.example.com\n      auth: {scheme: Bearer,\n             token_ref: T, extra: 1}\n",
        "{f}:7: unknown key `egress.routes[1].auth.extra`; allowed keys are: scheme, token_ref",
    ),
    (
        "egress:\n  routes:\n    - host: a.example.com\n      pipelock:\n        tls_passthrough: true\n        dlp: off\n",
        "{f}:7: unknown key `egress.routes[0].pipelock.dlp`; allowed keys are: tls_passthrough, \
         ssrf_ip_allowlist",
    ),
    // The legacy `git` key.
    (
        "env: {}\ngit:\n  user: {name: A}\n",
        "{f}:3: `git` is bot-bottle's old key and is no longer read; it moved to `git-gate` (put \
         `user` and `repos` under `git-gate:`)",
    ),
    // Wrong types.
    ("env: [A]\n", "{f}:2: `env` must be a mapping, found a list"),
    (
        "supervise: maybe\n",
        "{f}:2: `supervise` must be true or false, found a scalar",
    ),
    (
        "egress:\n  routes: {host: x}\n",
        "{f}:3: `egress.routes` must be a list of routes, found a mapping",
    ),
    (
        "git-gate:\n  user:\n    name: [A]\n",
        "{f}:4: `git-gate.user.name` must be a string, found a list",
    ),
    ("egress:\n", "{f}:2: `egress` must be a mapping, found nothing (null)"),
    (
        "env:\n  A:\n",
        "{f}:3: `env.A` must be a string (a literal, ?prompt or ${HOST_VAR}), found nothing (null)",
    ),
    (
        "- a\n",
        "{f}:2: `front matter` must be a mapping of keys, found a list",
    ),
    (
        "egress:\n  routes:\n    - host: a.example.com\n      path_allowlist: /v1\n",
        "{f}:5: `egress.routes[0].path_allowlist` must be a list of strings, found a scalar",
    ),
    (
        "egress:\n  routes:\n    - host: a.example.com\n      pipelock: {ssrf_ip_allowlist: [[1]]}\n",
        "{f}:5: `egress.routes[0].pipelock.ssrf_ip_allowlist[0]` must be a string, found a list",
    ),
    (
        "agent_provider:\n  template: codex\n  forward_host_credentials: 'yes'\n",
        "{f}:4: `agent_provider.forward_host_credentials` must be true or false, found a scalar",
    ),
    // Invalid values.
    (
        "env:\n  1A: x\n",
        "{f}:3: `env.1A`: not an environment variable name (letters, digits and '_', not \
         starting with a digit)",
    ),
    (
        "env:\n  A: pre-${X}\n",
        "{f}:3: `env.A`: only a whole value `${HOST_VAR}` is taken from the host environment; \
         this value mixes `${` with other text",
    ),
    (
        "env:\n  A: ${not-a-name}\n",
        "{f}:3: `env.A`: `${…}` must hold a host environment variable name \
         ([A-Za-z_][A-Za-z0-9_]*), as in ${HOST_VAR}",
    ),
    ("extends: Base\n", "{f}:2: `extends`: a manifest name is the file name without .md: lowercase letters, digits and '-', starting with a letter"),
    (
        "agent_provider:\n  template: gpt\n",
        "{f}:3: `agent_provider.template`: must be claude or codex",
    ),
    (
        "agent_provider:\n  template: codex\n  auth_token: T\n",
        "{f}:4: `agent_provider.auth_token`: applies to template claude only; codex uses \
         forward_host_credentials",
    ),
    (
        "agent_provider:\n  forward_host_credentials: true\n",
        "{f}:3: `agent_provider.forward_host_credentials`: applies to template codex only; claude \
         uses auth_token",
    ),
    (
        "agent_provider:\n  auth_token: sk-ant-oat01-xyz\n",
        "{f}:3: `agent_provider.auth_token`: must be the name of the host environment variable \
         holding the OAuth token ([A-Za-z_][A-Za-z0-9_]*), not the token",
    ),
    (
        "git-gate:\n  user: {}\n",
        "{f}:3: `git-gate.user`: give `name`, `email` or both",
    ),
    (
        "git-gate:\n  user:\n    name: \"A\\n[core]\"\n",
        "{f}:4: `git-gate.user.name`: must be one non-empty line without '<', '>' or control \
         characters",
    ),
    (
        "git-gate:\n  repos:\n",
        "{f}:3: `git-gate.repos`: has no value; write `repos: {}` to clear the repos of the \
         bottle this one extends, or remove the key to inherit them",
    ),
    (
        "git-gate:\n  repos:\n    a/b:\n      url: ssh://git@h.example.com/x.git\n      identity: k\n",
        "{f}:4: `git-gate.repos.a/b`: a repo name is letters, digits, '.', '_' and '-'",
    ),
    (
        "git-gate:\n  repos:\n    app:\n      url: git@h.example.com:x.git\n      identity: k\n",
        "{f}:5: `git-gate.repos.app.url`: must be ssh://user@host[:port]/path or \
         https://[user@]host[:port]/path (never a password in the URL)",
    ),
    (
        "git-gate:\n  repos:\n    app:\n      url: https://bot:pw@h.example.com/x.git\n      identity: k\n",
        "{f}:5: `git-gate.repos.app.url`: must be ssh://user@host[:port]/path or \
         https://[user@]host[:port]/path (never a password in the URL)",
    ),
    (
        "git-gate:\n  repos:\n    app:\n      url: http://h.example.com/x.git\n      identity: k\n",
        "{f}:5: `git-gate.repos.app.url`: must be ssh://user@host[:port]/path or \
         https://[user@]host[:port]/path (never a password in the URL)",
    ),
    (
        "git-gate:\n  repos:\n    app:\n      url: https://h.example.com/x.git\n      identity: k\n      host_key: ssh-ed25519 AAAA\n",
        "{f}:7: `git-gate.repos.app.host_key`: applies to ssh:// upstreams only; an https:// \
         upstream's certificate is checked against the system roots and the agent's \
         upstream_ca_files, so remove it",
    ),
    (
        "git-gate:\n  repos:\n    app:\n      url: ssh://git@h.example.com/x.git\n",
        "{f}:4: missing `git-gate.repos.app.identity`: the private key file (ssh) or token \
         file (https) the gate uses to reach the upstream",
    ),
    (
        "git-gate:\n  repos:\n    app:\n      identity: k\n",
        "{f}:4: missing `git-gate.repos.app.url`: the upstream, as ssh://user@host[:port]/path \
         or https://host[:port]/path",
    ),
    (
        "egress:\n  routes:\n    - host: a.example.com\n      auth: {scheme: Bearer}\n",
        "{f}:5: `egress.routes[0].auth`: needs both `scheme` and `token_ref`, or neither",
    ),
    (
        "egress:\n  routes:\n    - host: a.example.com\n      auth:\n        scheme: Basic\n        token_ref: T\n",
        "{f}:6: `egress.routes[0].auth.scheme`: must be Bearer or token (Gitea's)",
    ),
    (
        "egress:\n  routes:\n    - path_allowlist: [/v1]\n",
        "{f}:4: missing `egress.routes[0].host`: the upstream host name, e.g. api.example.com",
    ),
    // EgressPolicy::validate(), mapped to each route's line; every problem at once.
    (
        "egress:\n  routes:\n    - host: a.example.com\n    - host: '*'\n      role: admin\n    - host: A.Example.com\n      path_allowlist: [v1/]\n",
        "{f}:5: `egress.routes[1]`: host '*' would allow everything; list the hosts the bottle \
         needs\n{f}:5: `egress.routes[1]`: role is reserved and must be empty\n{f}:7: \
         `egress.routes[2]`: host \"a.example.com\" appears in more than one route; merge \
         them\n{f}:7: `egress.routes[2]`: path_allowlist entry \"v1/\" must start with '/'",
    ),
    (
        "egress:\n  routes:\n    - host: a.example.com\n      auth: {scheme: token, token_ref: BAD-REF}\n",
        "{f}:4: `egress.routes[0]`: auth.token_ref \"BAD-REF\" must be an environment variable \
         name ([A-Za-z_][A-Za-z0-9_]*)",
    ),
    // YAML itself.
    (
        "env: {}\nenv: {}\n",
        "{f}:3: invalid YAML: key `env` appears twice in the same mapping",
    ),
    (
        "env:\n  A: 1\n B: 2\n",
        "{f}:4: invalid YAML: while parsing a block mapping, did not find expected key",
    ),
];

#[test]
fn bottle_errors_name_file_line_and_key() {
    for (yaml, want) in BOTTLE_ERRORS {
        let fx = Fixture::new();
        let f = fx.bottle("dev", yaml);
        let cat = fx.load();
        let err = cat.resolve_bottle("dev").expect_err(yaml);
        assert_eq!(
            err.to_string(),
            subst(want, &f, &fx),
            "front matter:\n{yaml}"
        );
        assert_eq!(cat.errors.len(), 1, "{yaml}: {:?}", cat.errors);
    }
}

#[test]
fn front_matter_errors() {
    let fx = Fixture::new();
    let none = fx.write(&fx.home.join("bottles/plain.md"), "# Just Markdown\n");
    let open = fx.write(&fx.home.join("bottles/open.md"), "---\nenv: {}\n");
    let cat = fx.load();
    assert_eq!(
        cat.resolve_bottle("plain").unwrap_err().to_string(),
        format!(
            "{}:1: no front matter: a manifest starts with a `---` line, then YAML keys, then a \
             closing `---` line, then the Markdown body",
            none.display()
        )
    );
    assert_eq!(
        cat.resolve_bottle("open").unwrap_err().to_string(),
        format!(
            "{}:1: the front matter opened by `---` on line 1 is never closed by a `---` line",
            open.display()
        )
    );
}

#[test]
fn valid_bottle_decodes_every_key() {
    let fx = Fixture::new();
    let key = fx.key();
    fx.bottle(
        "dev",
        "# a comment\n\
         env:\n  LIT: plain text\n  PORT: 8080\n  ASK: ?Your token\n  HOST: ${GH_TOKEN}\n\
         agent_provider:\n  template: claude\n  auth_token: CLAUDE_TOKEN\n  dockerfile: ./Dockerfile\n\
         git-gate:\n  user: {name: Agent, email: agent@example.com}\n  repos:\n    app:\n      url: ssh://git@git.example.com:2222/team/app.git\n      identity: ~/.ssh/gate_ed25519\n      host_key: ssh-ed25519 AAAAC3Nza\n\
         egress:\n  routes:\n    - host: api.example.com\n      path_allowlist: [/v1/]\n      auth: {scheme: token, token_ref: GITEA_TOKEN}\n      pipelock: {tls_passthrough: no, ssrf_ip_allowlist: [10.1.0.0/16]}\n      role:\n      connect_to: 10.1.0.5:443\n    - host: github.com\n      pipelock: {tls_passthrough: yes}\n\
         supervise: On\n",
    );
    let cat = fx.load();
    assert!(cat.errors.is_empty(), "{:?}", cat.errors);
    let b = cat.resolve_bottle("dev").unwrap();
    let values: Vec<(&str, &EnvValue)> =
        b.env.iter().map(|(k, v)| (k.as_str(), &v.value)).collect();
    assert_eq!(
        values,
        [
            ("ASK", &EnvValue::Prompt("Your token".into())),
            ("HOST", &EnvValue::Host("GH_TOKEN".into())),
            ("LIT", &EnvValue::Literal("plain text".into())),
            ("PORT", &EnvValue::Literal("8080".into())),
        ]
    );
    assert_eq!(b.env["PORT"].line, 5);
    assert_eq!(b.provider.template, ProviderKind::Claude);
    assert_eq!(
        b.provider.auth_token.as_ref().unwrap().value,
        "CLAUDE_TOKEN"
    );
    assert_eq!(b.provider.auth_token.as_ref().unwrap().line, 10);
    assert_eq!(b.provider.dockerfile.as_deref(), Some("./Dockerfile"));
    assert_eq!(b.git_user.as_ref().unwrap().name.as_deref(), Some("Agent"));
    let app = &b.repos["app"];
    assert_eq!(app.spec.identity, key.display().to_string(), "~/ expanded");
    assert_eq!(app.spec.host_key.as_deref(), Some("ssh-ed25519 AAAAC3Nza"));
    assert_eq!(b.egress.routes.len(), 2);
    let r0 = &b.egress.routes[0];
    assert_eq!(r0.auth.as_ref().unwrap().scheme, AuthScheme::Token);
    assert!(!r0.pipelock.as_ref().unwrap().tls_passthrough);
    assert_eq!(r0.connect_to.as_deref(), Some("10.1.0.5:443"));
    assert_eq!(r0.role, None);
    assert!(
        b.egress.routes[1]
            .pipelock
            .as_ref()
            .unwrap()
            .tls_passthrough
    );
    assert!(b.supervise);
    // Empty front matter is an empty bottle.
    fx.bottle("empty", "");
    let cat = fx.load();
    let empty = cat.resolve_bottle("empty").unwrap();
    assert_eq!(empty.provider.template, ProviderKind::Claude);
    assert!(empty.egress.routes.is_empty() && empty.env.is_empty() && !empty.supervise);
}

/// `(front matter of agents/a.md, exact error)`; bottles/dev.md exists.
const AGENT_ERRORS: &[(&str, &str)] = &[
    (
        "skills: []\n",
        "{f}:1: missing `bottle`: name the bottle this agent runs in (a file in {home}/bottles, \
         without .md)",
    ),
    (
        "bottle: dev\ngit-gate:\n  email: x@example.com\n",
        "{f}:4: unknown key `git-gate.email`; allowed keys are: user",
    ),
    (
        "bottle: dev\ntools: Read, Grep\n",
        "{f}:3: unknown key `tools`; allowed keys are: bottle, skills, git-gate, name, \
         description, model, color, memory",
    ),
    (
        "bottle: dev\nskills: [../../.ssh]\n",
        "{f}:3: `skills[0]`: a skill name is a directory name: letters, digits, '.', '_' and \
         '-', not starting with '.'",
    ),
    ("bottle: dev\nskills: review\n", "{f}:3: `skills` must be a list of strings, found a scalar"),
    ("bottle: Dev\n", "{f}:2: `bottle`: a manifest name is the file name without .md: lowercase letters, digits and '-', starting with a letter"),
    (
        "bottle: dev\ngit:\n  user: {name: A}\n",
        "{f}:3: `git` is bot-bottle's old key and is no longer read; it moved to `git-gate` (put \
         `user` and `repos` under `git-gate:`)",
    ),
    (
        "bottle: dev\ngit-gate:\n  user: {name: A, email: <a@example.com>}\n",
        "{f}:4: `git-gate.user.email`: must be one non-empty line without '<', '>' or control \
         characters",
    ),
];

#[test]
fn agent_errors() {
    for (yaml, want) in AGENT_ERRORS {
        let fx = Fixture::new();
        fx.bottle("dev", "");
        let f = fx.agent("a", yaml, "Prompt.\n");
        let cat = fx.load();
        let err = cat.resolve("a").expect_err(yaml);
        assert_eq!(
            err.to_string(),
            subst(want, &f, &fx),
            "front matter:\n{yaml}"
        );
    }
}

/// Every bottle-only key is refused in an agent, from the home and from the repository, and
/// the message says why.
#[test]
fn agents_may_only_claim_a_git_identity() {
    let cases = [
        ("env", "env: {A: b}\n", 3),
        ("extends", "extends: dev\n", 3),
        ("agent_provider", "agent_provider: {template: codex}\n", 3),
        (
            "egress",
            "egress:\n  routes: [{host: evil.example.com}]\n",
            3,
        ),
        ("supervise", "supervise: true\n", 3),
        (
            "git-gate.repos",
            "git-gate:\n  user: {name: A}\n  repos: {}\n",
            5,
        ),
    ];
    for (key, yaml, line) in cases {
        for repo in [false, true] {
            let fx = Fixture::new();
            fx.bottle("dev", "");
            let text = format!("bottle: dev\n{yaml}");
            let f = if repo {
                fx.repo_agent("a", &text, "")
            } else {
                fx.agent("a", &text, "")
            };
            let origin = if repo {
                " from the repository (less trusted)"
            } else {
                ""
            };
            let want = format!(
                "{}:{line}: `{key}` cannot be set in an agent{origin}; {AGENT_RULE}: put `{key}` \
                 in a bottle in {}/bottles",
                f.display(),
                fx.home.display()
            );
            assert_eq!(fx.load().resolve("a").unwrap_err().to_string(), want);
        }
    }
}

#[test]
fn claude_code_keys_are_ignored_and_body_is_the_prompt() {
    let fx = Fixture::new();
    fx.bottle("dev", "");
    fx.agent(
        "reviewer",
        "name: reviewer\ndescription: Reviews code\nmodel: opus\ncolor: blue\nmemory: project\nbottle: dev\n",
        "You review code.\n",
    );
    let cat = fx.load();
    assert!(cat.errors.is_empty(), "{:?}", cat.errors);
    let a = cat.resolve("reviewer").unwrap();
    assert_eq!(a.prompt, "You review code.\n");
    assert_eq!(a.origin, Origin::Home);
    assert_eq!(a.bottle.name, "dev");
}

#[test]
fn repo_agent_overrides_home_and_may_claim_an_identity() {
    let fx = Fixture::new();
    fx.bottle(
        "dev",
        "git-gate:\n  user: {name: Operator, email: op@example.com}\n",
    );
    fx.agent("a", "bottle: dev\n", "home prompt\n");
    let repo = fx.repo_agent(
        "a",
        "bottle: dev\ngit-gate:\n  user: {email: repo-agent@example.com}\n",
        "repo prompt\n",
    );
    let cat = fx.load();
    assert!(cat.errors.is_empty(), "{:?}", cat.errors);
    let a = cat.resolve("a").unwrap();
    assert_eq!(a.origin, Origin::Repo);
    assert_eq!(a.file, repo);
    assert_eq!(a.prompt, "repo prompt\n");
    let user = a.git_user.unwrap();
    assert_eq!(user.name.as_deref(), Some("Operator"), "per-field overlay");
    assert_eq!(user.email.as_deref(), Some("repo-agent@example.com"));
    assert!(cat
        .warnings
        .iter()
        .any(|w| w.file.as_deref() == Some(&repo)
            && w.message.starts_with("overrides the home agent ")));
}

#[test]
fn broken_repo_agent_does_not_fall_back_to_home() {
    let fx = Fixture::new();
    fx.bottle("dev", "");
    fx.agent("a", "bottle: dev\n", "");
    fx.repo_agent("a", "bottle: dev\nenv: {X: y}\n", "");
    let err = fx.load().resolve("a").unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot be set in an agent from the repository"),
        "{err}"
    );
}

#[test]
fn bottles_never_come_from_the_repository() {
    let fx = Fixture::new();
    fx.bottle("dev", "");
    let repo_bottles = fx.cwd.join(".bot-bottle/bottles");
    fx.write(
        &repo_bottles.join("evil.md"),
        &manifest("egress:\n  routes: [{host: evil.example.com}]\n", ""),
    );
    let f = fx.repo_agent("a", "bottle: evil\n", "");
    fx.repo_agent("b", "bottle: dev\n", "");
    let cat = fx.load();
    assert!(cat
        .warnings
        .iter()
        .any(|w| w.file.as_deref() == Some(&repo_bottles)
            && w.message.starts_with("ignored: bottles hold credentials")));
    assert_eq!(
        cat.resolve("a").unwrap_err().to_string(),
        format!(
            "{}:2: `bottle`: no bottle \"evil\" in {}/bottles; bottles there: dev",
            f.display(),
            fx.home.display()
        )
    );
    // A repository agent may pick any bottle of the home.
    assert_eq!(cat.resolve("b").unwrap().bottle.name, "dev");
}

#[test]
fn skills_lookup_and_trust() {
    let fx = Fixture::new();
    fx.bottle("dev", "");
    let home_review = fx.skill(&fx.home.join("skills/review"));
    let repo_review = fx.skill(&fx.cwd.join(".bot-bottle/skills/review"));
    fx.skill(&fx.cwd.join(".bot-bottle/skills/repo-only"));
    fx.skill(&fx.home.join("skills/home-only"));
    fx.repo_agent("r", "bottle: dev\nskills: [review, home-only]\n", "");
    fx.agent("h", "bottle: dev\nskills: [review]\n", "");
    let h2 = fx.agent(
        "h2",
        "bottle: dev\nskills:\n  - review\n  - repo-only\n",
        "",
    );
    let cat = fx.load();
    let r = cat.resolve("r").unwrap();
    assert_eq!(
        r.skills
            .iter()
            .map(|s| (s.name.as_str(), s.dir.as_path(), s.origin))
            .collect::<Vec<_>>(),
        [
            ("review", repo_review.as_path(), Origin::Repo),
            (
                "home-only",
                fx.home.join("skills/home-only").as_path(),
                Origin::Home
            ),
        ]
    );
    let h = cat.resolve("h").unwrap();
    assert_eq!(
        h.skills[0].dir, home_review,
        "a home agent never sees repository skills"
    );
    assert_eq!(
        cat.resolve("h2").unwrap_err().to_string(),
        format!(
            "{}:5: `skills[1]`: no skill \"repo-only\"; looked for the directory {}/skills/repo-only",
            h2.display(),
            fx.home.display()
        )
    );
    let files = r.skills[0].files().unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].rel, Path::new("SKILL.md"));
    assert_eq!(files[0].mode, 0o644);
}

#[cfg(unix)]
#[test]
fn repository_skills_may_not_symlink_out() {
    use std::os::unix::fs::symlink;
    let fx = Fixture::new();
    fx.bottle("dev", "");
    let secrets = fx.write(&fx.user_home.join(".ssh/id_ed25519"), "PRIVATE");
    let skills = fx.cwd.join(".bot-bottle/skills");
    std::fs::create_dir_all(&skills).unwrap();
    symlink(fx.user_home.join(".ssh"), skills.join("ssh")).unwrap();
    let inner = fx.skill(&skills.join("inner"));
    symlink(&secrets, inner.join("key")).unwrap();
    fx.repo_agent("a", "bottle: dev\nskills: [ssh]\n", "");
    fx.repo_agent("b", "bottle: dev\nskills: [inner]\n", "");
    let cat = fx.load();
    assert_eq!(
        cat.resolve("a").unwrap_err().to_string(),
        format!(
            "skill \"ssh\": {}: is a symlink; a skill from the repository must be a directory in it",
            skills.join("ssh").display()
        )
    );
    let b = cat.resolve("b").unwrap();
    assert_eq!(
        b.skills[0].files().unwrap_err().to_string(),
        format!(
            "skill \"inner\": {}: is a symlink; a skill from the repository may not contain symlinks",
            inner.join("key").display()
        )
    );
    // The same symlink in a home skill (the operator's own) is followed.
    let home_skill = fx.skill(&fx.home.join("skills/mine"));
    symlink(&secrets, home_skill.join("key")).unwrap();
    fx.agent("c", "bottle: dev\nskills: [mine]\n", "");
    let c = fx.load().resolve("c").unwrap();
    assert_eq!(c.skills[0].files().unwrap().len(), 2);
}

#[test]
fn running_from_the_home_does_not_read_it_twice() {
    let fx = Fixture::new();
    fx.bottle("dev", "");
    fx.agent("a", "bottle: dev\n", "");
    let cat = crate::manifest::Catalog::load_with(crate::manifest::LoadOptions {
        home: fx.home.clone(),
        cwd: fx.user_home.clone(),
        user_home: Some(fx.user_home.clone()),
    });
    assert!(cat.warnings.is_empty(), "{:?}", cat.warnings);
    assert_eq!(cat.resolve("a").unwrap().origin, Origin::Home);
}

#[test]
fn merge_rules() {
    let fx = Fixture::new();
    let key = fx.key();
    let repo = |url: &str, host_key: bool| {
        format!(
            "      url: {url}\n      identity: {}\n{}",
            key.display(),
            if host_key {
                "      host_key: ssh-ed25519 AAAA\n"
            } else {
                ""
            }
        )
    };
    let base = fx.bottle(
        "base",
        &format!(
            "env:\n  A: from-base\n  B: from-base\n\
             agent_provider:\n  template: claude\n  auth_token: BASE_TOKEN\n\
             git-gate:\n  user: {{name: Base Name, email: base@example.com}}\n  repos:\n    app:\n{}    lib:\n{}\
             egress:\n  routes:\n    - host: a.example.com\n    - host: b.example.com\n\
             supervise: true\n",
            repo("ssh://git@h.example.com/app.git", true),
            repo("ssh://git@h.example.com/lib.git", true),
        ),
    );
    let mid = fx.bottle(
        "mid",
        &format!(
            "extends: base\nenv:\n  B: from-mid\n  C: from-mid\n\
             git-gate:\n  user: {{email: mid@example.com}}\n  repos:\n    app:\n{}",
            repo("ssh://git@h.example.com/app-fork.git", false)
        ),
    );
    fx.bottle(
        "leaf",
        "extends: mid\nagent_provider: {template: codex}\negress:\n  routes: [{host: c.example.com}]\nsupervise: false\n",
    );
    fx.bottle(
        "cleared",
        "extends: base\ngit-gate:\n  repos: {}\negress: {}\n",
    );
    let cat = fx.load();
    assert!(cat.errors.is_empty(), "{:?}", cat.errors);

    let mid_r = cat.resolve_bottle("mid").unwrap();
    assert_eq!(mid_r.parents, ["base"]);
    // env: per key, the child wins.
    let env: Vec<(&str, &EnvValue, &Path)> = mid_r
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), &v.value, v.file.as_path()))
        .collect();
    assert_eq!(
        env,
        [
            ("A", &EnvValue::Literal("from-base".into()), base.as_path()),
            ("B", &EnvValue::Literal("from-mid".into()), mid.as_path()),
            ("C", &EnvValue::Literal("from-mid".into()), mid.as_path()),
        ]
    );
    // git-gate.user: per field.
    let user = mid_r.git_user.as_ref().unwrap();
    assert_eq!(user.name.as_deref(), Some("Base Name"));
    assert_eq!(user.email.as_deref(), Some("mid@example.com"));
    // git-gate.repos: merged per name, the child's entry replacing the parent's whole.
    assert_eq!(mid_r.repos.keys().collect::<Vec<_>>(), ["app", "lib"]);
    assert_eq!(
        mid_r.repos["app"].spec.url,
        "ssh://git@h.example.com/app-fork.git"
    );
    assert_eq!(mid_r.repos["app"].spec.host_key, None);
    assert_eq!(mid_r.repos["lib"].file, base);
    // Inherited when absent: egress, provider, supervise.
    assert_eq!(mid_r.egress.routes.len(), 2);
    assert_eq!(
        mid_r.provider.auth_token.as_ref().unwrap().value,
        "BASE_TOKEN"
    );
    assert!(mid_r.supervise);

    let leaf = cat.resolve_bottle("leaf").unwrap();
    assert_eq!(leaf.parents, ["mid", "base"]);
    // agent_provider, egress, supervise: replaced whole.
    assert_eq!(leaf.provider.template, ProviderKind::Codex);
    assert_eq!(leaf.provider.auth_token, None);
    assert_eq!(
        leaf.egress
            .routes
            .iter()
            .map(|r| r.host.as_str())
            .collect::<Vec<_>>(),
        ["c.example.com"]
    );
    assert!(!leaf.supervise);
    // Chains keep merging: env and repos from two levels up.
    assert_eq!(leaf.env.len(), 3);
    assert_eq!(leaf.repos.len(), 2);

    let cleared = cat.resolve_bottle("cleared").unwrap();
    assert!(cleared.repos.is_empty(), "`repos: {{}}` clears");
    assert!(
        cleared.egress.routes.is_empty(),
        "`egress: {{}}` replaces whole"
    );
    assert_eq!(
        cleared.git_user.unwrap().email.as_deref(),
        Some("base@example.com")
    );
}

#[test]
fn extends_errors() {
    let fx = Fixture::new();
    let own = fx.bottle("own", "extends: own\n");
    let a = fx.bottle("a", "extends: b\n");
    let b = fx.bottle("b", "env: {}\nextends: a\n");
    fx.bottle("c", "extends: b\n");
    let orphan = fx.bottle("orphan", "extends: nope\n");
    let broken = fx.bottle("broken", "bogus: 1\n");
    let child = fx.bottle("child", "extends: broken\n");
    let cat = fx.load();
    assert_eq!(
        cat.resolve_bottle("own").unwrap_err().to_string(),
        format!(
            "{}:2: `extends`: bottle \"own\" extends itself",
            own.display()
        )
    );
    let cycle = format!(
        "{}:2: `extends` forms a cycle: a ({}) -> b ({}) -> a",
        a.display(),
        a.display(),
        b.display()
    );
    for name in ["a", "b", "c"] {
        assert_eq!(
            cat.resolve_bottle(name).unwrap_err().to_string(),
            cycle,
            "{name}"
        );
    }
    assert_eq!(
        cat.resolve_bottle("orphan").unwrap_err().to_string(),
        format!(
            "{}:2: `extends`: no bottle \"nope\" in {}/bottles; bottles there: a, b, broken, c, \
             child, orphan, own",
            orphan.display(),
            fx.home.display()
        )
    );
    assert_eq!(
        cat.resolve_bottle("child").unwrap_err().to_string(),
        format!(
            "{}:2: `extends`: parent bottle \"broken\" ({}) has errors; fix it first",
            child.display(),
            broken.display()
        )
    );
    // Each problem is listed once.
    let texts: Vec<String> = cat.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        texts.iter().filter(|t| **t == cycle).count(),
        1,
        "{texts:#?}"
    );
    assert_eq!(texts.len(), 5, "{texts:#?}");
}

#[test]
fn agent_resolution_errors() {
    let fx = Fixture::new();
    fx.bottle("dev", "");
    let broken = fx.bottle("broken", "supervise: sometimes\n");
    let a = fx.agent("a", "bottle: nope\n", "");
    let b = fx.agent("b", "name: b\nbottle: broken\n", "");
    let cat = fx.load();
    assert_eq!(
        cat.resolve("a").unwrap_err().to_string(),
        format!(
            "{}:2: `bottle`: no bottle \"nope\" in {}/bottles; bottles there: broken, dev",
            a.display(),
            fx.home.display()
        )
    );
    assert_eq!(
        cat.resolve("b").unwrap_err().to_string(),
        format!(
            "{}:3: `bottle`: bottle \"broken\" ({}) has errors; fix it first",
            b.display(),
            broken.display()
        )
    );
    assert_eq!(
        cat.resolve("zed").unwrap_err().to_string(),
        format!(
            "no agent \"zed\" in {}/agents and {}/.bot-bottle/agents; agents: a, b",
            fx.home.display(),
            fx.cwd.display()
        )
    );
}

#[test]
fn identity_paths() {
    let fx = Fixture::new();
    let key = fx.write(&fx.home.join("bottles/keys/gate"), "k");
    let repo = |identity: &str| {
        format!(
            "git-gate:\n  repos:\n    app:\n      url: ssh://git@h.example.com/app.git\n      identity: {identity}\n"
        )
    };
    fx.bottle("rel", &repo("keys/gate"));
    let missing = fx.bottle("missing", &repo("~/.ssh/absent"));
    let cat = fx.load();
    assert_eq!(
        cat.resolve_bottle("rel").unwrap().repos["app"]
            .spec
            .identity,
        key.display().to_string()
    );
    assert_eq!(
        cat.resolve_bottle("missing").unwrap_err().to_string(),
        format!(
            "{}:4: `git-gate.repos.app.identity`: key file {}/.ssh/absent does not exist (a \
             relative path is taken from the bottle file's directory)",
            missing.display(),
            fx.user_home.display()
        )
    );
}

#[test]
fn missing_host_key_is_a_warning() {
    let fx = Fixture::new();
    let key = fx.key();
    let dev = fx.bottle(
        "dev",
        &format!(
            "git-gate:\n  repos:\n    app:\n      url: ssh://git@h.example.com/app.git\n      identity: {}\n",
            key.display()
        ),
    );
    fx.agent("a", "bottle: dev\n", "");
    let cat = fx.load();
    let a = cat.resolve("a").unwrap();
    assert_eq!(
        a.warnings
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [format!(
            "{}: git-gate repo \"app\" has no host_key: the gate refuses to fetch or push it \
             (fail closed); pin the upstream's key, e.g. from `ssh-keyscan -t ed25519 <host>`",
            dev.display()
        )]
    );
    assert!(cat.warnings.contains(&a.warnings[0]), "listed by load too");
}

#[test]
fn legacy_json_home() {
    let fx = Fixture::new();
    let json = fx.write(&fx.home.join("bot-bottle.json"), "{\"bottles\": {}}");
    let cat = fx.load();
    let want = format!(
        "{}: bot-bottle.json is the old format and is no longer read: manifests are now Markdown \
         files with YAML front matter, one per bottle in {h}/bottles/<name>.md and one per agent \
         in {h}/agents/<name>.md (or ./.bot-bottle/agents/<name>.md in a repository)",
        json.display(),
        h = fx.home.display()
    );
    assert_eq!(
        cat.errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        std::slice::from_ref(&want)
    );
    assert_eq!(cat.resolve("anything").unwrap_err().to_string(), want);
    // With the new folders present, the JSON is only a warning.
    fx.bottle("dev", "");
    let cat = fx.load();
    assert!(cat.errors.is_empty());
    assert!(cat.warnings[0]
        .message
        .starts_with("ignored: this is bot-bottle's old format"));
}

#[test]
fn bad_file_names_are_skipped_with_a_warning() {
    let fx = Fixture::new();
    fx.bottle("dev", "");
    let dir = fx.home.join("agents");
    for name in ["Bad_Name.md", "notes.txt", "1abc.md", "x.MD"] {
        fx.write(&dir.join(name), &manifest("bottle: dev\n", ""));
    }
    fx.write(&dir.join(".hidden.md"), "whatever");
    std::fs::create_dir_all(dir.join("sub.md")).unwrap();
    fx.agent("good-one2", "bottle: dev\n", "");
    let cat = fx.load();
    assert!(cat.errors.is_empty(), "{:?}", cat.errors);
    assert_eq!(cat.agents.keys().collect::<Vec<_>>(), ["good-one2"]);
    let warned: Vec<String> = cat
        .warnings
        .iter()
        .map(|w| {
            w.file
                .as_ref()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(warned, ["1abc.md", "Bad_Name.md", "notes.txt", "x.MD"]);
    assert!(cat.warnings[0].message.starts_with(
        "skipped: a manifest file name is lowercase letters, digits and '-', starting with a letter"
    ));
}

#[test]
fn line_numbers_of_nested_keys_survive_comments_and_blank_lines() {
    let fx = Fixture::new();
    let f = fx.bottle(
        "dev",
        "# comment\n\ngit-gate:\n\n  # another\n  repos:\n    app:\n\n      url: ssh://git@h.example.com/a.git\n      identity: k\n      oops: 1\n",
    );
    assert_eq!(
        fx.load().resolve_bottle("dev").unwrap_err().to_string(),
        format!(
            "{}:12: unknown key `git-gate.repos.app.oops`; allowed keys are: url, identity, host_key, policy",
            f.display()
        )
    );
    let text = std::fs::read_to_string(&f).unwrap();
    assert_eq!(text.lines().nth(11), Some("      oops: 1"));
}

#[test]
fn route_keys_constant_matches_decoder() {
    // Keeps the table above honest if a key is added.
    let fx = Fixture::new();
    fx.bottle("dev", "egress:\n  routes: [{host: a.example.com, x: 1}]\n");
    assert!(fx
        .load()
        .resolve_bottle("dev")
        .unwrap_err()
        .to_string()
        .ends_with(ROUTE_KEYS));
    let _ = NAME_RULE;
}

#[test]
fn egress_file_accepts_block_or_wrapped_and_names_line() {
    use std::path::Path;
    let file = Path::new("egress.yaml");
    let block = "routes:\n  - host: api.example.com\n    path_allowlist: [\"/v1/\"]\n";
    let wrapped =
        "egress:\n  routes:\n    - host: api.example.com\n      path_allowlist: [\"/v1/\"]\n";
    let a = crate::manifest::egress_file(file, block).unwrap();
    let b = crate::manifest::egress_file(file, wrapped).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.routes[0].host, "api.example.com");
    let bad = "routes:\n  - host: api.example.com\n    hots: x\n";
    let e = crate::manifest::egress_file(file, bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("egress.yaml:3"), "{e}");
    assert!(e.contains("hots"), "{e}");
}

#[test]
fn git_gate_file_accepts_block_or_wrapped_with_a_ref_policy() {
    use std::path::Path;
    let file = Path::new("gate.yaml");
    let block =
        "user: {name: A}\nrepos:\n  app:\n    url: ssh://git@h/app.git\n    identity: k\n    \
                 policy: {allow: [\"refs/heads/agent/*\"], force_push: false, deletions: true}\n";
    let wrapped = format!(
        "git-gate:\n{}",
        block
            .lines()
            .map(|l| format!("  {l}\n"))
            .collect::<String>()
    );
    let a = crate::manifest::git_gate_file(file, block).unwrap();
    let b = crate::manifest::git_gate_file(file, &wrapped).unwrap();
    assert_eq!(a, b);
    let repo = &a.repos.as_ref().unwrap()["app"];
    let policy = repo.policy.as_ref().unwrap();
    assert_eq!(policy.allow, vec!["refs/heads/agent/*".to_string()]);
    assert_eq!(
        (policy.force_push, policy.deletions),
        (Some(false), Some(true))
    );
    let bad = "repos:\n  app:\n    url: ssh://git@h/app.git\n    identity: k\n    policy: {allow: [main]}\n";
    let e = crate::manifest::git_gate_file(file, bad)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("gate.yaml:5") && e.contains("refs/heads/agent/*"),
        "{e}"
    );
    let bad = "repos:\n  app:\n    url: ssh://git@h/app.git\n    identity: k\n    policy: {force: true}\n";
    let e = crate::manifest::git_gate_file(file, bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("force_push"), "{e}");
}

#[test]
fn git_gate_file_takes_https_upstreams() {
    let f = Path::new("/x/gate.yaml");
    let spec = crate::manifest::git_gate_file(
        f,
        "repos:\n  web:\n    url: https://bot@git.example.com:8443/team/web.git\n    identity: ~/web.token\n",
    )
    .unwrap();
    let web = &spec.repos.unwrap()["web"];
    assert_eq!(web.url, "https://bot@git.example.com:8443/team/web.git");
    assert_eq!(web.identity, "~/web.token");
    assert_eq!(web.host_key, None);
}
