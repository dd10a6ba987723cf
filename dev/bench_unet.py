"""
dev/bench_unet.py - training speed of our latent U-Net vs the PyTorch twin on the CPU, same thread count.

    /usr/bin/python3 dev/bench_unet.py [--presets tiny,small] [--rounds 5] [--steps 10]
                                       [--threads 2] [--binary ./train_ldm] [--twin-only]

A training step is one class-conditional (10 classes) diffusion step on a random batch of 64 8x8x4
latents: t uniform in [0, 1000), eps ~ N(0, I), CFG label dropout 0.1, cosine schedule, forward +
backward of the epsilon MSE, gradient clipping at 1.0, AdamW, EMA update (float32). Ours:
`train_ldm --preset P --batch-size 64 --num-classes 10 --bench STEPS --device cpu` with
OMP_NUM_THREADS=THREADS, which prints `bench: <images/s> img/s` (median over its timed steps after
2 warm-up steps). The twin: torch.set_num_threads(THREADS), the same 2 warm-up steps, then the
median of per-step wall times. The two sides run interleaved (ours, twin, ours, twin, ...) for
ROUNDS rounds so drifting machine load hits both alike; the table shows every round and the
medians, and ours/twin > 1 means ours is faster.
"""

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from unet_twin import PRESETS, T_STEPS, UNet, diffusion_loss, ema_update, make_schedule  # noqa: E402

BATCH = 64
WARMUP = 2
NUM_CLASSES = 10
CFG_DROPOUT = 0.1
MAX_GRAD_NORM = 1.0
EMA_DECAY = 0.9999
BENCH_LINE = re.compile(r"^bench:\s*([0-9.eE+-]+)\s*img/s", re.MULTILINE)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_ours(binary, preset, steps, threads):
    """images/s from one run of our program; exits with its output when it fails."""
    cmd = [binary, "--preset", preset, "--batch-size", str(BATCH), "--num-classes", str(NUM_CLASSES),
           "--bench", str(steps), "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    found = BENCH_LINE.search(proc.stdout)
    if proc.returncode != 0 or not found:
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        sys.exit("error: `%s` %s; its output ends with:\n%s"
                 % (" ".join(cmd), "exited with status %d" % proc.returncode if proc.returncode
                    else "printed no 'bench: <N> img/s' line", tail))
    return float(found.group(1))


def run_twin(preset, steps, abar):
    """images/s of the twin: median per-step time over `steps` steps after WARMUP steps."""
    p = PRESETS[preset]
    model = UNet(p["ch"], p["mult"], p["nres"], num_classes=NUM_CLASSES)
    params = list(model.parameters())
    # weight decay 0 and no warm-up: train_ldm's defaults (SPEC section 6)
    opt = torch.optim.AdamW(params, lr=p["lr"], weight_decay=0.0)
    ema = [w.detach().clone() for w in params]
    times = []
    for step in range(WARMUP + steps):
        z0 = torch.randn(BATCH, 4, 8, 8)
        eps = torch.randn(BATCH, 4, 8, 8)
        t = torch.randint(0, T_STEPS, (BATCH,))
        labels = torch.randint(0, NUM_CLASSES, (BATCH,))
        drop_mask = (torch.rand(BATCH) < CFG_DROPOUT).long()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        loss = diffusion_loss(model, z0, t, eps, abar, labels, drop_mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        opt.step()
        ema_update(ema, params, step, EMA_DECAY)
        t1 = time.perf_counter()
        if step >= WARMUP:
            times.append(t1 - t0)
    return BATCH / statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="tiny,small", help="comma-separated U-Net presets (default tiny,small)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per preset (default 5)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per run, after 2 warm-up steps (default 10)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for both sides (default 2)")
    ap.add_argument("--binary", default="./train_ldm", help="our trainer (default ./train_ldm)")
    ap.add_argument("--twin-only", action="store_true", help="time only the PyTorch twin (no binary needed)")
    args = ap.parse_args()

    presets = [s for s in args.presets.split(",") if s]
    unknown = [s for s in presets if s not in PRESETS]
    if not presets or unknown:
        ap.error("unknown preset(s) %s; choose from %s" % (", ".join(unknown) or "(none given)", ", ".join(PRESETS)))
    if args.rounds < 1 or args.steps < 1 or args.threads < 1:
        ap.error("--rounds, --steps and --threads must be at least 1")
    if not args.twin_only and not (os.path.isfile(args.binary) and os.access(args.binary, os.X_OK)):
        ap.error("%s is not an executable: build it with `make train_ldm`, point --binary at it, "
                 "or pass --twin-only to time only the PyTorch twin" % args.binary)

    torch.set_num_threads(args.threads)
    abar = make_schedule("cosine")
    print("CPU: %s (%d logical cores)" % (cpu_name(), os.cpu_count()))
    print("torch %s, oneDNN (mkldnn) available: %s, enabled: %s; torch threads: %d"
          % (torch.__version__, torch.backends.mkldnn.is_available(), torch.backends.mkldnn.enabled,
             torch.get_num_threads()))
    if not args.twin_only:
        print("ours: %s with OMP_NUM_THREADS=%d" % (args.binary, args.threads))
    print("batch %d, %d classes, %d warm-up + %d timed steps per run, %d interleaved rounds\n"
          % (BATCH, NUM_CLASSES, WARMUP, args.steps, args.rounds))

    print("%-8s %6s %14s %14s" % ("preset", "round", "ours img/s", "twin img/s"))
    summary = []
    for preset in presets:
        ours, twin = [], []
        for r in range(args.rounds):
            if not args.twin_only:
                ours.append(run_ours(args.binary, preset, args.steps, args.threads))
            twin.append(run_twin(preset, args.steps, abar))
            print("%-8s %6d %14s %14.1f" % (preset, r + 1, "%.1f" % ours[-1] if ours else "-", twin[-1]))
            sys.stdout.flush()
        summary.append((preset, statistics.median(ours) if ours else None, statistics.median(twin)))

    print("\n%-8s %14s %14s %10s" % ("preset", "ours (median)", "twin (median)", "ours/twin"))
    for preset, o, t in summary:
        print("%-8s %14s %14.1f %10s" % (preset, "%.1f" % o if o else "-", t, "%.2fx" % (o / t) if o else "-"))


if __name__ == "__main__":
    main()
