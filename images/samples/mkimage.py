#!/usr/bin/env python3
"""Builds container image tarballs without a registry or a daemon, and checks them.

Three forms, the ones `moat launch` reads:

  docker      what `docker save` wrote up to Docker 24: manifest.json, <config digest>.json,
              <layer id>/{VERSION,json,layer.tar} and repositories.
  oci         a plain OCI image layout (image-spec v1.1, image-layout.md): oci-layout,
              index.json and blobs/sha256/.
  docker-oci  what `docker save` writes since Docker 25: the OCI layout plus a manifest.json
              whose Config and Layers are paths into blobs/sha256/.

A layer comes from a directory (walked in name order; its whiteouts, `.wh.NAME` and
`.wh..wh..opq`, are ordinary files and go in as they are) or from a tar file (taken byte for
byte, after undoing gzip or zstd). Output is deterministic: the same sources and options give
the same bytes, so a rebuild that changed nothing changes no digest.

usage:
  mkimage.py -o OUT.tar [--format F] [--compress C] [config options] [--tag REF]... LAYER...
  mkimage.py -o OUT.tar --spec IMAGES.json        (several images in one tarball)
  mkimage.py --verify FILE...

Python 3.11 standard library only; zstd goes through the `zstd` program (Debian's zstd).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gzip
import hashlib
import json
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import IO

# Media types: image-spec v1.1 (media-types.md) and Docker's image manifest v2 schema 2.
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"

LAYER_MEDIA_TYPES = {
    "none": MT_OCI_LAYER,
    "gzip": MT_OCI_LAYER + "+gzip",
    "zstd": MT_OCI_LAYER + "+zstd",
}
# What a reader may meet in a manifest written by other tools, and the compression each implies.
KNOWN_LAYER_TYPES = {
    MT_OCI_LAYER: "none",
    MT_OCI_LAYER + "+gzip": "gzip",
    MT_OCI_LAYER + "+zstd": "zstd",
    MT_DOCKER_LAYER: "none",
    MT_DOCKER_LAYER + ".gzip": "gzip",
    MT_DOCKER_LAYER + ".zstd": "zstd",
}

# Annotations on index.json entries, as Docker 25+ and containerd write them: the tag alone in
# the OCI one (annotations.md), the full reference in containerd's.
ANN_REF_NAME = "org.opencontainers.image.ref.name"
ANN_IMAGE_NAME = "io.containerd.image.name"

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

DEFAULT_ZSTD_LEVEL = 10
COPY_CHUNK = 1 << 20

# Go's encoding/json, which writes Docker's JSON, escapes these three; so does ours.
GO_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"}


class MkimageError(Exception):
    """A problem with the input or the output, worded for the person running the tool."""


# ---------------------------------------------------------------------------------------------
# Small helpers


def canonical_json(value: object) -> bytes:
    """Compact JSON with sorted keys: the bytes we hash and store for every JSON blob."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in GO_JSON_ESCAPES.items():
        text = text.replace(char, escaped)
    return text.encode()


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(COPY_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return "sha256:" + digest.hexdigest(), size


def hex_of(digest: str) -> str:
    return digest.split(":", 1)[1]


def rfc3339(epoch: int) -> str:
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def host_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


def human_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def progress(message: str) -> None:
    """Progress goes to a terminal only; in a pipe (make, CI) the tool stays quiet."""
    if sys.stderr.isatty():
        print(f"mkimage: {message}", file=sys.stderr)


def require_zstd() -> str:
    path = shutil.which("zstd")
    if path is None:
        raise MkimageError("zstd is not installed: apt-get install zstd")
    return path


class HashingReader:
    """Reads through a stream, keeping the sha256 and size of what was read."""

    def __init__(self, f: IO[bytes]):
        self.f = f
        self.hash = hashlib.sha256()
        self.size = 0
        self.data_end = 0  # just past the last byte read that is not zero

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.hash.update(data)
        nonzero = len(data.rstrip(b"\0"))
        if nonzero:
            self.data_end = self.size + nonzero
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(COPY_CHUNK):
            pass

    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


# ---------------------------------------------------------------------------------------------
# Image references


@dataclasses.dataclass(frozen=True)
class Ref:
    """A tagged image reference, in the two spellings Docker uses."""

    familiar_name: str  # "moat/busybox", "busybox"
    full_name: str  # "docker.io/moat/busybox", "docker.io/library/busybox"
    tag: str

    @property
    def familiar(self) -> str:
        return f"{self.familiar_name}:{self.tag}"

    @property
    def full(self) -> str:
        return f"{self.full_name}:{self.tag}"


# distribution/reference's grammar, cut down to names and tags (no digests).
NAME_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?\.?)+(?::[0-9]+)?"
REF_RE = re.compile(
    rf"^(?:(?P<domain>{DOMAIN})/)?(?P<path>{NAME_COMPONENT}(?:/{NAME_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?$"
)


