# tests/suites.sh — sourced by .ci/run and tests/sanitize.sh: runs test suites one after another and
# sums their results. Every suite ends its output with "N passed, M failed" (test_ldm, the tests/*.sh
# scripts); the sum is printed last in that same form, which is the line CI reads.
#   run_suite NAME CMD...   runs CMD (output shown as it comes), adds its last "N passed, M failed"
#                           line to the totals; a suite that prints no such line, or exits non-zero
#                           with 0 failed, counts one failure more (a crash must not pass)
#   run_step NAME CMD...    a command that prints no counts (a build, make data): one pass or one failure
#   suites_summary          the per-suite table (with wall-clock and CPU seconds: on a busy machine the CPU
#                           time says what the wall-clock time would be on a quiet one), then
#                           "N passed, M failed" over all; returns 1 on any failure

SUITES_PASSED=0
SUITES_FAILED=0
SUITES_TABLE=""

# CPU_NOW: the CPU seconds (user + system) used so far by the processes this shell has waited for.
# `times` must run in this shell, not in a pipe or $(...): a subshell has waited for nothing.
SUITES_TIMES="$(mktemp "${TMPDIR:-/tmp}/ldmc_times.XXXXXX")"
trap 'rm -f "$SUITES_TIMES"' EXIT
children_cpu() {
    times > "$SUITES_TIMES"
    CPU_NOW="$(awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] }; printf "%d", t }' "$SUITES_TIMES")"
}

# adds a line to the table: NAME PASSED FAILED EXIT START_SECONDS START_CPU
table_row() {
    children_cpu
    SUITES_TABLE="$SUITES_TABLE$(printf '  %-34s %5s passed %3s failed  exit %3s  %5d s  (cpu %d s)' "$1" "$2" "$3" "$4" \
        $((SECONDS - $5)) $((CPU_NOW - $6)))"$'\n'
}

run_suite() {
    local name="$1"; shift
    local out line p=0 f=0 rc t0=$SECONDS c0
    children_cpu; c0=$CPU_NOW
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
    if [ -z "$line" ]; then
        echo "=== $name printed no 'N passed, M failed' line (exit status $rc): one failure added"
        f=$((f + 1))
    elif [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "=== $name exited with status $rc but counted no failure: one failure added"
        f=$((f + 1))
    fi
    SUITES_PASSED=$((SUITES_PASSED + p))
    SUITES_FAILED=$((SUITES_FAILED + f))
    table_row "$name" "$p" "$f" "$rc" "$t0" "$c0"
}

run_step() {
    local name="$1"; shift
    local rc t0=$SECONDS c0
    children_cpu; c0=$CPU_NOW
    echo "=== $name: $*"
    "$@" 2>&1
    rc=$?
    if [ "$rc" -eq 0 ]; then SUITES_PASSED=$((SUITES_PASSED + 1)); else SUITES_FAILED=$((SUITES_FAILED + 1)); fi
    table_row "$name" $((rc == 0)) $((rc != 0)) "$rc" "$t0" "$c0"
}

suites_summary() {
    echo "=== summary"
    printf '%s' "$SUITES_TABLE"
    echo "$SUITES_PASSED passed, $SUITES_FAILED failed"
    [ "$SUITES_FAILED" -eq 0 ]
}
