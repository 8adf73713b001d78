#!/usr/bin/env bash
# Lint the deployment (yamllint, ansible-lint production profile) and run every Molecule
# scenario: the roles', the fleet's and `ha` (Sentinel failover, backups shipped and restored) on
# podman containers that boot real systemd (their
# verifiers also run systemd-analyze verify/security on the installed units), and `vm` on
# qemu virtual machines with their own kernels (sysctls, THP, nftables, time sync, reboots).
#
# Usage: .ci/molecule.sh [SCENARIO ...]      (default: every role's `default`, `fleet`, `ha`, `vm`)
#        .ci/molecule.sh --lint-only         yamllint and ansible-lint only
#        .ci/molecule.sh --tools-only        install the tools below, nothing else
#   MOLECULE_SKIP_LINT=1   skip the lint step
#   CLARITY_SKIP_VM=1      leave out the `vm` scenario (local runs only; .ci/run never skips
#                          it): the summary says the kernel, firewall and reboots went untested
#   CLARITY_WHEELHOUSE     reuse wheels already built into this directory (built once here otherwise)
#   CLARITY_MOLECULE_CACHE where the debootstrapped rootfs is cached (/var/cache/clarity-molecule)
#   MOLECULE_JOBS          role scenarios run at once (2), beside `vm`
#   CLARITY_VM_CACHE       where the VM image is cached ($CLARITY_MOLECULE_CACHE/vm)
#   CLARITY_VM_TIMEOUT     seconds the vm scenario may take (3600)
#   CLARITY_VM_LYNIS=1     also audit the VMs with lynis (hardening index; slow under TCG,
#                          so CI leaves it out: docs/deploy.md "lynis")
#   MOLECULE_LOG_DIR       one log per scenario/step ($CLARITY_MOLECULE_CACHE/logs)
#   CLARITY_VM_EARLY_PID   the pid of a `.ci/molecule.sh vm` already running into the same
#                          MOLECULE_LOG_DIR (.ci/test-all.sh starts it first, beside pytest):
#                          this run does not start `vm` but waits for that one's result
#
# Needs root (debootstrap, podman). Installs what it needs: Debian packages podman,
# debootstrap, runc, systemd, python3-pip (and for `vm`: qemu-system-x86, qemu-utils, vde2,
# e2fsprogs, openssh-client); the Python tools from ansible/requirements-ci.txt
# into the venv ($VENV, default .venv at the repository root).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
CACHE="${CLARITY_MOLECULE_CACHE:-/var/cache/clarity-molecule}"
IMAGE="localhost/clarity-bookworm-systemd"
# The base image: what the design's recipe names; roles install everything else from apt.
IMAGE_PACKAGES="systemd,systemd-sysv,dbus,python3,sudo,iproute2,procps"
# Downloaded into the image's apt cache, NOT installed: hosts stay bare, but the roles'
# apt installs need no download and no shared cache (one shared /var/cache/apt/archives
# would serialise every container's apt run on its lock).
PRESEED_PACKAGES="ca-certificates nftables systemd-timesyncd python3-apt redis-server redis-tools cron
redis-sentinel openssh-server openssh-client rsync
prometheus-redis-exporter prometheus-node-exporter python3-venv nginx openssl prometheus
postgresql python3-psycopg2 prometheus-alertmanager prometheus-blackbox-exporter"
ROLE_SCENARIOS=(common redis postgresql clarity_worker clarity_admin nginx monitoring)

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
    # python3-pip: wheels are built with Debian's python3, the hosts' exact Python.
    for pkg in podman debootstrap runc systemd python3-pip "$@"; do
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
    key=$(printf '%s bookworm minbase %s' "$IMAGE_PACKAGES" "$PRESEED_PACKAGES" | sha256sum | cut -c1-12)
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
            > "$CACHE/debootstrap.log" 2>&1 || { tail -n 30 "$CACHE/debootstrap.log"; rm -rf "$rootfs"; return 1; }
        # Each container gets its own machine id at boot.
        : > "$rootfs/etc/machine-id"
        rm -f "$rootfs/var/lib/dbus/machine-id"
        # Containers reach the same mirror through podman's NAT.
        printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$mirror" "$mirror" \
            > "$rootfs/etc/apt/sources.list"
        log "apt-get --download-only into the image's cache"
        cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
        # shellcheck disable=SC2086
        chroot "$rootfs" sh -c "apt-get update -qq && apt-get install -qq -y --download-only $(echo $PRESEED_PACKAGES)" \
            > "$CACHE/preseed.log" 2>&1 || { tail -n 30 "$CACHE/preseed.log"; rm -rf "$rootfs"; return 1; }
        : > "$rootfs/etc/resolv.conf"
        tar -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
        rm -rf "$rootfs"
    fi
    log "podman import $IMAGE:$key"
    podman import --change 'CMD ["/sbin/init"]' "$tarball" "$IMAGE:$key" >/dev/null
    podman tag "$IMAGE:$key" "$IMAGE:latest"
    # Older package lists' tarballs are dead weight (their images stay until unused).
    find "$CACHE" -maxdepth 1 -name 'rootfs-*.tar' ! -name "rootfs-$key.tar" -delete
}

