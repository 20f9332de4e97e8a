//! Content-Encoding decoding in front of the stream scanner.
//!
//! Request bodies can be compressed; scanning the compressed bytes would miss
//! everything. [`DecodingScanner`] decodes `gzip` (`x-gzip`), `deflate` (zlib
//! or raw, detected), `br`, `zstd` and `identity` as a push-based stream and
//! feeds decoded bytes to an [`OwnedStreamScanner`].
//!
//! Bounds: decoded output is capped ([`DecodeLimits::max_decoded_bytes`],
//! default 64 MiB) whenever at least one real decoding layer is present; the
//! decoders are streaming, so CPU per input byte is bounded by the output they
//! may produce. zstd windows are capped at 8 MiB (RFC 9659's limit for HTTP),
//! brotli's at its 16 MiB format maximum (large-window brotli is refused).
//!
//! Chained encodings (`Content-Encoding: gzip, br` = gzip then br) are decoded
//! in reverse order, up to [`DecodeLimits::max_layers`] real layers (default
//! 2). Any error means the caller must block: the stream is over the bound,
//! corrupt, truncated, or uses an encoding we cannot inspect.

use std::io::{self, Write};
use std::sync::Arc;

use crate::stream::OwnedStreamScanner;
use crate::{Finding, RuleSet};

/// zstd window log cap: 2^23 = 8 MiB.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;
/// Internal buffer for the brotli writer.
const BROTLI_BUFFER: usize = 32 * 1024;

/// Why a body cannot be scanned. Every variant means "block the request".
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "Content-Encoding `{coding}` is not supported (supported: gzip, x-gzip, deflate, br, \
         zstd, identity); the body cannot be inspected"
    )]
    UnsupportedEncoding { coding: String },
    #[error(
        "Content-Encoding has {count} layers; at most {max} are decoded, the body cannot be inspected"
    )]
    TooManyLayers { count: usize, max: usize },
    #[error(
        "decoded body exceeds the {limit}-byte inspection limit (possible decompression bomb)"
    )]
    TooLarge { limit: u64 },
    #[error("{coding} body is corrupt or truncated: {detail}")]
    Corrupt {
        coding: &'static str,
        detail: String,
    },
    /// A previous call already failed; the body was (and stays) blocked.
    #[error(
        "this body already failed to decode; block the request and use a new scanner per body"
    )]
    AlreadyFailed,
}

/// One Content-Encoding token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContentCoding {
    Identity,
    Gzip,
    Deflate,
    Brotli,
    Zstd,
}

impl ContentCoding {
    /// The header token for this coding.
    pub fn token(self) -> &'static str {
        match self {
            ContentCoding::Identity => "identity",
            ContentCoding::Gzip => "gzip",
            ContentCoding::Deflate => "deflate",
            ContentCoding::Brotli => "br",
            ContentCoding::Zstd => "zstd",
        }
    }
}

/// Parses a `Content-Encoding` header value (comma-separated, in the order
/// the encodings were applied). `identity` and empty entries are dropped.
pub fn parse_content_encoding(header: &str) -> Result<Vec<ContentCoding>, DecodeError> {
    header
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .filter_map(|token| match token.to_ascii_lowercase().as_str() {
            "identity" => None,
            "gzip" | "x-gzip" => Some(Ok(ContentCoding::Gzip)),
            "deflate" => Some(Ok(ContentCoding::Deflate)),
            "br" => Some(Ok(ContentCoding::Brotli)),
            "zstd" => Some(Ok(ContentCoding::Zstd)),
            _ => Some(Err(DecodeError::UnsupportedEncoding {
                coding: token.to_string(),
            })),
        })
        .collect()
}

/// Bounds for [`DecodingScanner`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Maximum decoded bytes when any decoding layer is present.
    pub max_decoded_bytes: u64,
    /// Maximum number of non-identity encodings.
    pub max_layers: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_decoded_bytes: 64 * 1024 * 1024,
            max_layers: 2,
        }
    }
}

/// Decodes a body and scans the decoded bytes.
///
/// ```
/// # use std::sync::Arc;
/// # use bottle_dlp::{RuleSetBuilder, DecodingScanner, DecodeLimits};
/// let rules = Arc::new(RuleSetBuilder::new().with_builtin_rules().build().unwrap());
/// let mut scanner = DecodingScanner::new(&rules, "identity", DecodeLimits::default()).unwrap();
/// let mut findings = scanner.feed(b"token=AKIAIOSFODNN7EXAMPLE").unwrap();
/// findings.extend(scanner.finish().unwrap());
/// assert_eq!(findings[0].rule_id, "aws-access-key-id");
/// ```
pub struct DecodingScanner {
    chain: Box<dyn Layer>,
    failed: bool,
}

