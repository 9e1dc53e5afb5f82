//! Layer compression, told by the stream's magic bytes rather than by the media type, which tools
//! get wrong (Docker 25 saves uncompressed layers; other tools label gzip as plain tar).

use std::io::{self, BufRead, BufReader, Read};

use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

/// How many leading bytes [`Compression::detect`] looks at.
pub(crate) const MAGIC_LEN: usize = 6;

/// RFC 1952 section 2.3.1.
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
/// RFC 8878 section 3.1.1 (a zstd frame), little-endian 0xFD2FB528.
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
/// RFC 8878 section 3.1.2: skippable frames have magic 0x184D2A50..=0x184D2A5F.
const ZSTD_SKIPPABLE_MAGIC_TAIL: &[u8] = &[0x2a, 0x4d, 0x18];
/// The xz container format, section 2.1.1.1.
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const BZIP2_MAGIC: &[u8] = b"BZh";

/// The compression of a layer or a tarball.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
    /// Recognised but not supported for layers.
    Xz,
    /// Recognised but not supported for layers.
    Bzip2,
}

impl Compression {
    /// Tells the compression from the first bytes of a stream; anything unrecognised is taken
    /// as plain tar, which the tar reader then checks.
    pub(crate) fn detect(magic: &[u8]) -> Compression {
        let skippable_zstd = magic.len() >= 4
            && magic[0] & 0xf0 == 0x50
            && magic[1..4] == *ZSTD_SKIPPABLE_MAGIC_TAIL;
        if magic.starts_with(GZIP_MAGIC) {
            Compression::Gzip
        } else if magic.starts_with(ZSTD_MAGIC) || skippable_zstd {
            Compression::Zstd
        } else if magic.starts_with(XZ_MAGIC) {
            Compression::Xz
        } else if magic.starts_with(BZIP2_MAGIC) {
            Compression::Bzip2
        } else {
            Compression::None
        }
    }

    /// The compression's usual name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
            Compression::Bzip2 => "bzip2",
        }
    }

    /// The command-line tool that undoes it.
    pub(crate) fn tool(self) -> &'static str {
        match self {
            Compression::None => "cat",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
            Compression::Bzip2 => "bzip2",
        }
    }

    /// A reader of the decompressed stream, `None` for unsupported compressions.
    pub(crate) fn decoder<'a, R: Read + 'a>(self, source: R) -> Option<Box<dyn Read + 'a>> {
        match self {
            Compression::None => Some(Box::new(source)),
            // Several gzip members in a row are one stream (pigz and some registries do this).
            Compression::Gzip => Some(Box::new(flate2::read::MultiGzDecoder::new(source))),
            Compression::Zstd => Some(Box::new(ZstdReader::new(source))),
            Compression::Xz | Compression::Bzip2 => None,
        }
    }
}

/// An empty single-segment zstd frame (RFC 8878 section 3.1.1): magic, a frame header
/// descriptor with only Single_Segment_flag set, a one-byte content size of 0, then one last raw
/// block of size 0. ruzstd checks a frame's window size against its 100 MiB limit only when the
/// decoder has seen a frame before; decoding this one first means a hostile frame header cannot
/// make the decoder hold gigabytes.
const EMPTY_ZSTD_FRAME: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x00, 0x01, 0x00, 0x00];

/// Bytes asked of the decoder at a time when the caller's buffer is tiny.
const MIN_DECODE_CHUNK: usize = 32 * 1024;

/// A zstd stream of any number of frames, skippable frames skipped, content checksums checked.
pub(crate) struct ZstdReader<R> {
    source: BufReader<R>,
    decoder: FrameDecoder,
    in_frame: bool,
}

impl<R: Read> ZstdReader<R> {
    pub(crate) fn new(source: R) -> Self {
        let mut decoder = FrameDecoder::new();
        if let Err(err) = decoder.reset(EMPTY_ZSTD_FRAME) {
            log::debug!("zstd: priming the decoder failed: {err}");
        }
        ZstdReader {
            source: BufReader::new(source),
            decoder,
            in_frame: false,
        }
    }

