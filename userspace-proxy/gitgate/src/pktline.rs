//! Git pkt-lines: the framing of the smart protocol, and the receive-pack request's command
//! list. Pure functions over bytes; every length is bounded.

/// Largest pkt-line (4 length bytes included), as in git's `LARGE_PACKET_MAX`.
pub const MAX_PKT_LEN: usize = 65520;
/// Largest side-band payload (pkt-line minus the length and the band byte).
const MAX_BAND_PAYLOAD: usize = MAX_PKT_LEN - 5;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PktError {
    #[error("malformed pkt-line length {0:?}")]
    BadLength(String),
    #[error("pkt-line of {0} bytes exceeds the limit of {MAX_PKT_LEN}")]
    TooLong(usize),
    #[error("the request ended inside a pkt-line")]
    Truncated,
    #[error("malformed push command: {0}")]
    BadCommand(String),
    #[error("more than {0} ref updates in one push")]
    TooManyCommands(usize),
    #[error("shallow pushes are not supported by the git-gate")]
    Shallow,
    #[error("ref name {0:?} is not a valid ref name")]
    BadRef(String),
}

pub type Result<T> = std::result::Result<T, PktError>;

/// One pkt-line as read.
#[derive(Debug, PartialEq, Eq)]
pub enum Pkt<'a> {
    Flush,
    Data(&'a [u8]),
}

/// Parses one pkt-line from the start of `buf`. `Ok(None)` when more bytes are needed;
/// otherwise the line and the number of bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Pkt<'_>, usize)>> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let text = std::str::from_utf8(&buf[..4])
        .map_err(|_| PktError::BadLength(String::from_utf8_lossy(&buf[..4]).into_owned()))?;
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(PktError::BadLength(text.to_string()));
    }
    let len = usize::from_str_radix(text, 16).map_err(|_| PktError::BadLength(text.to_string()))?;
    match len {
        0 => Ok(Some((Pkt::Flush, 4))),
        1..=3 => Err(PktError::BadLength(text.to_string())),
        _ if len > MAX_PKT_LEN => Err(PktError::TooLong(len)),
        _ if buf.len() < len => Ok(None),
        _ => Ok(Some((Pkt::Data(&buf[4..len]), len))),
    }
}

/// Encodes `data` as one pkt-line. Callers keep `data` under [`MAX_PKT_LEN`] - 4.
pub fn encode(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:04x}", data.len() + 4).into_bytes();
    out.extend_from_slice(data);
    out
}

pub const FLUSH: &[u8] = b"0000";

/// Frames `data` on side-band `band` (1 data, 2 progress, 3 fatal), split as needed.
pub fn sideband(band: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16);
    for chunk in data.chunks(MAX_BAND_PAYLOAD) {
        out.extend_from_slice(format!("{:04x}", chunk.len() + 5).as_bytes());
        out.push(band);
        out.extend_from_slice(chunk);
    }
    out
}

/// A 40-hex object id (SHA-1 repositories only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hex(pub [u8; 40]);

impl Hex {
    pub const ZERO: Hex = Hex([b'0'; 40]);

    pub fn parse(s: &[u8]) -> Option<Self> {
        let arr: [u8; 40] = s.try_into().ok()?;
        arr.iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
            .then_some(Self(arr))
    }

    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl std::fmt::Display for Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One ref update a client asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub old: Hex,
    pub new: Hex,
    pub refname: String,
}

impl Command {
    pub fn is_create(&self) -> bool {
        self.old.is_zero() && !self.new.is_zero()
    }
    pub fn is_delete(&self) -> bool {
        self.new.is_zero()
    }
}

/// The command section of a receive-pack request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PushRequest {
    pub commands: Vec<Command>,
    pub capabilities: Vec<String>,
}

impl PushRequest {
    pub fn has_capability(&self, cap: &str) -> bool {
        self.capabilities.iter().any(|c| c == cap)
    }
}