build_wheelhouse() {
    # One build per run, shared by every scenario (the roles read CLARITY_WHEELHOUSE). Built
    # with Debian's own python3: the hosts' Python to the patch level (3.11.2), so wheels'
    # environment markers resolve as they will on the hosts.
    if [[ -n "${CLARITY_WHEELHOUSE:-}" ]]; then
        return
    fi
    # This run's own directory: a fixed one, emptied by the next run on the machine (another
    # checkout's), would hand this run's later converges that checkout's wheel.
    find "$CACHE" -maxdepth 1 -name 'wheelhouse-run*' -mmin +240 -exec rm -rf {} +
    CLARITY_WHEELHOUSE=$(mktemp -d "$CACHE/wheelhouse-run.XXXX")
    trap 'rm -rf "$CLARITY_WHEELHOUSE"' EXIT
    log "pip wheel $ROOT (with /usr/bin/python3)"
    /usr/bin/python3 -m pip wheel --quiet --disable-pip-version-check \
        --wheel-dir "$CLARITY_WHEELHOUSE" "$ROOT" 2>&1 | grep -v "is ignored: it is neither" || true
    ls "$CLARITY_WHEELHOUSE"/clarity_jobs-*.whl >/dev/null
    export CLARITY_WHEELHOUSE
}

lint() {
    log "yamllint, ansible-lint (production profile)"
    (cd "$ROOT/ansible" && yamllint --strict . && ansible-lint --profile production --offline \
        && ansible-playbook checks/role_defaults.yml)
}

# A scenario's containers and networks have fixed names, so two runs of one scenario on one
# machine (another checkout's run, a developer's) would destroy each other's hosts: each
# scenario holds /tmp/molecule-<scenario>.lock while it runs, and a second run waits.
locked() {  # locked SCENARIO CMD...: run CMD holding the scenario's lock
    local name="$1"
    shift
    flock "/tmp/molecule-$name.lock" "$@"
}

role_scenario() {  # role_scenario ROLE: `molecule test` of the role's default scenario
    local role="$1"
    (cd "$ROOT/ansible/roles/$role" \
        && locked "$role" timeout 1200 molecule -c "$ROOT/ansible/molecule/base.yml" test)
}

vm_image() {  # build or reuse the VM image (.ci/vm-image.sh); the scenario reads CLARITY_VM_IMAGE
    CLARITY_VM_IMAGE=$("$ROOT/.ci/vm-image.sh") || return 1
    export CLARITY_VM_IMAGE
}

vm_scenario() {  # `molecule test -s vm`: fails, saying why, if qemu cannot boot the image
    (cd "$ROOT/ansible" && locked vm timeout "${CLARITY_VM_TIMEOUT:-3600}" molecule -c molecule/base.yml test -s vm)
}

site_step() {  # site_step SCENARIO ACTION: one step of a site.yml scenario, to SCENARIO-ACTION.log
    (cd "$ROOT/ansible" && timeout 2400 molecule -c molecule/base.yml "$2" -s "$1") \
        > "$LOGS/$1-$2.log" 2>&1
}

