#!/usr/bin/env bash
# tests/bad_inputs.sh — the bad-input battery: the real programs (train_vae, train_ldm, sample_ldm, eval_ldm) on
# damaged and lying checkpoints and training states (tests/bad_inputs/, written by dev/make_bad_inputs.py),
# odd files (FIFO, directory, /dev/zero, empty), output paths that collide with inputs, and bad flags.
# Every case must exit non-zero (and below 128: no signal, no hang) with a message naming the problem (a
# key phrase per case), leave every file that was there byte-identical (sha256 before and after) and
# create nothing (except where a case says what it may create). A few controls must succeed, so that the
# refusals are known to come from the one thing wrong with each input.
# Runs in a temporary folder (the inputs copied to in/, runs/ made there), on the CPU; about a minute.
# Needs the built programs (make train_vae train_ldm sample_ldm eval_ldm) and, for the cases that train, CIFAR-10
# ($CIFAR10_DIR, else data/cifar-10-batches-bin; those cases are skipped without it).
# Ends with "N passed, M failed"; exit status non-zero on any failure.
set -uo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
for prog in train_vae train_ldm sample_ldm eval_ldm; do
    [ -x "$REPO_ROOT/$prog" ] || { echo "bad_inputs.sh: build $prog first (make $prog)"; exit 1; }
done
VAE="$REPO_ROOT/train_vae"; LDM="$REPO_ROOT/train_ldm"; SAMPLE="$REPO_ROOT/sample_ldm"
DATA="${CIFAR10_DIR:-$REPO_ROOT/data/cifar-10-batches-bin}"
HAVE_DATA=0; [ -f "$DATA/data_batch_1.bin" ] && [ -f "$DATA/test_batch.bin" ] && HAVE_DATA=1

T="$(mktemp -d "${TMPDIR:-/tmp}/ldmc_bad_inputs.XXXXXX")"
trap 'rm -rf "$T"' EXIT
W="$T/work"                       # the programs' working directory: in/, runs/, out/
mkdir -p "$W/out" "$W/runs"
cp -r "$REPO_ROOT/tests/bad_inputs" "$W/in"
cd "$W" || exit 1
mkfifo in/fifo
mkdir in/dir
ln -s unet.safetensors in/link_to_unet.safetensors
: > in/empty.bin
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

passed=0; failed=0; skipped=0
ok()   { passed=$((passed + 1)); printf '  [ok]   %s\n' "$1"; }
fail() { failed=$((failed + 1)); printf '  [FAIL] %s\n' "$1"; [ -n "${2:-}" ] && sed 's/^/         /' "$2" | head -6; }

# The sha256 of every regular file under the working directory, hashed again only when its stat signature
# (inode, size, ctime, mtime) changes: any write to a file moves its ctime, so an unchanged signature is
# unchanged content, and each case costs a stat of every file rather than a hash of 15 MB.
declare -A SIG HASH
stat_all() { find . -type f -printf '%i:%s:%C@:%T@ %p\n'; }
all_paths() { find . -mindepth 1 -printf '%p\n' | sort; }
# before a case: (re)hash every file whose signature is new, list every path (files, folders, FIFOs, links)
hash_new() {
    local line sig path
    while IFS= read -r line; do
        sig="${line%% *}"; path="${line#* }"
        if [ "${SIG[$path]:-}" != "$sig" ]; then HASH[$path]="$(sha256sum < "$path")"; SIG[$path]="$sig"; fi
    done < <(stat_all)
    all_paths > "$T/paths.before"
}
# after a case: the paths removed or created, and the files whose content (sha256) changed
changes() {
    local line sig path
    all_paths > "$T/paths.after"
    comm -23 "$T/paths.before" "$T/paths.after" | sed 's/^/removed: /'
    comm -13 "$T/paths.before" "$T/paths.after" | sed 's/^/created: /'
    while IFS= read -r line; do
        sig="${line%% *}"; path="${line#* }"
        if [ -n "${SIG[$path]:-}" ] && [ "${SIG[$path]}" != "$sig" ] && [ "$(sha256sum < "$path")" != "${HASH[$path]}" ]; then
            echo "changed: $path"
        fi
    done < <(stat_all)
}