def parse_ref(text: str) -> Ref:
    match = REF_RE.match(text)
    if match is None:
        raise MkimageError(f"not an image reference: {text!r} (want NAME[:TAG], e.g. moat/app:1)")
    domain, path, tag = match.group("domain"), match.group("path"), match.group("tag") or "latest"
    # Docker takes the first component for a registry only if it looks like a host name.
    if domain and "." not in domain and ":" not in domain and domain != "localhost":
        path, domain = f"{domain}/{path}", None
    if domain is None or domain == "docker.io":
        full_path = path if "/" in path else f"library/{path}"
        familiar = full_path.removeprefix("library/")
        return Ref(familiar, f"docker.io/{full_path}", tag)
    return Ref(f"{domain}/{path}", f"{domain}/{path}", tag)


# ---------------------------------------------------------------------------------------------
# Layers


@dataclasses.dataclass
class LayerOptions:
    mtime: int  # every entry's mtime; with clamp, only those of entries newer than this
    clamp: bool
    owners: dict[str, tuple[int, int]]  # path in the layer -> (uid, gid)
    compress: str
    zstd_level: int


@dataclasses.dataclass
class Layer:
    source: str
    tar_path: str  # the uncompressed layer tar
    diff_id: str  # sha256 of tar_path's bytes (image-spec config.md, rootfs.diff_ids)
    blob_path: str  # what goes into the image: tar_path itself or its compressed copy
    digest: str  # sha256 of blob_path's bytes (the manifest's layer descriptor)
    size: int
    media_type: str


def walk_sorted(root: str, rel: str = "") -> Iterator[tuple[str, os.stat_result]]:
    """Yields (path relative to root, lstat): a directory, then its subtree, entries by name."""
    base = os.path.join(root, rel) if rel else root
    with os.scandir(base) as it:
        names = sorted(entry.name for entry in it)
    for name in names:
        child = f"{rel}/{name}" if rel else name
        st = os.lstat(os.path.join(root, child))
        yield child, st
        if stat.S_ISDIR(st.st_mode):
            yield from walk_sorted(root, child)


def owner_of(rel: str, st: os.stat_result, opts: LayerOptions) -> tuple[int, int]:
    """Numeric owner for an entry: --owner first, then the file's own when running as root.

    Without root every file belongs to the builder, which says nothing about the image: those
    files go in as 0:0, as they would have had root built them.
    """
    if rel in opts.owners:
        return opts.owners[rel]
    if os.geteuid() == 0:
        return st.st_uid, st.st_gid
    return 0, 0


def tar_entry(root: str, rel: str, st: os.stat_result, opts: LayerOptions,
              hardlinks: dict[tuple[int, int], str]) -> tarfile.TarInfo | None:
    info = tarfile.TarInfo(rel)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = owner_of(rel, st, opts)
    info.uname = info.gname = ""  # numeric owners only: the image's /etc/passwd is what counts
    info.mtime = min(int(st.st_mtime), opts.mtime) if opts.clamp else opts.mtime
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(os.path.join(root, rel))
    elif stat.S_ISREG(mode):
        first = hardlinks.setdefault((st.st_dev, st.st_ino), rel) if st.st_nlink > 1 else rel
        if first != rel:
            info.type = tarfile.LNKTYPE
            info.linkname = first
        else:
            info.size = st.st_size
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    elif stat.S_ISFIFO(mode):
        info.type = tarfile.FIFOTYPE
    else:
        print(f"mkimage: warning: skipping socket {os.path.join(root, rel)}", file=sys.stderr)
        return None
    return info


