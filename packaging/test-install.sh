#!/usr/bin/env bash
# End-to-end package test: boots a real systemd in a container (debootstrap + systemd-nspawn),
# installs the .deb with apt, points it at the tiny fixture model, and checks the service as users
# see it: start returns after READY with the daemon's STATUS line, health, detection for a member of
# intelligent-video-clients (refused for others), restart under a looping client, clean stop,
# reinstall keeping an edited config, purge removing state and cache; with TEST_GPU_WHEELS (a
# folder of onnxruntime-gpu and its nvidia-* wheels for the package's architecture), `runtime install`
# of them and the daemon's CPU fallback with that build; with TEST_OPENVINO_WHEELS (a folder with
# PyPI's openvino wheel for the package's architecture), its `runtime install` and the daemon
# serving through OpenVINO inside the unit's sandbox. Needs root, debootstrap and
# systemd-container (installed by .ci/run).
#
# --arch arm64 does the same for the arm64 package in an arm64 Debian booted under qemu-user
# emulation (qemu-user-static with binfmt_misc). A drop-in gives the service an Arm /proc/cpuinfo
# (ONNX Runtime's CPU detection crashes on the host's x86 one) and turns off the sandboxing steps
# qemu-user cannot emulate (user namespaces, seccomp). Its
# detection must match the amd64 binary's on the same image. The restart-under-load step is left
# out there (each emulated detection takes seconds). The debootstrapped base is kept in
# IV_TEST_ROOT between runs.
# Usage: packaging/test-install.sh [--arch amd64|arm64] [DEB]
set -euo pipefail
cd "$(dirname "$0")/.."
arch=amd64
if [ "${1:-}" = --arch ]; then arch=${2:?--arch amd64|arm64}; shift 2; fi
case $arch in
    amd64) deb=${1:-$(ls -1t target/debian/intelligent-video_*_amd64.deb | head -n 1)}
           work=${IV_TEST_ROOT:-/var/tmp/iv-test-install} ;;
    arm64) deb=${1:-$(ls -1t target/aarch64-unknown-linux-gnu/debian/intelligent-video_*_arm64.deb | head -n 1)}
           work=${IV_TEST_ROOT:-/var/tmp/iv-test-install}-arm64 ;;
    *) echo "unknown --arch $arch (amd64 or arm64)"; exit 2 ;;
esac
base=$work/base
root=$work/root
boot_tries=300
apt_extra=()
if [ "$arch" = arm64 ]; then
    # Foreign binaries run through qemu-aarch64-static, registered with the F flag so that the
    # container needs no qemu of its own.
    bash packaging/binfmt-arm64.sh
    # An Arm /proc/cpuinfo for ONNX Runtime's CPU detection.
    mkdir -p "$work"
    bash packaging/arm-cpuinfo.sh >"$work/cpuinfo"
    boot_tries=1500
    # Recommends (the libav and "bad" GStreamer plugins, ~140 packages) take minutes to unpack
    # under emulation and are not needed by the checks.
    apt_extra=(--no-install-recommends)
fi
# The machine's configured Debian mirror; without one, debootstrap's own default.
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)

fail() { echo "FAIL: $*"; [ -f "$work/console.log" ] && tail -n 30 "$work/console.log"; exit 1; }
step() { echo "== $*"; }

if [ ! -x "$base/lib/systemd/systemd" ]; then
    step "debootstrap bookworm $arch (${mirror:-the default mirror of debootstrap})"
    rm -rf "$base"
    mkdir -p "$work"
    debootstrap --arch="$arch" --variant=minbase --include=systemd,systemd-sysv,dbus,procps,curl,adduser \
        bookworm "$base" ${mirror:+"$mirror"} >"$work/debootstrap.log" 2>&1 || { tail -n 20 "$work/debootstrap.log"; fail debootstrap; }
