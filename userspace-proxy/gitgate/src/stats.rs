//! The git-gate's counters for one bottle.

use std::sync::Mutex;

use bottle_api::GitCounters;

/// Distinct rejection reasons kept (reasons are a fixed set of keys, this is a guard).
const MAX_REASONS: usize = 64;

#[derive(Debug, Default)]
pub struct GitStats(Mutex<GitCounters>);

impl GitStats {
    fn with<R>(&self, f: impl FnOnce(&mut GitCounters) -> R) -> R {
        match self.0.lock() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    pub fn fetch(&self, ok: bool) {
        self.with(|s| {
            s.fetches += 1;
            if !ok {
                s.fetch_failures += 1;
            }
        });
    }

    pub fn accepted(&self) {
        self.with(|s| s.refs_accepted += 1);
    }

    pub fn rejected(&self, reason: &str) {
        self.with(|s| {
            let key =
                if s.refs_rejected.len() >= MAX_REASONS && !s.refs_rejected.contains_key(reason) {
                    "(other)"
                } else {
                    reason
                };
            *s.refs_rejected.entry(key.to_string()).or_default() += 1;
        });
    }

    pub fn bytes(&self, into_gate: u64, out_of_gate: u64) {
        self.with(|s| {
            s.bytes_in += into_gate;
            s.bytes_out += out_of_gate;
        });
    }

    pub fn snapshot(&self) -> GitCounters {
        self.with(|s| s.clone())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        let s = GitStats::default();
        s.fetch(true);
        s.fetch(false);
        s.accepted();
        s.rejected("secret");
        s.rejected("secret");
        s.bytes(10, 20);
        let c = s.snapshot();
        assert_eq!((c.fetches, c.fetch_failures, c.refs_accepted), (2, 1, 1));
        assert_eq!(c.refs_rejected.get("secret"), Some(&2));
        assert_eq!((c.bytes_in, c.bytes_out), (10, 20));
    }
}
