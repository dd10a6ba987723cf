"""
dev/bench_gpu.py - training images/s of our train_ldm / train_vae vs the PyTorch twins on one device
(meant for a GPU), in the same run, with the twin in several PyTorch modes, the ratio ours/twin per
mode beside the issue's acceptance target, and each row's MFU.

    /usr/bin/python3 dev/bench_gpu.py [--device cuda|cpu] [--models unet,vae]
        [--unet-preset fast] [--unet-batch 256] [--vae-preset fast] [--vae-batch 512] [--steps 20]
        [--modes eager32,bf16,compile_bf16] [--binary-dir .] [--json PATH] [--threads N] [--twin-only]
        [--peak-bf16 989] [--peak-fp32 67] [--ours-precision fp32|tf32|bf16]

A CPU smoke test (tiny presets, a few steps; the twin's unavailable modes are reported and skipped):
    /usr/bin/python3 dev/bench_gpu.py --device cpu --threads 1 --unet-preset tiny --unet-batch 8 \
        --vae-preset tiny --vae-batch 8 --steps 2

A training step, on random data made before the clock starts: forward + loss + backward +
clip_grad_norm_(1.0) + AdamW (weight decay 0; fused=True where the PyTorch build has it, on CUDA)
+ for the U-Net an EMA update of every weight (torch._foreach_mul_/add_). U-Net: 10 classes, CFG
label dropout 0.1, cosine schedule (dev/unet_twin.py). VAE: the KL loss with kl_weight 0.001
(dev/vae_twin.py). Ours: `train_ldm|train_vae --preset P --batch-size B --bench STEPS --device D`,
which prints `bench: <img/s> img/s` (median over STEPS after 2 warm-up steps). The twin: 3 warm-up
steps, then the median of the per-step times, with the device synchronised around each step.
Twin modes (--modes picks them; benchlib.MODES):
  eager32       fp32, TF32 off for matmuls AND convolutions (PyTorch's default lets cuDNN use TF32)
  tf32          torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
  bf16          torch.autocast(bfloat16) around forward + loss (fp32 weights, AdamW and EMA), TF32 off
  compile32     torch.compile (default mode) of forward + loss, fp32 as eager32
  compile_bf16  torch.compile of forward + loss under bf16 autocast, as bf16
The compile modes' warm-up steps, which compile, are timed apart (the "warm-up s" column) and are
not in img/s. cuDNN autotuning (torch.backends.cudnn.benchmark) is on: the shapes never change.

Model FLOPs per image: 3 x the twin's forward FLOPs (backward = 2 x forward, the usual MFU
convention), counted on the CPU at batch 2 by torch's FlopCounterMode where it exists (PyTorch
>= 2.1), else by benchlib's analytic count of the convolutions, linears and attention products;
both are printed. MFU = FLOPs per image x img/s / the peak of the row's arithmetic (benchlib.Peaks:
the H200's datasheet, dense bf16 989 TFLOP/s, fp32 67; ours: --ours-precision).
Acceptance targets (benchlib.TARGETS), printed beside the ratios: U-Net fast training >= 1.3x
torch.compile bf16; VAE fast training >= 1.0x torch.compile bf16.

For each model ours runs first, then the twin in each mode; the compile modes of every model run
last, so a slow compilation (expect 30-90 s a model: it dominates the run time) cannot cost the
other numbers. Each row prints as it is measured with the seconds it took and, with --json, the
file is rewritten after every row (a run stopped by a timeout still leaves the rows it finished). A
failed measurement (our program's error, an out-of-memory, a compile error) is reported and
skipped; the script then exits 1 after the table. ours/mode > 1 means ours is faster than the twin.
"""

import argparse
import inspect
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import unet_twin  # noqa: E402
import vae_twin  # noqa: E402
from benchlib import (BENCH_LINE, DEFAULT_MODES, MODES, Peaks, add_peak_args, autocast, check_binary,  # noqa: E402
                      flops_text, forward_flops, free_device_memory, maybe_compile, mode_unavailable,
                      parse_modes, reset_compiler, run_program, set_tf32, setup_device, short_error,
                      synchronize, target_text, write_json)

WARMUP = 3
KL_WEIGHT = 0.001
NUM_CLASSES = 10
CFG_DROPOUT = 0.1
MAX_GRAD_NORM = 1.0
EMA_DECAY = 0.9999
MODELS = ("unet", "vae")

# --------------------------------------------------------------------------------------------------
# the twins' training steps