# refuse NAME PHRASE CMD...: CMD must exit 1..127 within 60 s, print PHRASE (grep -E) on stdout/stderr,
# leave every file as it was and create nothing ($MAY_CREATE: a grep -E pattern of paths it may create)
refuse() {
    local name="$1" phrase="$2"; shift 2
    hash_new
    timeout 60 "$@" > "$T/out.txt" 2>&1 < /dev/null
    local rc=$?
    changes | grep -Ev "^created: \./(${MAY_CREATE:-^$})" > "$T/changed.txt"
    if [ $rc -eq 0 ]; then fail "$name (exit 0)" "$T/out.txt"
    elif [ $rc -eq 124 ]; then fail "$name (timed out: it hangs)" "$T/out.txt"
    elif [ $rc -ge 128 ]; then fail "$name (killed by signal $((rc - 128)))" "$T/out.txt"
    elif ! grep -Eq -- "$phrase" "$T/out.txt"; then fail "$name (exit $rc, message lacks /$phrase/)" "$T/out.txt"
    elif [ -s "$T/changed.txt" ]; then fail "$name (files changed or created)" "$T/changed.txt"
    else ok "$name: $(grep -m1 -E -- "$phrase" "$T/out.txt" | cut -c1-120)"; fi
}

# control NAME CMD...: CMD must succeed
control() {
    local name="$1"; shift
    if timeout 300 "$@" > "$T/out.txt" 2>&1 < /dev/null; then ok "$name"; else fail "$name (exit $?)" "$T/out.txt"; fi
}

# a run directory runs/NAME holding the training state in/state/NAME.safetensors (or $2)
run_with_state() { mkdir -p "runs/$1"; cp "${2:-in/state/$1.safetensors}" "runs/$1/state.safetensors"; }

S=("$SAMPLE" --device cpu --n 2 --steps 2 --out out/grid.png)

echo "bad inputs: train_vae, train_ldm and sample_ldm on crafted files (tests/bad_inputs/)"

# --- controls: the good files load, sample and resume
control "control: sample_ldm samples from the good checkpoints (grid + raw records)" \
    "$SAMPLE" --device cpu --n 2 --steps 2 --checkpoint in/unet.safetensors --out out/good.png --out-raw out/good.bin
[ "$(stat -c %s out/good.bin 2>/dev/null)" = 6146 ] && ok "control: --out-raw holds 2 records of 3,073 bytes" \
    || fail "control: --out-raw holds 2 records of 3,073 bytes (got $(stat -c %s out/good.bin 2>/dev/null))"
control "control: sample_ldm with --vae-checkpoint given" \
    "$SAMPLE" --device cpu --n 2 --steps 2 --checkpoint in/unet.safetensors --vae-checkpoint in/vae.safetensors \
    --out out/good2.png
rm -f out/good*

