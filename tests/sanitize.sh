#!/usr/bin/env bash
# tests/sanitize.sh [BIN_DIR] — what `make sanitize` runs once it has built the ASan + UBSan binaries
# into BIN_DIR (default build-sanitize): test_ldm, then every battery script present (tests/bad_data.sh,
# tests/bad_inputs.sh), each given LDMC_BIN=BIN_DIR so that it runs the sanitized programs.
# The sanitizers write their reports to files (log_path) instead of stderr, so that a report cannot hide
# inside a test that expects a program to fail; after the suites, any report file is printed and fails
# the run. Ends with "N passed, M failed" (the suites' counts plus the check "no sanitizer reports");
# exit status non-zero on any failure.
#
# The options: protect_shadow_gap=0 because the CUDA runtime maps memory where ASan would otherwise
# protect its shadow gap; halt_on_error=1 so that the first report ends the program. Leak checking
# stays on, with no suppressions: neither the CUDA runtime (without a GPU) nor libgomp leaves anything
# LeakSanitizer reports, so a leak report is ours.
set -uo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
BIN_DIR="${1:-build-sanitize}"
case "$BIN_DIR" in /*) ;; *) BIN_DIR="$REPO_ROOT/$BIN_DIR" ;; esac
[ -x "$BIN_DIR/test_ldm" ] || { echo "Error: no '$BIN_DIR/test_ldm'; build it with \`make sanitize\`." >&2; exit 1; }
source "$REPO_ROOT/tests/suites.sh"

REPORTS="$BIN_DIR/reports"
rm -rf "$REPORTS"
mkdir -p "$REPORTS"
export ASAN_OPTIONS="protect_shadow_gap=0:halt_on_error=1:log_path=$REPORTS/asan"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$REPORTS/ubsan"
export LDMC_BIN="$BIN_DIR"

run_suite "test_ldm (ASan+UBSan)" "$BIN_DIR/test_ldm"
for battery in tests/bad_data.sh tests/bad_inputs.sh; do
    if [ -f "$battery" ]; then run_suite "$battery (ASan+UBSan)" bash "$battery"
    else echo "=== $battery: not present, skipped"; fi
done

# the check on the report files: one failure per report
reports=("$REPORTS"/*)
if [ -e "${reports[0]}" ]; then
    for r in "${reports[@]}"; do
        echo "=== sanitizer report $r:"
        head -n 60 "$r"
    done
    SUITES_FAILED=$((SUITES_FAILED + ${#reports[@]}))
    SUITES_TABLE="$SUITES_TABLE  sanitizer reports: ${#reports[@]} (in $REPORTS)"$'\n'
else
    SUITES_PASSED=$((SUITES_PASSED + 1))
    SUITES_TABLE="$SUITES_TABLE  sanitizer reports: none"$'\n'
fi
suites_summary