/// Whether `name` is a ref name the gate accepts: `refs/…`, git's check-ref-format rules
/// (no `..`, no control characters or ` ~^:?*[\`, no component starting with `.` or ending
/// with `.lock`, no `@{`, no trailing `/` or `.`), at most 1024 bytes.
pub fn is_valid_refname(name: &str) -> bool {
    if !name.starts_with("refs/") || name.len() > 1024 || name.ends_with('/') || name.ends_with('.')
    {
        return false;
    }
    if name.contains("..") || name.contains("@{") || name.contains("//") {
        return false;
    }
    if name
        .bytes()
        .any(|b| b < 0x20 || b == 0x7f || b" ~^:?*[\\".contains(&b))
    {
        return false;
    }
    name.split('/')
        .all(|c| !c.is_empty() && !c.starts_with('.') && !c.ends_with(".lock"))
}

/// Parses the command list at the start of a receive-pack body. Returns the request and the
/// number of bytes consumed (the pack follows), or `Ok(None)` when more bytes are needed.
pub fn parse_push(buf: &[u8], max_commands: usize) -> Result<Option<(PushRequest, usize)>> {
    let mut req = PushRequest::default();
    let mut pos = 0;
    loop {
        let Some((pkt, used)) = parse(&buf[pos..])? else {
            return Ok(None);
        };
        pos += used;
        let line = match pkt {
            Pkt::Flush => return Ok(Some((req, pos))),
            Pkt::Data(line) => line,
        };
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        if line.starts_with(b"shallow ") {
            return Err(PktError::Shallow);
        }
        if req.commands.len() >= max_commands {
            return Err(PktError::TooManyCommands(max_commands));
        }
        let (cmd, caps) = match line.iter().position(|&b| b == 0) {
            Some(nul) if req.commands.is_empty() => (&line[..nul], Some(&line[nul + 1..])),
            Some(_) => {
                return Err(PktError::BadCommand(
                    "capabilities after the first command".into(),
                ))
            }
            None => (line, None),
        };
        let bad = || PktError::BadCommand(String::from_utf8_lossy(cmd).chars().take(120).collect());
        if cmd.len() < 83 || cmd[40] != b' ' || cmd[81] != b' ' {
            return Err(bad());
        }
        let old = Hex::parse(&cmd[..40]).ok_or_else(bad)?;
        let new = Hex::parse(&cmd[41..81]).ok_or_else(bad)?;
        let refname = std::str::from_utf8(&cmd[82..]).map_err(|_| bad())?;
        if !is_valid_refname(refname) {
            return Err(PktError::BadRef(refname.chars().take(200).collect()));
        }
        if old.is_zero() && new.is_zero() {
            return Err(bad());
        }
        if req.commands.iter().any(|c| c.refname == refname) {
            return Err(PktError::BadCommand(format!("{refname} appears twice")));
        }
        if let Some(caps) = caps {
            req.capabilities = String::from_utf8_lossy(caps)
                .split(' ')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect();
        }
        req.commands.push(Command {
            old,
            new,
            refname: refname.to_string(),
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";
    const Z: &str = "0000000000000000000000000000000000000000";

    #[test]
    fn parses_lines_and_flush() {
        assert_eq!(parse(b"0000rest").unwrap(), Some((Pkt::Flush, 4)));
        assert_eq!(parse(b"0009hello").unwrap(), Some((Pkt::Data(b"hello"), 9)));
        assert_eq!(parse(b"0009hel").unwrap(), None);
        assert_eq!(parse(b"00").unwrap(), None);
        assert!(matches!(parse(b"zzzz"), Err(PktError::BadLength(_))));
        assert!(matches!(parse(b"0002"), Err(PktError::BadLength(_))));
        assert!(matches!(parse(b"fff5"), Err(PktError::TooLong(_))));
        assert!(matches!(parse(b"+123"), Err(PktError::BadLength(_))));
    }

    #[test]
    fn encodes_and_frames_sidebands() {
        assert_eq!(encode(b"unpack ok\n"), b"000eunpack ok\n");
        let framed = sideband(2, &vec![b'x'; MAX_BAND_PAYLOAD + 1]);
        let (first, used) = parse(&framed).unwrap().unwrap();
        assert_eq!(used, MAX_PKT_LEN);
        assert!(matches!(first, Pkt::Data(d) if d[0] == 2));
        let (second, _) = parse(&framed[used..]).unwrap().unwrap();
        assert_eq!(second, Pkt::Data(&[2, b'x'][..]));
    }

    fn body(lines: &[String]) -> Vec<u8> {
        let mut out = Vec::new();
        for l in lines {
            out.extend(encode(l.as_bytes()));
        }
        out.extend_from_slice(FLUSH);
        out.extend_from_slice(b"PACK...");
        out
    }

    #[test]
    fn parses_push_commands() {
        let buf = body(&[
            format!("{Z} {A} refs/heads/new\0report-status side-band-64k agent=git/2\n"),
            format!("{A} {B} refs/heads/main\n"),
            format!("{A} {Z} refs/heads/old"),
        ]);
        let (req, used) = parse_push(&buf, 10).unwrap().unwrap();
        assert_eq!(&buf[used..], b"PACK...");
        assert_eq!(req.commands.len(), 3);
        assert!(req.commands[0].is_create());
        assert!(req.commands[2].is_delete());
        assert_eq!(req.commands[1].refname, "refs/heads/main");
        assert!(req.has_capability("side-band-64k"));
        assert!(!req.has_capability("atomic"));
        // Incomplete input asks for more, never guesses.
        assert_eq!(parse_push(&buf[..used - 2], 10).unwrap(), None);
        // The probe git sends before a large push: just a flush.
        let (req, used) = parse_push(b"0000", 10).unwrap().unwrap();
        assert!(req.commands.is_empty());
        assert_eq!(used, 4);
    }

    #[test]
    fn refuses_bad_push_commands() {
        let bad = |lines: &[String]| parse_push(&body(lines), 2).unwrap_err();
        assert!(matches!(
            bad(&[format!("{A} {B}")]),
            PktError::BadCommand(_)
        ));
        assert!(matches!(
            bad(&[format!("{A} {B} refs/heads/../../etc")]),
            PktError::BadRef(_)
        ));
        assert!(matches!(
            bad(&[format!("{A} {B} HEAD")]),
            PktError::BadRef(_)
        ));
        assert!(matches!(
            bad(&[format!("{A} {} refs/heads/x", "G".repeat(40))]),
            PktError::BadCommand(_)
        ));
        assert!(matches!(
            bad(&[format!("{Z} {Z} refs/heads/x")]),
            PktError::BadCommand(_)
        ));
        assert!(matches!(bad(&[format!("shallow {A}")]), PktError::Shallow));
        assert!(matches!(
            bad(&[
                format!("{A} {B} refs/heads/a"),
                format!("{A} {B} refs/heads/b"),
                format!("{A} {B} refs/heads/c"),
            ]),
            PktError::TooManyCommands(2)
        ));
        assert!(matches!(
            bad(&[
                format!("{A} {B} refs/heads/a"),
                format!("{A} {B} refs/heads/a")
            ]),
            PktError::BadCommand(_)
        ));
    }

    #[test]
    fn refnames() {
        assert!(is_valid_refname("refs/heads/main"));
        assert!(is_valid_refname("refs/tags/v1.0"));
        assert!(!is_valid_refname("refs/heads/a..b"));
        assert!(!is_valid_refname("refs/heads/.hidden"));
        assert!(!is_valid_refname("refs/heads/x.lock"));
        assert!(!is_valid_refname("refs/heads/a b"));
        assert!(!is_valid_refname("refs/heads/"));
        assert!(!is_valid_refname("main"));
    }
}
