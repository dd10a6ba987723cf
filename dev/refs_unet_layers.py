"""
Reference tensors for the U-Net's own layers (ldmc/linear.cuh, ldmc/embedding.cuh, ldmc/attention.cuh),
written to dev/ref/unet_layers.safetensors and checked by tests/test_unet_layers.h.

Each layer is written out in plain PyTorch from the formulas in SPEC section 4 (not from our C code).
Inputs are drawn in float32 with a fixed seed, the forward and autograd backward run in float64 on
exactly those values, and every tensor is stored as float32 (integer inputs as int64).

    /usr/bin/python3 dev/refs_unet_layers.py
"""
import math
import os

import numpy as np
import torch
from safetensors.numpy import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ref", "unet_layers.safetensors")
torch.manual_seed(1234)
tensors = {}


def randn(*shape):
    # drawn in float32 (the values the C test sees), computed with in float64
    return torch.randn(*shape, dtype=torch.float32).double().requires_grad_(True)


def store(prefix, **named):
    for name, t in named.items():
        t = t.detach()
        t = t if t.dtype == torch.int64 else t.float()
        tensors[f"{prefix}.{name}"] = t.contiguous().numpy()


# linear: out = x @ weight^T + bias
x, weight, bias = randn(3, 10), randn(6, 10), randn(6)
out = x @ weight.T + bias
dout = torch.randn(3, 6).double()
out.backward(dout)
store("linear", x=x, weight=weight, bias=bias, out=out, dout=dout, dx=x.grad, dweight=weight.grad, dbias=bias.grad)

# sinusoidal timestep embedding, dim 32: [cos(t f_i), sin(t f_i)], f_i = exp(-ln(10000) i / 16).
# 993 and 998 are there because float32 arguments t * f_i would miss them by 2-3e-5 (> rtol).
t = torch.tensor([0, 1, 17, 500, 993, 998, 999], dtype=torch.int64)
half = 16
freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
args = t.double()[:, None] * freqs[None, :]
store("temb", t=t, out=torch.cat([torch.cos(args), torch.sin(args)], dim=1))

# embedding lookup with repeated ids (row 10 is the "no class" row of 10 classes)
table = randn(11, 8)
ids = torch.tensor([3, 10, 3, 0, 3], dtype=torch.int64)
out = table[ids]
dout = torch.randn(5, 8).double()
out.backward(dout)
store("embedding", table=table, ids=ids, out=out, dout=dout, dtable=table.grad)

# per-channel broadcast add: h (B, C, HW) + v (B, C)
h, v = randn(2, 5, 9), randn(2, 5)
out = h + v[:, :, None]
dout = torch.randn(2, 5, 9).double()
out.backward(dout)
store("bcast", h=h, v=v, out=out, dout=dout, dv=v.grad)

# channel concat, a first
a, b = randn(2, 3, 4), randn(2, 5, 4)
out = torch.cat([a, b], dim=1)
dout = torch.randn(2, 8, 4).double()
out.backward(dout)
store("concat", a=a, b=b, out=out, dout=dout, da=a.grad, db=b.grad)


# multi-head self-attention core over HW positions, qkv (B, 3C, HW), head h owns channels [hD, (h+1)D)
def attention(prefix, B, C, HW, NH):
    D = C // NH
    qkv = randn(B, 3 * C, HW)
    q, k, v = (qkv[:, i * C:(i + 1) * C].reshape(B, NH, D, HW) for i in range(3))
    scores = torch.einsum("bhdi,bhdj->bhij", q, k) / math.sqrt(D)
    att = torch.softmax(scores, dim=-1)
    out = torch.einsum("bhij,bhdj->bhdi", att, v).reshape(B, C, HW)
    dout = torch.randn(B, C, HW).double()
    out.backward(dout)
    store(prefix, qkv=qkv, out=out, att=att, dout=dout, dqkv=qkv.grad)


attention("attention", B=2, C=16, HW=16, NH=4)      # the 4x4 attention of the presets
attention("attention_hw40", B=1, C=8, HW=40, NH=2)  # rows longer than a warp and not a multiple of 32

os.makedirs(os.path.dirname(OUT), exist_ok=True)
save_file(tensors, OUT, metadata={"format": "ldm.c reference", "version": "1",
                                  "script": "dev/refs_unet_layers.py", "torch": torch.__version__})
print(f"wrote {len(tensors)} tensors to {OUT} ({os.path.getsize(OUT)} bytes)")
