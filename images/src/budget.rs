//! A cap on how much the tar reader may read while it parses one header.
//!
//! The `tar` crate reads GNU long names and PAX extension records wholly into memory, trusting
//! the size in their header. A hostile layer could claim gigabytes there (and with gzip, cost a
//! few kilobytes to send). Callers set a budget before asking for the next entry and lift it
//! while they read the entry's data themselves.

use std::cell::Cell;
use std::io::{self, Read, Seek, SeekFrom};

/// More than any real header and its extensions (PATH_MAX names, a few xattrs); little memory.
pub(crate) const HEADER_BUDGET: u64 = 1 << 20;

/// A reader that fails once it has read `budget` bytes since the budget was last set.
pub(crate) struct Budgeted<'b, R> {
    inner: R,
    budget: &'b Cell<u64>,
}

impl<'b, R> Budgeted<'b, R> {
    pub(crate) fn new(inner: R, budget: &'b Cell<u64>) -> Self {
        Budgeted { inner, budget }
    }
}

impl<R: Read> Read for Budgeted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.budget.get();
        if left == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "tar header extensions larger than 1 MiB",
            ));
        }
        let len = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..len])?;
        self.budget.set(left - n as u64);
        Ok(n)
    }
}

impl<R: Seek> Seek for Budgeted<'_, R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

/// Runs `next` (one step of the tar reader) with the header budget in force.
pub(crate) fn with_header_budget<T>(budget: &Cell<u64>, next: impl FnOnce() -> T) -> T {
    budget.set(HEADER_BUDGET);
    let result = next();
    budget.set(u64::MAX);
    result
}
