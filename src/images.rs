//! `moat images`, `moat rmi` and `moat prune`: the root-disk cache, seen and cleaned.

use clap::Args;
use moat_images::cache::{self, Cache, CachedImage};

use crate::exit;
use crate::units::human;

/// Flags of `moat images`.
#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Print only image ids
    #[arg(short, long)]
    quiet: bool,
}

/// Flags of `moat rmi`.
#[derive(Debug, Args)]
pub struct RmiArgs {
    /// Images to remove: REPO[:TAG], or an id or its prefix
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<String>,
}

/// Flags of `moat prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Remove every cached image too, not only abandoned builds
    #[arg(short, long)]
    all: bool,
}

/// `moat images`: one line per cached image, newest first.
pub fn list(args: ImagesArgs) -> u8 {
    let result = open().and_then(|cache| Ok(cache.list()?));
    let images = match result {
        Ok(images) => images,
        Err(e) => return failed(&e),
    };
    if args.quiet {
        for image in &images {
            println!("{}", &image.hex()[..12]);
        }
        return 0;
    }
    println!(
        "{:<12}  {:<32}  {:>10}  {:<14}  SOURCE",
        "IMAGE ID", "REPOSITORY:TAG", "SIZE", "CREATED"
    );
    for image in &images {
        let tag = image
            .meta
            .repo_tags
            .first()
            .map_or("<none>", String::as_str);
        println!(
            "{:<12}  {:<32}  {:>10}  {:<14}  {}",
            &image.hex()[..12],
            tag,
            human(image.meta.disk_bytes),
            ago(image.meta.created),
            image.meta.source
        );
    }
    0
}

/// `moat rmi`: removes each named image; an ambiguous or unknown name is an error.
pub fn remove(args: RmiArgs) -> u8 {
    let cache = match open() {
        Ok(cache) => cache,
        Err(e) => return failed(&e),
    };
    let mut status = 0;
    for query in &args.images {
        match resolve(&cache, query).and_then(|image| {
            cache.remove(&image)?;
            Ok(image)
        }) {
            Ok(image) => println!("Deleted: {}", image.meta.id),
            Err(e) => status = failed(&e),
        }
    }
    status
}

/// `moat prune`: removes abandoned builds, and with `--all` every image.
pub fn prune(args: PruneArgs) -> u8 {
    match open().and_then(|cache| Ok(cache.prune(args.all)?)) {
        Ok(pruned) => {
            println!(
                "Removed {} image(s) and {} abandoned build(s); reclaimed {}",
                pruned.images,
                pruned.builds,
                human(pruned.bytes)
            );
            0
        }
        Err(e) => failed(&e),
    }
}

fn open() -> anyhow::Result<Cache> {
    Ok(Cache::open(cache::default_location())?)
}

fn resolve(cache: &Cache, query: &str) -> anyhow::Result<CachedImage> {
    let mut found = cache.find(query)?;
    match found.len() {
        0 => anyhow::bail!("no such image: {query}"),
        1 => Ok(found.remove(0)),
        n => anyhow::bail!("{query} matches {n} images; give more of the id"),
    }
}

fn failed(error: &anyhow::Error) -> u8 {
    exit::report(error);
    exit::MOAT_FAILED
}

/// `3 minutes ago`, as `docker images` says it.
fn ago(created: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let secs = now.saturating_sub(created);
    let (value, unit) = match secs {
        0..=59 => (secs, "second"),
        60..=3599 => (secs / 60, "minute"),
        3600..=86_399 => (secs / 3600, "hour"),
        _ => (secs / 86_400, "day"),
    };
    let plural = if value == 1 { "" } else { "s" };
    format!("{value} {unit}{plural} ago")
}
