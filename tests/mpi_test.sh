#!/usr/bin/env bash
# tests/mpi_test.sh — data-parallel training (ldmc/dist.h) on the CPU: `mpirun -np 2` of train_vae and
# train_ldm against one process at the same global batch (64), 30 steps, logged every step. Two ranks
# see exactly the samples and noise of one process, so the per-step losses must agree and the final
# checkpoints differ only by float32 summation order (the gradient is summed over 32 + 32 rows and then
# averaged instead of over 64 rows). Also: resuming a 2-rank run with 1 process, a batch that does
# not split over the ranks, and failing ranks (rank 0 failing to save while rank 1 waits in an
# all-reduce, a bad flag on rank 1 only, a data directory missing on rank 1 only or on all): each must
# stop the whole job with its message, no hang (every mpirun runs under `timeout`).
# Needs train_vae and train_ldm built with MPI (`make` says so), mpirun (Open MPI), python3 (standard
# library only) and CIFAR-10 ($CIFAR10_DIR, else data/cifar-10-batches-bin). About 10 minutes on an
# idle 2-core machine: the two LDM runs encode the training split, every VAE run ends with the
# test-split evaluation. Prints one line per check and "N passed, M failed"; exit status non-zero
# on any failure.
set -uo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="$(cd "${CIFAR10_DIR:-$REPO_ROOT/data/cifar-10-batches-bin}" 2>/dev/null && pwd)" || {
    echo "no CIFAR-10 at ${CIFAR10_DIR:-$REPO_ROOT/data/cifar-10-batches-bin} (make data)"; exit 1; }
for p in train_vae train_ldm; do
    [ -x "$REPO_ROOT/$p" ] || { echo "build $p first (make $p)"; exit 1; }
done
command -v mpirun > /dev/null || { echo "mpirun not found (apt-get install openmpi-bin libopenmpi-dev)"; exit 1; }

T="$(mktemp -d "${TMPDIR:-/tmp}/ldmc_mpi.XXXXXX")"
trap 'rm -rf "$T"' EXIT
cd "$T"  # the runs go to $T/runs

passed=0; failed=0
ok()   { passed=$((passed + 1)); printf '  [ok]   %s\n' "$1"; }
fail() {  # NAME [FILE whose last lines explain]
    failed=$((failed + 1)); printf '  [FAIL] %s\n' "$1"
    if [ -n "${2:-}" ]; then tail -n 8 "$2" | sed 's/^/         /'; fi
}

# one process: 2 OpenMP threads (the same 2 cores the ranks get); 2 ranks: 1 thread each. A run that
# works ends in minutes; the timeouts only turn a hang into a failure.
single() { OMP_NUM_THREADS=2 timeout 3600 "$@"; }
MPIRUN=(mpirun --allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS=1)
ranks2() { timeout 3600 "${MPIRUN[@]}" -np 2 "$@"; }

