//! Unpacking a selected image: each layer read once, in order, decompressed, applied and
//! verified in the same pass.

use std::io::BufReader;
use std::path::Path;

use crate::archive::{Archive, MemberReader};
use crate::compression::Compression;
use crate::digest::{self, HashingReader};
use crate::error::{Error, Result};
use crate::image::{Image, Layer};
use crate::layer::{UnpackStats, Unpacker};
use crate::progress::{Metered, Progress};

/// Read size from the tarball: large enough for sequential throughput, small in memory.
const READ_BUFFER: usize = 256 * 1024;

impl Archive {
    /// Applies `image`'s layers in order into `dest` (created if missing), verifying each
    /// layer's digests as it goes.
    ///
    /// Either the whole image is unpacked, or an error says which layer and entry failed; the
    /// partial tree is then left for the caller to delete. Nothing is ever written outside
    /// `dest`.
    pub fn unpack(
        &self,
        image: &Image,
        dest: &Path,
        progress: &mut dyn Progress,
    ) -> Result<UnpackStats> {
        std::fs::create_dir_all(dest).map_err(|source| Error::Io {
            action: "create",
            path: dest.to_owned(),
            source,
        })?;
        let mut unpacker = Unpacker::new(dest)?;
        let total = image.total_layer_bytes();
        let count = image.layers().len();
        let mut done = 0;
        for (index, layer) in image.layers().iter().enumerate() {
            progress.layer_started(index, count, layer.digest(), layer.size());
            let name = format!("layer {} ({})", index + 1, layer.digest().short());
            let (offset, size) = self
                .locate(&layer.member)
                .ok_or_else(|| self.missing("the image", "layer", &layer.member))?;
            let metered = Metered::new(self.reader(offset, size), &mut *progress, done, total);
            let compression = Compression::detect(&self.magic(offset, size)?);
            done = self.apply_layer(&name, layer, compression, metered, &mut unpacker)?;
        }
        let stats = unpacker.finish()?;
        progress.finished();
        Ok(stats)
    }

    /// Applies one layer; returns the progress count after it.
    fn apply_layer(
        &self,
        name: &str,
        layer: &Layer,
        compression: Compression,
        metered: Metered<'_, MemberReader<'_>>,
        unpacker: &mut Unpacker,
    ) -> Result<u64> {
        let mut blob = HashingReader::new(BufReader::with_capacity(READ_BUFFER, metered));
        let Some(decoder) = compression.decoder(&mut blob) else {
            return Err(Error::UnsupportedCompression {
                what: name.to_owned(),
                compression: compression.name(),
            });
        };
        let mut stream = HashingReader::new(decoder);
        let applied = unpacker.apply_layer(name, &mut stream).and_then(|()| {
            stream.drain().map_err(|source| Error::LayerRead {
                layer: name.to_owned(),
                source,
            })
        });
        let (diff_id, _, _) = stream.into_parts();
        match applied {
            // A damaged stream may be a tampered blob: hash the rest and say so if it is.
            Ok(()) | Err(Error::LayerRead { .. }) => {}
            Err(err) => return Err(err),
        }
        let rest = blob.drain();
        let (blob_digest, _, buffered) = blob.into_parts();
        let done = buffered.into_inner().finish();
        if let (Ok(()), Some(expected)) = (&rest, layer.blob_digest()) {
            digest::verify(
                || format!("{name} at {}", layer.member),
                expected,
                &blob_digest,
            )?;
        }
        applied?;
        rest.map_err(|source| self.read_error(source))?;
        digest::verify(
            || format!("{name}, uncompressed"),
            layer.diff_id(),
            &diff_id,
        )?;
        Ok(done)
    }
}
