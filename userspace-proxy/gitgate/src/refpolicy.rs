//! Which ref updates a repo's policy allows, decided before any object is looked at.

use bottle_api::gitgate::RefPolicySpec;

/// A repo's compiled ref policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefPolicy {
    /// Glob patterns (`*` matches within and across `/`); empty means every ref.
    pub allow: Vec<String>,
    /// `None`: force-push allowed everywhere but the default branch.
    pub force_push: Option<bool>,
    /// `None`: deletions allowed everywhere but the default branch.
    pub deletions: Option<bool>,
}

impl From<&RefPolicySpec> for RefPolicy {
    fn from(spec: &RefPolicySpec) -> Self {
        Self {
            allow: spec.allow.clone(),
            force_push: spec.force_push,
            deletions: spec.deletions,
        }
    }
}

/// The kind of update, as far as policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateKind {
    Create,
    FastForward,
    Force,
    Delete,
}

/// Why policy refused an update; the text goes to the client's `ng` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NotAllowed,
    Force,
    Delete,
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NotAllowed => "ref not allowed by the git-gate policy",
            Refusal::Force => "force-push refused by the git-gate policy",
            Refusal::Delete => "deletion refused by the git-gate policy",
        }
    }
    /// Stats/audit key.
    pub fn key(&self) -> &'static str {
        match self {
            Refusal::NotAllowed => "policy_ref",
            Refusal::Force => "policy_force",
            Refusal::Delete => "policy_delete",
        }
    }
}

/// `*` matches any run of characters (including `/`); everything else literally.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

impl RefPolicy {
    /// Decides one update. `default_branch` is the full ref (`refs/heads/main`) if known.
    pub fn check(
        &self,
        refname: &str,
        kind: UpdateKind,
        default_branch: Option<&str>,
    ) -> Result<(), Refusal> {
        if !self.allow.is_empty() && !self.allow.iter().any(|p| glob_match(p, refname)) {
            return Err(Refusal::NotAllowed);
        }
        let is_default = default_branch == Some(refname);
        match kind {
            UpdateKind::Force if !self.force_push.unwrap_or(!is_default) => Err(Refusal::Force),
            UpdateKind::Delete if !self.deletions.unwrap_or(!is_default) => Err(Refusal::Delete),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MAIN: Option<&str> = Some("refs/heads/main");

    #[test]
    fn default_refuses_only_force_and_delete_of_the_default_branch() {
        let p = RefPolicy::default();
        assert_eq!(
            p.check("refs/heads/main", UpdateKind::FastForward, MAIN),
            Ok(())
        );
        assert_eq!(
            p.check("refs/heads/main", UpdateKind::Force, MAIN),
            Err(Refusal::Force)
        );
        assert_eq!(
            p.check("refs/heads/main", UpdateKind::Delete, MAIN),
            Err(Refusal::Delete)
        );
        assert_eq!(p.check("refs/heads/topic", UpdateKind::Force, MAIN), Ok(()));
        assert_eq!(
            p.check("refs/heads/topic", UpdateKind::Delete, MAIN),
            Ok(())
        );
        assert_eq!(p.check("refs/tags/v1", UpdateKind::Create, MAIN), Ok(()));
    }

    #[test]
    fn explicit_settings_and_patterns() {
        let p = RefPolicy {
            allow: vec!["refs/heads/agent/*".into()],
            force_push: Some(false),
            deletions: Some(true),
        };
        assert_eq!(
            p.check("refs/heads/main", UpdateKind::FastForward, MAIN),
            Err(Refusal::NotAllowed)
        );
        assert_eq!(
            p.check("refs/heads/agent/x/y", UpdateKind::Create, MAIN),
            Ok(())
        );
        assert_eq!(
            p.check("refs/heads/agent/x", UpdateKind::Force, MAIN),
            Err(Refusal::Force)
        );
        assert_eq!(
            p.check("refs/heads/agent/x", UpdateKind::Delete, MAIN),
            Ok(())
        );
        let open = RefPolicy {
            force_push: Some(true),
            ..RefPolicy::default()
        };
        assert_eq!(
            open.check("refs/heads/main", UpdateKind::Force, MAIN),
            Ok(())
        );
    }

    #[test]
    fn globs() {
        assert!(glob_match("refs/heads/*", "refs/heads/a/b"));
        assert!(glob_match("refs/*/v*", "refs/tags/v1.2"));
        assert!(glob_match("refs/heads/main", "refs/heads/main"));
        assert!(!glob_match("refs/heads/main", "refs/heads/main2"));
        assert!(!glob_match("refs/tags/*", "refs/heads/x"));
        assert!(glob_match("*", ""));
    }
}
