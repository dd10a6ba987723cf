"""
Reference trajectories for the samplers of SPEC section 5 (ldmc/diffusion.h: sample_latents, and
train_ldm.cu's classifier-free guidance callback cfg_eps), computed in float64 by samplers written
here from the SPEC and the papers (DDPM: Ho et al. 2020; DDIM: Song et al. 2021, eq. 12 and 16;
DPM-Solver++(2M): Lu et al. 2022, algorithm 2), driving the PyTorch twin of the U-Net
(dev/unet_twin.py) with the test weights of dev/ref/unet_c0.safetensors (unconditional) and
dev/ref/unet_c10.safetensors (10 classes). Writes dev/ref/samplers.safetensors:

  z_T (3,4,8,8)                 the initial latents of every case
  step_noise (10,3,4,8,8)       the fresh noise of each step: step k (k = 0 is the first step, from the
                                largest t) of sample j uses step_noise[k mod 10, j]; a run of S <= 10
                                steps uses the first S rows, the 1,000-step case cycles through them
  c10.labels (3) int64          the classes of the guided cases
  <case>.z1, <case>.z2 (3,4,8,8)  the latents after the first and the second step
  <case>.final (3,4,8,8)        the sample after all S steps (the last step's x0 prediction)
Cases: c0.<s> (unconditional model) and c10.<s> (labels [3, 7, 1], guidance 3) for
s = ddpm, ddim_eta0, ddim_eta05 (eta 0.5), ddim_eta1, dpmpp2m with S = 5 steps, plus c10.ddpm10 (S = 10)
and c10.ddpm1000 (S = 1000, the original DDPM, whose first step is from t = 999 where abar = 2.4e-9).
Metadata: each case's "<case>.sampler" (ddpm | ddim | dpm++2m), "<case>.steps" and "<case>.eta";
"c10.guidance" (the scale s); "ddpm_x0_clip" (the bound DDPM clamps its x0 prediction to); the schedule;
the weight files and the sum of their param.* values (so a test can tell the weights changed under it).
(Scalars live in the metadata because the writer lays tensors out in name order: a lone float32 before
an int64 tensor would misalign it.)

DDPM clamps its x0 prediction to [-12, 12] (SPEC section 5, the README's sampling section): near t = T
the cosine schedule's abar is tiny, x0 = (z - sqrt(1 - abar) eps) / sqrt(abar) multiplies eps errors by
up to 2e4, and +-12 is the range the scaled training latents occupy. DDIM and DPM-Solver++ do not
clamp. With the untrained test weights the bound is active on part of each DDPM run; the script prints
how much.

The script asserts two identities the formulas must satisfy: DDPM's posterior step without the clamp
equals DDIM with eta = 1 (Song et al., section 4.1), and DPM-Solver++'s first-order step equals DDIM
with eta = 0 (Lu et al., section 3.3); the cases written use each sampler's own formula.

    /usr/bin/python3 dev/refs_samplers.py
"""
import json
import math
import os

import numpy as np
import torch

from unet_twin import T_STEPS, make_schedule, read_safetensors, unet_from_config, write_safetensors

HERE = os.path.dirname(os.path.abspath(__file__))
N, MAX_STEPS = 3, 10
LABELS, GUIDANCE = [3, 7, 1], 3.0
CASES = [  # (name, sampler, steps, eta)
    ("ddpm", "ddpm", 5, 0.0),
    ("ddim_eta0", "ddim", 5, 0.0),
    ("ddim_eta05", "ddim", 5, 0.5),
    ("ddim_eta1", "ddim", 5, 1.0),
    ("dpmpp2m", "dpm++2m", 5, 0.0),
]
GUIDED_ONLY_CASES = [("ddpm10", "ddpm", 10, 0.0), ("ddpm1000", "ddpm", 1000, 0.0)]
DDPM_X0_CLIP = 12.0  # DDPM bounds its x0 prediction to +-12 (the README says why)

# --------------------------------------------------------------------------------------------------
# samplers (float64 tensors), written from SPEC section 5


def respaced_timesteps(steps):
    # tau_i = i * floor(T / S), i = 0..S-1, returned in visiting order (largest first)
    k = T_STEPS // steps
    return [i * k for i in reversed(range(steps))]


def ddpm_step(z, x0, a_t, a_s, noise):
    # ancestral step: sample q(z_s | z_t, x0) = N(mean, var) of the forward process restricted to
    # (s, t): beta = 1 - abar_t/abar_s, mean = sqrt(abar_s) beta/(1 - abar_t) x0
    # + sqrt(1 - beta) (1 - abar_s)/(1 - abar_t) z_t, var = (1 - abar_s)/(1 - abar_t) beta.
    # noise is None on the last step (no noise there)
    beta = 1.0 - a_t / a_s
    mean = (math.sqrt(a_s) * beta / (1.0 - a_t)) * x0 + (math.sqrt(1.0 - beta) * (1.0 - a_s) / (1.0 - a_t)) * z
    if noise is None:
        return mean
    return mean + math.sqrt((1.0 - a_s) / (1.0 - a_t) * beta) * noise


