#!/usr/bin/env bash
# tests/run_suites.sh SUITE... — runs each suite (a command line in one argument), shows its output, and
# ends with one line adding up their "N passed, M failed" lines: the line CI reads. A suite that fails
# without such a line counts as one failure; the exit status is non-zero when any suite fails.
set -u
passed=0; failed=0; status=0
for suite in "$@"; do
    out=$(mktemp)
    bash -c "$suite" 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    line=$(grep -E "^([A-Za-z_-]+: )?[0-9]+ passed, [0-9]+ failed" "$out" | tail -n 1 | sed -E 's/^[A-Za-z_-]+: //')
    rm -f "$out"
    if [ -z "$line" ]; then line="0 passed, $(( rc != 0 ))"; line="$line failed"; fi
    p=$(echo "$line" | awk '{print $1}'); f=$(echo "$line" | awk '{print $3}')
    passed=$((passed + p)); failed=$((failed + f))
    [ "$rc" -ne 0 ] && status=1
    echo "--- $suite: $line (exit $rc)"
done
echo "all: $passed passed, $failed failed"
exit $status
