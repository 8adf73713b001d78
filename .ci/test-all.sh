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
part_molecule()    { MOLECULE_SKIP_LINT=1 bash .ci/molecule.sh; }

summary=()
failed=0
start_all=$(date +%s)
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