site_scenario() {  # site_scenario SCENARIO: `fleet` or `ha`, site.yml on several hosts
    local name="$1" rc=0 changed step lock
    # Held from the first destroy to the last (see locked above); released when this returns.
    exec {lock}>"/tmp/molecule-$name.lock"
    timed "$name: waiting for its lock" flock "$lock"
    # The verifier writes the figures it measures (rolling release, failover...) here.
    export CLARITY_FLEET_REPORT="$LOGS/$name-report.txt"
    : > "$CLARITY_FLEET_REPORT"
    for step in destroy create converge idempotence verify; do
        timed "$name: $step" site_step "$name" "$step" || { rc=$?; break; }
    done
    if ((rc)); then
        echo "$name scenario failed at $step; last lines of $LOGS/$name-$step.log:" >&2
        sed 's/\x1b\[[0-9;]*m//g' "$LOGS/$name-$step.log" | grep -vE '^\s*│\s*$' | tail -n 60 >&2
    fi
    cp "$LOGS/$name-destroy.log" "$LOGS/$name-destroy-stale.log" 2>/dev/null || true
    timed "$name: destroy" site_step "$name" destroy || true
    if [[ -f "$LOGS/$name-idempotence.log" ]]; then
        # The second run of site.yml: the sum of changed= over every host's recap.
        changed=$(sed 's/\x1b\[[0-9;]*m//g' "$LOGS/$name-idempotence.log" \
            | grep -oE '^\s*│? *[a-z0-9-]+ +: ok=[0-9]+ +changed=[0-9]+' \
            | grep -oE 'changed=[0-9]+' | awk -F= '{n += $2} END {print n + 0}')
        timings+=("$name: second site.yml run changed count = $changed")
    fi
    while IFS= read -r line; do timings+=("$name: $line"); done < "$CLARITY_FLEET_REPORT"
    exec {lock}>&-
    return "$rc"
}

if [[ "${1:-}" == "--lint-only" ]]; then
    export PATH="$VENV/bin:$PATH"
    install_host_tools
    lint
    exit
fi

if [[ "${1:-}" == "--tools-only" ]]; then
    install_host_tools
    exit
fi

if [[ "${1:-}" == "--image-only" ]]; then
    podman_conf
    build_image
    exit 0
fi

start_all=$(date +%s)
export PATH="$VENV/bin:$PATH"
export CLARITY_ANSIBLE_DIR="$ROOT/ansible"
export ANSIBLE_VAULT_PASSWORD_FILE="$ROOT/ansible/inventories/molecule/vault-password"
LOGS="${MOLECULE_LOG_DIR:-$CACHE/logs}"
mkdir -p "$LOGS"
early_vm="${CLARITY_VM_EARLY_PID:-}"
if [[ -n "$early_vm" ]]; then
    # The early vm run's log and result are this run's too.
    find "$LOGS" -maxdepth 1 \( -name '*.log' -o -name '*.result' \) ! -name 'vm.*' -delete
