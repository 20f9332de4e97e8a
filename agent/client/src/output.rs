//! Human-readable rendering of API responses.

use std::time::{SystemTime, UNIX_EPOCH};

use bottle_api::{BottleInfo, BottleStats};

pub fn age(created_at: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(created_at);
    let secs = now.saturating_sub(created_at);
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86399 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

/// The workload's image, `-` when there is none.
fn image(b: &BottleInfo) -> &str {
    b.workload.as_ref().map_or("-", |w| w.image.as_str())
}

/// The workload's CPU time and memory in use, `-` when unknown.
fn usage(b: &BottleInfo) -> (String, String) {
    let w = b.workload.as_ref();
    let cpu = w.and_then(|w| w.cpu_ns).map_or("-".into(), |ns| {
        #[expect(clippy::cast_precision_loss, reason = "display only")]
        let secs = ns as f64 / 1e9;
        format!("{secs:.2}s")
    });
    let mem = w.and_then(|w| w.memory_bytes).map_or("-".into(), |m| {
        #[expect(clippy::cast_precision_loss, reason = "display only")]
        let m = m as f64;
        bytes(m)
    });
    (cpu, mem)
}

pub fn bottle_table(bottles: &[BottleInfo]) -> String {
    let mut out = format!(
        "{:<32} {:<9} {:<11} {:<20} {:<16} {:<6} {:<8} {:<10} {}\n",
        "NAME", "ID", "STATE", "IMAGE", "ADDRESS", "AGE", "CPU", "MEM", "OWNER"
    );
    for b in bottles {
        let (cpu, mem) = usage(b);
        out.push_str(&format!(
            "{:<32} {:<9} {:<11} {:<20} {:<16} {:<6} {:<8} {:<10} {}\n",
            b.name,
            b.id,
            b.display_state(),
            image(b),
            b.bottle_address,
            age(b.created_at),
            cpu,
            mem,
            b.owner_uid
        ));
    }
    out
}

pub fn inspect(b: &BottleInfo) -> String {
    format!(
        "name:       {}\nid:         {}\nowner uid:  {}\nstate:      {}\nimage:      {}\ncreated:    {} ago\nlauncher:   {}\nnetns:      {}\ninterface:  {} (host side)\naddress:    {}/{}\ngateway:    {}\nallowed:    {}\n",
        b.name,
        b.id,
        b.owner_uid,
        b.display_state(),
        image(b),
        age(b.created_at),
        b.launcher,
        b.netns,
        b.host_interface,
        b.bottle_address,
        b.prefix_len,
        b.gateway_address,
        b.allowed_ports.join(" ")
    )
}

pub fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Totals, and with `previous` (an earlier sample of the same bottle) rates per second.
pub fn stats(s: &BottleStats, previous: Option<&BottleStats>) -> String {
    let k = &s.kernel;
    let mut out = format!(
        "{} ({})\n  from bottle: {} packets, {}\n  to bottle:   {} packets, {}\n",
        s.name,
        s.id,
        k.from_bottle.packets,
        bytes(k.from_bottle.bytes as f64),
        k.to_bottle.packets,
        bytes(k.to_bottle.bytes as f64)
    );
    if let Some(p) = previous {
        let dt = (s.sampled_at_ms.saturating_sub(p.sampled_at_ms)) as f64 / 1000.0;
        if dt > 0.0 {
            let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / dt;
            out.push_str(&format!(
                "  rate:        up {}/s ({:.0} pkt/s), down {}/s ({:.0} pkt/s), drops {:.0}/s\n",
                bytes(rate(k.from_bottle.bytes, p.kernel.from_bottle.bytes)),
                rate(k.from_bottle.packets, p.kernel.from_bottle.packets),
                bytes(rate(k.to_bottle.bytes, p.kernel.to_bottle.bytes)),
                rate(k.to_bottle.packets, p.kernel.to_bottle.packets),
                rate(k.drops.total(), p.kernel.drops.total()),
            ));
        }
    }
    out.push_str(&format!("  drops:       {} total", k.drops.total()));
    let reasons: Vec<String> = k
        .drops
        .by_reason()
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| format!("{r}={n}"))
        .collect();
    if !reasons.is_empty() {
        out.push_str(&format!(" ({})", reasons.join(", ")));
    }
    out.push('\n');
    let l7 = &s.l7;
    out.push_str(&format!(
        "  dns:         {} queries, {} answered, {} refused\n",
        l7.dns.queries, l7.dns.answered, l7.dns.refused
    ));
    for h in &l7.http {
        out.push_str(&format!(
            "  http:        {:<32} {:<12} {} requests, up {}, down {}\n",
            h.host,
            h.decision,
            h.requests,
            bytes(h.bytes_up as f64),
            bytes(h.bytes_down as f64)
        ));
    }
    for (rule, hits) in &l7.dlp_hits {
        out.push_str(&format!("  dlp:         {rule}: {hits} hits\n"));
    }
    let g = &l7.git;
    if g.fetches > 0 || g.refs_accepted > 0 || !g.refs_rejected.is_empty() {
        out.push_str(&format!(
            "  git-gate:    {} fetches ({} failed), {} refs pushed, in {}, out {}\n",
            g.fetches,
            g.fetch_failures,
            g.refs_accepted,
            bytes(g.bytes_in as f64),
            bytes(g.bytes_out as f64)
        ));
        for (reason, n) in &g.refs_rejected {
            out.push_str(&format!("  git-gate:    rejected ({reason}): {n}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_bytes() {
        assert_eq!(bytes(0.0), "0 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bytes(3.0 * 1024.0 * 1024.0 * 1024.0), "3.0 GiB");
    }
}
