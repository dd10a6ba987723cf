#!/usr/bin/env bash
# dev/fuzz/run.sh NAME CPU_SECONDS [libFuzzer options...] — runs ./fuzz_NAME, niced, in one process,
# until it has used CPU_SECONDS of CPU time (not wall time: on a shared machine a niced fuzzer gets
# a fraction of a core, and -max_total_time counts wall seconds). Then it interrupts it (SIGINT:
# libFuzzer prints its final stats and exits with status 72). Exit status 0 when the time ran out
# with no crash, else libFuzzer's (a crash leaves crash-* here; see README.md).
set -uo pipefail
name="$1" cpu="$2"; shift 2
cd "$(dirname "${BASH_SOURCE[0]}")"
nice -n 19 "./fuzz_$name" -print_final_stats=1 "$@" &
pid=$!
ticks=$(getconf CLK_TCK)
while kill -0 "$pid" 2> /dev/null; do
    used=$(awk -v t="$ticks" '{ print int(($14 + $15) / t) }' "/proc/$pid/stat" 2> /dev/null || echo 0)
    if [ "$used" -ge "$cpu" ]; then kill -INT "$pid"; break; fi
    sleep 2
done
wait "$pid"
rc=$?
echo "fuzz_$name: stopped after ${used:-?} s of CPU time, exit status $rc"
[ "$rc" -eq 0 ] || [ "$rc" -eq 72 ]
