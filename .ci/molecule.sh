#!/usr/bin/env bash
# Lint the deployment (yamllint, ansible-lint production profile, systemd-analyze verify) and
# run every Molecule scenario on podman containers that boot real systemd.
#
# Usage: .ci/molecule.sh [SCENARIO ...]      (default: every role's `default`, then `fleet`)
#   MOLECULE_SKIP_LINT=1   skip the lint step
#   CLARITY_WHEELHOUSE     reuse wheels already built into this directory (built once here otherwise)
#   CLARITY_MOLECULE_CACHE where the debootstrapped rootfs is cached (/var/cache/clarity-molecule)
#
# Needs root (debootstrap, podman). Installs what it needs: Debian packages podman,
# debootstrap, runc, systemd; the Python tools from ansible/requirements-ci.txt into the venv.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
CACHE="${CLARITY_MOLECULE_CACHE:-/var/cache/clarity-molecule}"
IMAGE="localhost/clarity-bookworm-systemd"
# The base image: what the design's recipe names; roles install everything else from apt.
IMAGE_PACKAGES="systemd,systemd-sysv,dbus,python3,sudo,iproute2,procps"
ROLE_SCENARIOS=(common redis clarity_worker clarity_admin nginx monitoring)

log() { printf '\n=== %s  %s\n' "$(date +%T)" "$*"; }
timings=()
timed() {  # timed LABEL CMD...: run CMD, record its wall time
    local label="$1" start rc=0
    shift
    start=$(date +%s)
    "$@" || rc=$?
    timings+=("$(printf '%-28s %4ss  rc=%s' "$label" "$(( $(date +%s) - start ))" "$rc")")
    return "$rc"
}

install_host_tools() {
    local missing=()
    for pkg in podman debootstrap runc systemd; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        log "apt-get install ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
    log "pip install -r ansible/requirements-ci.txt"
    "$VENV/bin/pip" install -q -r "$ROOT/ansible/requirements-ci.txt"
}

debian_mirror() {  # the mirror apt already uses on this machine (deb822 or one-line format)
    local m
    m=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '{print $2}' | grep -v security | head -n1 || true)
    if [[ -z "$m" ]]; then
        m=$(grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | grep -v security | awk '{print $2}' | head -n1 || true)
    fi
    [[ -n "$m" ]] || { echo "no Debian mirror found in /etc/apt" >&2; return 1; }
    echo "$m"
}

podman_conf() {
    # crun fails on this host's hybrid cgroups; default ulimits fail with "setrlimit ...
    # Operation not permitted" unless lowered to what the CI host allows.
    mkdir -p "$CACHE"
    cat > "$CACHE/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
CONF
    export CONTAINERS_CONF="$CACHE/containers.conf"
}

build_image() {
    local key rootfs tarball mirror
    key=$(printf '%s bookworm minbase' "$IMAGE_PACKAGES" | sha256sum | cut -c1-12)
    tarball="$CACHE/rootfs-$key.tar"
    if podman image exists "$IMAGE:$key"; then
        podman tag "$IMAGE:$key" "$IMAGE:latest"
        return
    fi
    if [[ ! -s "$tarball" ]]; then
        mirror=$(debian_mirror)
        rootfs=$(mktemp -d "$CACHE/rootfs.XXXX")
        log "debootstrap bookworm ($IMAGE_PACKAGES)"
        debootstrap --variant=minbase --include="$IMAGE_PACKAGES" bookworm "$rootfs" "$mirror" \
            > "$CACHE/debootstrap.log" 2>&1 || { tail -n 30 "$CACHE/debootstrap.log"; return 1; }
        # Each container gets its own machine id at boot.
        : > "$rootfs/etc/machine-id"
        rm -f "$rootfs/var/lib/dbus/machine-id"
        # Containers reach the same mirror through podman's NAT.
        printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$mirror" "$mirror" \
            > "$rootfs/etc/apt/sources.list"
        tar -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
        rm -rf "$rootfs"
    fi
    log "podman import $IMAGE:$key"
    podman import --change 'CMD ["/sbin/init"]' "$tarball" "$IMAGE:$key" >/dev/null
    podman tag "$IMAGE:$key" "$IMAGE:latest"
}

if [[ "${1:-}" == "--image-only" ]]; then
    podman_conf
    build_image
    exit 0
fi
