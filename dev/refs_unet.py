"""
Whole-model reference files for train_ldm's U-Net, computed by the PyTorch twin (dev/unet_twin.py):
dev/ref/unet_c0.safetensors (unconditional) and dev/ref/unet_c10.safetensors (10 classes + CFG
dropout), both for the test config ch=16, mult=(1,1), nres=1, attn_res=(4,), heads=4, tdim=32 on
batch 3 of 8x8x4 latents with the cosine schedule.

The twin is initialised in float32 (torch.manual_seed(0), PyTorch's default init), then everything
runs in float64 on exactly those values; tensors are stored as float32, integers as int64:
  param.<name>                  initial parameters (PyTorch layout, names as in tensor-names.txt)
  z0, eps (3,4,8,8), t (3), abar (1000), labels (3) and drop_mask (3) (conditional file only:
                                labels where drop_mask is 1 become num_classes = "no class")
  act.zt, act.temb_sin (3,tdim), act.temb (3,tdim) (linear2 output + class embedding),
  act.res (down.0.res.0 output), act.attn (down.1.attn.0 output), act.mid (mid.res2 output),
  act.out (eps_pred)            the first forward pass
  loss (1), grad.<name>, grad_norm (1)   the first backward pass (gradients before clipping)
  losses, grad_norms (5)        loss and pre-clip gradient norm of each of the five steps
  step1.<name>, step5.<name>    parameters after 1 and 5 training steps (same batch every step:
                                clip the global grad norm, then AdamW)
  ema1.<name>, ema5.<name>      the EMA (base decay ema_decay) after those steps
The metadata holds the config JSON and the optimiser settings. Each file is about 1.8 MB: the
72k parameters (71,988 unconditional, 72,340 with the class embedding) appear six times (param,
grad, step1, step5, ema1, ema5); the rest is small.

    /usr/bin/python3 dev/refs_unet.py
"""
import json
import os

import torch

from unet_twin import UNet, diffusion_loss, ema_update, make_schedule, write_safetensors

HERE = os.path.dirname(os.path.abspath(__file__))
LR, WEIGHT_DECAY, BETAS, ADAM_EPS, EMA_DECAY = 1e-3, 0.01, (0.9, 0.999), 1e-8, 0.999
# the SPEC's clip. The first step's gradient norm is about 1.4, so the clipping acts there
# (asserted below); it falls under 1 within the five steps, so the unclipped branch runs too.
# The clip factor is continuous at norm = max_grad_norm, so a step near the boundary is harmless.
MAX_GRAD_NORM = 1.0
STEPS = 5
CONFIG = {"preset": "test", "ch": 16, "mult": [1, 1], "nres": 1, "z_channels": 4, "num_classes": 0,
          "attn_res": [4], "heads": 4, "tdim": 32}


def write_reference(num_classes, path):
    cfg = dict(CONFIG, num_classes=num_classes)
    torch.manual_seed(0)
    model = UNet(cfg["ch"], tuple(cfg["mult"]), cfg["nres"], num_classes=num_classes, tdim=cfg["tdim"],
                 attn_res=tuple(cfg["attn_res"]), heads=cfg["heads"], z_channels=cfg["z_channels"])
    model = model.double()  # float64 arithmetic on the float32-rounded initial values
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]

    # the batch: the same for both files (own generator), drawn in float32
    g = torch.Generator().manual_seed(1)
    z0 = torch.randn(3, 4, 8, 8, generator=g).double()
    eps = torch.randn(3, 4, 8, 8, generator=g).double()
    t = torch.tensor([0, 421, 999], dtype=torch.int64)  # both ends of the schedule and a middle
    labels = torch.tensor([3, 7, 1], dtype=torch.int64) if num_classes else None
    drop_mask = torch.tensor([0, 1, 0], dtype=torch.int64) if num_classes else None
    abar = make_schedule("cosine")

    out = {}

    def store(name, x):
        x = x.detach()
        out[name] = (x if x.dtype == torch.int64 else x.float()).contiguous().numpy().copy()

    for n, p in zip(names, params):
        store(f"param.{n}", p)
    store("z0", z0), store("eps", eps), store("t", t), store("abar", torch.from_numpy(abar))
    if num_classes:
        store("labels", labels), store("drop_mask", drop_mask)

    # module outputs of the first forward pass
    acts = {}
    watch = {"res": model.down[0].res[0], "attn": model.down[1].attn[0], "mid": model.mid.res2}
    hooks = [m.register_forward_hook(lambda m, i, o, k=k: acts.__setitem__(k, o))
             for k, m in watch.items()]

    opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=ADAM_EPS, weight_decay=WEIGHT_DECAY)
    ema = [p.detach().clone() for p in params]
    norms, losses = [], []
    for n in range(STEPS):
        opt.zero_grad()
        loss = diffusion_loss(model, z0, t, eps, abar, labels, drop_mask, acts if n == 0 else None)
        loss.backward()
        losses.append(loss.item())
        if n == 0:
            for h in hooks:
                h.remove()
            for k in ("zt", "temb_sin", "temb", "res", "attn", "mid", "out"):
                store(f"act.{k}", acts[k])
            store("loss", loss.reshape(1))
            for name, p in zip(names, params):
                store(f"grad.{name}", p.grad)
        # PyTorch's clip: g *= min(1, max_norm / (norm + 1e-6)); returns the norm before clipping
        norm = torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        norms.append(norm.item())
        if n == 0:
            store("grad_norm", norm.reshape(1))
        opt.step()
        ema_update(ema, params, n, EMA_DECAY)
        if n + 1 in (1, STEPS):
            for name, p, e in zip(names, params, ema):
                store(f"step{n + 1}.{name}", p)
                store(f"ema{n + 1}.{name}", e)
    assert norms[0] > MAX_GRAD_NORM, f"the first step's grad norm {norms[0]} is not clipped"
    store("losses", torch.tensor(losses)), store("grad_norms", torch.tensor(norms))

    meta = {"format": "ldm.c reference", "format_version": "1", "script": "dev/refs_unet.py",
            "torch": torch.__version__, "config": json.dumps(cfg, separators=(",", ":")),
            "schedule": "cosine", "lr": repr(LR), "weight_decay": repr(WEIGHT_DECAY),
            "adam_beta1": repr(BETAS[0]), "adam_beta2": repr(BETAS[1]), "adam_eps": repr(ADAM_EPS),
            "max_grad_norm": repr(MAX_GRAD_NORM), "clip": "g *= min(1, max_grad_norm / (norm + 1e-6))",
            "ema_decay": repr(EMA_DECAY), "steps": str(STEPS)}
    write_safetensors(path, out, meta)
    size = os.path.getsize(path)
    print(f"wrote {path}: {len(out)} tensors, {sum(p.numel() for p in params)} parameters, "
          f"{size} bytes")
    print(f"  losses per step {' '.join(f'{x:.6f}' for x in losses)}")
    print(f"  grad norms per step "
          f"{' '.join(f'{x:.4f}' for x in norms)} (clipped to {MAX_GRAD_NORM} when above)")
    return size


if __name__ == "__main__":
    os.makedirs(os.path.join(HERE, "ref"), exist_ok=True)
    total = sum(write_reference(nc, os.path.join(HERE, "ref", f"unet_c{nc}.safetensors")) for nc in (0, 10))
    print(f"total {total / 1e6:.2f} MB")
