//! The workload's `~/.gitconfig`: the git identity, the workspace marked safe, and every
//! gate repo's upstream rewritten to the gate (`url.<gate>.insteadOf <upstream>`).

use std::path::PathBuf;

use super::{PlanContext, PlanFile};
use crate::manifest::{ResolvedAgent, Warning};

/// The gate's URL for repo `name`: `<base>/<name>.git`.
pub fn gate_repo_url(base: &str, name: &str) -> String {
    format!("{}/{name}.git", base.trim_end_matches('/'))
}

/// A git config value, always quoted: `\` and `"` escaped. Manifest values with control
/// characters are refused at load time; any that slip through are dropped here.
fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Other spellings of an `ssh://user@host[:port]/path` upstream that a working tree's remote
/// may use: scp-like `user@host:path` (port 22 only) and `https://host/path`.
fn upstream_spellings(url: &str) -> Vec<String> {
    let mut out = vec![url.to_string()];
    if let Some(rest) = url.strip_prefix("https://") {
        // https://[user@]host[:port]/path: without the user, and the ssh spellings hosts
        // conventionally serve the same repo under (only for the default port, as the ssh
        // port of a custom-port host is unknown).
        let Some((authority, path)) = rest.split_once('/') else {
            return out;
        };
        let hostport = match authority.rsplit_once('@') {
            Some((_, hp)) => {
                out.push(format!("https://{hp}/{path}"));
                hp
            }
            None => authority,
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        };
        if matches!(port, None | Some("443")) {
            out.push(format!("git@{host}:{path}"));
            out.push(format!("ssh://git@{host}/{path}"));
        }
        return out;
    }
    let Some(rest) = url.strip_prefix("ssh://") else {
        return out;
    };
    let Some((user, rest)) = rest.split_once('@') else {
        return out;
    };
    let Some((authority, path)) = rest.split_once('/') else {
        return out;
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    if matches!(port, None | Some("22")) {
        out.push(format!("{user}@{host}:{path}"));
    }
    out.push(format!("https://{host}/{path}"));
    out
}

pub(super) fn render(agent: &ResolvedAgent, ctx: &PlanContext<'_>) -> (PlanFile, Vec<Warning>) {
    let mut warnings = Vec::new();
    let mut text = String::new();
    if let Some(user) = &agent.git_user {
        text.push_str("[user]\n");
        if let Some(name) = &user.name {
            text.push_str(&format!("\tname = {}\n", quote(name)));
        }
        if let Some(email) = &user.email {
            text.push_str(&format!("\temail = {}\n", quote(email)));
        }
    }
    text.push_str(&format!(
        "[safe]\n\tdirectory = {}\n",
        quote(&ctx.workspace.display().to_string())
    ));
    match ctx.gate_base_url {
        Some(base) => {
            for (name, entry) in &agent.bottle.repos {
                let gate = gate_repo_url(base, name).replace(['\\', '"'], "");
                text.push_str(&format!("[url \"{gate}\"]\n"));
                for upstream in upstream_spellings(&entry.spec.url) {
                    text.push_str(&format!("\tinsteadOf = {}\n", quote(&upstream)));
                }
            }
        }
        None if !agent.bottle.repos.is_empty() => warnings.push(Warning::new(
            Some(&agent.bottle.file),
            "no git-gate address was given, so ~/.gitconfig does not send the gate repos \
             through the gate",
        )),
        None => {}
    }
    (
        PlanFile {
            path: PathBuf::from(".gitconfig"),
            contents: text,
            mode: 0o644,
        },
        warnings,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_and_quoting() {
        assert_eq!(
            upstream_spellings("ssh://git@example.com/team/app.git"),
            [
                "ssh://git@example.com/team/app.git",
                "git@example.com:team/app.git",
                "https://example.com/team/app.git"
            ]
        );
        assert_eq!(
            upstream_spellings("ssh://git@example.com:2222/app.git"),
            [
                "ssh://git@example.com:2222/app.git",
                "https://example.com/app.git"
            ]
        );
        assert_eq!(
            upstream_spellings("https://git.example.com/team/app.git"),
            [
                "https://git.example.com/team/app.git",
                "git@git.example.com:team/app.git",
                "ssh://git@git.example.com/team/app.git"
            ]
        );
        assert_eq!(
            upstream_spellings("https://bot@git.example.com:8443/app.git"),
            [
                "https://bot@git.example.com:8443/app.git",
                "https://git.example.com:8443/app.git"
            ]
        );
        assert_eq!(quote("a \"b\" \\c\n"), "\"a \\\"b\\\" \\\\c\"");
        assert_eq!(
            gate_repo_url("http://10.213.0.1:9420/", "app"),
            "http://10.213.0.1:9420/app.git"
        );
    }
}
