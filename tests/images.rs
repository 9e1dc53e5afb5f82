//! `moat launch`, `images`, `rmi` and `prune` up to the point where a VM would boot: image
//! tarballs read, verified, refused and cached. No guest boots here, so these run on any host.
//!
//! Every launch names a kernel and an initramfs that do not exist: moat resolves and caches the image first,
//! then fails to boot with status 125 after printing its boot report.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sha2::{Digest, Sha256};

const MOAT_FAILED: i32 = 125;

/// A directory for one test, with its own image cache, removed when dropped.
struct Sandbox(PathBuf);

impl Sandbox {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("moat-images-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn cache(&self) -> PathBuf {
        self.0.join("cache")
    }

    fn moat(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_moat"));
        cmd.env("MOAT_CACHE_DIR", self.cache()).stdin(Stdio::null());
        cmd
    }

    /// `moat launch` of `tarball` that stops before booting.
    fn launch(&self, tarball: &Path) -> Output {
        self.moat()
            .args(["launch", "--boot-report"])
            .args(["--kernel", "/nonexistent/vmlinux"])
            .args(["--initrd", "/nonexistent/moat-agent.cpio"])
            .arg(tarball)
            .arg("true")
            .output()
            .unwrap()
    }

    /// Names in a cache subdirectory.
    fn cache_entries(&self, sub: &str) -> Vec<String> {
        std::fs::read_dir(self.cache().join(sub))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// One tar entry of a layer.
enum Item<'a> {
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
}

fn layer(items: &[Item<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for item in items {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        match item {
            Item::File(path, data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                // set_path refuses `..`: write the raw name, as a hostile tool would.
                raw_name(&mut header, path);
                header.set_cksum();
                builder.append(&header, *data).unwrap();
            }
            Item::Symlink(path, target) | Item::HardLink(path, target) => {
                let kind = if matches!(item, Item::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                };
                header.set_entry_type(kind);
                header.set_size(0);
                raw_name(&mut header, path);
                let link = &mut header.as_old_mut().linkname;
                link[..target.len()].copy_from_slice(target.as_bytes());
                header.set_cksum();
                builder.append(&header, &[][..]).unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}

fn raw_name(header: &mut tar::Header, path: &str) {
    let name = &mut header.as_old_mut().name;
    name.fill(0);
    name[..path.len()].copy_from_slice(path.as_bytes());
}

/// A Docker 20.10 `docker save` tarball of one image made of `layers`, tagged `moat/test`.
/// `config_layers` lets a test lie about the layers' digests.
fn docker_save(layers: &[Vec<u8>], diff_ids: Option<Vec<String>>) -> Vec<u8> {
    let diff_ids = diff_ids.unwrap_or_else(|| {
        layers
            .iter()
            .map(|l| format!("sha256:{}", sha256(l)))
            .collect()
    });
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string()
    .into_bytes();
    let config_name = format!("{}.json", sha256(&config));
    let layer_names: Vec<String> = (0..layers.len())
        .map(|i| format!("layer{i}/layer.tar"))
        .collect();
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": ["moat/test:latest"],
        "Layers": layer_names,
    }])
    .to_string()
    .into_bytes();

    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_path(name).unwrap();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    };
    add(&config_name, &config);
    for (name, data) in layer_names.iter().zip(layers) {
        add(name, data);
    }
    add("manifest.json", &manifest);
    builder.into_inner().unwrap()
}

fn good_image() -> Vec<u8> {
    docker_save(&[layer(&[Item::File("etc/hello", b"hi\n")])], None)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn hostile_tarballs_fail_cleanly() {
    let sandbox = Sandbox::new("hostile");
    let escape = "../../../../../../escaped";
    let good = good_image();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            docker_save(&[layer(&[Item::File(escape, b"x")])], None),
            "escaped",
        ),
        (
            "symlink-then-write",
            docker_save(
                &[layer(&[
                    Item::Symlink("link", "../../../../../.."),
                    Item::File("link/escaped", b"x"),
                ])],
                None,
            ),
            "link",
        ),
        (
            "hardlink-outside",
            docker_save(
                &[layer(&[Item::HardLink(
                    "passwd",
                    "../../../../../../etc/passwd",
                )])],
                None,
            ),
            "passwd",
        ),
        (
            "digest-mismatch",
            docker_save(
                &[layer(&[Item::File("etc/x", b"x")])],
                Some(vec![format!("sha256:{}", "0".repeat(64))]),
            ),
            "sha256",
        ),
        ("truncated", good[..good.len() / 2].to_vec(), ""),
        (
            "missing-layer",
            {
                // A manifest naming a layer the tarball lacks.
                let mut builder = tar::Builder::new(Vec::new());
                let mut archive = tar::Archive::new(&good[..]);
                for entry in archive.entries().unwrap() {
                    let mut entry = entry.unwrap();
                    if entry
                        .path()
                        .unwrap()
                        .to_string_lossy()
                        .contains("layer.tar")
                    {
                        continue;
                    }
                    let mut header = entry.header().clone();
                    let mut data = Vec::new();
                    std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
                    header.set_cksum();
                    builder.append(&header, &data[..]).unwrap();
                }
                builder.into_inner().unwrap()
            },
            "layer",
        ),
        ("not-a-tarball", b"this is not a tarball".to_vec(), ""),
    ];
    for (name, bytes, mention) in cases {
        let tarball = sandbox.write(&format!("{name}.tar"), &bytes);
        let output = sandbox.launch(&tarball);
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(MOAT_FAILED), "{name}: {message}");
        let first = message.lines().next().unwrap_or_default();
        assert!(first.starts_with("moat: "), "{name}: {message}");
        assert!(
            first.contains(mention),
            "{name}: the error should mention {mention:?}: {message}"
        );
        assert!(!message.contains("panicked"), "{name}: {message}");
        assert!(
            sandbox.cache_entries("images").is_empty(),
            "{name}: left a cache entry"
        );
        assert!(
            sandbox.cache_entries("tmp").is_empty(),
            "{name}: left a build behind"
        );
        assert!(
            !sandbox.0.join("escaped").exists(),
            "{name}: wrote outside the cache"
        );
        assert!(
            !Path::new("/escaped").exists(),
            "{name}: wrote outside the cache"
        );
    }
}

