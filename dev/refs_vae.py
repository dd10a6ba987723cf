"""
dev/refs_vae.py - writes dev/ref/vae.safetensors, the whole-model reference test_ldm checks
train_vae's forward, backward and AdamW steps against.

The test config is a small VAE (ch=16, mult=(1,2,2), nres=1, z_channels=4) at batch 2 with
kl_weight 0.1, so the KL term's gradients are as large as the reconstruction's. The twin is
initialised with torch.manual_seed(0) and PyTorch's default init in float32; those float32
parameters are stored and then everything runs in float64 FROM them, so the references carry no
float32 rounding of their own. Stored tensors (float32):
    param.<name>           initial parameters (the names of the checkpoint, tensor-names.txt)
    x (2,3,32,32)          input images, uniform in [-1, 1]
    eps (2,4,8,8)          the reparameterisation noise, standard normal
    act.enc_conv_in        encoder.conv_in's output (2,16,32,32)
    act.moments            encoder.conv_out's output (2,8,8,8) = (mu, logvar), logvar not clamped
    act.z                  mu + exp(logvar/2)*eps (2,4,8,8)
    act.dec_mid            decoder.mid's output (2,32,8,8)
    act.x_rec              the decoder's output (2,3,32,32)
    loss, mse, kl          (1,) each, at the initial parameters
    grad.<name>            d loss / d param at the initial parameters
    grad_norm              (1,) global gradient norm of step 1, before clipping
    grad_norms, losses     (5,) pre-clip gradient norm and loss of each of the 5 steps
    step1.<name>           parameters after 1 AdamW step (clipping active, same x and eps)
    step5.<name>           parameters after 5 AdamW steps
Hyperparameters are strings in __metadata__. Clipping is PyTorch's clip_grad_norm_ (scale by
max_norm / (norm + 1e-6) when that is below 1); max_grad_norm is the trainer's default 1.0, which
the gradient norms of all 5 steps exceed (the script checks it).

    /usr/bin/python3 dev/refs_vae.py        # a few seconds on 2 CPU cores
"""

import json
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vae_twin import VAE, check_names, find_tensor_names  # noqa: E402

CONFIG = {"preset": "test", "ch": 16, "mult": [1, 2, 2], "nres": 1, "z_channels": 4}
BATCH = 2
KL_WEIGHT = 0.1
LR = 1e-3
WEIGHT_DECAY = 0.01
BETA1, BETA2 = 0.9, 0.999
ADAM_EPS = 1e-8
MAX_GRAD_NORM = 1.0
STEPS = 5
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ref", "vae.safetensors")


def f32(t):
    return t.detach().to(torch.float32).contiguous().clone()


def main():
    names_path = find_tensor_names()
    if names_path is None or not check_names(names_path):
        sys.exit("error: the twin's parameter names do not match tensor-names.txt "
                 "(run dev/vae_twin.py for the details); not writing references")

    torch.manual_seed(0)
    model = VAE(CONFIG["ch"], tuple(CONFIG["mult"]), CONFIG["nres"], CONFIG["z_channels"])
    init = {k: f32(v) for k, v in model.state_dict().items()}
    model = model.double()  # exact: every float32 value is a float64 value

    gen = torch.Generator().manual_seed(1)
    x = torch.rand(BATCH, 3, 32, 32, generator=gen) * 2 - 1
    eps = torch.randn(BATCH, CONFIG["z_channels"], 8, 8, generator=gen)
    x64, eps64 = x.double(), eps.double()

    params = list(model.parameters())
    names = [n for n, _ in model.named_parameters()]
    opt = torch.optim.AdamW(params, lr=LR, betas=(BETA1, BETA2), eps=ADAM_EPS,
                            weight_decay=WEIGHT_DECAY)
    out = {"param." + k: v for k, v in init.items()}
    out["x"], out["eps"] = f32(x), f32(eps)
    losses, norms = [], []
    for step in range(STEPS):
        opt.zero_grad(set_to_none=False)
        loss, mse, kl, acts = model.forward_loss(x64, eps64, KL_WEIGHT)
        loss.backward()
        if step == 0:
            for key in ("enc_conv_in", "moments", "z", "dec_mid", "x_rec"):
                out["act." + key] = f32(acts[key])
            out["loss"], out["mse"], out["kl"] = f32(loss.reshape(1)), f32(mse.reshape(1)), f32(kl.reshape(1))
            for n, p in zip(names, params):
                out["grad." + n] = f32(p.grad)
            grads0 = {n: p.grad.detach().clone() for n, p in zip(names, params)}
        norm = torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        losses.append(loss.item())
        norms.append(norm.item())
        print("step %d: loss %.6f mse %.6f kl %.6f grad norm %.4f (clipped to %.1f)"
              % (step + 1, loss.item(), mse.item(), kl.item(), norm.item(), MAX_GRAD_NORM))
        opt.step()
        if step == 0 or step == STEPS - 1:
            for n, p in zip(names, params):
                out["step%d.%s" % (step + 1, n)] = f32(p)
    if min(norms) <= MAX_GRAD_NORM:
        sys.exit("error: the gradient norm falls to %.3f <= max_grad_norm %.3f, so clipping would not "
                 "be tested on every step: lower MAX_GRAD_NORM" % (min(norms), MAX_GRAD_NORM))
    out["grad_norm"] = torch.tensor([norms[0]], dtype=torch.float32)
    out["grad_norms"] = torch.tensor(norms, dtype=torch.float32)
    out["losses"] = torch.tensor(losses, dtype=torch.float32)

    # How far a float32 computation lands from these float64 references: a guide for the tolerances
    # of the C tests, which run in float32.
    m32 = VAE(CONFIG["ch"], tuple(CONFIG["mult"]), CONFIG["nres"], CONFIG["z_channels"])
    m32.load_state_dict(init)
    loss32, _, _, _ = m32.forward_loss(x, eps, KL_WEIGHT)
    loss32.backward()
    worst, worst_name, tiny = 0.0, "", 0
    for n, p in m32.named_parameters():
        ref = grads0[n]
        rel = (p.grad.double() - ref).abs().max().item() / max(ref.abs().max().item(), 1e-30)
        if rel > worst:
            worst, worst_name = rel, n
        tiny += int((ref.abs() < 1e-6 * ref.abs().max()).sum())
    print("float32 twin vs these references: loss rel err %.1e, worst gradient max err / max|ref| "
          "%.1e (%s); %d gradient entries below 1e-6 x their tensor's max (Adam's sign may flip there)"
          % (abs(loss32.item() - losses[0]) / losses[0], worst, worst_name, tiny))

    meta = {
        "format_version": "1",
        "config": json.dumps(CONFIG, separators=(",", ":")),
        "kl_weight": repr(KL_WEIGHT),
        "lr": repr(LR),
        "weight_decay": repr(WEIGHT_DECAY),
        "max_grad_norm": repr(MAX_GRAD_NORM),
        "beta1": repr(BETA1),
        "beta2": repr(BETA2),
        "adam_eps": repr(ADAM_EPS),
        "steps": str(STEPS),
        "clip": "grad *= max_grad_norm / (norm + 1e-6) when that factor is below 1 (torch clip_grad_norm_)",
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file(out, OUT, metadata=meta)
    nparams = sum(v.numel() for v in init.values())
    print("wrote %s: %d tensors, %d parameters, %.2f MB"
          % (OUT, len(out), nparams, os.path.getsize(OUT) / 1e6))


if __name__ == "__main__":
    main()
