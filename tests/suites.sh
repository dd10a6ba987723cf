# tests/suites.sh — sourced by .ci/run and tests/sanitize.sh: runs test suites one after another and
# sums their results. Every suite ends its output with "N passed, M failed" (test_ldm, the tests/*.sh
# scripts); the sum is printed last in that same form, which is the line CI reads.
#   run_suite NAME CMD...   runs CMD (output shown as it comes), adds its last "N passed, M failed"
#                           line to the totals; a suite that prints no such line, or exits non-zero
#                           with 0 failed, counts one failure more (a crash must not pass)
#   run_step NAME CMD...    a command that prints no counts (a build, make data): one pass or one failure
#   suites_summary          the per-suite table, then "N passed, M failed" over all; returns 1 on any failure

SUITES_PASSED=0
SUITES_FAILED=0
SUITES_TABLE=""

run_suite() {
    local name="$1"; shift
    local out line p=0 f=0 rc t0=$SECONDS
    out="$(mktemp "${TMPDIR:-/tmp}/ldmc_suite.XXXXXX")"
    echo "=== $name: $*"
    "$@" 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    line="$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out" | tail -n 1)"
    rm -f "$out"
    if [ -n "$line" ]; then
        p="${line%% passed*}"
        f="${line#*, }"; f="${f%% failed}"
    fi
    if [ -z "$line" ] || { [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; }; then
        echo "=== $name exited with status $rc without counting a failure: one failure added"
        f=$((f + 1))
    fi
    SUITES_PASSED=$((SUITES_PASSED + p))
    SUITES_FAILED=$((SUITES_FAILED + f))
    SUITES_TABLE="$SUITES_TABLE$(printf '  %-34s %5s passed %3s failed  exit %3s  %5d s' "$name" "$p" "$f" "$rc" $((SECONDS - t0)))"$'\n'
}

run_step() {
    local name="$1"; shift
    local rc t0=$SECONDS
    echo "=== $name: $*"
    "$@" 2>&1
    rc=$?
    if [ "$rc" -eq 0 ]; then SUITES_PASSED=$((SUITES_PASSED + 1)); else SUITES_FAILED=$((SUITES_FAILED + 1)); fi
    SUITES_TABLE="$SUITES_TABLE$(printf '  %-34s %5s passed %3s failed  exit %3s  %5d s' "$name" $((rc == 0)) $((rc != 0)) "$rc" $((SECONDS - t0)))"$'\n'
}

suites_summary() {
    echo "=== summary"
    printf '%s' "$SUITES_TABLE"
    echo "$SUITES_PASSED passed, $SUITES_FAILED failed"
    [ "$SUITES_FAILED" -eq 0 ]
}
