#!/usr/bin/env bash
# Builds moat/layers-test:latest, the end-to-end tests' image: an OCI layout with zstd layers
# whose upper layer deletes and hides what lower ones hold, and a config whose every part a
# test can override.
#
# Layers, lowest first: the busybox sample's two (the same bytes, so the same diff ids), then
#   lower  /etc/lower-only, /etc/kept, /etc/overwritten ("lower"), /opaque/{lower-file,
#          sub/lower-nested}, /gone/inner
#   upper  /etc/.wh.lower-only, /etc/overwritten ("upper"), /opaque/.wh..wh..opq,
#          /opaque/upper-file, /.wh.gone
# so the rootfs must show /etc/kept, /etc/overwritten reading "upper", /opaque holding only
# upper-file, and neither /etc/lower-only nor /gone.
#
# Config: Entrypoint ["/bin/sh","-c"], Cmd ['echo "$GREETING from $(pwd) as $(id -un)"'],
# WorkingDir /home/app, User app, Env GREETING=hello: run as it is, it prints
# "hello from /home/app as app".
#
# usage: images/samples/layers-test-image.sh OUT.tar
set -euo pipefail

out=${1:?usage: layers-test-image.sh OUT.tar}
here=$(dirname "$0")
umask 022

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$here/busybox-layers.sh" "$tmp"

lower=$tmp/lower
mkdir -p "$lower/etc" "$lower/opaque/sub" "$lower/gone"
echo "from the lower layer" >"$lower/etc/lower-only"
echo "lower" >"$lower/etc/kept"
echo "lower" >"$lower/etc/overwritten"
echo "lower" >"$lower/opaque/lower-file"
echo "lower" >"$lower/opaque/sub/lower-nested"
echo "lower" >"$lower/gone/inner"

# Whiteouts as the image spec writes them (layer.md, "Whiteouts"): an empty file named
# .wh.NAME deletes NAME below; .wh..wh..opq hides everything below in its directory.
upper=$tmp/upper
mkdir -p "$upper/etc" "$upper/opaque"
: >"$upper/etc/.wh.lower-only"
echo "upper" >"$upper/etc/overwritten"
: >"$upper/opaque/.wh..wh..opq"
echo "upper" >"$upper/opaque/upper-file"
: >"$upper/.wh.gone"

# The command is for the shell in the image, so $GREETING and $(...) stay unexpanded here.
# shellcheck disable=SC2016
"$here/mkimage.py" --check -o "$out" --format oci --compress zstd \
    --owner home/app=1000:1000 \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env GREETING=hello \
    --entrypoint '["/bin/sh","-c"]' \
    --cmd '["echo \"$GREETING from $(pwd) as $(id -un)\""]' \
    --workdir /home/app \
    --user app \
    --label org.opencontainers.image.title=moat-layers-test \
    --tag moat/layers-test:latest \
    "$tmp/busybox" "$tmp/users" "$lower" "$upper"
