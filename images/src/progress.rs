//! Progress of an unpack, reported to the caller, who decides whether and how to show it.

use std::io::{self, Read};

use crate::digest::Digest;

/// Report `bytes_read` at most once per this many bytes, so a callback that draws a terminal
/// line is not called for every 32 KiB read.
const REPORT_EVERY: u64 = 1 << 20;

/// Receives events while [`Archive::unpack`](crate::Archive::unpack) works.
pub trait Progress {
    /// Layer `index` (0-based) of `count` starts; `size` is its size in the tarball.
    fn layer_started(&mut self, index: usize, count: usize, digest: &Digest, size: u64);

    /// `done` of `total` layer bytes (as stored in the tarball, over all layers) are read.
    fn bytes_read(&mut self, done: u64, total: u64);

    /// All layers are applied.
    fn finished(&mut self) {}
}

/// Ignores every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn layer_started(&mut self, _: usize, _: usize, _: &Digest, _: u64) {}
    fn bytes_read(&mut self, _: u64, _: u64) {}
}

/// Counts bytes read through it and reports them to a [`Progress`], throttled.
pub(crate) struct Metered<'p, R> {
    inner: R,
    progress: &'p mut dyn Progress,
    done: u64,
    total: u64,
    reported: u64,
}

impl<'p, R: Read> Metered<'p, R> {
    /// Starts at `done` bytes of `total`, continuing the count of earlier layers.
    pub(crate) fn new(inner: R, progress: &'p mut dyn Progress, done: u64, total: u64) -> Self {
        Metered {
            inner,
            progress,
            done,
            total,
            reported: done,
        }
    }

    /// Reports the final count and returns it.
    pub(crate) fn finish(self) -> u64 {
        if self.reported != self.done {
            self.progress.bytes_read(self.done, self.total);
        }
        self.done
    }
}

impl<R: Read> Read for Metered<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if self.done - self.reported >= REPORT_EVERY {
            self.reported = self.done;
            self.progress.bytes_read(self.done, self.total);
        }
        Ok(n)
    }
}