# --- U-Net checkpoints (sample_ldm --checkpoint): config fields out of what the model code supports
ck() { refuse "checkpoint $1" "$2" "${S[@]}" --checkpoint "in/ckpt/$1.safetensors"; }
ck unet_nres9            "config nres is 9; allowed: an integer in \[1, 4\]"
ck unet_nres5_complete   "config nres is 5; allowed: an integer in \[1, 4\]"
ck unet_nres0            "config nres is 0"
ck unet_ch12             "config ch is 12; allowed: a multiple of 8"
ck unet_ch0              "config ch is 0"
ck unet_ch4096           "config ch is 4096"
ck unet_mult5            "config mult is 5 entries; allowed: 1 to 4 entries"
ck unet_mult_empty       "config mult is 0 entries"
ck unet_mult0            "config mult\[1\] is 0"
ck unet_z0               "config z_channels is 0"
ck unet_classes_neg      "config num_classes is -1"
ck unet_attn3            "config attn_res is \[3\]; allowed: one of the model's resolutions \(8, 4\)"
ck unet_attn2            "config attn_res is 2 entries"
ck unet_attn_none        "config attn_res is 0 entries"
ck unet_heads3           "config heads is 3; allowed: a divisor"
ck unet_heads0           "config heads is 0"
ck unet_tdim7            "config tdim is 7; allowed: an even integer"
ck unet_tdim0            "config tdim is 0"
ck unet_ch_string        "config ch is missing or unreadable"
ck unet_ch_float         "config ch is missing or unreadable"
ck unet_no_heads         "config heads is missing or unreadable"
ck unet_config_garbage   "config preset is missing or unreadable"
# metadata besides the config
ck unet_scale_nan        "metadata latent_scale is nan; allowed: a finite number > 0"
ck unet_scale_zero       "metadata latent_scale is 0; allowed: a finite number > 0"
ck unet_scale_text       "metadata latent_scale is 'abc'"
ck unet_scale_neg        "metadata latent_scale is -1.5"
ck unet_scale_inf        "metadata latent_scale is inf"
ck unet_scale_huge       "metadata latent_scale is inf"
ck unet_scale_missing    "metadata latent_scale is '\(missing\)'"
ck unet_schedule_bad     "metadata schedule is 'quadratic'; allowed: cosine or linear"
ck unet_sha_bad          "metadata vae_sha256 is 'xyz'; allowed: 64 lowercase hex digits"
ck unet_vae_path_empty   "metadata vae_checkpoint is empty"
ck unet_format_missing   "is not an ldm.c file"
# tensors
ck unet_unused_tensor    "tensor 'extra.weight' is not a parameter of this model \(unused\)"
ck unet_missing_tensor   "tensor 'conv_out.bias' is missing"
ck unet_wrong_shape      "tensor 'conv_in.weight' is F32 8x4x3x2, the model expects F32 8x4x3x3"
ck unet_f16              "tensor 'conv_in.bias' has dtype 'F16'"
ck unet_i64              "tensor 'conv_in.bias' is I64"
ck unet_nan_weight       "tensor 'mid.attn.qkv.weight' holds nan at element 3"
ck unet_inf_weight       "tensor 'mid.attn.qkv.weight' holds inf at element 3"
# broken files
ck truncated             "truncated|exceeds|beyond"
ck empty                 "too short for a safetensors file"
ck header_too_long       "header length 1099511627776 exceeds"
ck header_garbage        "header"
refuse "a VAE checkpoint as --checkpoint" "is a vae file, not a U-Net checkpoint" \
    "${S[@]}" --checkpoint in/vae.safetensors
refuse "--checkpoint missing" "U-Net checkpoint 'in/nope.safetensors' not found" "${S[@]}" --checkpoint in/nope.safetensors
refuse "--checkpoint a directory" "a directory, not a regular file" "${S[@]}" --checkpoint in/dir
refuse "--checkpoint a FIFO (must not hang)" "a FIFO \(named pipe\), not a regular file" "${S[@]}" --checkpoint in/fifo
refuse "--checkpoint /dev/zero (must not hang)" "character device, not a regular file" "${S[@]}" --checkpoint /dev/zero
refuse "--checkpoint an empty file" "too short" "${S[@]}" --checkpoint in/empty.bin

# --- the VAE of sample_ldm: --vae-checkpoint, or the path stored in the U-Net checkpoint
sv() { refuse "sample --vae-checkpoint $1" "$2" "${S[@]}" --checkpoint in/unet.safetensors --vae-checkpoint "$3"; }
sv "a FIFO (must not hang)"  "a FIFO \(named pipe\)" in/fifo
sv "/dev/zero (must not hang)" "character device, not a regular file" /dev/zero
sv "a directory"             "a directory, not a regular file" in/dir
sv "missing"                 "--vae-checkpoint 'in/nope' not found" in/nope
sv "with nres 9"             "config nres is 9; allowed: an integer in \[1, 4\]" in/ckpt/vae_nres9.safetensors
sv "with ch 12"              "config ch is 12" in/ckpt/vae_ch12.safetensors
sv "with 2 levels"           "config mult is 2 entries; allowed: 3 entries" in/ckpt/vae_mult2.safetensors
sv "with mult 0"             "config mult\[1\] is 0" in/ckpt/vae_mult0.safetensors
sv "with z_channels 0"       "config z_channels is 0" in/ckpt/vae_z0.safetensors
sv "of 8 latent channels"    "makes 8x8x8 latents; the U-Net takes 4x8x8" in/ckpt/vae_z8_complete.safetensors
sv "with an unused tensor"   "tensor 'decoder.extra' is not a parameter of this model \(unused\)" in/ckpt/vae_unused_tensor.safetensors
sv "with a NaN weight"       "tensor 'decoder.conv_out.weight' holds nan" in/ckpt/vae_nan_weight.safetensors
sv "a U-Net checkpoint"      "is a unet file, not a VAE checkpoint" in/unet.safetensors
refuse "the VAE path stored in the checkpoint is a FIFO (must not hang)" "a FIFO \(named pipe\)" \
    "${S[@]}" --checkpoint in/ckpt/unet_vae_path_fifo.safetensors