#[test]
fn concurrent_launches_build_an_image_once() {
    let sandbox = Sandbox::new("concurrent");
    let tarball = sandbox.write("image.tar", &good_image());
    let outputs: Vec<Output> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..3)
            .map(|_| s.spawn(|| sandbox.launch(&tarball)))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let built = outputs
        .iter()
        .filter(|o| stderr(o).contains("cache-built"))
        .count();
    let hits = outputs
        .iter()
        .filter(|o| stderr(o).contains("cache-hit"))
        .count();
    assert_eq!(
        (built, hits),
        (1, 2),
        "{:?}",
        outputs.iter().map(stderr).collect::<Vec<_>>()
    );
    assert_eq!(sandbox.cache_entries("images").len(), 1);
    assert!(sandbox.cache_entries("tmp").is_empty());
}

#[test]
fn images_are_listed_removed_and_pruned() {
    let sandbox = Sandbox::new("list");
    let tarball = sandbox.write("image.tar", &good_image());
    sandbox.launch(&tarball);

    let list = sandbox.moat().arg("images").output().unwrap();
    assert!(list.status.success());
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("moat/test:latest"), "{text}");
    assert!(text.contains(&*tarball.display().to_string()), "{text}");

    let rmi = sandbox
        .moat()
        .args(["rmi", "moat/nothing"])
        .output()
        .unwrap();
    assert_eq!(rmi.status.code(), Some(MOAT_FAILED));
    assert!(stderr(&rmi).contains("no such image"), "{}", stderr(&rmi));

    let rmi = sandbox.moat().args(["rmi", "moat/test"]).output().unwrap();
    assert!(rmi.status.success(), "{}", stderr(&rmi));
    let quiet = sandbox.moat().args(["images", "-q"]).output().unwrap();
    assert!(quiet.stdout.is_empty());

    // An abandoned build (its builder was killed) is pruned; `--all` takes the images too.
    sandbox.launch(&tarball);
    std::fs::create_dir_all(
        sandbox
            .cache()
            .join("tmp")
            .join(format!("{}-1", "a".repeat(64))),
    )
    .unwrap();
    let prune = sandbox.moat().args(["prune", "--all"]).output().unwrap();
    assert!(prune.status.success(), "{}", stderr(&prune));
    let text = String::from_utf8_lossy(&prune.stdout);
    assert!(
        text.contains("Removed 1 image(s) and 1 abandoned build(s)"),
        "{text}"
    );
    assert!(sandbox.cache_entries("images").is_empty());
}

