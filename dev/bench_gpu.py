"""
dev/bench_gpu.py - training images/s of our train_vae / train_ldm vs the PyTorch twins on one device
(meant for a GPU), in the same run, with the twin in several PyTorch modes.

    /usr/bin/python3 dev/bench_gpu.py [--device cuda|cpu] [--models vae,unet]
        [--vae-preset fast] [--vae-batch 512] [--unet-preset base] [--unet-batch 128] [--steps 20]
        [--modes eager32,tf32,bf16,compile] [--binary-dir .] [--json PATH] [--threads N] [--twin-only]

A training step, on random data made before the clock starts: forward + loss + backward +
clip_grad_norm_(1.0) + AdamW (weight decay 0; fused=True where the PyTorch build has it, on CUDA)
+ for the U-Net an EMA update of every weight (torch._foreach_mul_/add_). VAE: the KL loss with
kl_weight 0.001 (dev/vae_twin.py). U-Net: 10 classes, CFG label dropout 0.1, cosine schedule
(dev/unet_twin.py). Ours: `train_vae|train_ldm --preset P --batch-size B --bench STEPS --device D`,
which prints `bench: <img/s> img/s` (median over STEPS after 2 warm-up steps). The twin: 3 warm-up
steps, then the median of the per-step times, with the device synchronised around each step.
Twin modes (--modes picks them):
  eager32   fp32, TF32 off for matmuls AND convolutions (PyTorch's default lets cuDNN convs use TF32)
  tf32      torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
  bf16      torch.autocast(bfloat16) around forward + loss (fp32 weights, AdamW and EMA), TF32 off
  compile   torch.compile of forward + loss, fp32 as eager32; the warm-up steps that compile are
            timed separately (the "warm-up s" column) and not in img/s
cuDNN autotuning (torch.backends.cudnn.benchmark) is on: the shapes never change.
For each model ours runs first, then the twin in each mode; the compile mode of every model runs
last, so a slow compilation (expect 30-60 s a model on an H100: it dominates the run time; drop it
with --modes eager32,tf32,bf16 when time is short) cannot cost the other numbers. Each row prints as
it is measured with the seconds it took and, with --json, the file is rewritten after every row (a
run stopped by a timeout still leaves the rows it finished). A failed measurement (our program's
error, an out-of-memory, a compile error) is reported and skipped; the script then exits 1 after
the table. ours/mode > 1 means ours is faster than the twin in that mode.

dev/bench_sample.py imports the shared pieces (the mode table, run_ours, device helpers) from here.
"""

import argparse
import gc
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import unet_twin  # noqa: E402
import vae_twin  # noqa: E402
from benchlib import BENCH_LINE, cpu_name  # noqa: E402

WARMUP = 3
KL_WEIGHT = 0.001
NUM_CLASSES = 10
CFG_DROPOUT = 0.1
MAX_GRAD_NORM = 1.0
EMA_DECAY = 0.9999

# mode -> (TF32 on, bf16 autocast, torch.compile, description)
MODES = {
    "eager32": (False, False, False, "fp32 eager"),
    "tf32": (True, False, False, "TF32 eager"),
    "bf16": (False, True, False, "bf16 autocast eager"),
    "compile": (False, False, True, "fp32 torch.compile"),
}

# PyTorch >= 2.9 warns that allow_tf32 will give way to fp32_precision. The old flags still work on
# every version this script meets (Debian's 1.13 included), and setting only them keeps both views
# consistent: mixing the two interfaces makes torch (and torch.compile, which reads allow_tf32) raise
# "you have used mix of the legacy and new APIs"
warnings.filterwarnings("ignore", message="Please use the new API settings to control TF32")


# --------------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------------
# device helpers, shared with bench_sample.py


def setup_device(device, threads):
    """Checks the device, sets thread counts and cuDNN autotuning; returns a one-line description."""
    if device == "cuda":
        if not torch.cuda.is_available():
            sys.exit("error: --device cuda, but this PyTorch (%s) sees no CUDA device; run on a GPU "
                     "machine or pass --device cpu" % torch.__version__)
        torch.backends.cudnn.benchmark = True
        return "%s, torch %s (CUDA %s, cuDNN %s)" % (torch.cuda.get_device_name(), torch.__version__,
                                                      torch.version.cuda, torch.backends.cudnn.version())
    torch.set_num_threads(threads)
    return "%s, %d threads for both sides, torch %s" % (cpu_name(), threads, torch.__version__)


def set_tf32(on):
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def autocast(device, bf16):
    # autocast(enabled=False) is a no-op context, so eager modes share the code path
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16)


def synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def free_device_memory(device):
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def mode_unavailable(mode, device):
    """Why `mode` cannot run here, or None."""
    if MODES[mode][0] and device != "cuda":
        return "TF32 exists only on CUDA"
    if MODES[mode][2] and not hasattr(torch, "compile"):
        return "torch %s has no torch.compile (PyTorch 2.0 or later)" % torch.__version__
    if MODES[mode][1] and device == "cpu":
        # older CPU autocast (Debian's torch 1.13) casts convs to bf16 but not GroupNorm back to fp32
        try:
            with autocast("cpu", True):
                torch.nn.GroupNorm(1, 2)(torch.nn.Conv2d(2, 2, 1)(torch.zeros(1, 2, 2, 2)))
        except RuntimeError:
            return "the CPU autocast of torch %s does not cover GroupNorm" % torch.__version__
    return None


def parse_modes(ap, text, allowed):
    modes = [m for m in text.split(",") if m]
    unknown = [m for m in modes if m not in allowed]
    if not modes or unknown:
        ap.error("unknown mode(s) %s in --modes; choose from %s"
                 % (", ".join(unknown) or "(none given)", ", ".join(allowed)))
    return modes


def check_binary(ap, path, make_target, flag):
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        ap.error("%s is not an executable: build it with `make %s` (add GPU_ARCH=90 for an H100/H200), "
                 "point %s at it, or pass --twin-only to time only the PyTorch twin" % (path, make_target, flag))


def run_ours(cmd, pattern, threads):
    """The first group of `pattern`'s LAST match in the output of `cmd` (run with OMP_NUM_THREADS =
    threads unless None), as a float. Raises RuntimeError with the end of the output when the
    program fails or prints no such line."""
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    found = pattern.findall(proc.stdout)
    if proc.returncode != 0 or not found:
        tail = "\n".join("    " + line for line in proc.stdout.strip().splitlines()[-15:])
        raise RuntimeError("`%s` %s; its output ends with:\n%s"
                           % (" ".join(cmd), "exited with status %d" % proc.returncode if proc.returncode
                              else "printed no line matching '%s'" % pattern.pattern, tail))
    return float(found[-1])


def short_error(e):
    lines = str(e).strip().splitlines() or [""]
    return "%s: %s" % (type(e).__name__, "\n".join(lines[:20]))


# --------------------------------------------------------------------------------------------------
# the twins' training steps


def build_twin(model_name, preset, batch, device):
    """(model, lr, make_inputs, loss_fn, use_ema): make_inputs() draws one random batch on the
    device, loss_fn(*batch) is the scalar training loss."""
    torch.manual_seed(0)
    B = batch
    if model_name == "vae":
        p = vae_twin.PRESETS[preset]
        model = vae_twin.VAE(p["ch"], p["mult"], p["nres"], 4).to(device)

        def make_inputs():
            return (torch.rand(B, 3, 32, 32, device=device) * 2 - 1, torch.randn(B, 4, 8, 8, device=device))

        def loss_fn(x, eps):
            return model.forward_loss(x, eps, KL_WEIGHT)[0]
        return model, p["lr"], make_inputs, loss_fn, False

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
    return model, p["lr"], make_inputs, loss_fn, True


def time_twin(model_name, preset, batch, mode, device, steps):
    """(images/s, seconds of the warm-up steps) of the twin in `mode`."""
    tf32, bf16, compiled, _ = MODES[mode]
    set_tf32(tf32)
    model, lr, make_inputs, loss_fn, use_ema = build_twin(model_name, preset, batch, device)
    if compiled:
        loss_fn = torch.compile(loss_fn)
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


