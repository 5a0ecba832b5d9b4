#!/usr/bin/env bash
# Link files for cross-building against arm64 GStreamer on an amd64 host.
#
# Debian's libgstreamer-plugins-base1.0-dev is not Multi-Arch: same, so its arm64 copy cannot be
# installed beside the amd64 one that native builds need. This script unpacks the arm64 package
# (apt-get download; `dpkg --add-architecture arm64` must have been done) into OUT, points its
# pkg-config files at OUT and its .so links at the arm64 runtime libraries installed by apt
# (libgstreamer-plugins-base1.0-0:arm64, which is co-installable). Cross builds then use
# PKG_CONFIG_LIBDIR=OUT/pkgconfig:/usr/lib/aarch64-linux-gnu/pkgconfig (see the Makefile).
# Usage: packaging/arm64-gst-dev.sh OUT
set -euo pipefail
out=$(realpath -m "${1:?usage: arm64-gst-dev.sh OUT}")
multiarch=/usr/lib/aarch64-linux-gnu
[ -e "$multiarch/libgstvideo-1.0.so.0" ] || {
    echo "arm64 GStreamer runtime libraries missing: apt-get install libgstreamer-plugins-base1.0-0:arm64" >&2
    exit 1
}
tmp=$(mktemp -d)
chmod 755 "$tmp"   # apt-get download runs as _apt
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download -qq libgstreamer-plugins-base1.0-dev:arm64)
dpkg-deb -x "$tmp"/libgstreamer-plugins-base1.0-dev_*_arm64.deb "$tmp/root"
rm -rf "$out.tmp"
mkdir -p "$out.tmp/pkgconfig" "$out.tmp/lib"
for pc in "$tmp/root$multiarch"/pkgconfig/*.pc; do
    sed "s#^libdir=.*#libdir=$out/lib#" "$pc" >"$out.tmp/pkgconfig/$(basename "$pc")"
done
for so in "$tmp/root$multiarch"/*.so; do
    ln -s "$multiarch/$(readlink "$so")" "$out.tmp/lib/$(basename "$so")"
done
rm -rf "$out"
mv "$out.tmp" "$out"
echo "arm64 GStreamer link files in $out"