def write_dir_layer(root: str, out: IO[bytes], opts: LayerOptions) -> None:
    """Writes root's contents as a layer tar (no entry for root itself, as docker save does)."""
    hardlinks: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for rel, st in walk_sorted(root):
            info = tar_entry(root, rel, st, opts, hardlinks)
            if info is None:
                continue
            if info.type == tarfile.REGTYPE:
                with open(os.path.join(root, rel), "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)


def sniff(f: IO[bytes]) -> str:
    head = f.read(4)
    f.seek(0)
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head == ZSTD_MAGIC:
        return "zstd"
    return "none"


def copy_tar_layer(path: str, out: IO[bytes]) -> None:
    """Copies a tar file's bytes as they are, undoing gzip or zstd first."""
    with open(path, "rb") as f:
        compression = sniff(f)
        if compression == "zstd":
            out.flush()
            subprocess.run([require_zstd(), "-q", "-d", "-c", path], stdout=out, check=True)
            return
        src = gzip.GzipFile(fileobj=f) if compression == "gzip" else f
        shutil.copyfileobj(src, out, COPY_CHUNK)


def compress_file(src: str, dst: str, how: str, zstd_level: int) -> None:
    if how == "gzip":
        # No file name and mtime 0 in the gzip header: the bytes depend on the content only.
        with open(src, "rb") as fin, open(dst, "wb") as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as fout:
            shutil.copyfileobj(fin, fout, COPY_CHUNK)
    elif how == "zstd":
        # zstd's output does not depend on how many worker threads (-T) it has, so all cores
        # may work on it; it does change with --single-thread, and with input from a pipe
        # (no content size in the frame header), so neither is used.
        with open(dst, "wb") as fout:
            subprocess.run([require_zstd(), "-q", "-c", "-T0", f"-{zstd_level}", src],
                           stdout=fout, check=True)
    else:
        raise AssertionError(f"no compression named {how}")


def build_layer(source: str, workdir: str, index: int, opts: LayerOptions) -> Layer:
    if not os.path.exists(source):
        raise MkimageError(f"layer source does not exist: {source}")
    tar_path = os.path.join(workdir, f"layer{index}.tar")
    with open(tar_path, "wb") as out:
        if os.path.isdir(source):
            write_dir_layer(source, out, opts)
        else:
            copy_tar_layer(source, out)
    if not tarfile.is_tarfile(tar_path):
        raise MkimageError(f"layer source is neither a directory nor a tar file: {source}")
    diff_id, _ = sha256_file(tar_path)
    blob_path = tar_path
    if opts.compress != "none":
        blob_path = f"{tar_path}.{opts.compress}"
        compress_file(tar_path, blob_path, opts.compress, opts.zstd_level)
    digest, size = sha256_file(blob_path)
    progress(f"layer {os.path.basename(source.rstrip('/'))}: {human_size(size)} {digest[:19]}")
    return Layer(source, tar_path, diff_id, blob_path, digest, size,
                 LAYER_MEDIA_TYPES[opts.compress])


# ---------------------------------------------------------------------------------------------
# Images


@dataclasses.dataclass
class ImageSpec:
    layers: list[str]
    tags: list[Ref]
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: list[str] = dataclasses.field(default_factory=list)
    workdir: str | None = None
    user: str | None = None
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    expose: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Image:
    spec: ImageSpec
    layers: list[Layer]
    config: bytes
    config_digest: str
    manifest: bytes  # the OCI image manifest
    manifest_digest: str


def container_config(spec: ImageSpec) -> dict:
    """The `config` object of the image configuration (image-spec config.md)."""
    config: dict = {}
    if spec.user:
        config["User"] = spec.user
    if spec.expose:
        config["ExposedPorts"] = {port: {} for port in spec.expose}
    if spec.env:
        config["Env"] = spec.env
    if spec.entrypoint is not None:
        config["Entrypoint"] = spec.entrypoint
    if spec.cmd is not None:
        config["Cmd"] = spec.cmd
    if spec.workdir:
        config["WorkingDir"] = spec.workdir
    if spec.labels:
        config["Labels"] = spec.labels
    return config


def image_config(spec: ImageSpec, layers: list[Layer], created: str, arch: str) -> bytes:
    history = [
        {"created": created, "created_by": f"mkimage.py: {describe_source(layer.source)}"}
        for layer in layers
    ]
    return canonical_json({
        "architecture": arch,
        "os": "linux",
        "created": created,
        "config": container_config(spec),
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": history,
    })


def describe_source(source: str) -> str:
    """The source's own name, not its path: paths of scratch directories differ per build."""
    name = os.path.basename(source.rstrip("/"))
    return f"directory {name}/" if os.path.isdir(source) else f"tar {name}"


def oci_manifest(config: bytes, layers: list[Layer]) -> bytes:
    return canonical_json({
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": {"mediaType": MT_OCI_CONFIG, "digest": sha256_bytes(config),
                   "size": len(config)},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}
                   for layer in layers],
    })


def build_images(specs: list[ImageSpec], workdir: str, opts: LayerOptions, created: str,
                 arch: str) -> list[Image]:
    built: dict[str, Layer] = {}  # a source used by several images is packed once
    images = []
    for spec in specs:
        layers = []
        for source in spec.layers:
            key = os.path.realpath(source)
            if key not in built:
                built[key] = build_layer(source, workdir, len(built), opts)
            layers.append(built[key])
        config = image_config(spec, layers, created, arch)
        manifest = oci_manifest(config, layers)
        images.append(Image(spec, layers, config, sha256_bytes(config), manifest,
                            sha256_bytes(manifest)))
    return images


# ---------------------------------------------------------------------------------------------
# Output forms. Each returns the tarball's members: path -> bytes, or path -> a file to copy.


Members = dict[str, "bytes | str"]


def chain_ids(diff_ids: list[str]) -> list[str]:
    """ChainID(L0) = DiffID(L0); ChainID(L0..n) = sha256(ChainID(L0..n-1) + " " + DiffID(Ln))."""
    chain = [diff_ids[0]]
    for diff_id in diff_ids[1:]:
        chain.append(sha256_bytes(f"{chain[-1]} {diff_id}".encode()))
    return chain