impl std::fmt::Debug for DecodingScanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodingScanner")
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl DecodingScanner {
    /// Builds a scanner for a `Content-Encoding` header value.
    pub fn new(
        rules: &Arc<RuleSet>,
        content_encoding: &str,
        limits: DecodeLimits,
    ) -> Result<Self, DecodeError> {
        let codings = parse_content_encoding(content_encoding)?;
        if codings.len() > limits.max_layers {
            return Err(DecodeError::TooManyLayers {
                count: codings.len(),
                max: limits.max_layers,
            });
        }
        let limit = if codings.is_empty() {
            u64::MAX
        } else {
            limits.max_decoded_bytes
        };
        let mut chain: Box<dyn Layer> = Box::new(ScanSink {
            scanner: rules.stream_owned(),
            findings: Vec::new(),
            decoded: 0,
            limit,
            over_limit: false,
        });
        // The last-applied encoding is decoded first, so it is outermost.
        for coding in codings {
            chain = wrap(coding, chain)?;
        }
        Ok(DecodingScanner {
            chain,
            failed: false,
        })
    }

    /// Feeds encoded bytes; returns findings in the decoded stream. On error
    /// the request must be blocked and the scanner is unusable.
    pub fn feed(&mut self, encoded: &[u8]) -> Result<Vec<Finding>, DecodeError> {
        if self.failed {
            return Err(DecodeError::AlreadyFailed);
        }
        let result = self.chain.write_all(encoded);
        self.settle(result)
    }

    /// Ends the body: checks the encoding is complete and returns the last
    /// findings.
    pub fn finish(mut self) -> Result<Vec<Finding>, DecodeError> {
        if self.failed {
            return Err(DecodeError::AlreadyFailed);
        }
        let result = self.chain.finish_layer();
        let mut findings = self.settle(result)?;
        let sink = self.chain.sink().ok_or_else(lost_state)?;
        findings.extend(sink.scanner.finish_in_place());
        Ok(findings)
    }

    /// Decoded bytes produced so far.
    pub fn decoded_bytes(&mut self) -> u64 {
        self.chain.sink().map_or(0, |s| s.decoded)
    }

    fn settle(&mut self, result: Result<(), CodecError>) -> Result<Vec<Finding>, DecodeError> {
        let Some(sink) = self.chain.sink() else {
            self.failed = true;
            return Err(lost_state());
        };
        let findings = std::mem::take(&mut sink.findings);
        match result {
            Ok(()) => Ok(findings),
            Err(e) => {
                self.failed = true;
                if sink.over_limit {
                    Err(DecodeError::TooLarge { limit: sink.limit })
                } else {
                    Err(DecodeError::Corrupt {
                        coding: e.coding,
                        detail: e.error.to_string(),
                    })
                }
            }
        }
    }
}

fn lost_state() -> DecodeError {
    DecodeError::Corrupt {
        coding: "decoder",
        detail: "internal decoder state lost".to_string(),
    }
}

/// An I/O error tagged with the layer that raised it.
struct CodecError {
    coding: &'static str,
    error: io::Error,
}

/// A decoding layer writing into the next one; the innermost is the scan sink.
trait Layer: Send {
    fn write_all(&mut self, data: &[u8]) -> Result<(), CodecError>;
    /// Checks this layer's stream is complete, flushes, then finishes inner.
    fn finish_layer(&mut self) -> Result<(), CodecError>;
    /// The scan sink at the bottom of the chain (`None` only if a layer
    /// lost its state after an internal error).
    fn sink(&mut self) -> Option<&mut ScanSink>;
}

/// Adapts a layer to `io::Write` so codec writers can target it.
struct Next(Box<dyn Layer>);

impl Write for Next {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .write_all(buf)
            .map(|()| buf.len())
            .map_err(|e| e.error)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn wrap(coding: ContentCoding, inner: Box<dyn Layer>) -> Result<Box<dyn Layer>, DecodeError> {
    let next = Next(inner);
    Ok(match coding {
        ContentCoding::Identity => next.0,
        ContentCoding::Gzip => Box::new(Gzip(flate2::write::MultiGzDecoder::new(next))),
        ContentCoding::Deflate => Box::new(Deflate::Sniffing {
            pending: Vec::new(),
            next,
        }),
        ContentCoding::Brotli => Box::new(Brotli(brotli_decompressor::DecompressorWriter::new(
            next,
            BROTLI_BUFFER,
        ))),
        ContentCoding::Zstd => {
            let mut decoder =
                zstd::stream::write::Decoder::new(next).map_err(|e| DecodeError::Corrupt {
                    coding: "zstd",
                    detail: format!("cannot create decoder: {e}"),
                })?;
            decoder
                .window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(|e| DecodeError::Corrupt {
                    coding: "zstd",
                    detail: format!("cannot limit window: {e}"),
                })?;
            Box::new(Zstd(decoder))
        }
    })
}

fn tag(coding: &'static str) -> impl Fn(io::Error) -> CodecError {
    move |error| CodecError { coding, error }
}

/// Innermost layer: counts decoded bytes and scans them.
struct ScanSink {
    scanner: OwnedStreamScanner,
    findings: Vec<Finding>,
    decoded: u64,
    limit: u64,
    over_limit: bool,
}

impl Layer for ScanSink {
    fn write_all(&mut self, data: &[u8]) -> Result<(), CodecError> {
        let total = self.decoded.saturating_add(data.len() as u64);
        if total > self.limit {
            self.over_limit = true;
            return Err(CodecError {
                coding: "limit",
                error: io::Error::other("decoded size limit exceeded"),
            });
        }
        self.decoded = total;
        let found = self.scanner.feed(data);
        self.findings.extend(found);
        Ok(())
    }

