#!/usr/bin/env bash
# engine/base/build-rootfs.sh SUITE MIRROR SOURCES_FILE OUT_TAR
#
# Builds a minimal Debian root filesystem with debootstrap (--variant=minbase), slims it like
# the official debian:*-slim images, installs SOURCES_FILE as its apt sources and the files
# under engine/base/rootfs/, and writes it as a tar to OUT_TAR (for `docker import`).
# Run by engine/build_images.py; everything in this directory is part of the base image's
# build hash, so editing it rebuilds the base and every image on top of it.
set -Eeuo pipefail
suite=${1:?suite} mirror=${2:?mirror} sources=${3:?sources file} out=${4:?output tar}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${MOAT_ENGINE_CACHE:-/var/cache/moat-engine}

[ "$(id -u)" = 0 ] || { echo "build-rootfs: must run as root (debootstrap)" >&2; exit 1; }
mkdir -p "$cache/debootstrap-debs"
work=$(mktemp -d "$cache/rootfs.XXXXXX")
root=$work/root

cleanup() {
    # debootstrap mounts proc/sys (and, in some containers, binds /dev) inside the target and can
    # leave them mounted on failure: unmount everything below $work before deleting it, and never
    # let rm cross into another file system.
    local m
    for m in $(awk -v w="$work/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT

debootstrap --variant=minbase --cache-dir="$cache/debootstrap-debs" "$suite" "$root" "$mirror" \
    >"$work/debootstrap.out" 2>&1 || {
    echo "build-rootfs: debootstrap failed; last lines:" >&2
    tail -n 30 "$work/debootstrap.out" >&2
    [ -f "$root/debootstrap/debootstrap.log" ] && tail -n 30 "$root/debootstrap/debootstrap.log" >&2
    exit 1
}

# apt sources: the host's deb.debian.org ones (same mirror the host uses).
rm -f "$root/etc/apt/sources.list"
install -D -m 0644 "$sources" "$root/etc/apt/sources.list.d/debian.sources"

# Image tweaks (apt/dpkg config, policy-rc.d).
cp -a "$here/rootfs/." "$root/"
chown -R 0:0 "$root/etc/apt/apt.conf.d" "$root/etc/dpkg/dpkg.cfg.d" "$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"

# Slim: what dpkg.cfg.d/docker-slim keeps out of later installs, removed from the bootstrap too.
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root"/usr/share/{man,info,groff,linda,locale}/* "$root"/usr/share/lintian/overrides/*

# Clean apt state and host-specific files (docker provides resolv.conf, hostname and hosts).
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
    "$root"/var/cache/apt/archives/partial/* "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old
find "$root/var/log" -type f -delete
: >"$root/etc/resolv.conf"
: >"$root/etc/hostname"
: >"$root/etc/machine-id"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
rm -rf "$root"/tmp/* "$root"/var/tmp/* "$root"/root/.bash_history

tar --numeric-owner --xattrs -C "$root" \
    --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
    -cf "$out" .
echo "build-rootfs: wrote $out ($(du -h "$out" | cut -f1))"
