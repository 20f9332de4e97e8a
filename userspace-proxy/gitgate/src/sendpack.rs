//! The fast forwarding path: a minimal `git send-pack` over SSH that hands the upstream the
//! client's own pack (as `git index-pack --fix-thin` left it in the quarantine) instead of
//! letting libgit2 build and deflate a new one. Same guards as the libgit2 path: the
//! server's host key is compared with the pinned ones before the gate authenticates, the key
//! comes from memory, every read and write has a timeout and the whole operation a deadline,
//! and everything the upstream sends back is bounded.
//!
//! When it cannot be sure it sends the right thing (an `https://` upstream, an upstream
//! lacking a capability, refs the client may have relied on that the upstream lacks, an
//! upstream that failed to unpack), it says so with [`Outcome::Fallback`] *before* any ref
//! could have changed upstream, and the caller uses libgit2's push instead.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::pktline::{self, Hex, Pkt};
use crate::upstream::{PushOutcome, RefOutcome};

#[derive(Debug, thiserror::Error)]
pub enum SendPackError {
    #[error("the upstream's host key does not match the pinned host_key")]
    HostKeyMismatch,
    #[error("upstream did not finish within {0} s")]
    Timeout(u64),
    #[error("{0}")]
    Failed(String),
}

type Result<T> = std::result::Result<T, SendPackError>;

/// One ref update to send: `old` is what the gate expects the upstream to hold.
#[derive(Debug, Clone)]
pub struct Update {
    pub old: Hex,
    pub new: Hex,
    pub refname: String,
}

/// What a send-pack attempt came to.
#[derive(Debug)]
pub enum Outcome {
    /// The upstream processed the push (each ref accepted or refused in its own words).
    Done(PushOutcome),
    /// Nothing changed upstream; use the general path. The reason is for the log.
    Fallback(String),
}

/// Where and as whom to connect, from an `ssh://[user@]host[:port]/path` URL.
#[derive(Debug, PartialEq, Eq)]
pub struct SshUrl {
    pub user: String,
    pub host: String,
    pub port: u16,
    pub path: String,
}

/// Parses the URLs the fast path handles; `None` for anything else (the caller falls back).
pub fn parse_ssh_url(url: &str) -> Option<SshUrl> {
    let rest = url.strip_prefix("ssh://")?;
    let slash = rest.find('/')?;
    let (authority, path) = rest.split_at(slash);
    let (user, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (u.to_string(), h),
        None => ("git".to_string(), authority),
    };
    let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
        let (h, after) = h.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => 22,
            None => return None,
        };
        (h.to_string(), port)
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (hostport.to_string(), 22),
        }
    };
    // `/~user/...` means a home directory: git passes it without the leading slash.
    let path = path
        .strip_prefix("/~")
        .map_or_else(|| path.to_string(), |p| format!("~{p}"));
    let plain = |s: &str| !s.is_empty() && !s.contains(['\'', '\n', '\0', '\\', '!']);
    (plain(&user) && plain(&host) && plain(&path)).then_some(SshUrl {
        user,
        host,
        port,
        path,
    })
}

/// Bounds of one send-pack.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connect: Duration,
    pub io: Duration,
    pub deadline: Duration,
}

/// Largest ref advertisement the gate reads from the upstream.
const MAX_ADVERTISEMENT: usize = 32 * 1024 * 1024;
/// Largest report (report-status plus progress text) the gate reads back.
const MAX_REPORT: usize = 4 * 1024 * 1024;
/// Upstream text kept for the client, as on the libgit2 path.
const MAX_MESSAGES: usize = 64 * 1024;

struct Conn {
    // Dropped after the channel (field order).
    channel: ssh2::Channel,
    _session: ssh2::Session,
    started: Instant,
    limits: Limits,
    buf: Vec<u8>,
}

impl Conn {
    fn check_deadline(&self) -> Result<()> {
        if self.started.elapsed() > self.limits.deadline {
            return Err(SendPackError::Timeout(self.limits.deadline.as_secs()));
        }
        Ok(())
    }

