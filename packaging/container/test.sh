#!/usr/bin/env bash
# The container image's run test, without a container engine (none can run containers on the build
# machines: `podman run` fails there on setrlimit). Each "container" is a fresh podman container's
# writable root file system (`podman create` + `podman mount`), started as a container engine
# would start the image: the image's entrypoint, command, user (with its groups), environment and
# working directory, as PID 1 of new PID, mount, network, UTS and IPC namespaces, /proc and /dev
# mounted, the image's volumes bound from host folders that start with the image's owners and
# modes (as a new named volume does), and the healthcheck run inside the container as the engine
# runs it. Checks, each against the image's own settings:
#   - `model pull --from` as a one-shot container (the compose file's model service) fills the
#     model volume;
#   - the daemon becomes healthy (the image's HEALTHCHECK command passes);
#   - its socket appears in the mounted /run/intelligent-video/ with the clients' group, mode 0660,
#     and a host client's detection over it matches the host binary's `detect` on the same image;
#   - a stream of an H.264 MP4 plays to its end, decoded by libav's avdec_h264;
#   - SIGTERM (the image's STOPSIGNAL) ends it with exit status 0;
#   - a second container (new writable layer, other hostname) on the same volumes loads the
#     optimized engine from the cache volume and answers the same detection.
# arm64 runs under qemu-user (binfmt_misc with the F flag), with an Arm /proc/cpuinfo bound over
# the emulated one (ONNX Runtime reads it). Needs root, podman, util-linux, iproute2, curl, python3
# with numpy and ffmpeg (the clip).
# Usage: packaging/container/test.sh IMAGE [amd64|arm64]
set -euo pipefail
cd "$(dirname "$0")/../.."
image=${1:?usage: packaging/container/test.sh IMAGE [amd64|arm64]}
arch=${2:-amd64}
model=models/fixtures/tiny-track
picture=docs/detect-input.jpg
query='query=a+red+square&query=a+blue+disc'
ready_tries=600
[ "$arch" = amd64 ] || ready_tries=3000
work=$(mktemp -d /var/tmp/iv-container-test.XXXXXX)
containers=()
daemon=