# --- outputs that would destroy an input, and unwritable outputs: refused before any sampling
G=("$SAMPLE" --device cpu --n 2 --steps 2 --checkpoint in/unet.safetensors)
refuse "--out is the U-Net checkpoint" "--out 'in/unet.safetensors' is the input file" "${G[@]}" --out in/unet.safetensors
refuse "--out is a symlink to the checkpoint" "is the input file 'in/unet.safetensors'" "${G[@]}" --out in/link_to_unet.safetensors
refuse "--out-raw is the VAE checkpoint" "--out-raw 'in/vae.safetensors' is the input file" \
    "${G[@]}" --out out/grid.png --out-raw in/vae.safetensors
refuse "--out-raw is the --init-noise file" "--out-raw '\./in/noise_nan.bin' is the input file" \
    "${G[@]}" --out out/grid.png --init-noise in/noise_nan.bin --out-raw ./in/noise_nan.bin
refuse "--out and --out-raw are one file" "--out and --out-raw are the same file" \
    "${G[@]}" --out out/grid.png --out-raw ./out/grid.png
refuse "--out in a missing directory" "its directory 'no/such/dir' does not exist" "${G[@]}" --out no/such/dir/grid.png
refuse "--out under a file" "its directory 'in/vae.safetensors' is not a directory" "${G[@]}" --out in/vae.safetensors/grid.png
refuse "--out is a directory" "--out 'in/dir' exists and is a directory" "${G[@]}" --out in/dir
refuse "--out is a FIFO" "--out 'in/fifo' exists and is a FIFO" "${G[@]}" --out in/fifo

# --- --init-noise
refuse "--init-noise a FIFO (must not hang)" "a FIFO \(named pipe\)" "${S[@]}" --checkpoint in/unet.safetensors --init-noise in/fifo
refuse "--init-noise of the wrong size" "--init-noise 'in/noise_short.bin' has 12 bytes" \
    "${S[@]}" --checkpoint in/unet.safetensors --init-noise in/noise_short.bin
refuse "--init-noise holding NaN" "value 0 is nan; allowed: finite numbers" \
    "${S[@]}" --checkpoint in/unet.safetensors --init-noise in/noise_nan.bin
refuse "--init-noise missing" "--init-noise file 'in/nope.bin' not found" "${S[@]}" --checkpoint in/unet.safetensors --init-noise in/nope.bin

