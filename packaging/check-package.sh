#!/usr/bin/env bash
# Static checks of the Debian package and the systemd units (run by .ci/run after `make deb`):
# lintian without errors, `systemd-analyze verify` silent on stderr, hardening score within 2.0.
# Usage: packaging/check-package.sh [DEB] (default: the newest amd64 package; for the arm64 one,
# target/aarch64-unknown-linux-gnu/debian/*.deb, running its binary needs qemu-user's binfmt).
set -euo pipefail
cd "$(dirname "$0")/.."
deb=${1:-$(ls -1t target/debian/intelligent-video_*_amd64.deb | head -n 1)}
echo "checking $deb"

echo "== lintian (overrides shipped in the package, packaging/lintian-overrides)"
lintian --fail-on error "$deb"

echo "== package contents"
contents=$(dpkg-deb -c "$deb")
for f in ./usr/bin/intelligent-video ./usr/lib/intelligent-video/libonnxruntime.so.1.31.1 \
    ./etc/intelligent-video/config.toml ./usr/lib/systemd/system/intelligent-video.service \
    ./usr/lib/systemd/system/intelligent-video.socket; do
    grep -q " $f\$" <<<"$contents" || { echo "missing $f in the package"; exit 1; }
done
depends=$(dpkg-deb -f "$deb" Depends)
for d in adduser libgstreamer1.0-0 libgstreamer-plugins-base1.0-0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good; do
    grep -q "$d" <<<"$depends" || { echo "Depends lacks $d: $depends"; exit 1; }
done
dpkg-deb -f "$deb" Recommends | grep -q gstreamer1.0-libav || { echo "Recommends lacks gstreamer1.0-libav"; exit 1; }
dpkg-deb -e "$deb" "$(mktemp -d)" && echo "control files ok"
conffiles=$(dpkg-deb -I "$deb" conffiles)
grep -qx /etc/intelligent-video/config.toml <<<"$conffiles" || { echo "config.toml is not a conffile"; exit 1; }

echo "== systemd-analyze verify (units as packaged; ExecStart pointed at the extracted binary)"
root=$(mktemp -d)
dpkg-deb -x "$deb" "$root"
units=$(mktemp -d)
for u in intelligent-video.socket intelligent-video.service; do
    sed "s#/usr/bin/intelligent-video#$root/usr/bin/intelligent-video#" "$root/usr/lib/systemd/system/$u" >"$units/$u"
done
err=$(mktemp)
systemd-analyze verify --man=no "$units/intelligent-video.socket" "$units/intelligent-video.service" 2>"$err" || true
if [ -s "$err" ]; then
    echo "systemd-analyze verify printed:"; cat "$err"; exit 1
fi
rm -rf "$units"

echo "== systemd-analyze security"
systemd-analyze security --offline=yes --threshold=20 systemd/intelligent-video.service | tail -n 1

echo "== shipped config validates"
IV_MODEL=/nonexistent "$root/usr/bin/intelligent-video" config check --config "$root/etc/intelligent-video/config.toml" >/dev/null
rm -rf "$root" "$err"
echo "package checks passed"
