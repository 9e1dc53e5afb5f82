#!/usr/bin/env python3
"""Hermetic tests of mkimage.py: every form verifies, rebuilds are byte-identical, digests are
the ones the specs define, whiteouts pass through, and --verify catches damage.

usage: python3 images/samples/test_mkimage.py   (or `make test-mkimage`)
"""

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mkimage  # noqa: E402

HAVE_ZSTD = shutil.which("zstd") is not None


def run(*argv: str) -> int:
    """Runs mkimage.py in this process, its report swallowed."""
    with contextlib.redirect_stdout(io.StringIO()):
        return mkimage.main(list(argv))


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write(path: str, text: str = "") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


class ImageTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="mkimage-test-")
        self.addCleanup(shutil.rmtree, self.tmp)
        self.lower = os.path.join(self.tmp, "lower")
        write(f"{self.lower}/etc/lower-only", "lower\n")
        write(f"{self.lower}/etc/kept", "kept\n")
        os.link(f"{self.lower}/etc/kept", f"{self.lower}/etc/kept-link")
        os.symlink("kept", f"{self.lower}/etc/kept-symlink")
        os.makedirs(f"{self.lower}/home/app")
        self.upper = os.path.join(self.tmp, "upper")
        write(f"{self.upper}/etc/.wh.lower-only")
        write(f"{self.upper}/opaque/.wh..wh..opq")
        write(f"{self.upper}/opaque/new", "upper\n")

    def build(self, name: str, *options: str) -> str:
        out = os.path.join(self.tmp, name)
        status = run("-o", out, "--tag", "moat/test:latest", "--cmd", '["sh"]',
                     "--owner", "home/app=1000:1000", *options, self.lower, self.upper)
        self.assertEqual(status, 0)
        return out

    def members(self, path: str) -> dict[str, bytes]:
        with tarfile.open(path) as tar:
            return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}

    def oci_parts(self, path: str) -> tuple[dict, dict, dict[str, bytes]]:
        """(manifest, config, members) of the first image in an OCI layout tarball."""
        files = self.members(path)
        index = json.loads(files["index.json"])
        manifest = json.loads(files[blob(index["manifests"][0]["digest"])])
        config = json.loads(files[blob(manifest["config"]["digest"])])
        return manifest, config, files


def blob(digest: str) -> str:
    return "blobs/sha256/" + digest.split(":")[1]


def uncompress(data: bytes) -> bytes:
    if data.startswith(b"\x1f\x8b"):
        return gzip.decompress(data)
    if data.startswith(b"\x28\xb5\x2f\xfd"):
        return subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout
    return data


