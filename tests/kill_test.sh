#!/usr/bin/env bash
# tests/kill_test.sh — determinism and crash safety of training, on the CPU. For each trainer (train_vae
# --preset tiny; train_ldm --preset tiny --num-classes 10 on the VAE of the first part), --max-steps 40,
# --save-every 5, --log-every 5, the same seed and thread count:
#   1. an uninterrupted run, in its own directory;
#   2. (train_vae) a second uninterrupted run in another directory (same run name): the same seed,
#      flags and thread count must write the same bytes (determinism). train_ldm skips it: each of its
#      starts first encodes the 60,000 images (about a minute), and its killed run of part 3 is
#      already a second training of the same seed in other processes, compared byte for byte;
#   3. the same flags in a third directory, killed with SIGKILL at moments drawn from a fixed seed:
#      either a random time after the run printed its "starting"/"resuming" line (up to a third of the
#      time the uninterrupted run took from that line to its end, so the kills spread over the run on a
#      fast machine and on a slow one alike), or the moment the k-th (1-3) state or checkpoint write of
#      that start has its .tmp file on disk (a kill in the middle of a write); after each kill the run
#      is resumed (started again without --resume when it was killed before its first save: its
#      directory holds no state), until one finishes.
# Runs 2 and 3 must end with the bytes of run 1: checkpoint_final.safetensors, state.safetensors and
# eval_batch.safetensors (the loss of a fixed batch under the final weights) are compared with cmp,
# their sha256s printed.
# Environment:
#   LDMC_BIN=DIR        where train_vae and train_ldm are (relative to the repository root; default the root)
#   LDMC_THREADS=N      OMP_NUM_THREADS of every run (default 2)
#   KILL_SEED=N         the seed of the kill moments (default 1); VAE_KILLS, LDM_KILLS (default 5 and 1)
#   CIFAR10_DIR=DIR     the data (default data/cifar-10-batches-bin)
# Needs python3 (standard library: polls for the .tmp files every millisecond). Ends with
# "N passed, M failed"; exit status non-zero on any failure.
set -uo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$(cd "$REPO_ROOT" && cd "${LDMC_BIN:-.}" && pwd)" || { echo "Error: LDMC_BIN='${LDMC_BIN:-}' is not a directory"; exit 1; }
DATA="$(cd "$REPO_ROOT" && cd "${CIFAR10_DIR:-data/cifar-10-batches-bin}" && pwd)" || { echo "Error: no CIFAR-10 data (run \`make data\`)"; exit 1; }
export OMP_NUM_THREADS="${LDMC_THREADS:-2}"
RANDOM="${KILL_SEED:-1}"   # seeds bash's generator: the same kill moments every time
VAE_KILLS="${VAE_KILLS:-5}"
LDM_KILLS="${LDM_KILLS:-1}"   # every train_ldm start encodes the 60,000 images first (~65 s on 2 cores)
T="$(mktemp -d "${TMPDIR:-/tmp}/ldmc_kill.XXXXXX")"
RUN_PID=""
cleanup() { if [ -n "$RUN_PID" ]; then kill -9 "$RUN_PID" 2>/dev/null; fi; rm -rf "$T"; }
trap cleanup EXIT

passed=0; failed=0
ok()   { passed=$((passed + 1)); printf '  [ok]   %s\n' "$1"; }
fail() { failed=$((failed + 1)); printf '  [FAIL] %s\n' "$1"; if [ -n "${2:-}" ]; then tail -n 8 "$2" | sed 's/^/         /'; fi; }

