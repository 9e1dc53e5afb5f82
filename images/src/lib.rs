//! Image tarballs to verified, unpacked, cached root disks.
//!
//! [`Archive::open`] indexes a tarball written by `docker save` (Docker 20.10 or 25+) or an OCI
//! image layout; [`Archive::select`] picks an image by `repo:tag` and platform and reads its
//! config; [`Archive::unpack`] applies its layers to a directory, verifying every digest and
//! keeping every entry inside that directory.
//!
//! ```no_run
//! use moat_images::{Archive, NoProgress};
//!
//! let archive = Archive::open("alpine.tar".as_ref())?;
//! let image = archive.select(Some("alpine:3.19"), None)?;
//! archive.unpack(&image, "/var/lib/moat/tree".as_ref(), &mut NoProgress)?;
//! println!("{} runs {:?}", image.id(), image.config().cmd);
//! # Ok::<(), moat_images::Error>(())
//! ```

mod archive;
mod budget;
mod catalog;
mod compression;
mod config;
mod digest;
mod error;
mod image;
mod layer;
mod manifest;
mod platform;
mod progress;
mod reference;
mod resolve;
mod sys;
mod unpack;

#[cfg(test)]
mod tests;

pub mod cache;
pub mod rootfs;

pub use archive::Archive;
pub use config::ImageConfig;
pub use digest::Digest;
pub use error::{EntryProblem, Error, Result};
pub use image::{Image, ImageSummary, Layer};
pub use layer::UnpackStats;
pub use platform::Platform;
pub use progress::{NoProgress, Progress};