# --- bad flags
refuse "sample --steps 0" "--steps must be an integer in \[1, 1000\]" "${S[@]}" --checkpoint in/unet.safetensors --steps 0
refuse "sample --class 5 of a 2-class model" "the model has classes 0\.\.1" "${S[@]}" --checkpoint in/unet.safetensors --class 5
refuse "sample --guidance-scale nan" "--guidance-scale must be a number" "${S[@]}" --guidance-scale nan
refuse "sample --n -1" "--n must be an integer" "${S[@]}" --n -1
refuse "sample unknown flag" "unknown flag '--frobnicate'" "${S[@]}" --frobnicate
refuse "sample --out without a value" "flag --out needs a value" "$SAMPLE" --out
refuse "train_vae --batch-size 0" "--batch-size must be an integer" "$VAE" --batch-size 0
refuse "train_vae --lr nan" "--lr must be a number" "$VAE" --lr nan
refuse "train_vae --lr 0" "--lr must be a number in \(0, 10\]" "$VAE" --lr 0
refuse "train_vae --run-name ../x" "--run-name must be" "$VAE" --run-name ../x
refuse "train_ldm --cfg-dropout 1.5" "--cfg-dropout must be a number in \[0, 1\]" "$LDM" --cfg-dropout 1.5
refuse "train_ldm --ema-decay -0.1" "--ema-decay must be a number" "$LDM" --ema-decay -0.1
refuse "train_ldm --num-classes -1" "--num-classes must be an integer" "$LDM" --num-classes -1
LONG_PATH="in/$(printf 'd%.0s' $(seq 600)).safetensors"   # longer than the path buffers: refused, never cut short
refuse "train_ldm --vae-checkpoint of 615 bytes" "--vae-checkpoint must be a path of 1 to 511 bytes" "$LDM" --vae-checkpoint "$LONG_PATH"
refuse "sample --checkpoint of 615 bytes" "--checkpoint must be a path of 1 to 511 bytes" "${S[@]}" --checkpoint "$LONG_PATH"

# --- train_ldm's VAE (a new run: nothing may be created)
lv() { refuse "train_ldm --vae-checkpoint $1" "$2" "$LDM" --device cpu --run-name new_ldm --data "$DATA" --vae-checkpoint "$3"; }
lv "a FIFO (must not hang)" "a FIFO \(named pipe\)" in/fifo
lv "/dev/zero (must not hang)" "character device, not a regular file" /dev/zero
lv "a directory"          "a directory, not a regular file" in/dir
lv "with nres 9"          "config nres is 9" in/ckpt/vae_nres9.safetensors
lv "of 8 latent channels" "makes 8x8x8 latents; the U-Net takes 4x8x8" in/ckpt/vae_z8_complete.safetensors
lv "a U-Net checkpoint"   "is a unet file, not a VAE checkpoint" in/unet.safetensors

# --- VAE training states (train_vae --resume): every one refused before anything is read or written
rv() { run_with_state "$1"; refuse "train_vae --resume: $1" "$2" "$VAE" --device cpu --resume --run-name "$1" --data "$DATA"; }
rv vae_nres9          "config nres is 9; allowed: an integer in \[1, 4\]"
rv vae_step_neg       "tensor 'step' is -1; allowed: an integer in \[0, 20\]"
rv vae_step_past_end  "tensor 'step' is 999; allowed: an integer in \[0, 20\]"
rv vae_batch0         "train_args batch_size is 0; allowed: an integer in \[1, 65536\]"
rv vae_lr_neg         "train_args lr is -0.001; allowed: a finite number in \[0, 10\]"
rv vae_lr_inf         "train_args lr is inf; allowed: a finite number"
rv vae_lr_nan         "train_args lr is missing or unreadable"
rv vae_kl_neg         "train_args kl_weight is -1"
rv vae_warmup_neg     "train_args kl_warmup_steps is -5"
rv vae_total0         "train_args total_steps is 0"
rv vae_seed_neg       "train_args seed is -1"
rv vae_no_lr          "train_args lr is missing or unreadable"
rv vae_no_train_args  "has no train_args metadata"
rv vae_params_short   "tensor 'params' is F32 of 10 elements"
rv vae_params_nan     "tensor 'params' element 3 is nan; allowed: a finite number"
rv vae_adam_v_neg     "tensor 'adam_v' element 0 is -1; allowed: a finite number >= 0"
rv vae_no_adam_m      "tensor 'adam_m' is missing"
rv vae_extra_ema      "tensor 'ema' is present \(not part of a training state\)"
rv vae_step_f32       "tensor 'step' is F32"
rv vae_is_unet_state  "is a unet-train-state file, not a train_vae training state"
mkdir -p runs/state_fifo && mkfifo runs/state_fifo/state.safetensors
refuse "train_vae --resume: the state is a FIFO (must not hang)" "a FIFO \(named pipe\)" \
    "$VAE" --device cpu --resume --run-name state_fifo --data "$DATA"