step() { echo "== $*"; }
cleanup() {
    [ -z "$daemon" ] || kill -KILL "$daemon" 2>/dev/null || true
    for c in "${containers[@]}"; do
        podman umount "$c" >/dev/null 2>&1 || true
        podman rm -f "$c" >/dev/null 2>&1 || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
fail() {
    echo "FAIL: $*"
    for log in "$work"/*.log; do [ -f "$log" ] && { echo "--- $log"; tail -n 30 "$log"; }; done
    exit 1
}

# The image's run settings, as shell assignments.
podman image inspect --format '{{json .}}' "$image" >"$work/image.json" || fail "no image $image"
python3 - "$work/image.json" >"$work/config.sh" <<'PY'
import json, shlex, sys
i = json.load(open(sys.argv[1]))
i = i[0] if isinstance(i, list) else i
c = i["Config"]
def arr(name, v):
    print(f"{name}=(" + " ".join(shlex.quote(x) for x in (v or [])) + ")")
arr("entrypoint", c.get("Entrypoint"))
arr("cmd", c.get("Cmd"))
arr("env", c.get("Env"))
arr("volumes", sorted((c.get("Volumes") or {}).keys()))
# podman shows the healthcheck beside the config, docker inside it.
test = (c.get("Healthcheck") or i.get("Healthcheck") or {}).get("Test") or []
arr("health", test[1:] if test[:1] == ["CMD"] else [])
print("user=" + shlex.quote(c.get("User") or "root"))
print("workdir=" + shlex.quote(c.get("WorkingDir") or "/"))
print("stopsignal=" + shlex.quote(c.get("StopSignal") or "SIGTERM"))
PY
# shellcheck disable=SC1091
. "$work/config.sh"
[ ${#health[@]} -gt 0 ] || fail "the image has no HEALTHCHECK CMD (built without --format docker?)"
[ "$stopsignal" = SIGTERM ] || fail "STOPSIGNAL is $stopsignal"

cpuinfo=
if [ "$arch" = arm64 ]; then
    bash packaging/binfmt-arm64.sh
    cpuinfo=$work/cpuinfo
    bash packaging/arm-cpuinfo.sh >"$cpuinfo"
fi

# A new container of the image: sets $root to its root file system.
new_root() {
    local c
    c=$(podman create --pull=never --platform "linux/$arch" "$image")
    containers+=("$c")
    root=$(podman mount "$c")
}

# The image user's uid, gid and groups, from the image's own /etc/passwd and /etc/group.
ids() {
    local root=$1 name=${user%%:*} uid gid groups
    uid=$(awk -F: -v u="$name" '$1 == u || $3 == u {print $3; exit}' "$root/etc/passwd")
    gid=$(awk -F: -v u="$name" '$1 == u || $3 == u {print $4; exit}' "$root/etc/passwd")
    [ -n "$uid" ] || fail "user $name is not in the image"
    groups=$(awk -F: -v u="$name" '{n = split($4, m, ","); for (i = 1; i <= n; i++) if (m[i] == u) print $3}' \
        "$root/etc/group" | paste -sd, -)
    home=$(awk -F: -v u="$name" '$1 == u || $3 == u {print $6; exit}' "$root/etc/passwd")
    echo "$uid $gid ${groups:-$gid} ${home:-/}"
}

# The volumes start as the image has them (owner, group, mode), as a new named volume does.
new_root
for v in "${volumes[@]}"; do
    host=$work/vol$(echo "$v" | tr / _)
    mkdir -p "$host"
    chown "$(stat -c %u:%g "$root$v")" "$host"
    chmod "$(stat -c %a "$root$v")" "$host"
done
vol() { echo "$work/vol$(echo "$1" | tr / _)"; }
mkdir -p "$work/fixture" "$work/clips"
cp -r "$model"/. "$work/fixture/"
# An H.264 MP4 of the tracking clip, for a stream (the image decodes it with gstreamer1.0-libav).
python3 bench/track_clips.py --kind moving --out "$work/clips" >/dev/null
ffmpeg -loglevel error -y -i "$work/clips/moving.mkv" -c:v libx264 -pix_fmt yuv420p "$work/clips/moving.mp4"

# Starts a container on ROOT with HOSTNAME and LOG: extra environment after `--env`, the command
# (default: the image's) after `--`. Sets $daemon (host pid of the container's PID 1).
start() {
    local root=$1 hostname=$2 log=$3
    shift 3
    local extra_env=() args=("${cmd[@]}")
    while [ $# -gt 0 ]; do
        case $1 in
            --env) extra_env+=("$2"); shift 2 ;;
            --) shift; args=("$@"); break ;;
        esac
    done
    local uid gid groups home
    read -r uid gid groups home < <(ids "$root")
    local mounts="mount --rbind /dev '$root/dev'"
    for v in "${volumes[@]}"; do mounts+="; mount --bind '$(vol "$v")' '$root$v'"; done
    mounts+="; mkdir -p '$root/fixture' '$root/clips'; mount --bind -o ro '$work/fixture' '$root/fixture'"
    mounts+="; mount --bind -o ro '$work/clips' '$root/clips'"
    [ -z "$cpuinfo" ] || mounts+="; mount --bind '$cpuinfo' '$root/proc/cpuinfo'"
    unshare --pid --fork --mount --net --uts --ipc --mount-proc="$root/proc" \
        sh -c "$mounts; hostname '$hostname'; ip link set lo up; \
               exec chroot --userspec=$uid:$gid --groups=$groups '$root' \"\$@\"" sh \
        env -i -C "$workdir" HOSTNAME="$hostname" HOME="$home" "${env[@]}" "${extra_env[@]}" \
        "${entrypoint[@]}" "${args[@]}" >"$log" 2>&1 &
    outer_pid=$!
    # The container's PID 1 is unshare's child; a short command may have ended already (then
    # $daemon stays empty and `wait $outer_pid` gives its status).
    daemon=
    for _ in $(seq 200); do
        daemon=$(pgrep -P "$outer_pid" | head -n 1 || true)
        [ -n "$daemon" ] && break
        kill -0 "$outer_pid" 2>/dev/null || break
        sleep 0.05
    done
    [ -n "$daemon" ] || ! kill -0 "$outer_pid" 2>/dev/null || fail "the container did not start"
}

# The image's healthcheck, inside the container's namespaces and root, as the image's user.
healthcheck() {
    local uid gid
    read -r uid gid _ _ < <(ids "/proc/$daemon/root")
    nsenter -t "$daemon" -m -n -p -u -r -w -S "$uid" -G "$gid" env -i "${env[@]}" "${health[@]}" >/dev/null 2>&1
}

wait_healthy() {
    [ -n "$daemon" ] || fail "the daemon exited at once"
    for _ in $(seq "$ready_tries"); do
        healthcheck && return 0
        kill -0 "$daemon" 2>/dev/null || fail "the daemon exited before it was healthy"
        sleep 0.2
    done
    fail "not healthy"
}

# Stops the container as an engine does (the STOPSIGNAL to PID 1) and checks exit status 0.
stop() {
    kill -TERM "$daemon"
    local rc=0
    wait "$outer_pid" || rc=$?
    daemon=
    [ "$rc" -eq 0 ] || fail "exit status $rc after SIGTERM"
}

api() {
    curl -sS --max-time 30 --unix-socket "$(vol /run/intelligent-video)/detect.sock" "$@"
}

# A stream of the H.264 clip plays to its end in the image; its decoder is libav's.
stream_check() {
    api -X PUT -H 'content-type: application/json' \
        --data '{"url": "/clips/moving.mp4", "queries": ["a red square"], "threshold": 0.3}' \
        http://localhost/v1/streams/clip >"$work/put.json" || fail "PUT stream: $(cat "$work/put.json")"
    for _ in $(seq "$ready_tries"); do
        api http://localhost/v1/streams/clip >"$work/stream.json"
        grep -q '"state":"finished"' "$work/stream.json" && break
        grep -q '"state":"failed"' "$work/stream.json" && fail "stream failed: $(cat "$work/stream.json")"
        sleep 0.2
    done
    python3 - "$work/stream.json" <<'PY' || fail "stream: $(cat "$work/stream.json")"
import json, sys
s = json.load(open(sys.argv[1]))
assert s["state"] == "finished", s
assert s["frames"] > 0 and s["decoder"] == "avdec_h264", s
print(f"stream of an H.264 MP4: {s['frames']} frames, decoder {s['decoder']}")
PY
    [ "$(api -o /dev/null -w '%{http_code}' -X DELETE http://localhost/v1/streams/clip)" = 204 ] ||
        fail "DELETE stream"
}

detect_over_socket() {
    curl -sS --fail-with-body --max-time 120 --unix-socket "$(vol /run/intelligent-video)/detect.sock" \
        -H 'content-type: image/jpeg' --data-binary @"$picture" "http://localhost/v1/detect?$query" >"$1" ||
        fail "detection over the socket: $(cat "$1")"
}

step "model pull --from as a one-shot container ($arch)"
start "$root" pull "$work/pull.log" -- model pull acme/tiny-track --from /fixture
wait "$outer_pid" || fail "model pull failed"
daemon=
[ -f "$(vol /var/lib/intelligent-video)/models/acme/tiny-track/model.safetensors" ] || fail "the model is not in the volume"

step "first container: serve until healthy"
start "$root" first "$work/first.log" --env IV_MODEL=acme/tiny-track --env 'IV_STREAM_FILE_ROOTS=["/clips"]'
wait_healthy
sock=$(vol /run/intelligent-video)/detect.sock
[ "$(stat -c '%a %g' "$sock")" = "660 901" ] || fail "socket $(stat -c '%a %u:%g' "$sock"), want 660 with group 901"
detect_over_socket "$work/first.json"
stream_check
# An image that names its ONNX Runtime build (the GPU image's /opt runtime) is served by that build.
for e in "${env[@]}"; do
    case $e in
        IV_ONNXRUNTIME_PATH=*)
            grep -q "ONNX Runtime libraries for in-place rewrites files=\[\"${e#*=}/" "$work/first.log" ||
                fail "the daemon did not load ${e#*=}"
            echo "served by the image's ONNX Runtime build ${e#*=}" ;;
    esac
done
step "SIGTERM"
stop

step "second container (new layer, other hostname) on the same volumes"
new_root
start "$root" second "$work/second.log" --env IV_MODEL=acme/tiny-track
wait_healthy
grep -q 'loaded the optimized engine from the cache' "$work/second.log" ||
    fail "the second container did not load the engine from the cache volume"
detect_over_socket "$work/second.json"
stop

step "answers against the host binary's detect (amd64: the reference arm64 is held to as well)"
target/release/intelligent-video detect --model "$model" --query 'a red square' --query 'a blue disc' \
    "$picture" >"$work/host.json" || fail "host detect"
python3 - "$work/first.json" "$work/second.json" >"$work/container.json" <<'PY' || fail "the cached engine answers differently"
import json, sys
first, second = (json.load(open(p)) for p in sys.argv[1:3])
assert first["detections"] == second["detections"], (first, second)
print(json.dumps(first))
PY
python3 packaging/compare-detections.py "$work/host.json" "$work/container.json" || fail "detections differ from the host's"
echo "PASS: $image ($arch)"
