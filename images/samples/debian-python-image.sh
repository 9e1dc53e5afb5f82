#!/usr/bin/env bash
# Builds moat/debian-python:latest in Docker 25+'s `docker save` form with zstd layers: a
# Debian 12 minbase with python3 (debian-rootfs.sh, cached), and a small page in /srv that
# `python3 -m http.server 8080` serves. Needs root, for debootstrap.
#
# usage: images/samples/debian-python-image.sh OUT.tar
set -euo pipefail

out=${1:?usage: debian-python-image.sh OUT.tar}
here=$(dirname "$0")
umask 022

rootfs=$("$here/debian-rootfs.sh")

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/site/srv"
echo "<h1>Hello from moat</h1>" >"$tmp/site/srv/index.html"

# The tree's last package operation dates the image: files written after it (and this page)
# get that time, the rest keep theirs, so the .pyc files match their sources and a rebuild
# from the same tree gives the same bytes.
epoch=$(stat -c %Y "$rootfs/var/lib/dpkg/status")

"$here/mkimage.py" --check -o "$out" --format docker-oci --compress zstd \
    --mtime "$epoch" --clamp-mtime \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 \
    --cmd '["python3","-m","http.server","8080"]' \
    --expose 8080/tcp \
    --workdir /srv \
    --tag moat/debian-python:latest \
    "$rootfs" "$tmp/site"