    /// Starts the next frame; `false` at the end of the stream.
    fn next_frame(&mut self) -> io::Result<bool> {
        loop {
            if self.source.fill_buf()?.is_empty() {
                return Ok(false);
            }
            match self.decoder.reset(&mut self.source) {
                Ok(()) => return Ok(true),
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => self.skip(u64::from(length))?,
                Err(err) => return Err(invalid(err)),
            }
        }
    }

    fn skip(&mut self, length: u64) -> io::Result<()> {
        let skipped = io::copy(&mut (&mut self.source).take(length), &mut io::sink())?;
        if skipped != length {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    /// Checks the frame's XXH64 content checksum, when it has one (RFC 8878 section 3.1.1).
    fn check_frame_checksum(&self) -> io::Result<()> {
        match (
            self.decoder.get_checksum_from_data(),
            self.decoder.get_calculated_checksum(),
        ) {
            (Some(stored), Some(computed)) if stored != computed => {
                Err(invalid("zstd frame content checksum mismatch"))
            }
            _ => Ok(()),
        }
    }
}

impl<R: Read> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.in_frame {
                if !self.next_frame()? {
                    return Ok(0);
                }
                self.in_frame = true;
            }
            let wanted = buf.len().max(MIN_DECODE_CHUNK);
            while self.decoder.can_collect() < buf.len() && !self.decoder.is_finished() {
                let more = wanted - self.decoder.can_collect().min(wanted);
                let consumed = self.decoder.bytes_read_from_source();
                self.decoder
                    .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBytes(more))
                    .map_err(invalid)?;
                if self.decoder.bytes_read_from_source() == consumed && !self.decoder.is_finished()
                {
                    return Err(invalid("zstd decoder made no progress"));
                }
            }
            let n = self.decoder.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            if self.decoder.is_finished() {
                self.check_frame_checksum()?;
                self.in_frame = false;
            }
        }
    }
}

fn invalid(err: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err.to_string())
}

#[cfg(test)]
mod tests {
    use ruzstd::encoding::{compress_to_vec, CompressionLevel};

    use super::*;

    fn decode(compressed: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        ZstdReader::new(compressed).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn detects_by_magic() {
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(Compression::detect(ZSTD_MAGIC), Compression::Zstd);
        assert_eq!(
            Compression::detect(&[0x5a, 0x2a, 0x4d, 0x18]),
            Compression::Zstd
        );
        assert_eq!(Compression::detect(XZ_MAGIC), Compression::Xz);
        assert_eq!(Compression::detect(b"etc/\0\0"), Compression::None);
        assert_eq!(Compression::detect(b""), Compression::None);
    }

    #[test]
    fn zstd_round_trips_several_frames() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut stream = compress_to_vec(&data[..], CompressionLevel::Fastest);
        stream.extend(compress_to_vec(&b"tail"[..], CompressionLevel::Fastest));

        let out = decode(&stream).unwrap();

        assert_eq!(out.len(), data.len() + 4);
        assert!(out.starts_with(&data) && out.ends_with(b"tail"));
    }

    #[test]
    fn zstd_skips_skippable_frames() {
        // A skippable frame (magic 0x184D2A50, 3 bytes of content) before a real frame.
        let mut stream = vec![0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3];
        stream.extend(compress_to_vec(&b"hi"[..], CompressionLevel::Fastest));

        assert_eq!(decode(&stream).unwrap(), b"hi");
    }

    #[test]
    fn zstd_refuses_huge_window() {
        // A frame header (RFC 8878 3.1.1.1) without single segment and with Window_Descriptor
        // 0xF8: window log 10 + 31 = 2 TiB.
        let stream = [0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xf8, 0x01, 0x00, 0x00];

        assert!(decode(&stream).is_err());
    }

    #[test]
    fn zstd_truncated_is_an_error() {
        let data = vec![7u8; 100_000];
        let stream = compress_to_vec(&data[..], CompressionLevel::Fastest);

        assert!(decode(&stream[..stream.len() / 2]).is_err());
    }

    #[test]
    fn zstd_garbage_after_a_frame_is_an_error() {
        let mut stream = compress_to_vec(&b"ok"[..], CompressionLevel::Fastest);
        stream.extend_from_slice(b"garbage!");

        assert!(decode(&stream).is_err());
    }
}
