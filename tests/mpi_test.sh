#!/usr/bin/env bash
# tests/mpi_test.sh — data-parallel training (ldmc/dist.h) on the CPU: `mpirun -np 2` of train_vae and
# train_ldm (tiny, 10 classes) against one process at the same global batch (64), 30 steps, logged
# every step, one OpenMP thread per rank. Two ranks see exactly the samples and noise of one process,
# so the per-step losses must agree and the final checkpoints differ only by float32 summation order
# (the gradient is summed over 32 + 32 rows and then averaged instead of over 64 rows); the max abs
# difference is printed beside its tolerance. Also: the state of a 2-rank VAE run resumed by one
# process (--resume with another rank count) must end like the uninterrupted process; failing ranks must
# stop the whole job with their message, no hang (every mpirun runs under `timeout`): rank 0 failing
# to save while rank 1 waits in an all-reduce, a bad flag on rank 1 only, the data missing on rank 1
# only or on every rank, a global batch that does not split over the ranks.
# Cost: 2 launches of train_ldm (each encodes the training split, about a minute on 2 cores, and
# ends with a preview grid) and 3 complete ones of train_vae (each ends with the test-split
# evaluation); the other launches stop early.
# Environment:
#   LDMC_BIN=DIR        where train_vae and train_ldm are, built with MPI (relative to the repository
#                       root; default the root)
#   LDMC_THREADS=N      OMP_NUM_THREADS of the one-process runs (default 2: the cores the 2 ranks get)
#   CIFAR10_DIR=DIR     the data (default data/cifar-10-batches-bin)
# Needs mpirun (Debian: openmpi-bin, libopenmpi-dev to build) and python3 (standard library). Open MPI
# refuses to run as root and to start more ranks than cores unless told: the script tells it (CI runs
# as root on 2 cores). Ends with "N passed, M failed"; exit status non-zero on any failure.
set -uo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$(cd "$REPO_ROOT" && cd "${LDMC_BIN:-.}" && pwd)" || { echo "Error: LDMC_BIN='${LDMC_BIN:-}' is not a directory"; exit 1; }
DATA="$(cd "$REPO_ROOT" && cd "${CIFAR10_DIR:-data/cifar-10-batches-bin}" && pwd)" || { echo "Error: no CIFAR-10 data (run \`make data\`)"; exit 1; }
THREADS="${LDMC_THREADS:-2}"
command -v mpirun > /dev/null || { echo "Error: mpirun not found (apt-get install openmpi-bin libopenmpi-dev, then rebuild)"; exit 1; }
for p in train_vae train_ldm; do
    [ -x "$BIN/$p" ] || { echo "Error: no $BIN/$p (make $p)"; exit 1; }
done

# Open MPI: allowed as root; ranks may outnumber the cores and are not pinned (one OpenMP thread
# each, and rank 0 alone works at the end of a run); shared memory between the ranks of this one
# node, without the single-copy mechanism (process_vm_readv) that containers often forbid, and
# without probing for network fabrics. A variable already set is left as it is.
MPIRUN=(mpirun)
if mpirun --version 2>&1 | grep -q "Open MPI"; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    export OMPI_MCA_btl="${OMPI_MCA_btl:-self,vader}" OMPI_MCA_pml="${OMPI_MCA_pml:-ob1}"
    export OMPI_MCA_btl_vader_single_copy_mechanism="${OMPI_MCA_btl_vader_single_copy_mechanism:-none}"
    MPIRUN+=(--oversubscribe --bind-to none)
fi

T="$(mktemp -d "${TMPDIR:-/tmp}/ldmc_mpi.XXXXXX")"
trap 'rm -rf "$T"' EXIT
cd "$T"  # the runs go to $T/runs

passed=0; failed=0
ok()   { passed=$((passed + 1)); printf '  [ok]   %s\n' "$1"; }
fail() { failed=$((failed + 1)); printf '  [FAIL] %s\n' "$1"; if [ -n "${2:-}" ]; then tail -n 8 "$2" | sed 's/^/         /'; fi; }

# one process on LDMC_THREADS threads; mpirun ARGS (LIMIT seconds at most); N ranks on one thread
# each (`env` sets it, whatever the launcher). A run that works ends in minutes; the timeouts only
# turn a hang into a failure.
LIMIT=1200
single() { OMP_NUM_THREADS="$THREADS" timeout "$LIMIT" "$@"; }
mpi() { timeout "$LIMIT" "${MPIRUN[@]}" "$@"; }
ranks() { local n="$1"; shift; mpi -np "$n" env OMP_NUM_THREADS=1 "$@"; }