    fn finish_layer(&mut self) -> Result<(), CodecError> {
        Ok(())
    }

    fn sink(&mut self) -> Option<&mut ScanSink> {
        Some(self)
    }
}

struct Gzip(flate2::write::MultiGzDecoder<Next>);

impl Layer for Gzip {
    fn write_all(&mut self, data: &[u8]) -> Result<(), CodecError> {
        self.0.write_all(data).map_err(tag("gzip"))
    }

    fn finish_layer(&mut self) -> Result<(), CodecError> {
        self.0.try_finish().map_err(tag("gzip"))?;
        self.0.get_mut().0.finish_layer()
    }

    fn sink(&mut self) -> Option<&mut ScanSink> {
        self.0.get_mut().0.sink()
    }
}

/// HTTP `deflate` is zlib-wrapped (RFC 9110), but some servers send raw
/// deflate; the first two bytes tell them apart.
enum Deflate {
    Sniffing {
        pending: Vec<u8>,
        next: Next,
    },
    Zlib(flate2::write::ZlibDecoder<Next>),
    Raw(flate2::write::DeflateDecoder<Next>),
    /// Only seen transiently while switching state.
    Switching,
}

impl Deflate {
    fn is_zlib_header(cmf: u8, flg: u8) -> bool {
        cmf & 0x0f == 8 && ((u16::from(cmf) << 8) | u16::from(flg)) % 31 == 0
    }

    /// Picks the decoder once two bytes are known (or at the end).
    fn decide(&mut self) -> Result<(), CodecError> {
        if !matches!(self, Deflate::Sniffing { .. }) {
            return Ok(());
        }
        if let Deflate::Sniffing { pending, next } = std::mem::replace(self, Deflate::Switching) {
            let zlib = matches!(pending.as_slice(), [a, b, ..] if Self::is_zlib_header(*a, *b));
            *self = if zlib {
                Deflate::Zlib(flate2::write::ZlibDecoder::new(next))
            } else {
                Deflate::Raw(flate2::write::DeflateDecoder::new(next))
            };
            self.write_all(&pending)?;
        }
        Ok(())
    }

    fn lost() -> CodecError {
        CodecError {
            coding: "deflate",
            error: io::Error::other("decoder lost its state"),
        }
    }
}

impl Layer for Deflate {
    fn write_all(&mut self, data: &[u8]) -> Result<(), CodecError> {
        match self {
            Deflate::Sniffing { pending, .. } => {
                pending.extend_from_slice(data);
                if pending.len() >= 2 {
                    self.decide()?;
                }
                Ok(())
            }
            Deflate::Zlib(d) => d.write_all(data).map_err(tag("deflate")),
            Deflate::Raw(d) => d.write_all(data).map_err(tag("deflate")),
            Deflate::Switching => Err(Self::lost()),
        }
    }

    fn finish_layer(&mut self) -> Result<(), CodecError> {
        self.decide()?;
        match self {
            Deflate::Zlib(d) => {
                d.try_finish().map_err(tag("deflate"))?;
                d.get_mut().0.finish_layer()
            }
            Deflate::Raw(d) => {
                d.try_finish().map_err(tag("deflate"))?;
                d.get_mut().0.finish_layer()
            }
            Deflate::Sniffing { .. } | Deflate::Switching => Err(Self::lost()),
        }
    }

    fn sink(&mut self) -> Option<&mut ScanSink> {
        match self {
            Deflate::Sniffing { next, .. } => next.0.sink(),
            Deflate::Zlib(d) => d.get_mut().0.sink(),
            Deflate::Raw(d) => d.get_mut().0.sink(),
            Deflate::Switching => None,
        }
    }
}

/// After a failed `close`, the writer's own `Drop` may flush a little more
/// output into the sink; the sink still enforces the limit.
struct Brotli(brotli_decompressor::DecompressorWriter<Next>);

impl Layer for Brotli {
    fn write_all(&mut self, data: &[u8]) -> Result<(), CodecError> {
        self.0.write_all(data).map_err(tag("br"))
    }

    fn finish_layer(&mut self) -> Result<(), CodecError> {
        self.0.close().map_err(tag("br"))?;
        self.0.get_mut().0.finish_layer()
    }

    fn sink(&mut self) -> Option<&mut ScanSink> {
        self.0.get_mut().0.sink()
    }
}

struct Zstd(zstd::stream::write::Decoder<'static, Next>);

impl Layer for Zstd {
    fn write_all(&mut self, data: &[u8]) -> Result<(), CodecError> {
        self.0.write_all(data).map_err(tag("zstd"))
    }

    fn finish_layer(&mut self) -> Result<(), CodecError> {
        self.0.do_finish().map_err(tag("zstd"))?;
        self.0.get_mut().0.finish_layer()
    }

    fn sink(&mut self) -> Option<&mut ScanSink> {
        self.0.get_mut().0.sink()
    }
}
