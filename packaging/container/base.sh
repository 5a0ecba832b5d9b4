#!/usr/bin/env bash
# A local stand-in for the images' base, `debian:bookworm-slim`, for machines that reach Debian's
# package mirror but no container registry: debootstraps bookworm (minbase) for ARCH, trims it the
# way the slim image is trimmed (no apt lists, man pages, docs, locales), and imports it into
# podman's store under the name the Containerfile's FROM uses. The root is kept in
# IV_CONTAINER_ROOT (default /var/tmp/iv-container-base-ARCH) between runs; the import is redone
# every time (the arm64 and amd64 bases share the one name). Needs root, debootstrap, podman, and
# for arm64 qemu-user-static with binfmt_misc (packaging/binfmt-arm64.sh).
# Usage: packaging/container/base.sh [amd64|arm64]
set -euo pipefail
cd "$(dirname "$0")/../.."
arch=${1:-amd64}
case $arch in amd64 | arm64) ;; *) echo "unknown architecture $arch (amd64 or arm64)" >&2; exit 2 ;; esac
name=docker.io/library/debian:bookworm-slim
work=${IV_CONTAINER_ROOT:-/var/tmp/iv-container-base-$arch}
root=$work/root
# The machine's configured Debian mirror; without one, debootstrap's own default.
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)

if [ ! -e "$work/.complete" ]; then
    [ "$arch" = amd64 ] || bash packaging/binfmt-arm64.sh
    rm -rf "$work"
    mkdir -p "$work"
    echo "== debootstrap bookworm $arch (${mirror:-the default mirror of debootstrap})"
    debootstrap --arch="$arch" --variant=minbase bookworm "$root" ${mirror:+"$mirror"} \
        >"$work/debootstrap.log" 2>&1 || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
    # As the slim image: no documentation or lists; apt keeps no downloaded packages.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
        "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/*.log
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
    cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
CFG
    printf 'Binary::apt::APT::Keep-Downloaded-Packages "false";\n' >"$root/etc/apt/apt.conf.d/docker-clean"
    : >"$root/etc/hostname"
    touch "$work/.complete"
fi
echo "== podman import $arch as $name"
tar -C "$root" --numeric-owner -cf - . |
    podman import --arch "$arch" --os linux --change 'CMD ["bash"]' - "$name" >/dev/null
podman image inspect --format '{{.Architecture}} {{.Size}}' "$name"