# kill_when PID MODE ARG OUT_FILE OFFSET RUN_DIR: waits, then SIGKILLs PID; prints what happened.
#   MODE sleep: ARG seconds after OUT_FILE (past byte OFFSET) shows the "starting"/"resuming" line
#   MODE tmp:   when the ARG-th write of state.safetensors or checkpoint_final.safetensors in RUN_DIR
#               has its .tmp file on disk
# Prints "killed <how>" or "exited" (the run ended before the moment came).
kill_when() {
    python3 - "$@" <<'EOF'
import os, re, signal, sys, time
pid, mode, arg, out, offset, run_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6]
tmps = [os.path.join(run_dir, f + ".tmp") for f in ("state.safetensors", "checkpoint_final.safetensors")]
def alive():
    try:
        with open("/proc/%d/stat" % pid) as f: return f.read().split(")")[-1].split()[0] != "Z"
    except OSError: return False
def started():
    with open(out, "rb") as f:
        f.seek(offset)
        return re.search(rb"^(starting|resuming) runs/", f.read(), re.M) is not None
if mode == "sleep":
    while alive() and not started(): time.sleep(0.01)
    t_end = time.time() + float(arg)
    while alive() and time.time() < t_end: time.sleep(0.001)
    how = "%.2f s after the start line" % float(arg)
else:
    seen, present = 0, False
    while alive():
        now = [p for p in tmps if os.path.exists(p)]
        if now and not present: seen += 1
        present = bool(now)
        if present and seen >= int(arg): break
        time.sleep(0.0005)
    how = "at write %s of this start" % arg
if not alive(): print("exited"); sys.exit(0)
os.kill(pid, signal.SIGKILL)
while alive(): time.sleep(0.001)
if mode == "tmp":  # the write may have ended between the poll and the kill
    left = [os.path.basename(p) for p in tmps if os.path.exists(p)]
    how += ": in the middle of writing " + left[0] if left else ": just after it ended"
print("killed " + how)
EOF
}

# killed_run PROGRAM MAX_KILLS DIR NAME FLAGS...: the run runs/NAME in DIR, killed MAX_KILLS times and
# resumed until it finishes; its output goes to DIR/out.txt. Returns non-zero when a start fails.
killed_run() {
    local prog="$1" max_kills="$2" dir="$3" name="$4"; shift 4
    local kills=0 starts=0 resume offset outcome rc mode arg
    mkdir -p "$dir"
    : > "$dir/out.txt"
    while :; do
        # a run killed before its first save holds no state: the same command without --resume starts
        # it again from step 0 (what a user would type); --resume there is refused (tests/bad_inputs.sh)
        resume=""
        if [ -f "$dir/runs/$name/state.safetensors" ]; then resume="--resume"
        elif [ -d "$dir/runs/$name" ]; then echo "    killed before its first save: starting runs/$name again without --resume"; fi
        offset=$(stat -c %s "$dir/out.txt")
        (cd "$dir" && exec "$BIN/$prog" "$@" $resume) >> "$dir/out.txt" 2>&1 &
        RUN_PID=$!
        starts=$((starts + 1))
        if [ "$kills" -lt "$max_kills" ]; then
            if [ $((RANDOM % 2)) -eq 0 ]; then mode=sleep; arg="$(awk -v w="$KILL_WINDOW" -v r=$RANDOM 'BEGIN { printf "%.3f", w * r / 32768 }')"
            else mode=tmp; arg=$((1 + RANDOM % 3)); fi
            outcome="$(kill_when "$RUN_PID" "$mode" "$arg" "$dir/out.txt" "$offset" "$dir/runs/$name")"
            { wait "$RUN_PID"; } 2>/dev/null; rc=$?
            RUN_PID=""
            if [ "$outcome" != exited ]; then
                kills=$((kills + 1))
                echo "    start $starts${resume:+ (--resume)}: $outcome (kill $kills, exit status $rc)"
                continue
            fi
        else
            { wait "$RUN_PID"; } 2>/dev/null; rc=$?
            RUN_PID=""
        fi
        echo "    start $starts${resume:+ (--resume)}: ran to the end, exit status $rc"
        KILLS=$kills
        return "$rc"
    done
}