def legacy_layer_ids(image: Image) -> list[tuple[str, dict]]:
    """The v1 ids and `json` files of docker save's per-layer directories.

    As Docker does: the top layer carries the image's config, the others only a creation
    time; the id hashes that JSON with the layer's chain id and the parent's id.
    """
    config = json.loads(image.config)
    top = {key: config[key] for key in ("architecture", "config", "created", "os")}
    chain = chain_ids([layer.diff_id for layer in image.layers])
    out = []
    parent = None
    for i, chain_id in enumerate(chain):
        v1 = dict(top) if i == len(chain) - 1 else {"created": config["created"]}
        hashed = dict(v1, layer_id=chain_id, **({"parent": parent} if parent else {}))
        v1_id = sha256_bytes(canonical_json(hashed))
        v1["id"] = hex_of(v1_id)
        if parent:
            v1["parent"] = hex_of(parent)
        out.append((hex_of(v1_id), v1))
        parent = v1_id
    return out


def repositories(pairs: list[tuple[Ref, str]]) -> bytes:
    repos: dict[str, dict[str, str]] = {}
    for ref, layer_id in pairs:
        repos.setdefault(ref.familiar_name, {})[ref.tag] = layer_id
    return canonical_json(repos) + b"\n"


def docker_members(images: list[Image]) -> Members:
    members: Members = {}
    manifest = []
    tops = []
    for image in images:
        config_name = f"{hex_of(image.config_digest)}.json"
        members[config_name] = image.config
        layer_paths = []
        for layer, (v1_id, v1_json) in zip(image.layers, legacy_layer_ids(image), strict=True):
            members[f"{v1_id}/VERSION"] = b"1.0"
            members[f"{v1_id}/json"] = canonical_json(v1_json)
            members[f"{v1_id}/layer.tar"] = layer.blob_path
            layer_paths.append(f"{v1_id}/layer.tar")
        manifest.append({"Config": config_name,
                         "RepoTags": [ref.familiar for ref in image.spec.tags],
                         "Layers": layer_paths})
        tops += [(ref, layer_paths[-1].split("/")[0]) for ref in image.spec.tags]
    members["manifest.json"] = canonical_json(manifest) + b"\n"
    if tops:
        members["repositories"] = repositories(tops)
    return members


def oci_members(images: list[Image]) -> Members:
    members: Members = {"oci-layout": canonical_json({"imageLayoutVersion": "1.0.0"})}
    descriptors = []
    for image in images:
        members[f"blobs/sha256/{hex_of(image.config_digest)}"] = image.config
        members[f"blobs/sha256/{hex_of(image.manifest_digest)}"] = image.manifest
        for layer in image.layers:
            members[f"blobs/sha256/{hex_of(layer.digest)}"] = layer.blob_path
        descriptor = {
            "mediaType": MT_OCI_MANIFEST,
            "digest": image.manifest_digest,
            "size": len(image.manifest),
            "platform": {"architecture": json.loads(image.config)["architecture"],
                         "os": "linux"},
        }
        if not image.spec.tags:
            descriptors.append(descriptor)
        for ref in image.spec.tags:
            annotations = {ANN_IMAGE_NAME: ref.full, ANN_REF_NAME: ref.tag}
            descriptors.append(dict(descriptor, annotations=annotations))
    members["index.json"] = canonical_json(
        {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": descriptors})
    return members


def docker_oci_members(images: list[Image]) -> Members:
    members = oci_members(images)
    manifest = []
    tops = []
    for image in images:
        layer_paths = [f"blobs/sha256/{hex_of(layer.digest)}" for layer in image.layers]
        manifest.append({"Config": f"blobs/sha256/{hex_of(image.config_digest)}",
                         "RepoTags": [ref.familiar for ref in image.spec.tags],
                         "Layers": layer_paths})
        # Docker 25+ names the top layer by its diff id here, blob or not.
        tops += [(ref, hex_of(image.layers[-1].diff_id)) for ref in image.spec.tags]
    members["manifest.json"] = canonical_json(manifest) + b"\n"
    if tops:
        members["repositories"] = repositories(tops)
    return members


FORMS = {"docker": docker_members, "oci": oci_members, "docker-oci": docker_oci_members}


def parent_dirs(names: list[str]) -> set[str]:
    dirs = set()
    for name in names:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]) + "/")
    return dirs


def write_tarball(members: Members, out: IO[bytes], mtime: int) -> None:
    """Writes members in name order with fixed owners, modes and times."""
    entries = sorted(list(members) + list(parent_dirs(list(members))))
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name in entries:
            info = tarfile.TarInfo(name.rstrip("/"))
            info.mtime = mtime
            info.uname = info.gname = ""
            if name.endswith("/"):
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
                continue
            info.mode = 0o644
            content = members[name]
            if isinstance(content, bytes):
                info.size = len(content)
                tar.addfile(info, _BytesReader(content))
            else:
                info.size = os.path.getsize(content)
                with open(content, "rb") as f:
                    tar.addfile(info, f)


class _BytesReader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        chunk, self.pos = self.data[self.pos:end], min(end, len(self.data))
        return chunk


