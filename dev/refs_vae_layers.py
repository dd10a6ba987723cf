"""
Reference tensors for the VAE's non-convolution layers and the optimizer, computed by PyTorch:
  groupnorm.*, groupnorm1.*, groupnorm4.*   F.group_norm forward and autograd backward
  silu.*, upsample.*, add.*, scale.*         F.silu, nearest x2 F.interpolate, a + b, a * s
  vae_loss.*, vae_loss_low.*                 reparameterisation, KL, their backward; MSE and its backward
  adamw.*, adamw_eps.*                       clip_grad_norm_ + torch.optim.AdamW (+ the EMA of SPEC §6)
Everything is computed in float64 and stored as float32 in dev/ref/vae_layers.safetensors,
which tests/test_vae_layers.h reads (tests need no PyTorch). Run from the repository root:
    python3 dev/refs_vae_layers.py
"""
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

torch.manual_seed(1234)
DT = torch.float64
out = {}


def put(prefix, **tensors):
    for name, t in tensors.items():
        t = t.detach().to(torch.float32)
        out[f"{prefix}.{name}"] = (t.reshape(1) if t.dim() == 0 else t).contiguous()  # scalars as (1,)


def f32(t):
    # inputs are rounded to float32 before use, so the float64 reference is exact for the stored inputs
    return t.float().double()


def randn(*shape):
    return f32(torch.randn(*shape, dtype=DT))


def scalar(v):
    return torch.tensor([v], dtype=DT)


# ----------------------------------------------------------------------------
# GroupNorm: weight and bias random (not 1/0) so the affine part and its gradients are exercised.
# groupnorm (HW = 25) and groupnorm1 (HW = 9) take the CUDA scalar path, groupnorm4 (HW = 16) the float4 one.

def groupnorm_case(prefix, B, C, H, W, G):
    x = f32(randn(B, C, H, W) * 1.5 + 0.7).requires_grad_()
    weight = f32(1.0 + 0.5 * randn(C)).requires_grad_()
    bias = f32(0.3 * randn(C)).requires_grad_()
    y = F.group_norm(x, G, weight, bias, eps=1e-5)
    dout = randn(*y.shape)
    y.backward(dout)
    xg = x.detach().reshape(B, G, -1)
    mean = xg.mean(dim=2)
    rstd = 1.0 / torch.sqrt(xg.var(dim=2, unbiased=False) + 1e-5)
    put(prefix, x=x, weight=weight, bias=bias, out=y, mean=mean, rstd=rstd, dout=dout, dx=x.grad,
        dweight=weight.grad, dbias=bias.grad, G=scalar(G))


groupnorm_case("groupnorm", 2, 16, 5, 5, 8)
groupnorm_case("groupnorm1", 2, 12, 3, 3, 1)
groupnorm_case("groupnorm4", 3, 32, 4, 4, 8)

# ----------------------------------------------------------------------------
# SiLU and nearest x2 upsampling

x = (randn(2, 3, 4, 4) * 2.0).requires_grad_()
y = F.silu(x)
dout = randn(*y.shape)
y.backward(dout)
put("silu", x=x, out=y, dout=dout, dx=x.grad)

x = randn(2, 3, 4, 4).requires_grad_()
y = F.interpolate(x, scale_factor=2, mode="nearest")
dout = randn(*y.shape)
y.backward(dout)
put("upsample", x=x, out=y, dout=dout, dx=x.grad)

# 150 values: not a multiple of 4, so the CUDA launchers take their scalar path here (silu's 96 the float4 one)
a, b = randn(2, 3, 5, 5), randn(2, 3, 5, 5)
put("add", a=a, b=b, out=a + b)
put("scale", a=a, s=scalar(-0.375), out=a * -0.375)

# ----------------------------------------------------------------------------
# VAE loss pieces. moments (B, 2Z, h, w): channels [0, Z) mu, [Z, 2Z) logvar, clamped to [-30, 20].
# vae_loss holds one logvar above 20 and one below -30 so the clamp (and its zero gradient) is
# exercised; its eps at the clamped-high element is small so exp(20/2)*eps does not swamp z's scale.
# exp(20) still dominates that case's KL, so vae_loss_low (one logvar below -30, the rest in range)
# checks the KL's other terms and the low clamp at a scale where they matter.

