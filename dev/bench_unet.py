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

import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from benchlib import WARMUP  # noqa: E402
from unet_twin import PRESETS, T_STEPS, UNet, diffusion_loss, ema_update, make_schedule  # noqa: E402

BATCH = 64
NUM_CLASSES = 10
CFG_DROPOUT = 0.1
MAX_GRAD_NORM = 1.0
EMA_DECAY = 0.9999


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
    abar = make_schedule("cosine")
    benchlib.main(__doc__, PRESETS, "U-Net", "train_ldm", BATCH, lambda preset, steps: run_twin(preset, steps, abar),
                  extra_flags=["--num-classes", str(NUM_CLASSES)],
                  setting="batch %d, %d classes" % (BATCH, NUM_CLASSES), default_presets="tiny,small")


if __name__ == "__main__":
    main()
