#!/usr/bin/env bash
# Build moat's guest kernel: an uncompressed x86_64 vmlinux with the PVH entry note.
#
# Usage: kernel-config/build.sh [OUT]
#
# The kernel is Debian's linux-source-6.1, configured as `make ARCH=x86_64 tinyconfig` with
# moat.config merged over it and completed by `make olddefconfig`. Every option moat.config asks
# for is then checked in the final .config, because Kconfig drops options whose dependencies are
# missing without saying so.
#
# Builds are cached under ${MOAT_CACHE:-$HOME/.cache/moat-build}/kernel/<hash>/ (vmlinux, config),
# where <hash> is the sha256 of moat.config, this script and the linux-source-6.1 package version.
# An entry appears by renaming a finished directory into place, so an interrupted build never
# leaves one that looks valid.
#
# OUT defaults to build/vmlinux in the repository; the final .config is written next to it as
# OUT.config. Kernel build output goes to kernel-build.log in OUT's directory.

set -euo pipefail

readonly SOURCE_PACKAGE=linux-source-6.1
readonly SOURCE_TARBALL=/usr/src/linux-source-6.1.tar.xz
readonly BUILD_PACKAGES=("$SOURCE_PACKAGE" bc flex bison libelf-dev build-essential xz-utils)
# Lines of the build log shown when a step fails.
readonly LOG_TAIL_LINES=40

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(dirname "$script_dir")
fragment="$script_dir/moat.config"
out=${1:-$repo_root/build/vmlinux}
out_dir=$(dirname "$out")
log="$out_dir/kernel-build.log"
kernel_cache="${MOAT_CACHE:-$HOME/.cache/moat-build}/kernel"
work=""

die() {
    echo "kernel: $*" >&2
    exit 1
}

# Progress lines for a person at a terminal; nothing when the output goes to a pipe or a file.
step() {
    if [[ -t 1 ]]; then
        echo "kernel: $*"
    fi
}

cleanup() {
    if [[ -n $work ]]; then
        rm -rf "$work"
    fi
    rm -f "$out.tmp.$$" "$out.config.tmp.$$"
}

# Runs a command with its output appended to the build log; on failure shows the log's tail.
run_logged() {
    if ! "$@" >>"$log" 2>&1; then
        echo "kernel: '$*' failed; last lines of $log:" >&2
        tail -n "$LOG_TAIL_LINES" "$log" >&2
        exit 1
    fi
}

install_missing_packages() {
    local missing=() package
    for package in "${BUILD_PACKAGES[@]}"; do
        if [[ $(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null) != installed ]]; then
            missing+=("$package")
        fi
    done
    if ((${#missing[@]} == 0)); then
        return
    fi

    if ((EUID != 0)); then
        die "missing packages: ${missing[*]}; install them with: sudo apt-get install ${missing[*]}"
    fi
    step "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${missing[@]}" >>"$log" 2>&1; then
        run_logged apt-get update
        run_logged apt-get install -y --no-install-recommends "${missing[@]}"
    fi
}

cache_key() {
    local version
    version=$(dpkg-query -W -f='${Version}' "$SOURCE_PACKAGE")
    {
        echo "moat.config $(sha256sum <"$fragment")"
        echo "build.sh $(sha256sum <"${BASH_SOURCE[0]}")"
        echo "$SOURCE_PACKAGE $version"
    } | sha256sum | cut -d' ' -f1
}

# Prints the value CONFIG_X has in a .config: its text, "n" when it is not set, "" when absent.
config_value() {
    local config=$1 name=$2 line
    line=$(grep -m1 -E "^($name=|# $name is not set\$)" "$config" || true)
    case $line in
        "") echo "" ;;
        "#"*) echo n ;;
        *) echo "${line#*=}" ;;
    esac
}

