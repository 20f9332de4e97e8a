//! SHA-256 digests: the only algorithm accepted, parsed strictly, computed while streaming.
//!
//! Every blob of an image is named by its digest and every layer's uncompressed stream by its
//! diff_id; checking them is what makes the cache trustworthy. Digests also become file names
//! (`blobs/sha256/<hex>`), so a [`Sha256`] can only hold 64 lowercase hex characters: nothing
//! else can reach a path.

use std::fmt;
use std::io::{self, Read, Write};

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

use crate::limits::Meter;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("{0:?} is not a digest of the form sha256:<64 lowercase hex>")]
    Malformed(String),
    #[error("digest {0:?} uses an algorithm other than sha256 (not supported)")]
    Unsupported(String),
    #[error("{what}: expected {expected}, content is {actual}")]
    Mismatch {
        what: String,
        expected: Sha256,
        actual: Sha256,
    },
}

/// A SHA-256 digest. Displays and serializes as `sha256:<hex>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256(String);

impl Sha256 {
    /// Parses `sha256:<hex>`.
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        match s.split_once(':') {
            Some(("sha256", hex)) => {
                Self::from_hex(hex).map_err(|_| DigestError::Malformed(s.into()))
            }
            Some((alg, _)) if !alg.is_empty() => Err(DigestError::Unsupported(s.into())),
            _ => Err(DigestError::Malformed(s.into())),
        }
    }

    /// Parses the 64 hex characters alone.
    pub fn from_hex(hex: &str) -> Result<Self, DigestError> {
        if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(hex.to_owned()))
        } else {
            Err(DigestError::Malformed(hex.into()))
        }
    }

    /// The 64 hex characters, safe to use as a file name.
    pub fn hex(&self) -> &str {
        &self.0
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        from_ring(ring::digest::digest(&SHA256, bytes))
    }

    /// Fails unless `self` is `expected`.
    pub(crate) fn check(
        &self,
        expected: &Sha256,
        what: impl Into<String>,
    ) -> Result<(), DigestError> {
        if self == expected {
            return Ok(());
        }
        Err(DigestError::Mismatch {
            what: what.into(),
            expected: expected.clone(),
            actual: self.clone(),
        })
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl TryFrom<String> for Sha256 {
    type Error = DigestError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Sha256> for String {
    fn from(d: Sha256) -> String {
        d.to_string()
    }
}

fn from_ring(d: ring::digest::Digest) -> Sha256 {
    let mut hex = String::with_capacity(64);
    for b in d.as_ref() {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    Sha256(hex)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A reader that hashes and counts what passes through it, and charges it to a [`Meter`].
pub(crate) struct HashingReader<'m, R> {
    inner: R,
    ctx: Context,
    count: u64,
    meter: Option<&'m Meter>,
}

impl<'m, R: Read> HashingReader<'m, R> {
    pub(crate) fn new(inner: R, meter: Option<&'m Meter>) -> Self {
        Self {
            inner,
            ctx: Context::new(&SHA256),
            count: 0,
            meter,
        }
    }

    /// The digest and length of everything read so far.
    pub(crate) fn finish(self) -> (Sha256, u64) {
        (from_ring(self.ctx.finish()), self.count)
    }
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let data = buf.get(..n).unwrap_or_default();
        self.ctx.update(data);
        self.count += n as u64;
        if let Some(meter) = self.meter {
            meter.charge_read(n)?;
        }
        Ok(n)
    }
}

/// A writer that hashes and counts what passes through it.
pub(crate) struct HashingWriter<W> {
    inner: W,
    ctx: Context,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self {
            inner,
            ctx: Context::new(&SHA256),
            count: 0,
        }
    }

    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    pub(crate) fn finish(self) -> (W, Sha256, u64) {
        (self.inner, from_ring(self.ctx.finish()), self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.ctx.update(buf.get(..n).unwrap_or_default());
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_only_sha256_hex() {
        let d = Sha256::parse(&format!("sha256:{EMPTY}")).unwrap();
        assert_eq!(d.hex(), EMPTY);
        assert_eq!(d.to_string(), format!("sha256:{EMPTY}"));
        assert_eq!(Sha256::of(b""), d);
        assert!(matches!(
            Sha256::parse(&format!("sha512:{EMPTY}")),
            Err(DigestError::Unsupported(_))
        ));
        for bad in [
            "",
            EMPTY,
            "sha256:",
            "sha256:../../etc/passwd",
            &format!("sha256:{}", EMPTY.to_uppercase()),
            &format!("sha256:{EMPTY}0"),
        ] {
            assert!(Sha256::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hashing_reader_and_writer_agree() {
        let data = vec![7u8; 100_000];
        let mut r = HashingReader::new(&data[..], None);
        let mut w = HashingWriter::new(Vec::new());
        io::copy(&mut r, &mut w).unwrap();
        let (rd, rn) = r.finish();
        let (out, wd, wn) = w.finish();
        assert_eq!((rd.clone(), rn), (wd, wn));
        assert_eq!(out, data);
        assert_eq!(rd, Sha256::of(&data));
    }
}
