#!/usr/bin/env bash
# Lets this amd64 host run arm64 binaries: mounts binfmt_misc (a fresh machine or container does not
# have it mounted) and registers qemu-user-static's qemu-aarch64 handler with the F flag, so that
# the arm64 binary (packaging/check-package.sh) and an arm64 container (test-install.sh --arch arm64)
# run without a qemu of their own. Needs qemu-user-static and binfmt-support (installed by .ci/run).
# Idempotent. Usage: packaging/binfmt-arm64.sh
set -euo pipefail
[ -e /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
grep -q '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 || {
    echo "qemu-aarch64 binfmt handler lacks the F flag (fix-binary): arm64 containers cannot run" >&2
    exit 1
}