def vae_loss_case(prefix, clamp_high):
    B, Z, h, w = 2, 4, 2, 2
    moments = randn(B, 2 * Z, h, w)
    moments[:, Z:] = f32(moments[:, Z:] * 1.5 - 0.5)
    eps = randn(B, Z, h, w)
    if clamp_high:
        moments[0, Z + 1, 0, 1] = 20.75
        eps[0, 1, 0, 1] = 1e-4
    moments[1, Z + 3, 1, 0] = -31.5
    moments.requires_grad_()
    mu, logvar = moments[:, :Z], moments[:, Z:].clamp(-30.0, 20.0)
    z = mu + torch.exp(0.5 * logvar) * eps
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum() / B
    kl_weight = 0.25
    dz = randn(*z.shape)
    ((z * dz).sum() + kl_weight * kl).backward()
    x_rec = randn(2, 3, 4, 4).requires_grad_()
    target = randn(2, 3, 4, 4)
    mse = F.mse_loss(x_rec, target)
    mse.backward()
    put(prefix, moments=moments, eps=eps, z=z, kl=kl, dz=dz, kl_weight=scalar(kl_weight),
        dmoments=moments.grad, x_rec=x_rec, target=target, mse=mse, dx_rec=x_rec.grad)


vae_loss_case("vae_loss", True)
vae_loss_case("vae_loss_low", False)

# ----------------------------------------------------------------------------
# AdamW + global grad-norm clipping (+ EMA), 5 steps with the same gradient each step.
# The gradients are drawn with |g| in [0.5, 1.5] (random sign): no element is near zero, so Adam's
# first update, ~lr*sign(g), has the same sign in float32 and float64 for every weight (SPEC §9's
# rounding-level sign flip cannot occur). Their norm (~33) is well above max_norm, so clipping is active.
# adamw: SPEC §6's settings with the EMA. Adam divides the gradient's scale out, so with eps 1e-8
# the clip factor barely moves the parameters: grads_clipped (the gradient clip_grad_norm_ leaves)
# checks the factor directly, and adamw_eps (eps of the order of the clipped gradients, other betas,
# no EMA) makes the update depend on it.

def adamw_case(prefix, lr, betas, eps, wd, max_norm, ema_decay):
    n = 1000
    params0 = randn(n)
    sign = torch.where(torch.rand(n) < 0.5, -1.0, 1.0).to(DT)
    grads = f32(sign * (0.5 + torch.rand(n, dtype=DT)))
    p = torch.nn.Parameter(params0.clone())
    opt = torch.optim.AdamW([p], lr=lr, betas=betas, eps=eps, weight_decay=wd)
    ema = params0.clone()
    tensors = dict(params=params0, grads=grads, lr=scalar(lr), beta1=scalar(betas[0]), beta2=scalar(betas[1]),
                   eps=scalar(eps), weight_decay=scalar(wd), max_norm=scalar(max_norm))
    for step in range(5):
        p.grad = grads.clone()
        norm = torch.nn.utils.clip_grad_norm_([p], max_norm)
        if step == 0:
            tensors.update(grad_norm=scalar(norm.item()), grads_clipped=p.grad.clone())
        opt.step()
        if ema_decay is not None:
            d = min(ema_decay, (1 + step) / (10 + step))
            ema = d * ema + (1 - d) * p.detach()
        if step + 1 in (1, 5):
            tensors[f"params{step + 1}"] = p.detach().clone()
            if ema_decay is not None:
                tensors[f"ema{step + 1}"] = ema.clone()
    if ema_decay is not None:
        tensors["ema_decay"] = scalar(ema_decay)
    put(prefix, **tensors)


# betas of adamw_eps are exact in float32, so the C side's float arguments are the reference's values
adamw_case("adamw", lr=1e-2, betas=(0.9, 0.999), eps=1e-8, wd=0.1, max_norm=1.0, ema_decay=0.999)
adamw_case("adamw_eps", lr=2e-2, betas=(0.75, 0.9921875), eps=1e-2, wd=0.05, max_norm=2.0, ema_decay=None)

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ref", "vae_layers.safetensors")
os.makedirs(os.path.dirname(path), exist_ok=True)
save_file(out, path, metadata={"format": "ldm.c reference", "version": "1", "torch": torch.__version__,
                               "script": "dev/refs_vae_layers.py"})
print(f"wrote {len(out)} tensors to {path} ({os.path.getsize(path)} bytes)")
