"""
dev/bench_vae.py - training speed of our VAE vs the PyTorch twin on the CPU, same thread count.

    /usr/bin/python3 dev/bench_vae.py [--presets tiny,small] [--rounds 5] [--steps 10]
                                      [--threads 2] [--binary ./train_vae] [--twin-only]

A training step is forward + backward + gradient clipping at 1.0 + AdamW on a random batch of 64
(the same KL loss, kl_weight 0.001, float32). Ours: `train_vae --preset P --batch-size 64
--kl-weight 0.001 --bench STEPS --device cpu` with OMP_NUM_THREADS=THREADS, which prints `bench: <images/s> img/s`
(median over its timed steps after 2 warm-up steps). The twin: torch.set_num_threads(THREADS), the
same 2 warm-up steps, then the median of per-step wall times. The two sides run interleaved
(ours, twin, ours, twin, ...) for ROUNDS rounds so drifting machine load hits both alike; the
table shows every round and the medians, and ours/twin > 1 means ours is faster.
"""

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from benchlib import WARMUP  # noqa: E402
from vae_twin import PRESETS, VAE  # noqa: E402

BATCH = 64
KL_WEIGHT = 0.001
MAX_GRAD_NORM = 1.0


def run_twin(preset, steps):
    """images/s of the twin: median per-step time over `steps` steps after WARMUP steps."""
    p = PRESETS[preset]
    model = VAE(p["ch"], p["mult"], p["nres"], 4)
    # weight decay 0 and no warm-up: train_vae's defaults (SPEC section 6)
    opt = torch.optim.AdamW(model.parameters(), lr=p["lr"], weight_decay=0.0)
    times = []
    for step in range(WARMUP + steps):
        x = torch.rand(BATCH, 3, 32, 32) * 2 - 1
        eps = torch.randn(BATCH, 4, 8, 8)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        loss, _, _, _ = model.forward_loss(x, eps, KL_WEIGHT)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        opt.step()
        t1 = time.perf_counter()
        if step >= WARMUP:
            times.append(t1 - t0)
    times.sort()
    return BATCH / times[len(times) // 2]  # the same median as train_vae --bench (upper one when even)


def main():
    benchlib.main(__doc__, PRESETS, "VAE", "train_vae", BATCH, run_twin, default_presets="tiny,small",
                  extra_flags=["--kl-weight", str(KL_WEIGHT)])


if __name__ == "__main__":
    main()