def ddim_step(x0, eps, a_t, a_s, eta, noise):
    # Song et al. eq. 12 with sigma from eq. 16:
    # z_s = sqrt(abar_s) x0 + sqrt(1 - abar_s - sigma^2) eps + sigma noise,
    # sigma = eta sqrt((1 - abar_s)/(1 - abar_t)) sqrt(1 - abar_t/abar_s)
    sigma = eta * math.sqrt((1.0 - a_s) / (1.0 - a_t)) * math.sqrt(1.0 - a_t / a_s)
    out = math.sqrt(a_s) * x0 + math.sqrt(1.0 - a_s - sigma * sigma) * eps
    return out + sigma * noise if sigma > 0 else out


def dpmpp_coeffs(a_t, a_s):
    # alpha = sqrt(abar), sigma = sqrt(1 - abar), lambda = log(alpha / sigma)
    alpha_t, sigma_t = math.sqrt(a_t), math.sqrt(1.0 - a_t)
    alpha_s, sigma_s = math.sqrt(a_s), math.sqrt(1.0 - a_s)
    return alpha_s, sigma_s / sigma_t, math.log(alpha_s / sigma_s) - math.log(alpha_t / sigma_t)


def sample(eps_fn, sampler, steps, eta, abar, z_T, step_noise, ddpm_clip=DDPM_X0_CLIP, stats=None):
    # returns the latents after every step, a list of S tensors; eps_fn(z, t) -> eps (float64).
    # Step k takes the noise step_noise[k mod len(step_noise)]. ddpm_clip: DDPM's bound on x0 (None:
    # unbounded, for the self-check); stats, a dict, receives the count of clamped and all x0 values
    taus = respaced_timesteps(steps)
    z, out = z_T.clone(), []
    x0_prev, h_prev = None, None
    for k, t in enumerate(taus):
        last = k == steps - 1
        a_t = float(abar[t])
        a_s = 1.0 if last else float(abar[taus[k + 1]])
        noise = step_noise[k % step_noise.shape[0]]
        eps = eps_fn(z, t)
        x0 = (z - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)
        if sampler == "ddpm":
            if ddpm_clip is not None:
                if stats is not None:
                    stats["clamped"] = stats.get("clamped", 0) + int((x0.abs() > ddpm_clip).sum())
                    stats["total"] = stats.get("total", 0) + x0.numel()
                x0 = torch.clamp(x0, -ddpm_clip, ddpm_clip)
            z = ddpm_step(z, x0, a_t, a_s, None if last else noise)
        elif sampler == "ddim":
            z = ddim_step(x0, eps, a_t, a_s, eta, noise)
        elif sampler == "dpm++2m":
            if last:
                # to sigma = 0: lambda_s = inf, exp(-h) = 0, so the first-order step lands on x0
                z = x0
            else:
                # z_s = (sigma_s/sigma_t) z_t - alpha_s (exp(-h) - 1) D, h = lambda_s - lambda_t;
                # D = x0 on the first step, else the linear extrapolation of the two last data
                # predictions, D = x0 + (x0 - x0_prev) / (2 r), r = h_prev / h
                alpha_s, ratio, h = dpmpp_coeffs(a_t, a_s)
                D = x0 if x0_prev is None else x0 + (x0 - x0_prev) / (2.0 * (h_prev / h))
                z = ratio * z - alpha_s * math.expm1(-h) * D
                h_prev = h
            x0_prev = x0
        else:
            raise ValueError(f"unknown sampler {sampler}")
        out.append(z.clone())
    return out


def guided_eps(model, labels, scale):
    # classifier-free guidance: eps = eps_u + s (eps_c - eps_u); eps_u is the prediction with the
    # "no class" row num_classes. Two plain forwards here (our C does one batched forward of 2n rows:
    # the rows do not interact, so the numbers must agree)
    def fn(z, t):
        tt = torch.full((z.shape[0],), t, dtype=torch.int64)
        with torch.no_grad():
            eps_c = model(z, tt, labels)
            eps_u = model(z, tt, torch.full_like(labels, model.num_classes))
        return eps_u + scale * (eps_c - eps_u)
    return fn


def plain_eps(model):
    def fn(z, t):
        with torch.no_grad():
            return model(z, torch.full((z.shape[0],), t, dtype=torch.int64))
    return fn