    /// Reads more bytes into `buf`; `false` at end of stream.
    fn fill(&mut self, max: usize) -> Result<bool> {
        self.check_deadline()?;
        if self.buf.len() > max {
            return Err(SendPackError::Failed(format!(
                "the upstream sent more than {max} bytes"
            )));
        }
        let mut chunk = [0u8; 32 * 1024];
        let n = self
            .channel
            .read(&mut chunk)
            .map_err(|e| io_err("read", &e, self.limits))?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// The next pkt-line: `None` for a flush. Errors at end of stream.
    fn pkt(&mut self, max: usize) -> Result<Option<Vec<u8>>> {
        loop {
            let parsed = pktline::parse(&self.buf)
                .map_err(|e| SendPackError::Failed(format!("upstream: {e}")))?;
            if let Some((pkt, used)) = parsed {
                let out = match pkt {
                    Pkt::Flush => None,
                    Pkt::Data(d) => Some(d.to_vec()),
                };
                self.buf.drain(..used);
                return Ok(out);
            }
            if !self.fill(max)? {
                return Err(SendPackError::Failed(
                    "the upstream closed the connection early".into(),
                ));
            }
        }
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.check_deadline()?;
        self.channel
            .write_all(data)
            .map_err(|e| io_err("write", &e, self.limits))
    }
}

fn io_err(op: &str, e: &std::io::Error, limits: Limits) -> SendPackError {
    if matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    ) {
        return SendPackError::Timeout(limits.io.as_secs());
    }
    SendPackError::Failed(format!("{op}: {e}"))
}

fn ssh_err(op: &str, e: &ssh2::Error) -> SendPackError {
    if e.code() == ssh2::ErrorCode::Session(-9) {
        // LIBSSH2_ERROR_TIMEOUT
        return SendPackError::Timeout(0);
    }
    SendPackError::Failed(format!("{op}: {}", e.message()))
}

fn connect(url: &SshUrl, pinned: &[Vec<u8>], key: &str, limits: Limits) -> Result<Conn> {
    let started = Instant::now();
    let addrs: Vec<_> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| SendPackError::Failed(format!("cannot resolve {}: {e}", url.host)))?
        .collect();
    let mut last = None;
    let mut tcp = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, limits.connect) {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let tcp = tcp.ok_or_else(|| {
        SendPackError::Failed(format!(
            "cannot connect to {}:{}: {}",
            url.host,
            url.port,
            last.map_or_else(|| "no address".to_string(), |e| e.to_string())
        ))
    })?;
    let _ = tcp.set_nodelay(true);
    let mut session = ssh2::Session::new().map_err(|e| ssh_err("ssh session", &e))?;
    session.set_timeout(u32::try_from(limits.io.as_millis()).unwrap_or(u32::MAX));
    session.set_tcp_stream(tcp);
    session
        .handshake()
        .map_err(|e| ssh_err("ssh handshake", &e))?;
    // The pin is checked before the gate says who it is or offers its key.
    let matches = session
        .host_key()
        .is_some_and(|(raw, _)| pinned.iter().any(|p| p.as_slice() == raw));
    if !matches {
        return Err(SendPackError::HostKeyMismatch);
    }
    session
        .userauth_pubkey_memory(&url.user, None, key, None)
        .map_err(|_| SendPackError::Failed("upstream refused the gate's credential".into()))?;
    if !session.authenticated() {
        return Err(SendPackError::Failed(
            "upstream refused the gate's credential".into(),
        ));
    }
    let mut channel = session
        .channel_session()
        .map_err(|e| ssh_err("ssh channel", &e))?;
    channel
        .exec(&format!("git-receive-pack '{}'", url.path))
        .map_err(|e| ssh_err("exec git-receive-pack", &e))?;
    Ok(Conn {
        channel,
        _session: session,
        started,
        limits,
        buf: Vec::new(),
    })
}