def write_json(path, header, rows):
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(dict(header, rows=rows), f, indent=1)
        os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="where both sides run (default cuda)")
    ap.add_argument("--models", default="vae,unet", help="comma-separated: vae, unet (default both)")
    ap.add_argument("--vae-preset", default="fast", choices=list(vae_twin.PRESETS))
    ap.add_argument("--vae-batch", type=int, default=512)
    ap.add_argument("--unet-preset", default="base", choices=list(unet_twin.PRESETS))
    ap.add_argument("--unet-batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per measurement (default 20)")
    ap.add_argument("--modes", default="eager32,tf32,bf16,compile", help="twin modes, comma-separated: %s"
                    % ", ".join(MODES))
    ap.add_argument("--binary-dir", default=".", help="folder holding train_vae and train_ldm (default .)")
    ap.add_argument("--json", default=None, help="also write the table to this JSON file")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads, --device cpu only "
                    "(default: all cores)")
    ap.add_argument("--twin-only", action="store_true", help="time only the PyTorch twin (no binaries needed)")
    args = ap.parse_args()

    models = [m for m in args.models.split(",") if m]
    if not models or any(m not in ("vae", "unet") for m in models):
        ap.error("--models takes vae, unet or vae,unet; got '%s'" % args.models)
    modes = parse_modes(ap, args.modes, MODES)
    if min(args.vae_batch, args.unet_batch, args.steps, args.threads) < 1:
        ap.error("--vae-batch, --unet-batch, --steps and --threads must be at least 1")
    spec = {"vae": ("train_vae", args.vae_preset, args.vae_batch, []),
            "unet": ("train_ldm", args.unet_preset, args.unet_batch, ["--num-classes", str(NUM_CLASSES)])}
    if not args.twin_only:
        for m in models:
            check_binary(ap, os.path.join(args.binary_dir, spec[m][0]), spec[m][0], "--binary-dir")

    desc = setup_device(args.device, args.threads)
    print("device: %s" % desc)
    print("%d timed steps; twin: %d warm-up steps, then the median step; ours: train_* --bench (2 warm-up steps)\n"
          % (args.steps, WARMUP))
    header = {"device": desc, "torch": torch.__version__, "args": vars(args)}
    rows, ours, failed = [], {}, 0  # ours: model -> our img/s
    print("%-5s %-6s %6s %-8s %10s %10s %10s %10s" % ("model", "preset", "batch", "mode", "img/s", "ours/mode",
                                                      "total s", "warm-up s"))

    def record(model_name, mode, measure):
        # runs one measurement, prints its row and keeps it (or its error)
        nonlocal failed
        _, preset, batch, _ = spec[model_name]
        row = {"model": model_name, "preset": preset, "batch": batch, "mode": mode}
        why = None if mode == "ours" else mode_unavailable(mode, args.device)
        t0 = time.perf_counter()
        if why:
            row["skipped"] = why
            print("%-5s %-6s %6d %-8s %10s   skipped: %s" % (model_name, preset, batch, mode, "-", why))
        else:
            try:
                row["img_per_s"], warmup_s = measure()
                row["seconds"] = time.perf_counter() - t0
                if warmup_s is not None:
                    row["warmup_seconds"] = warmup_s
                if model_name in ours:
                    row["ours_over_mode"] = ours[model_name] / row["img_per_s"]
                print("%-5s %-6s %6d %-8s %10.1f %10s %10.1f %10s" % (
                    model_name, preset, batch, mode, row["img_per_s"],
                    "%.2fx" % row["ours_over_mode"] if "ours_over_mode" in row else "-", row["seconds"],
                    "%.1f" % warmup_s if warmup_s is not None else "-"))
            except Exception as e:  # noqa: BLE001 - one failed measurement must not lose the others
                failed += 1
                row["error"] = short_error(e)
                print("%-5s %-6s %6d %-8s   FAILED: %s" % (model_name, preset, batch, mode, row["error"]))
            free_device_memory(args.device)
            if mode == "compile":
                torch._dynamo.reset()
        sys.stdout.flush()
        rows.append(row)
        write_json(args.json, header, rows)
        return row.get("img_per_s")

    def measure_ours(model_name):
        program, preset, batch, extra = spec[model_name]
        cmd = [os.path.join(args.binary_dir, program), "--preset", preset, "--batch-size", str(batch),
               "--bench", str(args.steps), "--device", args.device] + extra
        return run_ours(cmd, BENCH_LINE, args.threads if args.device == "cpu" else None), None

    def measure_twin(model_name, mode):
        _, preset, batch, _ = spec[model_name]
        return time_twin(model_name, preset, batch, mode, args.device, args.steps)

    # compile last: its long first steps must not cost the other rows if the run is cut short
    for first, phase in ((True, [m for m in modes if m != "compile"]), (False, [m for m in modes if m == "compile"])):
        for model_name in models:
            if first and not args.twin_only:
                value = record(model_name, "ours", lambda: measure_ours(model_name))
                if value:
                    ours[model_name] = value
            for mode in phase:
                record(model_name, mode, lambda: measure_twin(model_name, mode))

    print("\n%s\n%-5s %-8s %-20s %10s %10s" % (desc, "model", "mode", "what", "img/s", "ours/mode"))
    for name in models:
        for row in sorted((r for r in rows if r["model"] == name), key=lambda r: (["ours"] + modes).index(r["mode"])):
            what = "our program" if row["mode"] == "ours" else MODES[row["mode"]][3]
            value = ("%10.1f" % row["img_per_s"]) if "img_per_s" in row else "%10s" % (
                "skipped" if "skipped" in row else "FAILED")
            ratio = "%.2fx" % row["ours_over_mode"] if "ours_over_mode" in row else "-"
            print("%-5s %-8s %-20s %s %10s" % (name, row["mode"], what, value, ratio))
    if args.json:
        print("wrote %s" % args.json)
    if failed:
        sys.exit("error: %d measurement(s) failed (see FAILED above)" % failed)


if __name__ == "__main__":
    main()
