#!/usr/bin/env bash
# Prints the path of a Debian 12 (bookworm) minbase tree with python3, building it first when the
# cache has none. debootstrap takes minutes, so the tree is kept under
# ${XDG_CACHE_HOME:-~/.cache}/moat-build/debootstrap/, keyed by this script's text and the mirror:
# editing anything below builds a new tree. Needs root (debootstrap chroots and chowns).
#
# usage: images/samples/debian-rootfs.sh        (prints the tree's path on stdout)
set -euo pipefail

suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=python3

if [ "$(id -u)" != 0 ]; then
    echo "debian-rootfs: debootstrap needs root; run as root (sudo make ...)" >&2
    exit 1
fi

cache=${XDG_CACHE_HOME:-$HOME/.cache}/moat-build/debootstrap
key=$( (cat "$0"; echo "$mirror") | sha256sum | cut -c1-16)
tree=$cache/$suite-$key
mkdir -p "$cache"

# Two builds at once would debootstrap twice into the same place: the second waits for the first.
exec 9>"$tree.lock"
flock 9
if [ -d "$tree" ]; then
    echo "$tree"
    exit 0
fi

if ! command -v debootstrap >/dev/null; then
    echo "debian-rootfs: installing debootstrap" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

work=$tree.partial
rm -rf "$work"
echo "debian-rootfs: debootstrap $suite (minbase + $packages) from $mirror; this takes minutes" >&2
start=$SECONDS
debootstrap --variant=minbase --include="$packages" "$suite" "$work" "$mirror" >"$work.log" 2>&1 || {
    tail -n 20 "$work.log" >&2
    exit 1
}

# What a container image does without: package caches, indexes, documentation (but not the
# copyright files), logs, device nodes (the runtime provides /dev) and the build host's own name
# and resolver.
find "$work"/usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
find "$work"/usr/share/doc -mindepth 1 -type d -empty -delete
rm -rf "${work:?}"/var/cache/apt/* "$work"/var/lib/apt/lists/* \
    "$work"/usr/share/man/* "$work"/usr/share/info/* \
    "$work"/usr/share/lintian "$work"/var/cache/debconf/*-old "$work"/var/lib/dpkg/*-old \
    "${work:?}"/dev/* "$work"/tmp/* "$work"/run/* "$work"/etc/resolv.conf
find "$work"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
find "$work"/var/log -type f -delete
echo localhost >"$work/etc/hostname"

# Keep later `apt-get install`s in the image as small: dpkg skips docs and man pages.
cat >"$work/etc/dpkg/dpkg.cfg.d/01-moat-nodoc" <<'CFG'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
CFG

mv "$work.log" "$cache/$suite-$key.debootstrap.log"
mv "$work" "$tree"
echo "debian-rootfs: built $tree in $((SECONDS - start)) s" >&2
echo "$tree"