/// The upstream's refs and capabilities.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Advertisement {
    pub refs: HashMap<String, Hex>,
    pub caps: Vec<String>,
}

impl Advertisement {
    fn has(&self, cap: &str) -> bool {
        self.caps.iter().any(|c| c == cap)
    }
}

/// Parses one advertisement line (without its pkt-line length) into `adv`.
pub fn parse_advert_line(adv: &mut Advertisement, line: &[u8]) -> Result<()> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let (main, caps) = match line.iter().position(|b| *b == 0) {
        Some(i) => (&line[..i], Some(&line[i + 1..])),
        None => (line, None),
    };
    if let Some(caps) = caps {
        adv.caps = String::from_utf8_lossy(caps)
            .split(' ')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect();
    }
    if main.starts_with(b"shallow ") {
        return Ok(());
    }
    let bad = || {
        SendPackError::Failed(format!(
            "malformed ref advertisement line {:?}",
            String::from_utf8_lossy(&main[..main.len().min(100)])
        ))
    };
    let (oid, name) = (
        main.get(..40).ok_or_else(bad)?,
        main.get(41..).ok_or_else(bad)?,
    );
    let oid = Hex::parse(oid).ok_or_else(bad)?;
    let name = std::str::from_utf8(name).map_err(|_| bad())?;
    if name == "capabilities^{}" || name.starts_with(".have") {
        return Ok(());
    }
    adv.refs.insert(name.to_string(), oid);
    Ok(())
}

fn read_advertisement(conn: &mut Conn) -> Result<Advertisement> {
    let mut adv = Advertisement::default();
    while let Some(line) = conn.pkt(MAX_ADVERTISEMENT)? {
        parse_advert_line(&mut adv, &line)?;
    }
    Ok(adv)
}

/// What report-status said.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// `None`: `unpack ok`; `Some(text)`: the unpack error.
    pub unpack_error: Option<String>,
    pub refs: Vec<RefOutcome>,
}

/// Parses report-status pkt-lines (already de-multiplexed) up to their flush.
pub fn parse_report(data: &[u8]) -> Result<Option<Report>> {
    let mut report = Report::default();
    let mut rest = data;
    let mut saw_unpack = false;
    loop {
        let parsed =
            pktline::parse(rest).map_err(|e| SendPackError::Failed(format!("upstream: {e}")))?;
        let Some((pkt, used)) = parsed else {
            return Ok(None);
        };
        rest = &rest[used..];
        let line = match pkt {
            Pkt::Flush => return Ok(saw_unpack.then_some(report)),
            Pkt::Data(d) => {
                String::from_utf8_lossy(d.strip_suffix(b"\n").unwrap_or(d)).into_owned()
            }
        };
        if let Some(status) = line.strip_prefix("unpack ") {
            saw_unpack = true;
            if status != "ok" {
                report.unpack_error = Some(status.to_string());
            }
        } else if let Some(name) = line.strip_prefix("ok ") {
            report.refs.push(RefOutcome {
                refname: name.to_string(),
                rejected: None,
            });
        } else if let Some(rest) = line.strip_prefix("ng ") {
            let (name, reason) = rest.split_once(' ').unwrap_or((rest, "rejected"));
            report.refs.push(RefOutcome {
                refname: name.to_string(),
                rejected: Some(reason.to_string()),
            });
        }
    }
}

/// A connection to the upstream's `git-receive-pack` that has read the ref advertisement and
/// sent nothing yet. Dropping it ends the session; the upstream changes nothing.
pub struct Opened {
    conn: Conn,
    adv: Advertisement,
}

impl Opened {
    /// How long ago the connection was made.
    pub fn age(&self) -> Duration {
        self.conn.started.elapsed()
    }
}

