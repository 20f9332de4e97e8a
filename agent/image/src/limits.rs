//! Bounds on what one import may consume.
//!
//! A one-megabyte gzip layer can inflate to gigabytes, a tar header can announce a path or a
//! PAX record of any length, and a manifest can list any number of layers. Every one of those
//! is counted here against a configured limit, so a hostile image fails with a named error
//! instead of filling the disk or the agent's memory.

use std::cell::Cell;
use std::io;

/// Limits for one import. The defaults suit real images (Docker itself caps layers at 127).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Layers in one image.
    pub max_layers: usize,
    /// Any JSON document read from an image: `index.json`, manifests, configs, `manifest.json`.
    pub max_json_bytes: u64,
    /// Bytes of decompressed layer streams in one import, all layers together; separately, the
    /// bytes written to files, and the bytes staged from an image tarball.
    pub max_unpacked_bytes: u64,
    /// Entries in one layer (or in one image tarball).
    pub max_entries: u64,
    /// Bytes in one entry path or link target.
    pub max_path_bytes: usize,
    /// Bytes of tar headers before one entry: GNU long names, PAX records, sparse maps. These
    /// are held in memory by the tar reader, so they get their own small bound.
    pub max_header_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_layers: 128,
            max_json_bytes: 4 << 20,
            max_unpacked_bytes: 32 << 30,
            max_entries: 1_000_000,
            max_path_bytes: 4096,
            max_header_bytes: 1 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("the image has {found} layers, more than the limit of {limit}")]
    TooManyLayers { found: usize, limit: usize },
    #[error("{what} is larger than {limit} bytes")]
    JsonTooLarge { what: String, limit: u64 },
    #[error("the image unpacks to more than {limit} bytes (max_unpacked_bytes)")]
    TooLarge { limit: u64 },
    #[error("{what} has more than {limit} entries")]
    TooManyEntries { what: String, limit: u64 },
    #[error("a tar entry's headers (long names, PAX records) exceed {limit} bytes")]
    HeadersTooLarge { limit: u64 },
}

/// Counts the bytes of one import as they stream past. Shared by reference between the readers
/// that feed the tar parser and the loop that drives it; single-threaded by construction.
#[derive(Debug)]
pub(crate) struct Meter {
    limit: u64,
    header_limit: u64,
    read: Cell<u64>,
    written: Cell<u64>,
    header_start: Cell<Option<u64>>,
    tripped: Cell<Option<Trip>>,
}

#[derive(Debug, Clone, Copy)]
enum Trip {
    Total,
    Header,
}

impl Meter {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            limit: limits.max_unpacked_bytes,
            header_limit: limits.max_header_bytes,
            read: Cell::new(0),
            written: Cell::new(0),
            header_start: Cell::new(None),
            tripped: Cell::new(None),
        }
    }

    /// Records `n` bytes read from a decompressed stream. The error makes the tar parser stop;
    /// [`Meter::tripped`] then says which limit it was.
    pub(crate) fn charge_read(&self, n: usize) -> io::Result<()> {
        let total = self.read.get().saturating_add(n as u64);
        self.read.set(total);
        if total > self.limit {
            return self.trip(Trip::Total);
        }
        if let Some(start) = self.header_start.get() {
            if total.saturating_sub(start) > self.header_limit {
                return self.trip(Trip::Header);
            }
        }
        Ok(())
    }

    /// Records `n` bytes written to an unpacked file (sparse files write more than they read).
    pub(crate) fn charge_written(&self, n: u64) -> Result<(), LimitError> {
        let total = self.written.get().saturating_add(n);
        self.written.set(total);
        if total > self.limit {
            return Err(LimitError::TooLarge { limit: self.limit });
        }
        Ok(())
    }

    /// From here until [`Meter::end_header`], reads are tar headers and are bounded by
    /// `max_header_bytes`.
    pub(crate) fn begin_header(&self) {
        self.header_start.set(Some(self.read.get()));
    }

    pub(crate) fn end_header(&self) {
        self.header_start.set(None);
    }

    /// The limit a reader ran into, if any.
    pub(crate) fn tripped(&self) -> Option<LimitError> {
        self.tripped.get().map(|trip| match trip {
            Trip::Total => LimitError::TooLarge { limit: self.limit },
            Trip::Header => LimitError::HeadersTooLarge {
                limit: self.header_limit,
            },
        })
    }

    fn trip(&self, trip: Trip) -> io::Result<()> {
        self.tripped.set(Some(trip));
        Err(io::Error::other("image size limit reached"))
    }
}

/// A reader that charges what passes through it to a [`Meter`].
pub(crate) struct Metered<'m, R> {
    pub inner: R,
    pub meter: &'m Meter,
}

impl<R: io::Read> io::Read for Metered<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.meter.charge_read(n)?;
        Ok(n)
    }
}

/// Checks a layer count against the limit.
pub(crate) fn check_layers(found: usize, limits: &Limits) -> Result<(), LimitError> {
    if found > limits.max_layers {
        return Err(LimitError::TooManyLayers {
            found,
            limit: limits.max_layers,
        });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn meter_trips_on_total_and_on_headers() {
        let limits = Limits {
            max_unpacked_bytes: 100,
            max_header_bytes: 10,
            ..Limits::default()
        };
        let m = Meter::new(&limits);
        assert!(m.charge_read(50).is_ok());
        m.begin_header();
        assert!(m.charge_read(10).is_ok());
        assert!(m.charge_read(1).is_err());
        assert!(matches!(
            m.tripped(),
            Some(LimitError::HeadersTooLarge { limit: 10 })
        ));
        let m = Meter::new(&limits);
        assert!(m.charge_read(101).is_err());
        assert!(matches!(m.tripped(), Some(LimitError::TooLarge { .. })));
        assert!(m.charge_written(100).is_ok());
        assert!(m.charge_written(1).is_err());
    }
}