mkdir -p runs/state_dir/state.safetensors
refuse "train_vae --resume: the state is a directory" "a directory, not a regular file" \
    "$VAE" --device cpu --resume --run-name state_dir --data "$DATA"
run_with_state state_truncated in/ckpt/truncated.safetensors
refuse "train_vae --resume: the state is truncated" "truncated|exceeds|beyond" \
    "$VAE" --device cpu --resume --run-name state_truncated --data "$DATA"

# --- U-Net training states (train_ldm --resume)
rl() { run_with_state "$1"; refuse "train_ldm --resume: $1" "$2" "$LDM" --device cpu --resume --run-name "$1" --data "$DATA"; }
rl unet_nres9         "config nres is 9"
rl unet_scale_nan     "metadata latent_scale is nan"
rl unet_step_neg      "tensor 'step' is -1"
rl unet_cfg_dropout   "train_args cfg_dropout is 1.5; allowed: a finite number in \[0, 1\]"
rl unet_ema_decay     "train_args ema_decay is -0.5; allowed: a finite number in \[0, 1\]"
rl unet_lr_inf        "train_args lr is inf"
rl unet_batch0        "train_args batch_size is 0"
rl unet_warmup_neg    "train_args warmup_steps is -1"
rl unet_no_ema        "tensor 'ema' is missing"
rl unet_ema_inf       "tensor 'ema' element 7 is inf"
rl unet_vae_fifo      "a FIFO \(named pipe\)"
rl unet_vae_other     "is not the VAE this run was trained with"
run_with_state unet_good in/unet_state.safetensors
refuse "control: a good U-Net state passes every check (stops at the missing --data)" "no CIFAR-10 in 'no_data'" \
    "$LDM" --device cpu --resume --run-name unet_good --data no_data

# --- run directories
mkdir -p runs/killed_early && echo "starting ..." > runs/killed_early/log.txt
refuse "--resume of a run stopped before its first save" "holds no training state \(state.safetensors\): the run stopped before its first save" \
    "$VAE" --device cpu --resume --run-name killed_early --data "$DATA"
refuse "a new run in that directory is allowed (stops at the missing --data)" "starting it again from step 0 there" \
    "$VAE" --device cpu --run-name killed_early --data no_data
mkdir -p runs/finished && cp in/vae.safetensors runs/finished/checkpoint_final.safetensors
refuse "--resume of a run with a checkpoint but no state" "cannot be continued" \
    "$VAE" --device cpu --resume --run-name finished --data "$DATA"
refuse "a new run over a finished run" "already holds a final checkpoint" "$VAE" --device cpu --run-name finished --data "$DATA"
run_with_state has_state in/vae_state.safetensors
refuse "a new run over a run with a state" "already holds a training state" "$VAE" --device cpu --run-name has_state --data "$DATA"
refuse "--resume of a run that does not exist" "there is no run directory 'runs/nothing_here'" \
    "$VAE" --device cpu --resume --run-name nothing_here --data "$DATA"
echo "not a directory" > runs/a_file
refuse "runs/NAME is a file" "'runs/a_file' exists and is not a directory" "$VAE" --device cpu --run-name a_file --data "$DATA"

run_with_state vae_good in/vae_state.safetensors
refuse "control: a good VAE state passes every check (stops at the missing --data)" "no CIFAR-10 in 'no_data'" \
    "$VAE" --device cpu --resume --run-name vae_good --data no_data

# --- the cases that need the data: a batch size past the kernels' int indexing (refused once the data
# is read, before the model is allocated), and one that trains: one step (batch 4) of the tiny VAE
# from a state whose AdamW moment makes that step overflow. The state loads and trains (a control of
# the state file); the weights after the step are not finite, so nothing is saved: no
# checkpoint_final, and the state stays byte-identical.
if [ $HAVE_DATA -eq 1 ]; then
    refuse "train_vae --preset fast --batch-size 40000 (activations past int indexing)" \
        "a batch of 40000 images of this VAE would need activations of [0-9]+ values, more than the 2147483647" \
        "$VAE" --device cpu --preset fast --batch-size 40000 --run-name big_batch --data "$DATA"
    run_with_state vae_update_overflows
    MAY_CREATE='runs/vae_update_overflows/(log\.txt|events\.out\.tfevents\..*)$' \
        refuse "train_vae: weights that overflow in the last step are not saved (the state is kept)" \
        "the weights after step 6 are not finite .* keeps the last good state" \
        "$VAE" --device cpu --resume --run-name vae_update_overflows --data "$DATA" --max-steps 6