# Fails naming every option of the fragment that the final .config does not carry as asked.
verify_config() {
    local fragment=$1 config=$2 line name want got
    local dropped=()
    while IFS= read -r line; do
        if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
            name=${BASH_REMATCH[1]}
            want=${BASH_REMATCH[2]}
        elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
            name=${BASH_REMATCH[1]}
            want=n
        else
            continue
        fi

        got=$(config_value "$config" "$name")
        if [[ $want == n && ($got == n || -z $got) ]] || [[ $got == "$want" ]]; then
            continue
        fi
        dropped+=("$name: moat.config wants ${want}, the final config has ${got:-nothing}")
    done <"$fragment"

    if ((${#dropped[@]} > 0)); then
        echo "kernel: olddefconfig did not keep these options (a dependency is missing, or the" \
            "option does not exist in this kernel):" >&2
        printf '  %s\n' "${dropped[@]}" >&2
        exit 1
    fi
}

# The VMM enters the kernel through the PVH note (Xen ELF note type 0x12, PHYS32_ENTRY).
verify_pvh_note() {
    local vmlinux=$1 notes
    # Read all notes first: with pipefail, `grep -q` quitting early could fail readelf's pipe.
    notes=$(readelf -n "$vmlinux")
    if ! grep -Eq '^\s+Xen\s+0x[0-9a-f]+\s+.*\(0x0*12\)' <<<"$notes"; then
        die "$vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); is CONFIG_PVH set?"
    fi
}

build_kernel() {
    local entry=$1 src
    local make_env=(ARCH=x86_64 KBUILD_BUILD_USER=moat KBUILD_BUILD_HOST=moat
        "KBUILD_BUILD_TIMESTAMP=$(date -u -r "$SOURCE_TARBALL")")

    step "unpacking $SOURCE_TARBALL"
    run_logged tar -xf "$SOURCE_TARBALL" -C "$work"
    src="$work/$SOURCE_PACKAGE"

    step "configuring"
    run_logged make -C "$src" "${make_env[@]}" tinyconfig
    # merge_config.sh keeps its temporary files in the current directory.
    run_logged env -C "$src" scripts/kconfig/merge_config.sh -m .config "$fragment"
    run_logged make -C "$src" "${make_env[@]}" olddefconfig
    verify_config "$fragment" "$src/.config"

    step "compiling vmlinux on $(nproc) cores (about 6 minutes on 2)"
    run_logged make -C "$src" "${make_env[@]}" -j"$(nproc)" vmlinux
    verify_pvh_note "$src/vmlinux"

    mkdir "$work/entry"
    cp "$src/vmlinux" "$work/entry/vmlinux"
    cp "$src/.config" "$work/entry/config"
    echo "$SECONDS" >"$work/entry/build-seconds"
    mv -T "$work/entry" "$entry"
}

# Copies through a temporary name so OUT is never seen half-written.
publish() {
    local entry=$1
    cp "$entry/vmlinux" "$out.tmp.$$"
    mv -f "$out.tmp.$$" "$out"
    cp "$entry/config" "$out.config.tmp.$$"
    mv -f "$out.config.tmp.$$" "$out.config"
}

mib() {
    awk -v bytes="$(stat -c %s "$1")" 'BEGIN { printf "%.1f MiB", bytes / 1048576 }'
}

duration() {
    printf '%dm%02ds' $(($1 / 60)) $(($1 % 60))
}

main() {
    local hash entry lock_fd
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    if [[ -d $out ]]; then
        die "$out is a directory; give the path of the vmlinux to write"
    fi
    mkdir -p "$out_dir" "$kernel_cache"
    install_missing_packages
    hash=$(cache_key)
    entry="$kernel_cache/$hash"

    # One kernel build at a time (two would only fight over the cores); a caller that waited for
    # a build of the same hash then finds its entry.
    exec {lock_fd}>"$kernel_cache/.lock"
    if ! flock -n "$lock_fd"; then
        step "waiting for another kernel build to finish"
        flock "$lock_fd"
    fi

    if [[ -f $entry/vmlinux && -f $entry/config ]]; then
        publish "$entry"
        echo "kernel: cached $hash ($(mib "$out"), built in" \
            "$(duration "$(cat "$entry/build-seconds")")) -> $out"
        return
    fi

    # Holding the lock, any leftover work directory is from an interrupted build.
    rm -rf "$kernel_cache"/.build-*
    work=$(mktemp -d "$kernel_cache/.build-$hash.XXXXXX")
    : >"$log"
    SECONDS=0
    build_kernel "$entry"
    publish "$entry"
    echo "kernel: built $hash in $(duration "$SECONDS"), vmlinux $(mib "$out") -> $out"
}

main