fi
rm -rf "$root"
cp -a "$base" "$root"
echo "iv-test" >"$root/etc/hostname"
mkdir -p "$root/opt/ivtest"
cp "$deb" "$root/opt/ivtest/pkg.deb"
mkdir -p "$root/opt/ivtest/model" && cp models/fixtures/tiny-a/* "$root/opt/ivtest/model/"
cp models/fixtures/images/small_pad.png "$root/opt/ivtest/img.png"

step "boot systemd in the container"
systemd-nspawn -D "$root" --register=no --keep-unit -b --console=pipe >"$work/console.log" 2>&1 &
nspawn=$!
cleanup() {
    # The first SIGTERM asks the container to halt, a second one terminates it at once.
    kill "$nspawn" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$nspawn" 2>/dev/null || break; sleep 0.2; done
    kill "$nspawn" 2>/dev/null || true
    sleep 1
    kill -KILL "$nspawn" 2>/dev/null || true
    wait "$nspawn" 2>/dev/null || true
}
trap cleanup EXIT
pid=""
for _ in $(seq "$boot_tries"); do
    kill -0 "$nspawn" 2>/dev/null || break
    pid=$(pgrep -P "$nspawn" | head -n 1 || true)
    if [ -n "$pid" ]; then
        state=$(nsenter -t "$pid" -a systemctl is-system-running 2>/dev/null || true)
        case $state in running|degraded) break ;; esac
    fi
    sleep 0.2
done
[ -n "$pid" ] || fail "container did not boot"
ct() { nsenter -t "$pid" -a "$@"; }
echo "container systemd pid $pid ($(ct systemctl is-system-running || true))"

step "apt install ./intelligent-video.deb"
ct env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${apt_extra[@]+"${apt_extra[@]}"} /opt/ivtest/pkg.deb >"$work/apt.log" 2>&1 || { tail -n 20 "$work/apt.log"; fail "apt install"; }
ct getent passwd intelligent-video >/dev/null || fail "system user missing"
ct getent group intelligent-video-clients >/dev/null || fail "client group missing"
ct systemctl is-enabled intelligent-video.socket >/dev/null || fail "socket unit not enabled"

step "configure the tiny fixture model"
ct mkdir -p /var/lib/intelligent-video/models/acme
ct cp -r /opt/ivtest/model /var/lib/intelligent-video/models/acme/tiny
ct chown -R intelligent-video:intelligent-video /var/lib/intelligent-video/models
ct sh -c 'printf "\nmodel = \"acme/tiny\"\nwarmup_iterations = 2\n" >> /etc/intelligent-video/config.toml'
ct intelligent-video config check >/dev/null || fail "config check"
if [ "$arch" != amd64 ]; then
    # Under qemu-user the service gets the Arm cpuinfo written above, and three sandboxing steps
    # qemu-user cannot emulate are turned off: user namespaces (PrivateUsers: EINVAL) and seccomp
    # filters of the emulated architecture. The amd64 run checks the packaged hardening.
    cp "$work/cpuinfo" "$root/opt/ivtest/cpuinfo"
    ct mkdir -p /etc/systemd/system/intelligent-video.service.d
    ct sh -c 'printf "[Service]\nPrivateUsers=no\nSystemCallFilter=\nSystemCallArchitectures=\nBindReadOnlyPaths=/opt/ivtest/cpuinfo:/proc/cpuinfo\n" > /etc/systemd/system/intelligent-video.service.d/qemu-user.conf'
    ct systemctl daemon-reload
fi

step "systemctl start returns after READY"
ct systemctl start intelligent-video.socket
ct systemctl start intelligent-video || { ct journalctl -u intelligent-video --no-pager | tail -n 30; fail "start"; }
[ "$(ct systemctl show -p ActiveState --value intelligent-video)" = active ] || fail "not active after start"
ct systemctl status intelligent-video --no-pager | tee "$work/status.txt" | grep -q 'Status: "serving on cpu"' || { cat "$work/status.txt"; fail "STATUS line not shown"; }

step "health"
ct curl -sf http://127.0.0.1:8000/api/health | grep -q '"status":"healthy"' || fail "health"

step "detection as a client-group member; refused for another user"
ct useradd -m -G intelligent-video-clients alice
ct useradd -m bob
ct runuser -u alice -- curl -sf --unix-socket /run/intelligent-video.sock -H 'content-type: image/png' \
    --data-binary @/opt/ivtest/img.png 'http://localhost/v1/detect?query=person&threshold=0' >"$work/detect.json" || fail "alice detect"
grep -q '"detections":\[{' "$work/detect.json" || fail "alice detect: $(head -c 300 "$work/detect.json")"
if [ "$arch" != amd64 ]; then
    step "$arch detections match the amd64 binary's"
    host_bin=target/release/intelligent-video
    [ -x "$host_bin" ] || fail "$host_bin missing: run make build first"
    "$host_bin" detect --model models/fixtures/tiny-a --query person --threshold 0 \
        models/fixtures/images/small_pad.png >"$work/detect-amd64.json" || fail "amd64 detect"
    python3 packaging/compare-detections.py "$work/detect-amd64.json" "$work/detect.json" || fail "$arch detections differ from amd64"
fi
step "the web console on the socket for the client group, not on the health port"
ct runuser -u alice -- curl -sf --unix-socket /run/intelligent-video.sock http://localhost/ | grep -c '<script src="/ui/app.js"' >/dev/null ||
    fail "console page"
ct runuser -u alice -- curl -sf --unix-socket /run/intelligent-video.sock http://localhost/ui/app.js | grep -c 'Intelligent Video console' >/dev/null ||
    fail "console script"
[ "$(ct curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8000/)" = 404 ] || fail "the console is served on the health port"
if ct runuser -u bob -- curl -s --unix-socket /run/intelligent-video.sock -H 'content-type: image/png' \
    --data-binary @/opt/ivtest/img.png 'http://localhost/v1/detect?query=person' >/dev/null 2>&1; then
    fail "bob was not refused"
fi

if [ "$arch" = amd64 ]; then
step "restart while a client loops"
ct runuser -u alice -- sh -c 'for i in $(seq 150); do
    code=$(curl -s -o /dev/null -w "%{http_code}" --max-time 60 --unix-socket /run/intelligent-video.sock \
        -H "content-type: image/png" --data-binary @/opt/ivtest/img.png "http://localhost/v1/detect?query=person")
    echo "$? $code"
done > /home/alice/loop.txt' &
loop=$!
sleep 1
ct systemctl restart intelligent-video
wait "$loop" || true
ct cat /home/alice/loop.txt >"$work/loop.txt"
total=$(wc -l <"$work/loop.txt")
ok=$(grep -c '^0 200$' "$work/loop.txt" || true)
busy=$(grep -c '^0 503$' "$work/loop.txt" || true)
echo "requests $total: 200=$ok 503=$busy"
[ "$total" -eq 150 ] || fail "client loop incomplete"
[ $((ok + busy)) -eq "$total" ] || { grep -v -e '^0 200$' -e '^0 503$' "$work/loop.txt" | head; fail "lost or failed requests across restart"; }
[ "$ok" -gt 0 ] || fail "no successful request"
fi

if [ -n "${TEST_GPU_WHEELS:-}" ]; then
step "runtime install of the GPU wheels: the CUDA provider misses only the driver; the daemon serves on the CPU"
# onnxruntime-gpu and the nvidia-* wheels of its cuda and cudnn extras, for this architecture, copied
# in as a machine without pip would (runtime install FILE...), installed as the service user. The
# container has no NVIDIA driver: with the CUDA libraries preloaded from the build, the loader must
# miss libcuda.so.1 and nothing else.
mkdir -p "$root/opt/ivtest/wheels"
cp "$TEST_GPU_WHEELS"/onnxruntime_gpu-*.whl "$TEST_GPU_WHEELS"/nvidia_*.whl "$root/opt/ivtest/wheels/"
props=(-p User=intelligent-video)
[ "$arch" = amd64 ] || props+=(-p BindReadOnlyPaths=/opt/ivtest/cpuinfo:/proc/cpuinfo)
ct systemd-run --quiet --wait --pipe "${props[@]}" /bin/sh -c \
    'intelligent-video runtime install /opt/ivtest/wheels/*.whl' >"$work/runtime.txt" 2>&1 || { cat "$work/runtime.txt"; fail "runtime install"; }
cat "$work/runtime.txt"
grep -qx '  libonnxruntime_providers_cuda.so: libcuda.so.1: cannot open shared object file: No such file or directory' "$work/runtime.txt" ||
    fail "the CUDA provider should miss only libcuda.so.1"
grep -q '^carries CUDA 13\.[0-9]*, cuDNN 9\.' "$work/runtime.txt" || fail "the build should carry CUDA 13 and cuDNN 9"
rm -rf "$root/opt/ivtest/wheels"
ct systemctl restart intelligent-video || { ct journalctl -u intelligent-video --no-pager | tail -n 30; fail "restart with the GPU build"; }
ct curl -sf http://127.0.0.1:8000/api/optimization >"$work/optimization.json" || fail "optimization"
python3 - "$work/optimization.json" <<'PY' || fail "the daemon should load the GPU build and fall back to the CPU for want of the driver"
import json, sys
o = json.load(open(sys.argv[1]))
assert o["onnxruntime_path"].endswith("/runtimes/onnxruntime-gpu-1.31.1/libonnxruntime.so.1.31.1"), o["onnxruntime_path"]
assert o["optimization"]["backend"] == "cpu", o["optimization"]
reasons = [f["reason"] for f in o["optimization"]["fallbacks"]]
assert reasons and all("NVIDIA driver" in r for r in reasons), reasons
print("serving on cpu with", o["onnxruntime_path"], "; skipped:", reasons[0])
PY
fi

if [ -n "${TEST_OPENVINO_WHEELS:-}" ]; then
step "runtime install of the openvino wheel; optimization_backend = openvino serves through it inside the unit's sandbox"
# The openvino wheel alone (its numpy and telemetry companions carry no library we keep), installed
# as the service user; a drop-in forces the tier, and the detections must match the CPU engine's
# (fp32: exact within the parity bounds). OpenVINO's CPU plugin JIT-compiles its kernels and its
# threading library reads the CPU topology: this proves the unit's system-call filter lets it.
mkdir -p "$root/opt/ivtest/ov"
cp "$TEST_OPENVINO_WHEELS"/openvino-*.whl "$root/opt/ivtest/ov/"
ct systemd-run --quiet --wait --pipe -p User=intelligent-video /bin/sh -c \
    'intelligent-video runtime install /opt/ivtest/ov/openvino-*.whl' >"$work/openvino.txt" 2>&1 || { cat "$work/openvino.txt"; fail "runtime install openvino"; }
cat "$work/openvino.txt"
grep -q '^devices: CPU' "$work/openvino.txt" || fail "OpenVINO should offer the CPU device"
rm -rf "$root/opt/ivtest/ov"
ct runuser -u alice -- curl -sf --unix-socket /run/intelligent-video.sock -H 'content-type: image/png' \
    --data-binary @/opt/ivtest/img.png 'http://localhost/v1/detect?query=person&threshold=0' >"$work/detect-ort.json" || fail "detect before openvino"
ct mkdir -p /etc/systemd/system/intelligent-video.service.d
ct sh -c 'printf "[Service]\nEnvironment=IV_OPTIMIZATION_BACKEND=openvino\n" > /etc/systemd/system/intelligent-video.service.d/openvino.conf'
ct systemctl daemon-reload
ct systemctl restart intelligent-video || { ct journalctl -u intelligent-video --no-pager | tail -n 30; fail "restart on openvino"; }
ct curl -sf http://127.0.0.1:8000/api/optimization >"$work/optimization-ov.json" || fail "optimization"
python3 - "$work/optimization-ov.json" <<'PY' || fail "the daemon should serve through OpenVINO"
import json, sys
o = json.load(open(sys.argv[1]))
assert o["optimization"]["backend"] == "openvino", o["optimization"]
assert o["openvino"]["version"].startswith("2026.4.1"), o["openvino"]
assert o["openvino"]["path"].endswith("/runtimes/openvino-2026.4.1"), o["openvino"]
print("serving on openvino", o["openvino"]["version"])
PY
ct runuser -u alice -- curl -sf --unix-socket /run/intelligent-video.sock -H 'content-type: image/png' \
    --data-binary @/opt/ivtest/img.png 'http://localhost/v1/detect?query=person&threshold=0' >"$work/detect-ov.json" || fail "detect on openvino"
python3 packaging/compare-detections.py "$work/detect-ort.json" "$work/detect-ov.json" || fail "OpenVINO's detections differ from ONNX Runtime's"
ct rm /etc/systemd/system/intelligent-video.service.d/openvino.conf
ct systemctl daemon-reload
ct systemctl restart intelligent-video || fail "restart back on the CPU engine"
fi

step "MQTT through the unit's sandbox, the password from LoadCredential (amd64) or password_file"
# A broker on the host (the container shares its network), with a password: the daemon can only
# say "online" if the password reached it. Under qemu-user (arm64 here) systemd cannot set up
# credentials ("Failed to set up credentials: Invalid argument", like PrivateUsers above), so the
# emulated run reads the same file through password_file instead; amd64 checks LoadCredential.
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || fail "mosquitto is not installed (apt install mosquitto mosquitto-clients)"
mqtt_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$work/mqtt"
: >"$work/mqtt/passwd"
mosquitto_passwd -b "$work/mqtt/passwd" iv "s3cret-$mqtt_port"
printf 'user root\nlistener %s 127.0.0.1\nallow_anonymous false\npassword_file %s\n' "$mqtt_port" "$work/mqtt/passwd" >"$work/mqtt/mosquitto.conf"
/usr/sbin/mosquitto -c "$work/mqtt/mosquitto.conf" >"$work/mqtt/broker.log" 2>&1 &
broker=$!
trap 'kill "$broker" 2>/dev/null || true; cleanup' EXIT
# The container's files are under $root on this machine.
(umask 077; printf 's3cret-%s\n' "$mqtt_port" >"$root/etc/intelligent-video/mqtt-password")
printf '\n[mqtt]\nurl = "mqtt://127.0.0.1:%s"\nusername = "iv"\n' "$mqtt_port" >>"$root/etc/intelligent-video/config.toml"
if [ "$arch" = amd64 ]; then
    mkdir -p "$root/etc/systemd/system/intelligent-video.service.d"
    printf '[Service]\nLoadCredential=mqtt-password:/etc/intelligent-video/mqtt-password\n' \
        >"$root/etc/systemd/system/intelligent-video.service.d/mqtt.conf"
else
    ct chown intelligent-video /etc/intelligent-video/mqtt-password
    printf 'password_file = "/etc/intelligent-video/mqtt-password"\n' >>"$root/etc/intelligent-video/config.toml"
fi
ct intelligent-video config check >/dev/null || fail "config check with [mqtt]"
ct systemctl daemon-reload
ct systemctl restart intelligent-video || { ct journalctl -u intelligent-video --no-pager | tail -n 30; fail "restart with MQTT"; }
got=$(mosquitto_sub -h 127.0.0.1 -p "$mqtt_port" -u iv -P "s3cret-$mqtt_port" -t intelligent-video/available -C 1 -W 60 || true)
[ "$got" = online ] || { ct journalctl -u intelligent-video --no-pager | tail -n 20; tail -n 20 "$work/mqtt/broker.log"; fail "no retained 'online' from the daemon (got '$got')"; }
echo "the daemon signed in with the password and said online"

step "systemctl stop exits cleanly"
ct systemctl stop intelligent-video
[ "$(ct systemctl show -p Result --value intelligent-video)" = success ] || fail "stop result"
[ "$(ct systemctl show -p ExecMainStatus --value intelligent-video)" = 0 ] || fail "exit status"
ct journalctl -u intelligent-video --no-pager -o cat >"$work/journal.txt" 2>&1 || true
grep -q "shutdown requested" "$work/journal.txt" || { tail -n 20 "$work/journal.txt"; fail "no drain logged"; }
grep -q "watching the loaded ONNX Runtime libraries" "$work/journal.txt" || { grep -i "guard\|runtime librar" "$work/journal.txt" | head; fail "runtime library guard not running under the unit"; }

step "reinstall keeps an edited config.toml"
ct sh -c 'echo "# edited by the admin" >> /etc/intelligent-video/config.toml'
ct env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --reinstall /opt/ivtest/pkg.deb >>"$work/apt.log" 2>&1 || fail "reinstall"
ct grep -q "# edited by the admin" /etc/intelligent-video/config.toml || fail "edited config lost"

step "purge removes config, models and cache; the user stays"
ct env DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq intelligent-video >>"$work/apt.log" 2>&1 || fail "purge"
for d in /etc/intelligent-video /var/lib/intelligent-video /var/cache/intelligent-video; do
    ct test ! -e "$d" || fail "$d left after purge"
done
ct getent passwd intelligent-video >/dev/null || fail "user removed by purge"
echo "test-install passed ($arch)"