# run NAME CMD...: CMD must exit 0 (its output is kept in $T/NAME.txt); prints its wall time
run() {
    local name="$1" rc=0 t0=$SECONDS; shift
    "$@" > "$T/$name.txt" 2>&1 || rc=$?
    printf '         (%s: %d s)\n' "$name" $((SECONDS - t0))
    if [ $rc -eq 0 ]; then return 0; fi
    fail "$name exited with $rc$([ $rc -eq 124 ] && echo ' (timed out)')" "$T/$name.txt"; return 1
}

# compare.py losses LOG_A LOG_B [FIRST_STEP] | ckpt FILE_A FILE_B: max |a - b| beside its tolerance
cat > "$T/compare.py" <<'EOF'
import json, re, struct, sys
from array import array

def losses(path, first):  # {step: loss} from the progress lines of a log.txt
    out = {}
    for line in open(path):
        m = re.match(r"step\s+(\d+)/\d+ \| loss ([0-9.eE+-]+)", line)
        if m and int(m.group(1)) >= first: out[int(m.group(1))] = float(m.group(2))
    return out

def tensors(path):  # every F32 tensor of a safetensors file, standard library only
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8:8 + n])
    out = {}
    for k, v in header.items():
        if k == "__metadata__" or v["dtype"] != "F32": continue
        s, e = v["data_offsets"]
        out[k] = array("f", b[8 + n + s:8 + n + e])
    return out

kind, a, b = sys.argv[1:4]
if kind == "losses":
    first = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    la, lb = losses(a, first), losses(b, first)
    if not la or sorted(la) != sorted(lb): sys.exit("steps differ: %s vs %s" % (sorted(la), sorted(lb)))
    diff = max(abs(la[s] - lb[s]) for s in la)
    same = sum(la[s] == lb[s] for s in la)
    tol = 1e-4  # the loss is printed with 5 decimals; summation-order noise stays below 1e-4 in 30 steps
    print("%d steps, %d identical to the printed 5 decimals, max |diff| %.1e (tol %.0e)" % (len(la), same, diff, tol))
    sys.exit(0 if diff <= tol else 1)
ta, tb = tensors(a), tensors(b)
if not ta or sorted(ta) != sorted(tb): sys.exit("tensor names differ")
diff = max(max(abs(x - y) for x, y in zip(ta[k], tb[k])) for k in ta)
scale = max(max(abs(x) for x in ta[k]) for k in ta)
tol = 1e-4  # float32 summation order, amplified by AdamW where gradients are near 0
print("%d tensors, max |diff| %.2e, max |w| %.2f (tol %.0e)" % (len(ta), diff, scale, tol))
sys.exit(0 if diff <= tol else 1)
EOF

# check_same NAME KIND A B [ARGS]: compare.py passes
check_same() {
    local name="$1"; shift
    if python3 "$T/compare.py" "$@" > "$T/cmp.txt" 2>&1; then ok "$name: $(cat "$T/cmp.txt")"
    else fail "$name: $(tail -n 1 "$T/cmp.txt")"; fi
}

# expect_abort NAME PATTERN CMD...: CMD must exit non-zero within 120 s and print PATTERN
expect_abort() {
    local name="$1" pattern="$2"; shift 2
    local t0=$SECONDS rc=0
    LIMIT=120 "$@" > "$T/abort.txt" 2>&1 || rc=$?
    if [ $rc -eq 0 ]; then fail "$name (exit 0)" "$T/abort.txt"
    elif [ $rc -eq 124 ]; then fail "$name (hung: killed after 120 s)" "$T/abort.txt"
    elif grep -Eq "$pattern" "$T/abort.txt"; then
        ok "$name: exit $rc after $((SECONDS - t0)) s: $(grep -Em1 "$pattern" "$T/abort.txt" | cut -c1-100)"
    else fail "$name (exit $rc, message lacks /$pattern/)" "$T/abort.txt"; fi
}

COMMON=(--preset tiny --device cpu --batch-size 64 --log-every 1)
VAE=("$BIN/train_vae" "${COMMON[@]}" --kl-warmup-steps 0 --data "$DATA")
LDM=("$BIN/train_ldm" "${COMMON[@]}" --num-classes 10 --data "$DATA" --vae-checkpoint runs/vae_1/checkpoint_final.safetensors)

echo "VAE, 30 steps at global batch 64: one process ($THREADS threads) vs 2 ranks (1 thread each)"
if run vae_1 single "${VAE[@]}" --max-steps 30 --run-name vae_1 && run vae_2 ranks 2 "${VAE[@]}" --max-steps 30 --run-name vae_2; then
    grep -q "dist: 2 ranks joined through MPI" "$T/vae_2.txt" && ok "2 ranks joined through MPI" || fail "no 'dist: 2 ranks' line" "$T/vae_2.txt"
    check_same "per-step losses, 2 ranks vs 1 process" losses runs/vae_1/log.txt runs/vae_2/log.txt
    check_same "final checkpoints" ckpt runs/vae_1/checkpoint_final.safetensors runs/vae_2/checkpoint_final.safetensors
