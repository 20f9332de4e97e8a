//! Per-bottle L7 counters, joined by the agent with the kernel's. Bounded: a bottle that
//! invents hostnames cannot grow them without limit.

use std::collections::BTreeMap;
use std::sync::Mutex;

use bottle_api::{DnsCounters, HostTraffic, L7Counters};

/// Distinct (host, decision) rows kept; the rest are summed under `(other)`.
const MAX_HOST_ROWS: usize = 512;
/// Distinct DLP rules kept.
const MAX_RULE_ROWS: usize = 256;

#[derive(Debug, Default)]
struct Inner {
    hosts: BTreeMap<(String, &'static str), HostTraffic>,
    dns: DnsCounters,
    dlp_hits: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
pub struct L7Stats(Mutex<Inner>);

impl L7Stats {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        match self.0.lock() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// One request (or tunnel) to `host` with `decision` (`allowed`, `denied`, `dlp_blocked`…).
    pub fn request(&self, host: &str, decision: &'static str, up: u64, down: u64) {
        self.with(|s| {
            let key = if s.hosts.len() >= MAX_HOST_ROWS
                && !s.hosts.contains_key(&(host.to_string(), decision))
            {
                ("(other)".to_string(), decision)
            } else {
                (host.to_string(), decision)
            };
            let row = s.hosts.entry(key.clone()).or_insert_with(|| HostTraffic {
                host: key.0.clone(),
                decision: decision.to_string(),
                ..HostTraffic::default()
            });
            row.requests += 1;
            row.bytes_up += up;
            row.bytes_down += down;
        });
    }

    pub fn dns(&self, answered: bool) {
        self.with(|s| {
            s.dns.queries += 1;
            if answered {
                s.dns.answered += 1;
            } else {
                s.dns.refused += 1;
            }
        });
    }

    pub fn dlp_hit(&self, rule: &str) {
        self.with(|s| {
            let key = if s.dlp_hits.len() >= MAX_RULE_ROWS && !s.dlp_hits.contains_key(rule) {
                "(other)".to_string()
            } else {
                rule.to_string()
            };
            *s.dlp_hits.entry(key).or_default() += 1;
        });
    }

    pub fn snapshot(&self) -> L7Counters {
        self.with(|s| L7Counters {
            http: s.hosts.values().cloned().collect(),
            dns: s.dns,
            dlp_hits: s.dlp_hits.clone(),
            git: Default::default(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_bounds() {
        let s = L7Stats::default();
        s.request("a.example.com", "allowed", 10, 20);
        s.request("a.example.com", "allowed", 1, 2);
        s.request("a.example.com", "denied", 0, 0);
        s.dns(true);
        s.dns(false);
        s.dlp_hit("aws-access-key-id");
        let snap = s.snapshot();
        assert_eq!(snap.http.len(), 2);
        let allowed = snap.http.iter().find(|h| h.decision == "allowed").unwrap();
        assert_eq!(
            (allowed.requests, allowed.bytes_up, allowed.bytes_down),
            (2, 11, 22)
        );
        assert_eq!(
            (snap.dns.queries, snap.dns.answered, snap.dns.refused),
            (3 - 1, 1, 1)
        );
        for i in 0..2000 {
            s.request(&format!("h{i}.example.com"), "denied", 0, 0);
        }
        let snap = s.snapshot();
        assert!(snap.http.len() <= MAX_HOST_ROWS + 2);
        assert!(snap.http.iter().any(|h| h.host == "(other)"));
    }
}