def publish(out_path: str, write, check: bool) -> None:
    """Writes out_path through a temporary file in the same directory, renamed into place only
    when complete (and, with check, only when it verifies)."""
    directory = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(out_path)}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if check:
            problems = verify(tmp, quiet=True)
            if problems:
                raise MkimageError("the tarball does not verify:\n  " + "\n  ".join(problems))
        os.replace(tmp, out_path)
    except BaseException:
        os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------------------------
# Verification: reads a tarball of any of the three forms the way a careful importer would.


@dataclasses.dataclass
class LayerFacts:
    compression: str
    diff_id: str
    entries: int
    whiteouts: int


class Tarball:
    """Random access to the regular files of an image tarball (which may itself be gzipped)."""

    def __init__(self, path: str):
        try:
            self.tar = tarfile.open(path, "r:*")  # noqa: SIM115 (closed by __exit__)
        except (OSError, tarfile.TarError) as err:
            raise MkimageError(f"cannot read {path} as a tar file: {err}") from None
        self.files = {}
        for member in self.tar.getmembers():
            if member.isfile():
                self.files[os.path.normpath(member.name).lstrip("/")] = member

    def __enter__(self) -> Tarball:
        return self

    def __exit__(self, *exc: object) -> None:
        self.tar.close()

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def open(self, name: str) -> IO[bytes]:
        return self.tar.extractfile(self.files[name])

    def read_json(self, name: str) -> object:
        return json.loads(self.open(name).read())

    def digest(self, name: str) -> tuple[str, int]:
        reader = HashingReader(self.open(name))
        reader.drain()
        return reader.digest(), reader.size


