#!/usr/bin/env bash
# Builds the busybox sample image, moat/busybox:latest: busybox in one layer, users and the
# usual directories in a second, `sh` as its command. Extra arguments go to mkimage.py and
# choose the form, e.g. `--format oci --compress gzip`.
#
# usage: images/samples/busybox-image.sh OUT.tar [MKIMAGE OPTIONS...]
set -euo pipefail

out=${1:?usage: busybox-image.sh OUT.tar [MKIMAGE OPTIONS...]}
shift
here=$(dirname "$0")

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$here/busybox-layers.sh" "$tmp"

"$here/mkimage.py" --check -o "$out" "$@" \
    --owner home/app=1000:1000 \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd '["sh"]' \
    --tag moat/busybox:latest \
    "$tmp/busybox" "$tmp/users"