#[test]
fn a_cache_hit_does_not_unpack() {
    let sandbox = Sandbox::new("hit");
    let good = layer(&[Item::File("etc/hello", b"hi\n")]);
    let good_id = format!("sha256:{}", sha256(&good));
    let tarball = sandbox.write("image.tar", &docker_save(std::slice::from_ref(&good), None));
    // The same image (same config, so the same id) whose layer blob is corrupt: unpacking it
    // fails its digest check, so only a launch that does not unpack can succeed with it.
    let corrupt = layer(&[Item::File("etc/hello", b"XX\n")]);
    let damaged = sandbox.write("damaged.tar", &docker_save(&[corrupt], Some(vec![good_id])));

    let cold = sandbox.launch(&damaged);
    assert!(stderr(&cold).contains("sha256"), "{}", stderr(&cold));
    assert!(sandbox.cache_entries("images").is_empty());

    assert!(stderr(&sandbox.launch(&tarball)).contains("cache-built"));
    let warm = sandbox.launch(&damaged);
    assert!(stderr(&warm).contains("cache-hit"), "{}", stderr(&warm));
}

#[test]
fn bad_flags_are_usage_errors() {
    let sandbox = Sandbox::new("flags");
    let tarball = sandbox.write("image.tar", &good_image());
    for flags in [
        &["--name", "no spaces"][..],
        &["-d", "--name", "../escape"],
        &["-p", "80:80"],
        &["-m", "lots"],
        &["--cpus", "0"],
        &["-v", "relative:/data"],
        &["-v", "/dev/null:/"],
        &["-w", "relative"],
    ] {
        let output = sandbox
            .moat()
            .arg("launch")
            .args(flags)
            .arg(&tarball)
            .arg("true")
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(MOAT_FAILED),
            "{flags:?}: {}",
            stderr(&output)
        );
        assert!(!stderr(&output).contains("panicked"), "{flags:?}");
    }
    let directory = sandbox
        .moat()
        .args(["launch", "-v"])
        .arg(format!("{}:/data", sandbox.0.display()))
        .arg(&tarball)
        .output()
        .unwrap();
    assert!(
        stderr(&directory).contains("directory"),
        "{}",
        stderr(&directory)
    );
}

/// A background VM that cannot start: `launch -d` passes on its process's error and exit status,
/// prints no id, and leaves no VM directory behind.
#[test]
fn a_detached_launch_that_cannot_start_says_why_and_leaves_nothing() {
    let sandbox = Sandbox::new("detach-fails");
    let tarball = sandbox.write("image.tar", &good_image());
    let runtime = sandbox.0.join("run");

    let output = sandbox
        .moat()
        .env("MOAT_RUNTIME_DIR", &runtime)
        .args(["launch", "-d", "--name", "doomed"])
        .args(["--kernel", "/nonexistent/vmlinux"])
        .args(["--initrd", "/nonexistent/moat-agent.cpio"])
        .arg(&tarball)
        .arg("true")
        .output()
        .unwrap();

    assert_eq!(
        output.status.code(),
        Some(MOAT_FAILED),
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("/nonexistent/vmlinux"),
        "{}",
        stderr(&output)
    );
    assert!(
        output.stdout.is_empty(),
        "printed an id for a VM that never ran"
    );
    let left: Vec<_> = std::fs::read_dir(&runtime)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}
