#!/usr/bin/env bash
# tests/determinism.sh — the same training twice, same seed, same thread count, must write the same bytes:
# train_vae --preset tiny and train_ldm --preset tiny --num-classes 10 (on the first VAE run's
# checkpoint), --max-steps 30 each, on the CPU, each run twice in its own directory with the same run
# name; checkpoint_final.safetensors, state.safetensors and eval_batch.safetensors (which holds the
# loss of a fixed batch) are compared with cmp, their sha256s printed.
# Environment:
#   LDMC_BIN=DIR        where train_vae and train_ldm are (relative to the repository root; default the root)
#   LDMC_THREADS=N      OMP_NUM_THREADS of every run (default 2: the thread count is what is being tested)
#   CIFAR10_DIR=DIR     the data (default data/cifar-10-batches-bin)
# Ends with "N passed, M failed"; exit status non-zero on any failure.
set -uo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$(cd "$REPO_ROOT" && cd "${LDMC_BIN:-.}" && pwd)" || { echo "Error: LDMC_BIN='${LDMC_BIN:-}' is not a directory"; exit 1; }
DATA="$(cd "$REPO_ROOT" && cd "${CIFAR10_DIR:-data/cifar-10-batches-bin}" && pwd)" || { echo "Error: no CIFAR-10 data (run \`make data\`)"; exit 1; }
export OMP_NUM_THREADS="${LDMC_THREADS:-2}"
T="$(mktemp -d "${TMPDIR:-/tmp}/ldmc_determinism.XXXXXX")"
trap 'rm -rf "$T"' EXIT

passed=0; failed=0
ok()   { passed=$((passed + 1)); printf '  [ok]   %s\n' "$1"; }
fail() { failed=$((failed + 1)); printf '  [FAIL] %s\n' "$1"; if [ -n "${2:-}" ]; then tail -n 8 "$2" | sed 's/^/         /'; fi; }

# twice PROGRAM WHAT FLAGS...: runs PROGRAM in $T/PROGRAM.1 and $T/PROGRAM.2, then compares the files
twice() {
    local prog="$1" what="$2"; shift 2
    local flags=(--device cpu --data "$DATA" --max-steps 30 --log-every 10 --run-name det "$@") i f a b t0
    echo "$what: ./$prog ${flags[*]} (OMP_NUM_THREADS=$OMP_NUM_THREADS), twice"
    for i in 1 2; do
        mkdir -p "$T/$prog.$i"
        t0=$SECONDS
        if (cd "$T/$prog.$i" && "$BIN/$prog" "${flags[@]}") > "$T/$prog.$i.txt" 2>&1; then
            ok "$what: run $i finished ($((SECONDS - t0)) s)"
        else fail "$what: run $i failed" "$T/$prog.$i.txt"; return 1; fi
    done
    for f in checkpoint_final.safetensors state.safetensors eval_batch.safetensors; do
        a="$(sha256sum < "$T/$prog.1/runs/det/$f" | cut -c1-64)"
        b="$(sha256sum < "$T/$prog.2/runs/det/$f" | cut -c1-64)"
        echo "    $f  run 1 $a"
        echo "    $f  run 2 $b"
        if cmp -s "$T/$prog.1/runs/det/$f" "$T/$prog.2/runs/det/$f"; then ok "$what: $f byte-identical"
        else fail "$what: $f differs between the two runs"; fi
    done
}

echo "determinism: the same seed twice on the CPU, $OMP_NUM_THREADS threads"
twice train_vae "train_vae tiny" --preset tiny
VAE_CKPT="$T/train_vae.1/runs/det/checkpoint_final.safetensors"
if [ -f "$VAE_CKPT" ]; then
    twice train_ldm "train_ldm tiny, 10 classes" --preset tiny --num-classes 10 --vae-checkpoint "$VAE_CKPT"
else
    fail "train_ldm: no VAE checkpoint to train on (the VAE part failed)"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