def build_twin(model_name, preset, batch, device):
    """(model, lr, make_inputs, loss_fn, forward, use_ema): make_inputs() draws one random batch on
    the device, loss_fn(*batch) is the scalar training loss, forward(*batch) the model's forward
    alone (what the FLOPs count runs)."""
    torch.manual_seed(0)
    B = batch
    if model_name == "vae":
        p = vae_twin.PRESETS[preset]
        model = vae_twin.VAE(p["ch"], p["mult"], p["nres"], 4).to(device)

        def make_inputs():
            return (torch.rand(B, 3, 32, 32, device=device) * 2 - 1, torch.randn(B, 4, 8, 8, device=device))

        def loss_fn(x, eps):
            return model.forward_loss(x, eps, KL_WEIGHT)[0]
        return model, p["lr"], make_inputs, loss_fn, loss_fn, False

    p = unet_twin.PRESETS[preset]
    model = unet_twin.UNet(p["ch"], p["mult"], p["nres"], num_classes=NUM_CLASSES).to(device)
    # a float64 tensor on the device: diffusion_loss indexes it with the (device) timesteps
    abar = torch.as_tensor(unet_twin.make_schedule("cosine"), device=device)

    def make_inputs():
        return (torch.randn(B, 4, 8, 8, device=device), torch.randn(B, 4, 8, 8, device=device),
                torch.randint(0, unet_twin.T_STEPS, (B,), device=device),
                torch.randint(0, NUM_CLASSES, (B,), device=device),
                (torch.rand(B, device=device) < CFG_DROPOUT).long())

    def loss_fn(z0, eps, t, labels, drop_mask):
        return unet_twin.diffusion_loss(model, z0, t, eps, abar, labels, drop_mask)

    def forward(z0, eps, t, labels, drop_mask):
        return model(z0, t, labels)
    return model, p["lr"], make_inputs, loss_fn, forward, True


def training_flops(model_name, preset):
    """(FLOPs per image of one training step = 3 x forward, where the count came from), counted on
    the CPU at batch 2."""
    model, _, make_inputs, _, forward, _ = build_twin(model_name, preset, 2, "cpu")
    inputs = make_inputs()
    counted, analytic = forward_flops(model, lambda: forward(*inputs), (unet_twin.Attn,))
    return flops_text(3 * counted / 2 if counted is not None else None, 3 * analytic / 2)


def time_twin(model_name, preset, batch, mode, device, steps):
    """(images/s, seconds of the warm-up steps) of the twin in `mode`."""
    tf32, bf16, _, _ = MODES[mode]
    set_tf32(tf32)
    model, lr, make_inputs, loss_fn, _, use_ema = build_twin(model_name, preset, batch, device)
    loss_fn = maybe_compile(loss_fn, mode)
    params = list(model.parameters())
    fused = device == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, **({"fused": True} if fused else {}))
    ema = [w.detach().clone() for w in params] if use_ema else None
    times = []
    for step in range(WARMUP + steps):
        inputs = make_inputs()
        synchronize(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast(device, bf16):
            loss = loss_fn(*inputs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        opt.step()
        if ema is not None:
            # SPEC section 6: after optimizer step n, ema = d ema + (1 - d) w, d = min(decay, (1+n)/(10+n))
            d = min(EMA_DECAY, (1 + step) / (10 + step))
            torch._foreach_mul_(ema, d)
            torch._foreach_add_(ema, params, alpha=1 - d)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times[WARMUP:]), sum(times[:WARMUP])


# --------------------------------------------------------------------------------------------------
# main


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="where both sides run (default cuda)")
    ap.add_argument("--models", default="unet,vae", help="comma-separated, in this order: unet, vae (default both)")
    ap.add_argument("--unet-preset", default="fast", choices=list(unet_twin.PRESETS))
    ap.add_argument("--unet-batch", type=int, default=256)
    ap.add_argument("--vae-preset", default="fast", choices=list(vae_twin.PRESETS))
    ap.add_argument("--vae-batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per measurement (default 20)")
    ap.add_argument("--modes", default=DEFAULT_MODES, help="twin modes, comma-separated: %s (default %s)"
                    % (", ".join(MODES), DEFAULT_MODES))
    ap.add_argument("--binary-dir", default=".", help="folder holding train_ldm and train_vae (default .)")
    ap.add_argument("--json", default=None, help="also write the table to this JSON file")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads, --device cpu only "
                    "(default: all cores)")
    ap.add_argument("--twin-only", action="store_true", help="time only the PyTorch twin (no binaries needed)")
    add_peak_args(ap)
    args = ap.parse_args()

    args.model_list = [m for m in args.models.split(",") if m]
    if not args.model_list or any(m not in MODELS for m in args.model_list):
        ap.error("--models takes unet, vae or both, comma-separated; got '%s'" % args.models)
    args.mode_list = parse_modes(ap, args.modes, MODES)
    if min(args.vae_batch, args.unet_batch, args.steps, args.threads) < 1:
        ap.error("--vae-batch, --unet-batch, --steps and --threads must be at least 1")
    args.spec = {"unet": ("train_ldm", args.unet_preset, args.unet_batch, ["--num-classes", str(NUM_CLASSES)]),
                 "vae": ("train_vae", args.vae_preset, args.vae_batch, [])}
    if not args.twin_only:
        for m in args.model_list:
            check_binary(ap, os.path.join(args.binary_dir, args.spec[m][0]), args.spec[m][0], "--binary-dir")
    return args


ROW_FORMAT = "%-5s %-6s %5s %-12s %9s %9s %-15s %7s %5s"
TIMING_FORMAT = " %8s %9s"


