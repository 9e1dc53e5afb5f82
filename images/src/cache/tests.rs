use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::*;

const ID: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const OTHER: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn source<'a>(id: &'a str, tags: &'a [String]) -> BuildSource<'a> {
    BuildSource {
        id,
        repo_tags: tags,
        source: Path::new("/images/test.tar"),
        config: b"{\"config\":{}}",
    }
}

fn fill(tree: &Path) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    fs::create_dir_all(tree.join("etc"))?;
    fs::write(tree.join("etc/os-release"), "ID=test\n")?;
    Ok(())
}

fn leftovers(cache: &Cache) -> Vec<String> {
    fs::read_dir(cache.tmp_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_build_then_a_hit() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let tags = vec!["moat/test:latest".to_string()];
    let (entry, lookup) = cache
        .get_or_build(&source(ID, &tags), Box::new(fill))
        .unwrap();
    assert_eq!(lookup, Lookup::Built);
    assert!(entry.disk().is_file());
    assert_eq!(fs::read(entry.config_path()).unwrap(), b"{\"config\":{}}");
    assert_eq!(entry.meta.repo_tags, tags);
    assert!(
        leftovers(&cache).is_empty(),
        "the unpacked tree is not kept"
    );

    let unpacked = Box::new(|_: &Path| -> std::result::Result<(), _> {
        panic!("a cache hit must not unpack")
    });
    let (again, lookup) = cache.get_or_build(&source(ID, &tags), unpacked).unwrap();
    assert_eq!(lookup, Lookup::Hit);
    assert_eq!(again.disk(), entry.disk());
}

#[test]
fn a_failed_unpack_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let failing = Box::new(|tree: &Path| -> std::result::Result<(), _> {
        fs::write(tree.join("half"), "written")?;
        Err("layer 2 is truncated".into())
    });
    let error = cache.get_or_build(&source(ID, &[]), failing).unwrap_err();
    assert_eq!(error.to_string(), "layer 2 is truncated");
    assert!(cache.get(ID).unwrap().is_none());
    assert!(cache.list().unwrap().is_empty());
    assert!(leftovers(&cache).is_empty());
}

#[test]
fn an_abandoned_build_is_neither_an_entry_nor_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    // What a build killed half-way leaves: a temporary directory, and a directory in images/
    // without its meta (a crash between mkdir and rename cannot produce one, but a hand-made
    // or older-layout one must not count).
    let hex = ID.trim_start_matches("sha256:");
    fs::create_dir_all(cache.tmp_dir().join(format!("{hex}-99999/rootfs"))).unwrap();
    fs::create_dir_all(cache.images_dir().join(hex)).unwrap();
    assert!(cache.get(ID).unwrap().is_none());

    let (_, lookup) = cache
        .get_or_build(&source(ID, &[]), Box::new(fill))
        .unwrap();
    assert_eq!(lookup, Lookup::Built);
    assert!(leftovers(&cache).is_empty());

    fs::create_dir_all(cache.tmp_dir().join(format!("{hex}-88888"))).unwrap();
    let pruned = cache.prune(false).unwrap();
    assert_eq!((pruned.builds, pruned.images), (1, 0));
    assert!(cache.get(ID).unwrap().is_some());
}

#[test]
fn concurrent_launches_build_once() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let builds = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let cache = cache.clone();
            let builds = builds.clone();
            std::thread::spawn(move || {
                let unpack = Box::new(move |tree: &Path| {
                    builds.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    fill(tree)
                });
                cache.get_or_build(&source(ID, &[]), unpack).unwrap().1
            })
        })
        .collect();
    let lookups: Vec<Lookup> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(builds.load(Ordering::SeqCst), 1);
    assert_eq!(lookups.iter().filter(|l| **l == Lookup::Built).count(), 1);
}

#[test]
fn entries_are_found_by_tag_and_id_prefix_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let tags = vec!["moat/busybox:latest".to_string()];
    cache
        .get_or_build(&source(ID, &tags), Box::new(fill))
        .unwrap();
    cache
        .get_or_build(&source(OTHER, &[]), Box::new(fill))
        .unwrap();
    assert_eq!(cache.list().unwrap().len(), 2);

    assert_eq!(cache.find("moat/busybox").unwrap().len(), 1);
    assert_eq!(cache.find("moat/busybox:latest").unwrap().len(), 1);
    assert_eq!(cache.find("moat/busybox:other").unwrap().len(), 0);
    assert_eq!(cache.find("2222").unwrap()[0].meta.id, OTHER);
    assert_eq!(cache.find("sha256:1111").unwrap()[0].meta.id, ID);
    assert!(
        cache.find("22").unwrap().is_empty(),
        "too short to be an id prefix"
    );

    let entry = cache.find("2222").unwrap().remove(0);
    cache.remove(&entry).unwrap();
    assert!(cache.get(OTHER).unwrap().is_none());
    assert!(leftovers(&cache).is_empty());

    let pruned = cache.prune(true).unwrap();
    assert_eq!(pruned.images, 1);
    assert!(cache.list().unwrap().is_empty());
}

#[test]
fn ids_must_be_sha256_digests() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    for bad in [
        "",
        "sha256:",
        "sha256:../../etc",
        "md5:1111",
        &ID.to_uppercase(),
    ] {
        assert!(matches!(cache.get(bad), Err(CacheError::BadId(_))), "{bad}");
    }
}
