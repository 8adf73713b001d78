#!/usr/bin/env bash
# `make test`: every part of the suite, each run even when an earlier one failed, then a
# summary naming each part with its result and wall time. Exits non-zero if any part failed.
#
#   PYTEST_ARGS   extra pytest arguments (CI passes -q --durations=15)
#   TEST_PARTS    the parts to run, in order (default: "ruff pytest pytest-acl deploy-lint
#                 molecule"); pytest-acl runs the queue core's suites connected as the
#                 clarity-worker ACL user and the admin API's as clarity-admin (the rules of
#                 redis/users.acl.j2, the `default` user off: docs/deploy.md "Redis users")
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VENV:-$ROOT/.venv}"
read -r -a PARTS <<< "${TEST_PARTS:-ruff pytest pytest-acl deploy-lint molecule}"

part_ruff()        { "$VENV/bin/ruff" check .; }
# shellcheck disable=SC2086  # PYTEST_ARGS is a list of words
part_pytest()      { "$VENV/bin/pytest" ${PYTEST_ARGS:-}; }
# shellcheck disable=SC2086
part_pytest-acl()  {
    "$VENV/bin/pytest" ${PYTEST_ARGS:-} --redis-user clarity-worker \
        tests/test_delivery.py tests/test_management.py tests/test_partial_failures.py \
    && "$VENV/bin/pytest" ${PYTEST_ARGS:-} --redis-user clarity-admin \
        tests/admin/test_api.py tests/admin/test_enqueue_api.py tests/admin/test_operator_views.py
}
part_deploy-lint() { bash .ci/molecule.sh --lint-only; }
part_molecule()    {
    vm_early_priority_normal
    MOLECULE_SKIP_LINT=1 bash .ci/molecule.sh
}

# The `vm` scenario is the longest part and pure CPU (qemu emulating two VMs; no port, disk
# or service the other parts use): it starts first, at the lowest CPU priority, so it takes
# only the CPU the Python parts leave idle (they wait on Redis, clocks and subprocesses much
# of the time), and gets its normal priority back when the Molecule part starts. The
# Molecule part waits for its result and reports it with the other scenarios.
vm_early_start() {
    [[ " ${PARTS[*]} " == *" molecule "* && -z "${CLARITY_SKIP_VM:-}" ]] || return 0
    export MOLECULE_LOG_DIR="${MOLECULE_LOG_DIR:-${CLARITY_MOLECULE_CACHE:-/var/cache/clarity-molecule}/logs}"
    mkdir -p "$MOLECULE_LOG_DIR"
    # Ansible and Molecule go into the venv now, before pytest imports from it, never
    # beside it (a shared dependency changing under a running test would break it).
    bash .ci/molecule.sh --tools-only
    printf '\n=== %s  the vm scenario starts at nice 19 beside the other parts (%s/vm-early.out)\n' \
        "$(date +%T)" "$MOLECULE_LOG_DIR"
    MOLECULE_SKIP_LINT=1 setsid nice -n 19 bash .ci/molecule.sh vm \
        > "$MOLECULE_LOG_DIR/vm-early.out" 2>&1 &
    export CLARITY_VM_EARLY_PID=$!
    # Interrupted (Ctrl-C), the suite takes the vm run with it; the scenario's next run
    # destroys whatever VMs it left.
    trap 'kill -- -"$CLARITY_VM_EARLY_PID" 2>/dev/null; exit 130' INT TERM
}
vm_early_priority_normal() {
    [[ -n "${CLARITY_VM_EARLY_PID:-}" ]] || return 0
    # Its process group (setsid), and the VMs qemu daemonized out of it.
    renice -n 0 -g "$CLARITY_VM_EARLY_PID" >/dev/null 2>&1 || true
    pgrep -f '^qemu-system-x86_64 -name ' | xargs -r renice -n 0 -p >/dev/null 2>&1 || true
}

summary=()
failed=0
start_all=$(date +%s)
vm_early_start
for part in "${PARTS[@]}"; do
    if ! declare -F "part_$part" >/dev/null; then
        echo "unknown test part '$part' (known: ruff pytest pytest-acl deploy-lint molecule)" >&2
        exit 2
    fi
    printf '\n=== %s  part: %s\n' "$(date +%T)" "$part"
    start=$(date +%s)
    "part_$part"
    rc=$?
    secs=$(( $(date +%s) - start ))
    if ((rc)); then result="FAILED (exit $rc)"; failed=1; else result="passed"; fi
    summary+=("$(printf '%-12s %-18s %5ss' "$part" "$result" "$secs")")
done

echo
echo "=== make test: summary"
printf '  %s\n' "${summary[@]}"
printf '  %-12s %-18s %5ss\n' "total" "$( ((failed)) && echo FAILED || echo passed)" \
    "$(( $(date +%s) - start_all ))"
exit "$failed"