else
    rm -f "$LOGS"/*.log "$LOGS"/*.result
fi

scenarios=("$@")
((${#scenarios[@]})) || scenarios=("${ROLE_SCENARIOS[@]}" fleet ha vm)
want() { [[ " ${scenarios[*]} " == *" $1 "* ]]; }
# `vm` is left out when skipped, or when already under way (started by .ci/test-all.sh:
# its result is read at the end).
if want vm && [[ -n "$early_vm" || -n "${CLARITY_SKIP_VM:-}" ]]; then
    kept=()
    for scenario in "${scenarios[@]}"; do [[ "$scenario" == vm ]] || kept+=("$scenario"); done
    scenarios=("${kept[@]}")
    [[ -n "$early_vm" ]] \
        || timings+=("vm: SKIPPED (CLARITY_SKIP_VM): kernel settings, firewall, reboots NOT tested")
fi

if want vm; then
    install_host_tools qemu-system-x86 qemu-utils vde2 e2fsprogs openssh-client
else
    install_host_tools
fi
podman_conf
timed "base image" build_image
if want vm; then
    timed "vm image" vm_image || failed_vm_image=1
fi
failed=()
if [[ -z "${MOLECULE_SKIP_LINT:-}" ]]; then
    timed "lint" lint || failed+=(lint)  # reported at the end; the scenarios still run
fi
timed "wheelhouse" build_wheelhouse

# The VM scenario first, in the background: the longest, and CPU-bound (TCG). Role
# scenarios run two at a time beside it (containers are named per scenario), then `fleet`
# and `ha`, beside `vm` if it is still going. Every part of this is CPU-bound on a 2-core
# machine: the order only decides that no core idles at the end (the fleet's and ha's
# verifiers wait on services and clocks; the VMs fill those gaps).
vm_pid=
if want vm; then
    if [[ -n "${failed_vm_image:-}" ]]; then
        failed+=(vm)
        echo "scenario vm failed: the VM image could not be built (see above)" >&2
    else
        log "molecule test: vm (site.yml on qemu VMs redis1, worker1)"
        ( start=$(date +%s); rc=0
          vm_scenario > "$LOGS/vm.log" 2>&1 || rc=$?
          echo "$(( $(date +%s) - start )) $rc" > "$LOGS/vm.result" ) &
        vm_pid=$!
    fi
fi

running_roles() {  # how many role scenarios are running (background jobs but `vm`)
    jobs -rp | grep -cvx "${vm_pid:-none}" || true
}
pids=()
names=()
jobs_max="${MOLECULE_JOBS:-2}"
for scenario in "${scenarios[@]}"; do
    [[ "$scenario" == fleet || "$scenario" == ha || "$scenario" == vm ]] && continue
    while (( $(running_roles) >= jobs_max )); do sleep 2; done
    log "molecule test: $scenario"
    ( start=$(date +%s); rc=0
      role_scenario "$scenario" > "$LOGS/$scenario.log" 2>&1 || rc=$?
      echo "$(( $(date +%s) - start )) $rc" > "$LOGS/$scenario.result" ) &
    pids+=($!)
    names+=("$scenario")
done
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || true
    read -r secs rc < "$LOGS/${names[$i]}.result"
    timings+=("$(printf '%-28s %4ss  rc=%s' "molecule test ${names[$i]}" "$secs" "$rc")")
    if ((rc)); then
        failed+=("${names[$i]}")
        echo "scenario ${names[$i]} failed; last lines of $LOGS/${names[$i]}.log:" >&2
        sed 's/\x1b\[[0-9;]*m//g' "$LOGS/${names[$i]}.log" | grep -vE '^\s*│\s*$' | tail -n 60 >&2
    fi
done
# `ha` runs in the background beside the fleet (their containers and networks differ; by
# then `vm` is usually done, so the two share the machine): CI stays shorter than running
# them one after the other.
ha_pid=
if want ha; then
    log "molecule ha (site.yml on ha-redis1..3 with sentinels, ha-worker1, ha-admin1)"
    ( timings=(); rc=0
      site_scenario ha > "$LOGS/ha.out" 2>&1 || rc=$?
      printf '%s\n' "${timings[@]}" > "$LOGS/ha.timings"
      echo "$rc" > "$LOGS/ha.result" ) &
    ha_pid=$!
fi
if want fleet; then
    log "molecule fleet (site.yml on redis1, worker1, worker2, admin1)"
    site_scenario fleet || failed+=(fleet)
fi
if [[ -n "$ha_pid" ]]; then
    wait "$ha_pid" || true
    while IFS= read -r line; do timings+=("$line"); done < "$LOGS/ha.timings"
    if [[ "$(cat "$LOGS/ha.result")" != 0 ]]; then
        failed+=(ha)
        cat "$LOGS/ha.out" >&2
    fi
fi
if [[ -n "$early_vm" ]]; then
    log "waiting for the vm scenario started first (pid $early_vm)"
    # Its result file is written as it ends; a run that died before (say, its image could
    # not be built) leaves none, and its output says why.
    while [[ ! -s "$LOGS/vm.result" && "$(ps -o stat= -p "$early_vm" 2>/dev/null)" =~ ^[^Z] ]]; do
        sleep 10
    done
    if [[ ! -s "$LOGS/vm.result" ]]; then
        echo "scenario vm failed before it ran; its output ($LOGS/vm-early.out):" >&2
        tail -n 40 "$LOGS/vm-early.out" >&2 || true
        echo "0 1" > "$LOGS/vm.result"
    fi
elif [[ -n "$vm_pid" ]]; then
    wait "$vm_pid" || true
fi
if [[ -n "$early_vm$vm_pid" ]]; then
    read -r secs rc < "$LOGS/vm.result"
    timings+=("$(printf '%-28s %4ss  rc=%s' "molecule test vm" "$secs" "$rc")")
    if ((rc)); then
        failed+=(vm)
        echo "scenario vm failed; last lines of $LOGS/vm.log:" >&2
        sed 's/\x1b\[[0-9;]*m//g' "$LOGS/vm.log" | grep -vE '^\s*│\s*$' | tail -n 80 >&2
    fi
fi

echo
echo "=== Molecule timings (logs in $LOGS)"
printf '  %s\n' "${timings[@]}"
printf '  %-28s %4ss\n' "total" "$(( $(date +%s) - start_all ))"
if ((${#failed[@]})); then
    echo "FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "all Molecule scenarios passed: ${scenarios[*]}${early_vm:+ vm}"
