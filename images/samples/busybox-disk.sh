#!/usr/bin/env bash
# Builds a tiny ext4 root disk from Debian's busybox-static: /bin/busybox, its applet links,
# and the directories a workload expects. No registry, no root needed (mkfs.ext4 -d).
#
# usage: images/samples/busybox-disk.sh OUT.ext4
set -euo pipefail

out=${1:?usage: busybox-disk.sh OUT.ext4}
# The guest has no shared libraries: busybox must be the static build.
if [ ! -x /bin/busybox ] || [[ "$(ldd /bin/busybox 2>&1 || true)" != *"not a dynamic"* ]]; then
    echo "busybox-disk: installing busybox-static" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
root=$tmp/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,root,var/tmp,mnt}
chmod 1777 "$root/tmp" "$root/var/tmp"
cp /bin/busybox "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list-full); do
    [ "$applet" = bin/busybox ] && continue
    ln -sf /bin/busybox "$root/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
echo 'root:x:0:' > "$root/etc/group"

# 32 MiB: busybox is about 2 MiB; the rest leaves room for tests that write.
truncate -s 32M "$tmp/disk.ext4"
mkfs.ext4 -q -F -L moat-busybox -d "$root" "$tmp/disk.ext4"
mkdir -p "$(dirname "$out")"
mv "$tmp/disk.ext4" "$out"