# --------------------------------------------------------------------------------------------------
# the reference file


def load_model(path):
    tensors, meta = read_safetensors(path)
    model = unet_from_config(json.loads(meta["config"]))
    state = {k[len("param."):]: torch.from_numpy(v.copy()) for k, v in tensors.items() if k.startswith("param.")}
    model.load_state_dict(state, strict=True)
    weights_sum = sum(float(np.sum(v.astype(np.float64))) for k, v in tensors.items() if k.startswith("param."))
    return model.double().eval(), weights_sum


def self_checks(eps_fn, abar, z_T, step_noise):
    # DDPM's posterior step (unclamped) is DDIM with eta = 1, and DPM-Solver++'s first-order step is
    # DDIM with eta = 0; the second-order DPM-Solver++ step must differ from DDIM by more than rounding
    ddpm = sample(eps_fn, "ddpm", 5, 0.0, abar, z_T, step_noise, ddpm_clip=None)
    ddim1 = sample(eps_fn, "ddim", 5, 1.0, abar, z_T, step_noise)
    ddim0 = sample(eps_fn, "ddim", 5, 0.0, abar, z_T, step_noise)
    dpm = sample(eps_fn, "dpm++2m", 5, 0.0, abar, z_T, step_noise)
    d1 = max((a - b).abs().max().item() for a, b in zip(ddpm, ddim1))
    d2 = (dpm[0] - ddim0[0]).abs().max().item()
    d3 = (dpm[1] - ddim0[1]).abs().max().item()
    assert d1 < 1e-9, f"DDPM and DDIM(eta=1) differ by {d1}"
    assert d2 < 1e-9, f"first DPM-Solver++ step and DDIM(eta=0) differ by {d2}"
    assert d3 > 1e-3, f"second-order DPM-Solver++ step equals DDIM's (diff {d3})"
    print(f"  self-checks: |ddpm - ddim eta1| {d1:.1e}, |dpm++ step 1 - ddim eta0| {d2:.1e}, "
          f"|dpm++ step 2 - ddim eta0| {d3:.2e} (second order differs, as it should)")


def main():
    abar = make_schedule("cosine")
    # the fixed inputs, drawn in float32 and used in float64 from exactly those values
    g = torch.Generator().manual_seed(7)
    z_T = torch.randn(N, 4, 8, 8, generator=g)
    step_noise = torch.randn(MAX_STEPS, N, 4, 8, 8, generator=g)
    labels = torch.tensor(LABELS, dtype=torch.int64)
    out = {"z_T": z_T.numpy(), "step_noise": step_noise.numpy(), "c10.labels": labels.numpy()}
    meta = {"format": "ldm.c reference", "format_version": "1", "script": "dev/refs_samplers.py",
            "torch": torch.__version__, "schedule": "cosine", "c10.guidance": repr(GUIDANCE),
            "ddpm_x0_clip": repr(DDPM_X0_CLIP)}
    z64, noise64 = z_T.double(), step_noise.double()

    for prefix, nc in (("c0", 0), ("c10", 10)):
        weights = f"dev/ref/unet_c{nc}.safetensors"
        model, weights_sum = load_model(os.path.join(HERE, "ref", f"unet_c{nc}.safetensors"))
        assert model.num_classes == nc, f"{weights} has num_classes {model.num_classes}, expected {nc}"
        meta[f"{prefix}.weights"] = weights
        meta[f"{prefix}.weights_sum"] = repr(weights_sum)
        eps_fn = guided_eps(model, labels, GUIDANCE) if nc else plain_eps(model)
        self_checks(eps_fn, abar, z64, noise64)
        for name, sampler, steps, eta in CASES + (GUIDED_ONLY_CASES if nc else []):
            case = f"{prefix}.{name}"
            stats = {}
            traj = sample(eps_fn, sampler, steps, eta, abar, z64, noise64, stats=stats)
            out[f"{case}.z1"] = traj[0].float().numpy()
            out[f"{case}.z2"] = traj[1].float().numpy()
            out[f"{case}.final"] = traj[-1].float().numpy()
            meta[f"{case}.sampler"], meta[f"{case}.steps"], meta[f"{case}.eta"] = sampler, str(steps), repr(eta)
            clamped = f"  x0 clamped {stats['clamped'] / stats['total']:.1%}" if stats else ""
            print(f"  {case:18s} {sampler:8s} S={steps:4d} eta={eta:.1f}  max|z1| {traj[0].abs().max():.3f}  "
                  f"max|final| {traj[-1].abs().max():.3f}{clamped}")

    path = os.path.join(HERE, "ref", "samplers.safetensors")
    write_safetensors(path, out, meta)
    print(f"wrote {path}: {len(out)} tensors, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
