//! Content digests (`sha256:<hex>`, OCI image spec "Digests") and a reader that hashes what
//! passes through it, so blobs are verified in the same pass that consumes them.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::error::Error;

/// Hex digits shown by [`Digest::short`], as `docker images` shows ids.
const SHORT_HEX_LEN: usize = 12;

/// A sha256 content digest, the only algorithm images use in practice.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// The 64 lowercase hex digits, without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        let mut hex = String::with_capacity(64);
        for byte in self.0 {
            hex.push(char::from(HEX[usize::from(byte >> 4)]));
            hex.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        hex
    }

    /// `sha256:` and the first 12 hex digits, for messages and progress lines.
    pub fn short(&self) -> String {
        format!("sha256:{}", &self.hex()[..SHORT_HEX_LEN])
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses the 64 hex digits alone, as they appear in blob file names.
    pub fn from_hex(hex: &str) -> Option<Digest> {
        let hex = hex.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
            *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(Digest(bytes))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// OCI image spec: the sha256 encoded portion is lowercase hex only.
fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl FromStr for Digest {
    type Err = Error;

    fn from_str(s: &str) -> Result<Digest, Error> {
        s.strip_prefix("sha256:")
            .and_then(Digest::from_hex)
            .ok_or_else(|| Error::InvalidDigest {
                value: s.chars().take(100).collect(),
            })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A reader that hashes and counts every byte read through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Reads whatever is left, so the digest covers the whole stream.
    pub(crate) fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(drop)
    }

    /// The digest of everything read so far, and how many bytes that was.
    pub(crate) fn finish(self) -> (Digest, u64) {
        let (digest, bytes, _) = self.into_parts();
        (digest, bytes)
    }

    /// Like [`HashingReader::finish`], also giving back the inner reader.
    pub(crate) fn into_parts(self) -> (Digest, u64, R) {
        (
            Digest(self.hasher.finalize().into()),
            self.bytes,
            self.inner,
        )
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Fails with [`Error::DigestMismatch`] naming `blob` unless `actual` is `expected`.
pub(crate) fn verify(
    blob: impl FnOnce() -> String,
    expected: &Digest,
    actual: &Digest,
) -> crate::Result<()> {
    if expected == actual {
        return Ok(());
    }
    Err(Error::DigestMismatch {
        blob: blob(),
        expected: *expected,
        actual: *actual,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sha256 of the empty string, from FIPS 180-2 test vectors.
    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_displays_round_trip() {
        let digest: Digest = EMPTY.parse().unwrap();

        assert_eq!(digest.to_string(), EMPTY);
        assert_eq!(digest, Digest::of(b""));
        assert_eq!(digest.short(), "sha256:e3b0c44298fc");
    }

    #[test]
    fn rejects_other_algorithms_uppercase_and_wrong_lengths() {
        for bad in [
            "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:é3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn hashing_reader_hashes_what_is_read() {
        let mut reader = HashingReader::new(&b"hello"[..]);

        reader.drain().unwrap();

        let (digest, bytes) = reader.finish();
        assert_eq!(digest, Digest::of(b"hello"));
        assert_eq!(bytes, 5);
    }
}