# compare_runs WHAT REF_RUN_DIR OTHER_RUN_DIR HOW: the final files must be byte-identical (HOW says what
# the other run went through, for the report)
compare_runs() {
    local what="$1" ref="$2" got="$3" how="$4" f a b
    for f in checkpoint_final.safetensors state.safetensors eval_batch.safetensors; do
        a="$(sha256sum < "$ref/$f" 2>/dev/null | cut -c1-64)"
        b="$(sha256sum < "$got/$f" 2>/dev/null | cut -c1-64)"
        echo "    $f  uninterrupted $a"
        echo "    $f  $how $b"
        if [ -f "$ref/$f" ] && cmp -s "$ref/$f" "$got/$f"; then ok "$what: $f byte-identical ($how)"
        else fail "$what: $f differs from the uninterrupted run's ($how)"; fi
    done
}

# uninterrupted_run WHAT PROGRAM DIR FLAGS...: one run from start to end in DIR (output in DIR.txt)
uninterrupted_run() {
    local what="$1" prog="$2" dir="$3" t0=$SECONDS; shift 3
    mkdir -p "$dir"
    if (cd "$dir" && "$BIN/$prog" "$@") > "$dir.txt" 2>&1; then ok "$what: an uninterrupted run finished ($((SECONDS - t0)) s)"
    else fail "$what: an uninterrupted run failed" "$dir.txt"; return 1; fi
}

# one trainer: the uninterrupted run, a second one (AGAIN=1: determinism), then the killed one; the
# comparisons
kill_test() {
    local what="$1" prog="$2" kills="$3" again="$4"; shift 4
    local flags=(--device cpu --data "$DATA" --max-steps 40 --save-every 5 --log-every 5 --run-name kt "$@")
    echo "$what: ./$prog ${flags[*]} (OMP_NUM_THREADS=$OMP_NUM_THREADS)"
    uninterrupted_run "$what" "$prog" "$T/$prog.ref" "${flags[@]}" || return 1
    if [ "$again" -eq 1 ]; then
        uninterrupted_run "$what" "$prog" "$T/$prog.again" "${flags[@]}" || return 1
        compare_runs "$what" "$T/$prog.ref/runs/kt" "$T/$prog.again/runs/kt" "a second uninterrupted run"
    fi
    # the random kills fall within a third of the time from the start line to the end ("done in X s")
    KILL_WINDOW="$(sed -n 's/^done in \([0-9.]*\) s$/\1/p' "$T/$prog.ref.txt" | awk '{ print $1 / 3 }')"
    echo "    random kills up to ${KILL_WINDOW:=5} s after the start line"
    local t0=$SECONDS
    KILLS=0
    if killed_run "$prog" "$kills" "$T/$prog.kill" kt "${flags[@]}"; then
        ok "$what: killed $KILLS times with SIGKILL, resumed each time, finished ($((SECONDS - t0)) s)"
    else fail "$what: a resumed run failed" "$T/$prog.kill/out.txt"; return 1; fi
    if [ "$KILLS" -gt 0 ]; then ok "$what: $KILLS of the $kills planned kills landed before the run finished"
    else fail "$what: no kill landed before the run finished (nothing was tested)"; fi
    compare_runs "$what" "$T/$prog.ref/runs/kt" "$T/$prog.kill/runs/kt" "killed $KILLS times and resumed"
}

echo "kill test: two uninterrupted runs, then one killed with SIGKILL at random moments and during state writes and resumed (KILL_SEED=${KILL_SEED:-1})"
kill_test "train_vae tiny" train_vae "$VAE_KILLS" 1 --preset tiny
VAE_CKPT="$T/train_vae.ref/runs/kt/checkpoint_final.safetensors"
if [ -f "$VAE_CKPT" ]; then
    kill_test "train_ldm tiny, 10 classes" train_ldm "$LDM_KILLS" 0 --preset tiny --num-classes 10 --vae-checkpoint "$VAE_CKPT"
else
    fail "train_ldm: no VAE checkpoint to train on (the VAE part failed)"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