/// Connects (host key pin checked before authenticating) and reads the ref advertisement.
pub fn open(url: &SshUrl, pinned: &[Vec<u8>], key: &str, limits: Limits) -> Result<Opened> {
    let mut conn = connect(url, pinned, key, limits)?;
    let adv = read_advertisement(&mut conn)?;
    Ok(Opened { conn, adv })
}

/// Pushes `updates` over `opened`, sending `pack` (the quarantine's pack file; `None` when
/// every update is a delete).
pub fn send_pack(
    opened: Opened,
    updates: &[Update],
    mirror_tips: &[Hex],
    pack: Option<&Path>,
) -> Result<Outcome> {
    let Opened { mut conn, adv } = opened;
    let connected = conn.started.elapsed();
    for cap in ["report-status", "side-band-64k", "ofs-delta"] {
        if !adv.has(cap) {
            return Ok(Outcome::Fallback(format!(
                "the upstream does not offer {cap}"
            )));
        }
    }
    if updates.iter().any(|u| u.new.is_zero()) && !adv.has("delete-refs") {
        return Ok(Outcome::Fallback(
            "the upstream does not offer delete-refs".into(),
        ));
    }
    // The client left out what the gate's refs reach; the upstream must hold those tips.
    let upstream_tips: std::collections::HashSet<&Hex> = adv.refs.values().collect();
    if let Some(missing) = mirror_tips.iter().find(|t| !upstream_tips.contains(t)) {
        return Ok(Outcome::Fallback(format!(
            "the upstream lacks {missing}, which the gate advertised"
        )));
    }
    // Refs that moved upstream since the gate fetched are refused here, not overwritten.
    let mut refs = Vec::new();
    let mut send = Vec::new();
    for u in updates {
        let current = adv.refs.get(&u.refname).copied().unwrap_or(Hex::ZERO);
        if current == u.old {
            send.push(u);
        } else {
            refs.push(RefOutcome {
                refname: u.refname.clone(),
                rejected: Some("fetch first".into()),
            });
        }
    }
    if send.is_empty() {
        let _ = conn.write(pktline::FLUSH);
        return Ok(Outcome::Done(PushOutcome {
            refs,
            messages: Vec::new(),
            bytes: 0,
        }));
    }
    let mut commands = Vec::new();
    for (i, u) in send.iter().enumerate() {
        let caps = if i == 0 {
            "\0report-status side-band-64k agent=bottle-git-gate"
        } else {
            ""
        };
        commands.extend(pktline::encode(
            format!("{} {} {}{caps}\n", u.old, u.new, u.refname).as_bytes(),
        ));
    }
    commands.extend_from_slice(pktline::FLUSH);
    conn.write(&commands)?;
    let mut bytes = commands.len() as u64;
    if send.iter().any(|u| !u.new.is_zero()) {
        let Some(pack) = pack else {
            return Err(SendPackError::Failed("no pack to send".into()));
        };
        let mut file = std::fs::File::open(pack)
            .map_err(|e| SendPackError::Failed(format!("cannot read the pack: {e}")))?;
        let mut chunk = vec![0u8; 256 * 1024];
        loop {
            let n = file
                .read(&mut chunk)
                .map_err(|e| SendPackError::Failed(format!("cannot read the pack: {e}")))?;
            if n == 0 {
                break;
            }
            conn.write(&chunk[..n])?;
            bytes += n as u64;
        }
    }
    let _ = conn.channel.flush();
    let _ = conn.channel.send_eof();
    let sent = conn.started.elapsed();
    // The reply: side-band 1 carries report-status, 2 progress and hook output, 3 a fatal error.
    let mut status = Vec::new();
    let mut messages = Vec::new();
    let report = loop {
        let Some(line) = conn.pkt(MAX_REPORT)? else {
            break parse_report(&status)?;
        };
        let Some((&band, data)) = line.split_first() else {
            continue;
        };
        match band {
            1 => {
                if status.len() + data.len() > MAX_REPORT {
                    return Err(SendPackError::Failed(
                        "the upstream's report is too large".into(),
                    ));
                }
                status.extend_from_slice(data);
                if let Some(r) = parse_report(&status)? {
                    break Some(r);
                }
            }
            2 => {
                let room = MAX_MESSAGES.saturating_sub(messages.len());
                messages.extend_from_slice(&data[..data.len().min(room)]);
            }
            3 => {
                return Err(SendPackError::Failed(format!(
                    "upstream: {}",
                    String::from_utf8_lossy(&data[..data.len().min(500)]).trim_end()
                )))
            }
            _ => {}
        }
    };
    let Some(report) = report else {
        return Err(SendPackError::Failed(
            "the upstream ended without a report".into(),
        ));
    };
    if let Some(e) = report.unpack_error {
        // The upstream updated nothing; the general path re-packs from scratch.
        return Ok(Outcome::Fallback(format!(
            "the upstream could not unpack: {e}"
        )));
    }
    refs.extend(report.refs);
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    tracing::info!(
        bytes,
        connect_ms = ms(connected),
        send_ms = ms(sent.saturating_sub(connected)),
        report_ms = ms(conn.started.elapsed().saturating_sub(sent)),
        "forwarded the client's pack"
    );
    let _ = conn.channel.wait_close();
    Ok(Outcome::Done(PushOutcome {
        refs,
        messages,
        bytes,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_ssh_url("ssh://root@10.0.0.2/srv/a.git"),
            Some(SshUrl {
                user: "root".into(),
                host: "10.0.0.2".into(),
                port: 22,
                path: "/srv/a.git".into()
            })
        );
        let u = parse_ssh_url("ssh://git@[::1]:2222/~me/a.git").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 2222, "~me/a.git")
        );
        assert_eq!(parse_ssh_url("ssh://h:22/x").unwrap().user, "git");
        assert_eq!(parse_ssh_url("https://h/x"), None);
        assert_eq!(parse_ssh_url("ssh://h/it's"), None);
        assert_eq!(parse_ssh_url("ssh://h:notaport/x"), None);
    }

    #[test]
    fn advertisement() {
        let mut adv = Advertisement::default();
        let a = "a".repeat(40);
        parse_advert_line(
            &mut adv,
            format!("{a} refs/heads/main\0report-status delete-refs side-band-64k\n").as_bytes(),
        )
        .unwrap();
        parse_advert_line(&mut adv, format!("{a} refs/tags/v1\n").as_bytes()).unwrap();
        assert!(adv.has("side-band-64k") && !adv.has("atomic"));
        assert_eq!(adv.refs.len(), 2);
        let mut empty = Advertisement::default();
        parse_advert_line(
            &mut empty,
            format!("{} capabilities^{{}}\0report-status\n", "0".repeat(40)).as_bytes(),
        )
        .unwrap();
        assert!(empty.refs.is_empty() && empty.has("report-status"));
        assert!(parse_advert_line(&mut empty, b"zz refs/heads/x").is_err());
    }

    #[test]
    fn reports() {
        let mut data = Vec::new();
        data.extend(pktline::encode(b"unpack ok\n"));
        data.extend(pktline::encode(b"ok refs/heads/main\n"));
        assert_eq!(parse_report(&data).unwrap(), None, "no flush yet");
        data.extend(pktline::encode(
            b"ng refs/heads/x pre-receive hook declined\n",
        ));
        data.extend_from_slice(pktline::FLUSH);
        let r = parse_report(&data).unwrap().unwrap();
        assert_eq!(r.unpack_error, None);
        assert_eq!(r.refs[0].rejected, None);
        assert_eq!(
            r.refs[1].rejected.as_deref(),
            Some("pre-receive hook declined")
        );
        let mut bad = pktline::encode(b"unpack index-pack abnormal exit\n");
        bad.extend_from_slice(pktline::FLUSH);
        assert_eq!(
            parse_report(&bad).unwrap().unwrap().unpack_error.as_deref(),
            Some("index-pack abnormal exit")
        );
    }
}