class FormsTest(ImageTest):
    def test_every_form_and_compression_verifies(self) -> None:
        combos = [("docker", "none"), ("docker-oci", "none"), ("oci", "none"), ("oci", "gzip")]
        if HAVE_ZSTD:
            combos += [("oci", "zstd"), ("docker-oci", "zstd")]
        for form, compress in combos:
            with self.subTest(form=form, compress=compress):
                out = self.build(f"{form}-{compress}.tar", "--format", form, "--compress", compress)
                self.assertEqual(mkimage.verify(out, quiet=True), [])

    def test_docker_form_has_docker_save_layout(self) -> None:
        files = self.members(self.build("d.tar", "--format", "docker"))
        manifest = json.loads(files["manifest.json"])
        self.assertEqual(manifest[0]["RepoTags"], ["moat/test:latest"])
        config = files[manifest[0]["Config"]]
        self.assertEqual(manifest[0]["Config"], sha256(config).split(":")[1] + ".json")
        for layer in manifest[0]["Layers"]:
            layer_dir = layer.removesuffix("layer.tar")
            self.assertEqual(files[layer_dir + "VERSION"], b"1.0")
            self.assertIn(layer_dir + "json", files)
        top = manifest[0]["Layers"][-1].split("/")[0]
        self.assertEqual(json.loads(files["repositories"]), {"moat/test": {"latest": top}})

    def test_layer_digests_follow_the_image_spec(self) -> None:
        manifest, config, files = self.oci_parts(self.build("o.tar", "--format", "oci",
                                                            "--compress", "gzip"))
        for desc, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
            stored = files[blob(desc["digest"])]
            self.assertEqual(desc["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip")
            self.assertEqual((desc["size"], desc["digest"]), (len(stored), sha256(stored)))
            self.assertEqual(sha256(gzip.decompress(stored)), diff_id)

    def test_two_tags_name_one_manifest(self) -> None:
        out = self.build("t.tar", "--format", "docker-oci", "--tag", "example.com/x/y:2")
        files = self.members(out)
        entries = json.loads(files["index.json"])["manifests"]
        self.assertEqual(len({entry["digest"] for entry in entries}), 1)
        names = [entry["annotations"]["io.containerd.image.name"] for entry in entries]
        self.assertEqual(names, ["docker.io/moat/test:latest", "example.com/x/y:2"])
        refs = [entry["annotations"]["org.opencontainers.image.ref.name"] for entry in entries]
        self.assertEqual(refs, ["latest", "2"])
        tags = json.loads(files["manifest.json"])[0]["RepoTags"]
        self.assertEqual(tags, ["moat/test:latest", "example.com/x/y:2"])

    def test_config_carries_the_options(self) -> None:
        _, config, _ = self.oci_parts(self.build(
            "c.tar", "--format", "oci", "--entrypoint", '["/bin/sh","-c"]', "--env", "A=b=c",
            "--workdir", "/w", "--user", "app", "--expose", "8080", "--label", "k=v"))
        self.assertEqual(config["config"], {
            "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["sh"], "Env": ["A=b=c"],
            "WorkingDir": "/w", "User": "app", "ExposedPorts": {"8080/tcp": {}},
            "Labels": {"k": "v"}})
        self.assertEqual((config["os"], config["rootfs"]["type"]), ("linux", "layers"))


class SpecTest(ImageTest):
    def test_a_spec_builds_several_images_sharing_a_layer(self) -> None:
        spec = os.path.join(self.tmp, "images.json")
        with open(spec, "w") as f:
            json.dump([{"layers": ["lower"], "tags": ["moat/one"]},
                       {"layers": ["lower", "upper"], "tags": ["moat/two"], "cmd": ["true"]}], f)
        out = os.path.join(self.tmp, "multi.tar")
        self.assertEqual(run("-o", out, "--spec", spec, "--format", "docker-oci"), 0)
        self.assertEqual(mkimage.verify(out, quiet=True), [])
        manifest = json.loads(self.members(out)["manifest.json"])
        self.assertEqual([item["RepoTags"] for item in manifest], [["moat/one:latest"],
                                                                  ["moat/two:latest"]])
        self.assertEqual(manifest[0]["Layers"][0], manifest[1]["Layers"][0])


class LayerContentTest(ImageTest):
    def layer_members(self, out: str, index: int) -> dict[str, tarfile.TarInfo]:
        manifest, _, files = self.oci_parts(out)
        data = uncompress(files[blob(manifest["layers"][index]["digest"])])
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            return {m.name: m for m in tar.getmembers()}

    def test_whiteouts_pass_through_as_empty_files(self) -> None:
        upper = self.layer_members(self.build("w.tar", "--format", "oci"), 1)
        for name in ("etc/.wh.lower-only", "opaque/.wh..wh..opq"):
            self.assertTrue(upper[name].isfile(), name)
            self.assertEqual(upper[name].size, 0)

    def test_entries_are_sorted_numeric_and_timeless(self) -> None:
        lower = self.layer_members(self.build("s.tar", "--format", "oci"), 0)
        self.assertEqual(list(lower), ["etc", "etc/kept", "etc/kept-link", "etc/kept-symlink",
                                       "etc/lower-only", "home", "home/app"])
        self.assertTrue(all(m.mtime == 0 and m.uname == "" and m.gname == ""
                            for m in lower.values()))
        self.assertEqual((lower["home/app"].uid, lower["home/app"].gid), (1000, 1000))

    def test_hard_and_symbolic_links_are_kept(self) -> None:
        lower = self.layer_members(self.build("l.tar", "--format", "oci"), 0)
        self.assertTrue(lower["etc/kept-link"].islnk())
        self.assertEqual(lower["etc/kept-link"].linkname, "etc/kept")
        self.assertTrue(lower["etc/kept-symlink"].issym())
        self.assertEqual(lower["etc/kept-symlink"].linkname, "kept")

    def test_clamp_keeps_older_mtimes_only(self) -> None:
        os.utime(f"{self.lower}/etc/kept", (100, 100))
        out = self.build("m.tar", "--format", "oci", "--mtime", "1000", "--clamp-mtime")
        lower = self.layer_members(out, 0)
        self.assertEqual(lower["etc/kept"].mtime, 100)
        self.assertEqual(lower["etc/lower-only"].mtime, 1000)

    def test_a_tar_source_goes_in_byte_for_byte(self) -> None:
        source = os.path.join(self.tmp, "layer.tar")
        with tarfile.open(source, "w", format=tarfile.GNU_FORMAT) as tar:
            tar.add(self.upper, arcname="up")
        with open(source, "rb") as f:
            expected = sha256(f.read())
        out = os.path.join(self.tmp, "fromtar.tar")
        self.assertEqual(run("-o", out, "--format", "oci", "--compress", "gzip", source), 0)
        _, config, _ = self.oci_parts(out)
        self.assertEqual(config["rootfs"]["diff_ids"], [expected])


class DeterminismTest(ImageTest):
    def test_rebuilds_are_byte_identical_whatever_the_source_mtimes(self) -> None:
        forms = [("docker", "none"), ("oci", "gzip")] + ([("docker-oci", "zstd")]
                                                         if HAVE_ZSTD else [])
        for form, compress in forms:
            with self.subTest(form=form):
                first = self.build("a.tar", "--format", form, "--compress", compress)
                os.utime(f"{self.lower}/etc/kept", (12345, 12345))
                second = self.build("b.tar", "--format", form, "--compress", compress)
                with open(first, "rb") as a, open(second, "rb") as b:
                    self.assertEqual(a.read(), b.read())


class FailureTest(ImageTest):
    def damage_first_layer(self, entry: str, offset: int) -> list[str]:
        """Flips a byte of an OCI tarball's first layer, at offset from where entry's header
        starts, and returns what --verify says."""
        out = self.build("v.tar", "--format", "oci")
        manifest, _, files = self.oci_parts(out)
        name = blob(manifest["layers"][0]["digest"])
        with tarfile.open(fileobj=io.BytesIO(files[name])) as layer:
            start = layer.getmember(entry).offset
        damaged = bytearray(files[name])
        damaged[start + offset] ^= 0xFF
        files[name] = bytes(damaged)
        with tarfile.open(out, "w") as tar:
            for member, data in files.items():
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return mkimage.verify(out, quiet=True)

    def test_verify_catches_a_damaged_layer(self) -> None:
        problems = self.damage_first_layer("etc/kept", 512)  # a tar header is 512 bytes
        self.assertTrue(any("does not match its descriptor" in p for p in problems), problems)
        self.assertTrue(any("not the config's diff_id" in p for p in problems), problems)

    def test_verify_catches_a_broken_tar_header(self) -> None:
        problems = self.damage_first_layer("etc/kept", 0)
        self.assertTrue(any("not a valid tar header" in p for p in problems), problems)

    def test_a_failed_build_leaves_nothing_behind(self) -> None:
        out_dir = os.path.join(self.tmp, "out")
        os.makedirs(out_dir)
        with contextlib.redirect_stderr(io.StringIO()) as err:
            status = run("-o", f"{out_dir}/x.tar", self.lower, f"{self.tmp}/missing")
        self.assertEqual(status, 1)
        self.assertIn("does not exist", err.getvalue())
        self.assertEqual(os.listdir(out_dir), [])


class RefTest(unittest.TestCase):
    def test_references_get_docker_spellings(self) -> None:
        cases = {
            "moat/busybox": ("moat/busybox:latest", "docker.io/moat/busybox:latest"),
            "busybox:1.36": ("busybox:1.36", "docker.io/library/busybox:1.36"),
            "docker.io/library/debian:12": ("debian:12", "docker.io/library/debian:12"),
            "localhost:5000/a/b:c": ("localhost:5000/a/b:c", "localhost:5000/a/b:c"),
        }
        for text, (familiar, full) in cases.items():
            ref = mkimage.parse_ref(text)
            self.assertEqual((ref.familiar, ref.full), (familiar, full), text)

    def test_bad_references_are_refused(self) -> None:
        for text in ("Moat/Busybox", "moat/busybox:", "moat//busybox", ""):
            with self.assertRaises(mkimage.MkimageError, msg=text):
                mkimage.parse_ref(text)


if __name__ == "__main__":
    unittest.main()