else
    skipped=$((skipped + 2))
    echo "  [skip] the 2 cases that need the data: no CIFAR-10 in '$DATA'"
fi

# --- eval_ldm: files of CIFAR-10 records, refused before any work (no classifier or data needed for those)
EVAL=("$REPO_ROOT/eval_ldm" --device cpu --classifier "$REPO_ROOT/dev/classifier/cifar10_classifier.safetensors")
{ printf '\003'; head -c 3072 /dev/zero; printf '\377'; head -c 3072 /dev/zero; } > in/two_records.bin
{ printf '\003'; head -c 3072 /dev/zero; printf '\012'; head -c 3072 /dev/zero; } > in/label10.bin
head -c 3100 in/two_records.bin > in/partial_record.bin
refuse "eval_ldm: no file and no --vae-checkpoint" "nothing to score" "${EVAL[@]}"
refuse "eval_ldm: --vae-n without --vae-checkpoint" "--vae-n needs --vae-checkpoint" "${EVAL[@]}" --vae-n 5 in/two_records.bin
refuse "eval_ldm: a file that is not whole records" "3100 bytes, not a whole number of CIFAR-10 records" \
    "${EVAL[@]}" in/partial_record.bin
refuse "eval_ldm: an empty file" "0 bytes, not a whole number" "${EVAL[@]}" in/empty.bin
refuse "eval_ldm: a label that is no class and not 255" "record 1 of 'in/label10.bin' has label 10" \
    "${EVAL[@]}" in/label10.bin
refuse "eval_ldm: a directory" "'in/dir': a directory, not a regular file" "${EVAL[@]}" in/dir
refuse "eval_ldm: a FIFO (does not hang)" "FIFO" "${EVAL[@]}" in/fifo
refuse "eval_ldm: a missing file" "No such file" "${EVAL[@]}" in/two_records.bin in/missing.bin
refuse "eval_ldm: --n above the file's records" "--n 3, but 'in/two_records.bin' holds 2 records" \
    "${EVAL[@]}" --n 3 in/two_records.bin
if [ $HAVE_DATA -eq 1 ]; then
    refuse "eval_ldm: a VAE checkpoint as the classifier" "is a vae file, not a classifier file" \
        "${EVAL[@]}" --data "$DATA" --classifier in/vae.safetensors in/two_records.bin
    refuse "eval_ldm: a U-Net checkpoint as --vae-checkpoint" "is a unet file, not a VAE checkpoint" \
        "${EVAL[@]}" --data "$DATA" --vae-checkpoint in/unet.safetensors --vae-n 2
    refuse "eval_ldm: more reference images than the split has" "the test split has 10000" \
        "${EVAL[@]}" --data "$DATA" --ref-n 20000 in/two_records.bin
    control "control: eval_ldm scores two records (one conditional, one unconditional)" \
        "${EVAL[@]}" --data "$DATA" in/two_records.bin
    grep -q "n 2 | FD .* | class agreement [01].000 (1 of them labelled)" "$T/out.txt" \
        && ok "control: eval_ldm's line counts the one labelled record" \
        || fail "control: eval_ldm's line counts the one labelled record" "$T/out.txt"
    control "control: eval_ldm scores the reconstructions of a VAE checkpoint" \
        "${EVAL[@]}" --data "$DATA" --vae-checkpoint in/vae.safetensors --vae-n 2
else
    skipped=$((skipped + 6))
    echo "  [skip] the 6 eval_ldm cases that need the data: no CIFAR-10 in '$DATA'"
fi

# the skip count goes on its own line: the last line is the "N passed, M failed" that tests/suites.sh sums
[ $skipped -gt 0 ] && echo "$skipped skipped (no CIFAR-10: run \`make data\`)"
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