def print_row(row, peaks, timing=True):
    """One measured row; timing: with the seconds it took and its warm-up seconds."""
    ratio = row.get("ours_over_mode")
    line = ROW_FORMAT % (row["model"], row["preset"], row["batch"], row["mode"], "%.1f" % row["img_per_s"],
                         "%.2fx" % ratio if ratio is not None else "-", target_text(row["model"], row["mode"], ratio),
                         "%.2f%%" % (100 * row["mfu"]), peaks.precision(row["mode"]))
    if timing:
        line += TIMING_FORMAT % ("%.1f" % row["seconds"],
                                 "%.1f" % row["warmup_seconds"] if "warmup_seconds" in row else "-")
    print(line)


def main():
    args = parse_args()
    desc = setup_device(args.device, args.threads)
    peaks = Peaks(args)
    print("device: %s" % desc)
    print("%d timed steps; twin: %d warm-up steps, then the median step; ours: train_* --bench (2 warm-up steps)"
          % (args.steps, WARMUP))
    print(peaks.describe(desc))
    flops = {}
    for m in args.model_list:
        flops[m], source = training_flops(m, args.spec[m][1])
        print("%s %s: %.3f GFLOP per image per training step (3 x forward; %s)"
              % (m, args.spec[m][1], flops[m] / 1e9, source))
    print()
    header = {"device": desc, "torch": torch.__version__, "args": {k: v for k, v in vars(args).items() if k != "spec"},
              "flops_per_image": flops, "peaks_tflops": peaks.tflops}
    rows, ours, failed = [], {}, 0  # ours: model -> our img/s
    print(ROW_FORMAT % ("model", "preset", "batch", "mode", "img/s", "ours/mode", "target", "MFU", "peak")
          + TIMING_FORMAT % ("total s", "warm-up s"))

    def record(model_name, mode, measure):
        # runs one measurement, prints its row and keeps it (or its error)
        nonlocal failed
        _, preset, batch, _ = args.spec[model_name]
        row = {"model": model_name, "preset": preset, "batch": batch, "mode": mode}
        why = None if mode == "ours" else mode_unavailable(mode, args.device)
        t0 = time.perf_counter()
        if why:
            row["skipped"] = why
            print("%-5s %-6s %5d %-12s   skipped: %s" % (model_name, preset, batch, mode, why))
        else:
            try:
                row["img_per_s"], warmup_s = measure()
                row["seconds"] = time.perf_counter() - t0
                row["mfu"] = peaks.mfu(mode, flops[model_name], row["img_per_s"])
                if warmup_s is not None:
                    row["warmup_seconds"] = warmup_s
                if model_name in ours and mode != "ours":
                    row["ours_over_mode"] = ours[model_name] / row["img_per_s"]
                print_row(row, peaks)
            except Exception as e:  # noqa: BLE001 - one failed measurement must not lose the others
                failed += 1
                row["error"] = short_error(e)
                print("%-5s %-6s %5d %-12s   FAILED: %s" % (model_name, preset, batch, mode, row["error"]))
            if mode != "ours":
                reset_compiler(mode)
            free_device_memory(args.device)
        sys.stdout.flush()
        rows.append(row)
        write_json(args.json, header, rows)
        return row.get("img_per_s")

    def measure_ours(model_name):
        program, preset, batch, extra = args.spec[model_name]
        cmd = [os.path.join(args.binary_dir, program), "--preset", preset, "--batch-size", str(batch),
               "--bench", str(args.steps), "--device", args.device] + extra
        return float(run_program(cmd, BENCH_LINE, args.threads if args.device == "cpu" else None)[-1]), None

    def measure_twin(model_name, mode):
        _, preset, batch, _ = args.spec[model_name]
        return time_twin(model_name, preset, batch, mode, args.device, args.steps)

    # compile last: its long first steps must not cost the other rows if the run is cut short
    eager = [m for m in args.mode_list if not MODES[m][2]]
    compiled = [m for m in args.mode_list if MODES[m][2]]
    for first, phase in ((True, eager), (False, compiled)):
        for model_name in args.model_list:
            if first and not args.twin_only:
                value = record(model_name, "ours", lambda: measure_ours(model_name))
                if value:
                    ours[model_name] = value
            for mode in phase:
                record(model_name, mode, lambda: measure_twin(model_name, mode))

    print("\n%s\n%s" % (desc, peaks.describe(desc)))
    print(ROW_FORMAT % ("model", "preset", "batch", "mode", "img/s", "ours/mode", "target", "MFU", "peak"))
    order = ["ours"] + args.mode_list
    for name in args.model_list:
        for row in sorted((r for r in rows if r["model"] == name), key=lambda r: order.index(r["mode"])):
            if "img_per_s" in row:
                print_row(row, peaks, timing=False)
            else:
                print(ROW_FORMAT % (name, row["preset"], row["batch"], row["mode"],
                                    "skipped" if "skipped" in row else "FAILED", "-",
                                    target_text(name, row["mode"], None), "-", "-"))
    if args.json:
        print("wrote %s" % args.json)
    if failed:
        sys.exit("error: %d measurement(s) failed (see FAILED above)" % failed)


if __name__ == "__main__":
    main()