# run NAME CMD...: CMD must exit 0 (its output is kept in $T/NAME.txt)
run() {
    local name="$1" rc=0; shift
    "$@" > "$T/$name.txt" 2>&1 || rc=$?
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
if sorted(ta) != sorted(tb): sys.exit("tensor names differ")
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

# expect_abort NAME PATTERN CMD...: CMD must exit non-zero within its timeout and print PATTERN
expect_abort() {
    local name="$1" pattern="$2"; shift 2
    local t0=$SECONDS rc=0
    timeout 180 "$@" > "$T/abort.txt" 2>&1 || rc=$?
    if [ $rc -eq 0 ]; then fail "$name (exit 0)" "$T/abort.txt"
    elif [ $rc -eq 124 ]; then fail "$name (hung: killed after 180 s)" "$T/abort.txt"
    elif grep -Eq "$pattern" "$T/abort.txt"; then
        ok "$name: exit $rc after $((SECONDS - t0)) s: $(grep -Em1 "$pattern" "$T/abort.txt" | cut -c1-100)"
    else fail "$name (exit $rc, message lacks /$pattern/)" "$T/abort.txt"; fi
}

VAE=("$REPO_ROOT/train_vae" --preset tiny --batch-size 64 --kl-warmup-steps 0 --log-every 1 --data "$DATA")
LDM=("$REPO_ROOT/train_ldm" --preset tiny --num-classes 10 --batch-size 64 --log-every 1 --data "$DATA"
     --vae-checkpoint runs/vae_1/checkpoint_final.safetensors)

echo "VAE, 30 steps at batch 64: one process vs 2 ranks"
if run vae_1 single "${VAE[@]}" --max-steps 30 --run-name vae_1 && run vae_2 ranks2 "${VAE[@]}" --max-steps 30 --run-name vae_2; then
    grep -q "dist: 2 ranks joined through MPI" "$T/vae_2.txt" && ok "2 ranks joined through MPI" || fail "no 'dist: 2 ranks' line" "$T/vae_2.txt"
    check_same "per-step losses, 2 ranks vs 1 process" losses runs/vae_1/log.txt runs/vae_2/log.txt
    check_same "final checkpoints" ckpt runs/vae_1/checkpoint_final.safetensors runs/vae_2/checkpoint_final.safetensors
fi

echo "VAE: 15 steps on 2 ranks, a rank-0 failure at step 17, resumed by one process to 30"
if run vae_r1 ranks2 "${VAE[@]}" --max-steps 15 --run-name vae_r; then
    mkdir runs/vae_r/state.safetensors.tmp  # rank 0 cannot write the state at step 17; rank 1 goes on to step 18
    expect_abort "rank 0 fails to save while rank 1 waits in the next all-reduce" "writing '.*state.safetensors' failed" \
        "${MPIRUN[@]}" -np 2 "${VAE[@]}" --max-steps 30 --save-every 17 --run-name vae_r --resume
    rmdir runs/vae_r/state.safetensors.tmp
    if run vae_r2 single "${VAE[@]}" --max-steps 30 --run-name vae_r --resume; then
        check_same "losses of steps 16-30 vs the uninterrupted process" losses runs/vae_1/log.txt runs/vae_r/log.txt 16
        check_same "final checkpoints" ckpt runs/vae_1/checkpoint_final.safetensors runs/vae_r/checkpoint_final.safetensors
    fi
fi

echo "LDM (tiny, 10 classes), 30 steps at batch 64: one process vs 2 ranks"
if [ -f runs/vae_1/checkpoint_final.safetensors ] && run ldm_1 single "${LDM[@]}" --max-steps 30 --run-name ldm_1 &&
   run ldm_2 ranks2 "${LDM[@]}" --max-steps 30 --run-name ldm_2; then
    s1="$(grep -m1 '^latent_scale' runs/ldm_1/log.txt)"; s2="$(grep -m1 '^latent_scale' runs/ldm_2/log.txt)"
    [ -n "$s1" ] && [ "$s1" = "$s2" ] && ok "latents encoded in 2 shares: the same ${s1%% (*}" || fail "latent_scale: '$s1' vs '$s2'"
    check_same "per-step losses, 2 ranks vs 1 process" losses runs/ldm_1/log.txt runs/ldm_2/log.txt
    check_same "final (EMA) checkpoints" ckpt runs/ldm_1/checkpoint_final.safetensors runs/ldm_2/checkpoint_final.safetensors
fi

echo "refusals and failing ranks (each must end the whole job, under a 180 s timeout)"
expect_abort "global batch 63 on 2 ranks" "does not split evenly over 2 ranks" \
    "${MPIRUN[@]}" -np 2 "${VAE[@]}" --batch-size 63 --max-steps 1 --run-name bad_batch
expect_abort "a bad flag on rank 1 only" "rank 1 was started with other flags" \
    "${MPIRUN[@]}" -np 1 "${VAE[@]}" --max-steps 1 --run-name bad_flag : -np 1 "${VAE[@]}" --max-steps 1 --run-name bad_flag --lr -1
VAE_ENV_DATA=("${VAE[@]:0:${#VAE[@]}-2}")  # no --data: each rank reads $CIFAR10_DIR
expect_abort "data missing on rank 1 only" "no CIFAR-10 in '.*nowhere'" \
    "${MPIRUN[@]}" -np 1 -x CIFAR10_DIR="$DATA" "${VAE_ENV_DATA[@]}" --max-steps 1 --run-name rank1_nodata \
    : -np 1 -x CIFAR10_DIR="$T/nowhere" "${VAE_ENV_DATA[@]}" --max-steps 1 --run-name rank1_nodata
[ ! -e runs/rank1_nodata ] && ok "  ... and no run directory was made" || fail "runs/rank1_nodata was created"
expect_abort "a missing data directory on every rank" "no CIFAR-10 in '.*nowhere'" \
    "${MPIRUN[@]}" -np 2 "${VAE_ENV_DATA[@]}" --data "$T/nowhere" --max-steps 1 --run-name all_nodata

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