def decompressed(f: IO[bytes], compression: str) -> tuple[IO[bytes], Callable]:
    """A stream of f's decompressed bytes, and a function that returns an error text or None
    once the stream has been read to its end."""
    if compression == "gzip":
        return gzip.GzipFile(fileobj=f), lambda: None
    if compression == "none":
        return f, lambda: None
    proc = subprocess.Popen([require_zstd(), "-q", "-d", "-c"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def feed() -> None:
        try:
            shutil.copyfileobj(f, proc.stdin, COPY_CHUNK)
        except BrokenPipeError:
            pass
        finally:
            proc.stdin.close()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()

    def finish() -> str | None:
        proc.stdout.read()
        proc.stdout.close()
        feeder.join()
        return None if proc.wait() == 0 else "zstd could not decompress it"

    return proc.stdout, finish


class Verifier:
    def __init__(self, path: str):
        self.path = path
        self.problems: list[str] = []
        self.report: list[str] = []
        self.layers: dict[str, LayerFacts | None] = {}
        self.index_configs: set[str] = set()

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def run(self) -> None:
        with Tarball(self.path) as self.tb:
            self.check_forms()

    def check_forms(self) -> None:
        has_manifest, has_index = "manifest.json" in self.tb, "index.json" in self.tb
        if has_manifest and has_index:
            form = "docker-oci (docker save, Docker 25+)"
        elif has_index:
            form = "oci (OCI image layout)"
        elif has_manifest:
            form = "docker (docker save, Docker 20.10)"
        else:
            self.problem("neither manifest.json nor index.json: not an image tarball")
            return
        self.report.append(f"{self.path}: {form}")
        if has_index or "oci-layout" in self.tb:
            self.check_layout()
        if has_manifest:
            self.check_docker_manifest()
        if "repositories" in self.tb:
            self.check_repositories(has_index)

    # -- OCI layout ---------------------------------------------------------------------------

    def check_layout(self) -> None:
        if "oci-layout" not in self.tb:
            self.problem("index.json without oci-layout")
        elif self.tb.read_json("oci-layout").get("imageLayoutVersion") != "1.0.0":
            self.problem("oci-layout: imageLayoutVersion is not 1.0.0")
        if "index.json" not in self.tb:
            self.problem("oci-layout without index.json")
            return
        self.check_index(self.tb.read_json("index.json"), "index.json")

    def check_index(self, index: dict, where: str) -> None:
        if index.get("schemaVersion") != 2:
            self.problem(f"{where}: schemaVersion is not 2")
        if index.get("mediaType", MT_OCI_INDEX) not in (MT_OCI_INDEX, MT_DOCKER_LIST):
            self.problem(f"{where}: mediaType {index.get('mediaType')!r} is not an index")
        for i, desc in enumerate(index.get("manifests") or []):
            at = f"{where} manifests[{i}]"
            data = self.blob(desc, at, (MT_OCI_MANIFEST, MT_DOCKER_MANIFEST, MT_OCI_INDEX,
                                        MT_DOCKER_LIST))
            if data is None:
                continue
            if desc.get("mediaType") in (MT_OCI_INDEX, MT_DOCKER_LIST):
                self.check_index(json.loads(data), f"{at} (index)")
                continue
            annotations = desc.get("annotations") or {}
            name = annotations.get(ANN_IMAGE_NAME) or annotations.get(ANN_REF_NAME) or "<no ref>"
            self.check_manifest(json.loads(data), desc.get("mediaType"), at, name)
        if not index.get("manifests"):
            self.problem(f"{where}: no manifests")

    def blob(self, desc: dict, where: str, media_types: tuple[str, ...]) -> bytes | None:
        """Checks a descriptor of a small blob against the blob; returns the blob's bytes."""
        name = self.blob_name(desc, where, media_types)
        if name is None:
            return None
        data = self.tb.open(name).read()
        if len(data) != desc.get("size"):
            self.problem(f"{where}: size {desc.get('size')} but the blob has {len(data)} bytes")
        if sha256_bytes(data) != desc["digest"]:
            self.problem(f"{where}: the blob's sha256 is not {desc['digest']}")
        return data

    def blob_name(self, desc: dict, where: str, media_types: tuple[str, ...]) -> str | None:
        if desc.get("mediaType") not in media_types:
            self.problem(f"{where}: mediaType {desc.get('mediaType')!r} is not one of "
                         f"{', '.join(media_types)}")
        digest = desc.get("digest", "")
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            self.problem(f"{where}: digest {digest!r} is not sha256:<64 hex digits>")
            return None
        name = f"blobs/sha256/{hex_of(digest)}"
        if name not in self.tb:
            self.problem(f"{where}: no blob {name}")
            return None
        return name

    def check_manifest(self, manifest: dict, media_type: str, where: str, name: str) -> None:
        if manifest.get("schemaVersion") != 2:
            self.problem(f"{where}: manifest schemaVersion is not 2")
        if manifest.get("mediaType", media_type) != media_type:
            self.problem(f"{where}: the manifest says mediaType {manifest.get('mediaType')}, "
                         f"its descriptor {media_type}")
        config_desc = manifest.get("config") or {}
        data = self.blob(config_desc, f"{where} config", (MT_OCI_CONFIG, MT_DOCKER_CONFIG))
        if data is None:
            return
        self.index_configs.add(config_desc["digest"])
        diff_ids = self.diff_ids(json.loads(data), f"{where} config")
        layers = manifest.get("layers") or []
        if len(layers) != len(diff_ids):
            self.problem(f"{where}: {len(layers)} layers but the config has "
                         f"{len(diff_ids)} diff_ids")
        self.report.append(f"  {name}  config {config_desc['digest'][:19]}  "
                           f"{len(layers)} layers")
        for i, (desc, diff_id) in enumerate(zip(layers, diff_ids, strict=False)):
            at = f"{where} layers[{i}]"
            blob = self.blob_name(desc, at, tuple(KNOWN_LAYER_TYPES))
            if blob is None:
                continue
            digest, size = self.tb.digest(blob)
            if size != desc.get("size") or digest != desc["digest"]:
                self.problem(f"{at}: the blob's size or sha256 does not match its descriptor")
            expected = KNOWN_LAYER_TYPES.get(desc.get("mediaType"))
            self.check_layer(blob, diff_id, at, expected, size)

    def diff_ids(self, config: dict, where: str) -> list[str]:
        rootfs = config.get("rootfs") or {}
        if rootfs.get("type") != "layers":
            self.problem(f"{where}: rootfs.type is not \"layers\"")
        for key in ("architecture", "os"):
            if not config.get(key):
                self.problem(f"{where}: no {key}")
        return list(rootfs.get("diff_ids") or [])

    # -- layers -------------------------------------------------------------------------------

    def check_layer(self, name: str, diff_id: str, where: str, expected: str | None,
                    size: int) -> None:
        if name not in self.layers:
            self.layers[name] = self.read_layer(name, where)
        facts = self.layers[name]
        if facts is None:
            return
        if expected is not None and facts.compression != expected:
            self.problem(f"{where}: its media type says {expected} but it is {facts.compression}")
        if facts.diff_id != diff_id:
            self.problem(f"{where}: uncompressed sha256 {facts.diff_id} is not the config's "
                         f"diff_id {diff_id}")
        self.report.append(f"    {name}  {facts.compression:4}  {human_size(size):>10}  "
                           f"{facts.entries} entries, {facts.whiteouts} whiteouts")

    def read_layer(self, name: str, where: str) -> LayerFacts | None:
        f = self.tb.open(name)
        compression = sniff(f)
        stream, finish = decompressed(f, compression)
        reader = HashingReader(stream)
        entries = whiteouts = 0
        try:
            with tarfile.open(fileobj=reader, mode="r|") as layer:
                for member in layer:
                    entries += 1
                    whiteouts += self.check_layer_entry(member, where)
                end = layer.offset  # where the entries stopped
            reader.drain()
            # Python's tarfile stops quietly at a broken header: after the last entry there
            # must be nothing but the zero blocks that end a tar.
            if reader.data_end > end:
                self.problem(f"{where}: data after entry {entries} is not a valid tar header")
        except (tarfile.TarError, OSError, EOFError) as err:
            self.problem(f"{where}: not a readable {compression} tar: {err}")
            return None
        error = finish()
        if error:
            self.problem(f"{where}: {error}")
            return None
        return LayerFacts(compression, reader.digest(), entries, whiteouts)

    def check_layer_entry(self, member: tarfile.TarInfo, where: str) -> int:
        """Flags names an importer must refuse; returns 1 for a whiteout entry."""
        parts = member.name.split("/")
        if member.name.startswith("/") or ".." in parts:
            self.problem(f"{where}: entry {member.name!r} would land outside the rootfs")
        if not parts[-1].startswith(".wh."):
            return 0
        if not member.isfile():
            self.problem(f"{where}: whiteout {member.name!r} is not a regular file")
        return 1

    # -- docker save's manifest.json ----------------------------------------------------------

    def check_docker_manifest(self) -> None:
        items = self.tb.read_json("manifest.json")
        if not isinstance(items, list) or not items:
            self.problem("manifest.json: not a non-empty list")
            return
        for i, item in enumerate(items):
            self.check_docker_item(item, f"manifest.json[{i}]")

    def check_docker_item(self, item: dict, where: str) -> None:
        config_name = item.get("Config", "")
        if config_name not in self.tb:
            self.problem(f"{where}: no config file {config_name!r}")
            return
        data = self.tb.open(config_name).read()
        stem = os.path.basename(config_name).removesuffix(".json")
        if re.fullmatch(r"[0-9a-f]{64}", stem) and sha256_bytes(data) != f"sha256:{stem}":
            self.problem(f"{where}: {config_name} does not hash to its name")
        if self.index_configs and sha256_bytes(data) not in self.index_configs:
            self.problem(f"{where}: its config is not one that index.json points to")
        for tag in item.get("RepoTags") or []:
            try:
                parse_ref(tag)
            except MkimageError as err:
                self.problem(f"{where}: {err}")
        diff_ids = self.diff_ids(json.loads(data), config_name)
        layers = item.get("Layers") or []
        if len(layers) != len(diff_ids):
            self.problem(f"{where}: {len(layers)} layers but the config has "
                         f"{len(diff_ids)} diff_ids")
        tags = ", ".join(item.get("RepoTags") or []) or "<untagged>"
        self.report.append(f"  manifest.json: {tags}  {len(layers)} layers")
        for j, (name, diff_id) in enumerate(zip(layers, diff_ids, strict=False)):
            self.check_docker_layer(name, diff_id, f"{where} Layers[{j}]")

    def check_docker_layer(self, name: str, diff_id: str, where: str) -> None:
        if name not in self.tb:
            self.problem(f"{where}: no layer file {name!r}")
            return
        if name.endswith("/layer.tar"):
            layer_dir = name.removesuffix("layer.tar")
            for extra in ("VERSION", "json"):
                if layer_dir + extra not in self.tb:
                    self.problem(f"{where}: no {layer_dir}{extra} beside it")
        if name in self.layers:  # read already through index.json
            facts = self.layers[name]
            if facts is not None and facts.diff_id != diff_id:
                self.problem(f"{where}: uncompressed sha256 is not the config's diff_id")
            return
        _, size = self.tb.digest(name)
        self.check_layer(name, diff_id, where, None, size)

    def check_repositories(self, has_index: bool) -> None:
        repos = self.tb.read_json("repositories")
        if not isinstance(repos, dict):
            self.problem("repositories: not a JSON object")
            return
        for repo, tags in repos.items():
            for tag, layer_id in (tags or {}).items():
                if not has_index and f"{layer_id}/layer.tar" not in self.tb:
                    self.problem(f"repositories: {repo}:{tag} names no layer directory")


def verify(path: str, quiet: bool = False) -> list[str]:
    """Checks an image tarball; prints what it found unless quiet; returns the problems."""
    verifier = Verifier(path)
    try:
        verifier.run()
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        # Malformed JSON, or JSON of the wrong shape: nothing further can be checked.
        verifier.problem(f"malformed metadata: {type(err).__name__}: {err}")
    if not quiet:
        print("\n".join(verifier.report))
        for text in verifier.problems:
            print(f"  problem: {text}")
        print("  ok" if not verifier.problems else f"  {len(verifier.problems)} problem(s)")
    return verifier.problems


# ---------------------------------------------------------------------------------------------
# Command line


def json_array(text: str) -> list[str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise argparse.ArgumentTypeError(f'want a JSON array of strings, e.g. ["sh","-c"]: {text}')
    return value


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"want KEY=VALUE: {text}")
    return key, value


def port(text: str) -> str:
    if not re.fullmatch(r"[0-9]{1,5}(/(tcp|udp|sctp))?", text):
        raise argparse.ArgumentTypeError(f"want PORT or PORT/PROTO (tcp, udp, sctp): {text}")
    return text if "/" in text else f"{text}/tcp"


def owner(text: str) -> tuple[str, tuple[int, int]]:
    match = re.fullmatch(r"/?(.+?)/?=([0-9]+):([0-9]+)", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"want PATH=UID:GID, e.g. home/app=1000:1000: {text}")
    return match.group(1), (int(match.group(2)), int(match.group(3)))


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="mkimage.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="A layer is a directory or a tar file (plain, gzip or zstd); lower layers first.")
    p.add_argument("layers", nargs="*", metavar="LAYER")
    p.add_argument("-o", "--output", metavar="OUT.tar")
    p.add_argument("--format", choices=sorted(FORMS), default="docker")
    p.add_argument("--compress", choices=sorted(LAYER_MEDIA_TYPES), default="none",
                   help="layer compression (docker save itself never compresses)")
    p.add_argument("--zstd-level", type=int, default=DEFAULT_ZSTD_LEVEL, metavar="N")
    p.add_argument("--spec", metavar="IMAGES.json",
                   help="build several images: a JSON list of objects with keys layers, tags, "
                        "entrypoint, cmd, env, workdir, user, labels, expose (paths relative to "
                        "the spec file)")
    p.add_argument("--tag", action="append", default=[], metavar="REPO:TAG")
    p.add_argument("--entrypoint", type=json_array, metavar="JSON")
    p.add_argument("--cmd", type=json_array, metavar="JSON")
    p.add_argument("--env", action="append", default=[], metavar="K=V", type=key_value)
    p.add_argument("--workdir", metavar="DIR")
    p.add_argument("--user", metavar="USER[:GROUP]")
    p.add_argument("--label", action="append", default=[], metavar="K=V", type=key_value)
    p.add_argument("--expose", action="append", default=[], metavar="PORT[/PROTO]", type=port)
    p.add_argument("--owner", action="append", default=[], metavar="PATH=UID:GID", type=owner,
                   help="owner of one path in directory layers, whoever runs the build")
    p.add_argument("--mtime", type=int, metavar="EPOCH",
                   default=int(os.environ.get("SOURCE_DATE_EPOCH", "0")),
                   help="mtime of every entry from a directory, and the image's creation time "
                        "(default: $SOURCE_DATE_EPOCH, else 0)")
    p.add_argument("--clamp-mtime", action="store_true",
                   help="set only the mtimes later than --mtime; keep the others (so .pyc "
                        "files stay valid)")
    p.add_argument("--arch", default=host_arch())
    p.add_argument("--check", action="store_true",
                   help="verify the tarball before putting it in place")
    p.add_argument("--verify", action="store_true",
                   help="check the image tarballs named as arguments instead of building")
    args = p.parse_args(argv)
    if args.verify and not args.layers:
        p.error("--verify needs the tarballs to check")
    if not args.verify and not args.output:
        p.error("-o OUT.tar is required")
    if not args.verify and bool(args.spec) == bool(args.layers):
        p.error("give layer sources or --spec, not both or neither")
    return args


def spec_from_args(args: argparse.Namespace) -> ImageSpec:
    return ImageSpec(
        layers=args.layers,
        tags=[parse_ref(tag) for tag in args.tag],
        entrypoint=args.entrypoint,
        cmd=args.cmd,
        env=[f"{key}={value}" for key, value in args.env],
        workdir=args.workdir,
        user=args.user,
        labels=dict(args.label),
        expose=args.expose,
    )


def specs_from_file(path: str) -> list[ImageSpec]:
    try:
        with open(path) as f:
            items = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise MkimageError(f"cannot read spec {path}: {err}") from None
    if not isinstance(items, list):
        raise MkimageError(f"spec {path}: want a JSON list of images")
    base = os.path.dirname(os.path.abspath(path))
    specs = []
    for item in items:
        unknown = set(item) - {f.name for f in dataclasses.fields(ImageSpec)}
        if unknown:
            raise MkimageError(f"spec {path}: unknown keys {', '.join(sorted(unknown))}")
        item = dict(item)
        item["layers"] = [os.path.join(base, layer) for layer in item.get("layers", [])]
        item["tags"] = [parse_ref(tag) for tag in item.get("tags", [])]
        item["expose"] = [port(p) for p in item.get("expose", [])]
        specs.append(ImageSpec(**item))
    return specs


def build(args: argparse.Namespace) -> None:
    specs = specs_from_file(args.spec) if args.spec else [spec_from_args(args)]
    for spec in specs:
        if not spec.layers:
            raise MkimageError("an image needs at least one layer")
    opts = LayerOptions(mtime=args.mtime, clamp=args.clamp_mtime, owners=dict(args.owner),
                        compress=args.compress, zstd_level=args.zstd_level)
    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".mkimage-") as workdir:
        images = build_images(specs, workdir, opts, rfc3339(args.mtime), args.arch)
        members = FORMS[args.format](images)
        publish(args.output, lambda f: write_tarball(members, f, args.mtime), args.check)
    layers = {layer.digest for image in images for layer in image.layers}
    print(f"mkimage: wrote {args.output} ({args.format}, {len(images)} image(s), "
          f"{len(layers)} layer(s), {human_size(os.path.getsize(args.output))})")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        if args.verify:
            failed = [path for path in args.layers if verify(path)]
            return 1 if failed else 0
        build(args)
    except MkimageError as err:
        print(f"mkimage: error: {err}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as err:
        print(f"mkimage: error: {err.cmd[0]} exited with status {err.returncode}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
