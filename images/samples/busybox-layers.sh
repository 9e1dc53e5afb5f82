#!/usr/bin/env bash
# Lays out the two layers of the busybox sample images as directories, for mkimage.py:
#   DIR/busybox  /bin/busybox (Debian's busybox-static) and a symlink per applet
#   DIR/users    /etc/passwd and /etc/group (root, and an unprivileged `app`, uid and gid 1000,
#                also in the supplementary group `users`, gid 100), /root, /home/app, /tmp and
#                the mount points a runtime expects
# /home/app must be owned by 1000:1000: without root, pass mkimage.py --owner home/app=1000:1000.
#
# usage: images/samples/busybox-layers.sh DIR
set -euo pipefail

dir=${1:?usage: busybox-layers.sh DIR}
# Modes in the layers come from here, not from the caller's umask.
umask 022

# The workload runs with no shared libraries around it: busybox must be the static build.
if [ ! -x /bin/busybox ] || [[ "$(ldd /bin/busybox 2>&1 || true)" != *"not a dynamic"* ]]; then
    echo "busybox-layers: installing busybox-static" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
fi

base=$dir/busybox
mkdir -p "$base/bin"
cp /bin/busybox "$base/bin/busybox"
for applet in $("$base/bin/busybox" --list-full); do
    [ "$applet" = bin/busybox ] && continue
    mkdir -p "$base/$(dirname "$applet")"
    ln -sf /bin/busybox "$base/$applet"
done

users=$dir/users
mkdir -p "$users"/{etc,root,home/app,tmp,dev,proc,sys}
chmod 0700 "$users/root"
chmod 1777 "$users/tmp"
cat >"$users/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat >"$users/etc/group" <<'GROUP'
root:x:0:
users:x:100:app
app:x:1000:
nogroup:x:65534:
GROUP
if [ "$(id -u)" = 0 ]; then
    chown 1000:1000 "$users/home/app"
fi