fi

echo "VAE: 2 ranks, states saved every 5 steps, rank 0's save at step 20 failing; resumed by one process"
# once the log shows step 16 (the state of step 15 is on disk), state.safetensors.tmp becomes a
# directory: rank 0 cannot write the state of step 20 while rank 1 goes on into step 21's all-reduce
( for _ in $(seq 6000); do
      if grep -Eqs '^step +16/' runs/vae_r/log.txt; then mkdir runs/vae_r/state.safetensors.tmp; exit; fi
      sleep 0.05
  done ) &
BLOCKER=$!
expect_abort "rank 0 fails to save while rank 1 waits in the next all-reduce" "writing '.*state.safetensors' failed" \
    ranks 2 "${VAE[@]}" --max-steps 30 --save-every 5 --run-name vae_r
kill "$BLOCKER" 2> /dev/null; wait "$BLOCKER" 2> /dev/null
if rmdir runs/vae_r/state.safetensors.tmp 2> /dev/null && run vae_r single "${VAE[@]}" --max-steps 30 --run-name vae_r --resume; then
    grep -q "resumed at step 15" runs/vae_r/log.txt && ok "the 2-rank state of step 15 resumed by one process" ||
        fail "not resumed at step 15" runs/vae_r/log.txt
    check_same "losses of steps 16-30 vs the uninterrupted process" losses runs/vae_1/log.txt runs/vae_r/log.txt 16
    check_same "final checkpoints" ckpt runs/vae_1/checkpoint_final.safetensors runs/vae_r/checkpoint_final.safetensors
fi

echo "LDM (tiny, 10 classes), 30 steps at global batch 64: one process vs 2 ranks"
if [ -f runs/vae_1/checkpoint_final.safetensors ] && run ldm_1 single "${LDM[@]}" --max-steps 30 --run-name ldm_1 &&
   run ldm_2 ranks 2 "${LDM[@]}" --max-steps 30 --run-name ldm_2; then
    s1="$(grep -m1 '^latent_scale' runs/ldm_1/log.txt)"; s2="$(grep -m1 '^latent_scale' runs/ldm_2/log.txt)"
    grep -q "gathered the training split from 2 ranks" "$T/ldm_2.txt" && [ -n "$s1" ] && [ "$s1" = "$s2" ] &&
        ok "the training split encoded in 2 shares, gathered: the same ${s1%% (*}" || fail "latent_scale: '$s1' vs '$s2'" "$T/ldm_2.txt"
    check_same "per-step losses, 2 ranks vs 1 process" losses runs/ldm_1/log.txt runs/ldm_2/log.txt
    check_same "final (EMA) checkpoints" ckpt runs/ldm_1/checkpoint_final.safetensors runs/ldm_2/checkpoint_final.safetensors
fi

echo "refusals and failing ranks (each must end the whole job within 120 s)"
expect_abort "global batch 63 on 2 ranks" "does not split evenly over 2 ranks" \
    ranks 2 "${VAE[@]}" --batch-size 63 --max-steps 1 --run-name bad_batch
expect_abort "a bad flag on rank 1 only" "rank 1 was started with other flags" \
    mpi -np 1 env OMP_NUM_THREADS=1 "${VAE[@]}" --max-steps 1 --run-name bad_flag \
    : -np 1 env OMP_NUM_THREADS=1 "${VAE[@]}" --max-steps 1 --run-name bad_flag --lr -1
VAE_ENV_DATA=("${VAE[@]:0:${#VAE[@]}-2}")  # no --data: each rank reads $CIFAR10_DIR
expect_abort "data missing on rank 1 only" "no CIFAR-10 in '.*nowhere'" \
    mpi -np 1 env OMP_NUM_THREADS=1 CIFAR10_DIR="$DATA" "${VAE_ENV_DATA[@]}" --max-steps 1 --run-name rank1_nodata \
    : -np 1 env OMP_NUM_THREADS=1 CIFAR10_DIR="$T/nowhere" "${VAE_ENV_DATA[@]}" --max-steps 1 --run-name rank1_nodata
[ ! -e runs/rank1_nodata ] && ok "  ... and no run directory was made" || fail "runs/rank1_nodata was created"
expect_abort "a missing data directory on every rank" "no CIFAR-10 in '.*nowhere'" \
    ranks 2 "${VAE_ENV_DATA[@]}" --data "$T/nowhere" --max-steps 1 --run-name all_nodata

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
