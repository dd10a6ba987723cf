"""
The PyTorch twin of train_ldm's latent U-Net and diffusion objective, written from SPEC sections 4-7
(not from our C code). dev/refs_unet.py uses it to write the whole-model reference files,
dev/bench_unet.py to time PyTorch, and dev/check_checkpoint.py calls check_unet_checkpoint on
checkpoints that train_ldm writes.

Defines:
  PRESETS                             network (ch, mult, nres) and default lr of each preset
  UNet(ch, mult, nres, num_classes=0, tdim=256, attn_res=(4,), heads=4, in_res=8, z_channels=4)
      forward(z, t, labels=None, acts=None) -> eps_pred; state_dict names as in tensor-names.txt
  timestep_embedding(t, dim)          sinusoidal [cos(t f_i), sin(t f_i)], cos half first
  make_schedule(name)                 abar_t, t = 0..999, float64 ("cosine" or "linear")
  diffusion_loss(model, z0, t, eps, abar, labels=None, drop_mask=None, acts=None)
  ema_update(ema, params, n, decay)   the EMA after optimizer step n (0-based)
  read_safetensors(path)              ({name: numpy array}, metadata) through the safetensors package
  write_safetensors(path, tensors, metadata)   a writer with reproducible bytes
  check_unet_checkpoint(checkpoint_path, eval_batch_path) -> 0 ok, 1 mismatch

Run it directly to check the parameter names and shapes against tensor-names.txt and to
round-trip check_unet_checkpoint on a checkpoint written here:

    /usr/bin/python3 dev/unet_twin.py [path/to/tensor-names.txt]
"""
import json
import math
import os
import struct
import sys
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

T_STEPS = 1000
# SPEC section 4: the network of each preset and its default learning rate
PRESETS = {
    "tiny": dict(ch=32, mult=(1, 2), nres=1, lr=3e-4),
    "small": dict(ch=64, mult=(1, 2), nres=2, lr=3e-4),
    "base": dict(ch=128, mult=(1, 2, 2), nres=2, lr=3e-4),
    "fast": dict(ch=128, mult=(1, 2, 2), nres=2, lr=3e-4),
}

# --------------------------------------------------------------------------------------------------
# layers


class ResBlock(nn.Module):
    # h = conv1(silu(norm1(x))) + temb(silu(emb)); h = conv2(silu(norm2(h))); out = skip(x) + h
    def __init__(self, cin, cout, tdim):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(tdim, cout)
        self.norm2 = nn.GroupNorm(8, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        # the 1x1 skip exists only when the channel count changes (Identity has no parameters)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb_silu):  # x (B, cin, H, W), emb_silu (B, tdim) = silu(time embedding)
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(emb_silu)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Attn(nn.Module):
    # single-group GroupNorm, 1x1 qkv, multi-head softmax attention over the H*W positions, 1x1 proj
    def __init__(self, c, heads):
        super().__init__()
        assert c % heads == 0, f"attention channels {c} not divisible by {heads} heads"
        self.heads = heads
        self.norm = nn.GroupNorm(1, c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, x):  # x (B, C, H, W)
        B, C, H, W = x.shape
        D = C // self.heads
        # channels [0,C) q, [C,2C) k, [2C,3C) v; head h owns channels [hD, (h+1)D) of each
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, D, H * W)
        q, k, v = qkv.unbind(1)  # each (B, heads, D, HW)
        att = torch.softmax(torch.einsum("bhdi,bhdj->bhij", q, k) / math.sqrt(D), dim=-1)
        out = torch.einsum("bhij,bhdj->bhdi", att, v).reshape(B, C, H, W)
        return x + self.proj(out)


class TimeEmbed(nn.Module):
    # sinusoidal features -> linear1 (tdim -> 4 tdim) -> silu -> linear2 (4 tdim -> tdim)
    def __init__(self, tdim):
        super().__init__()
        self.linear1 = nn.Linear(tdim, 4 * tdim)
        self.linear2 = nn.Linear(4 * tdim, tdim)

    def forward(self, temb_sin):
        return self.linear2(F.silu(self.linear1(temb_sin)))


def timestep_embedding(t, dim):
    # [cos(t f_i), sin(t f_i)], f_i = exp(-ln(10000) i / (dim/2)), i = 0..dim/2-1; computed in
    # float64 (t up to 999 times f_0 = 1 needs the precision), the caller casts
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64, device=t.device) / half)
    args = t.to(torch.float64)[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)  # (B, dim)


# --------------------------------------------------------------------------------------------------
# the U-Net


class UNet(nn.Module):
    def __init__(self, ch, mult, nres, num_classes=0, tdim=256, attn_res=(4,), heads=4, in_res=8,
                 z_channels=4):
        super().__init__()
        self.num_classes, self.tdim, self.z_channels = num_classes, tdim, z_channels
        self.time_embed = TimeEmbed(tdim)
        if num_classes > 0:
            # row num_classes is the "no class" token that CFG dropout and unconditional sampling use
            self.class_embed = nn.Embedding(num_classes + 1, tdim)
        self.conv_in = nn.Conv2d(z_channels, ch, 3, padding=1)

        # down path; skip_ch mirrors the skip stack the forward pass builds
        skip_ch, c, res = [ch], ch, in_res
        self.down = nn.ModuleList()
        self.down_attn = []  # per level: whether its ResBlocks are followed by an Attn
        for i, m in enumerate(mult):
            level = nn.Module()
            level.res, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(nres):
                level.res.append(ResBlock(c, ch * m, tdim))
                c = ch * m
                if res in attn_res:
                    level.attn.append(Attn(c, heads))
                skip_ch.append(c)
            if i != len(mult) - 1:
                level.downsample = nn.Conv2d(c, c, 3, stride=2, padding=1)
                skip_ch.append(c)
                res //= 2
            self.down.append(level)
            self.down_attn.append(len(level.attn) > 0)

        self.mid = nn.Module()
        self.mid.res1 = ResBlock(c, c, tdim)
        self.mid.attn = Attn(c, heads)
        self.mid.res2 = ResBlock(c, c, tdim)

        # up path, built from the deepest level (it consumes the skips in stack order) but kept in
        # a list indexed by level so the names read up.<level>, as in tensor-names.txt
        up = [None] * len(mult)
        for i in reversed(range(len(mult))):
            level = nn.Module()
            level.res, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(nres + 1):
                level.res.append(ResBlock(c + skip_ch.pop(), ch * mult[i], tdim))
                c = ch * mult[i]
                if res in attn_res:
                    level.attn.append(Attn(c, heads))
            if i != 0:
                level.upsample = nn.Module()
                level.upsample.conv = nn.Conv2d(c, c, 3, padding=1)
                res *= 2
            up[i] = level
        assert not skip_ch
        self.up = nn.ModuleList(up)
        self.norm_out = nn.GroupNorm(8, c)
        self.conv_out = nn.Conv2d(c, z_channels, 3, padding=1)

    def forward(self, z, t, labels=None, acts=None):
        # z (B, 4, H, W), t (B) int64, labels (B) int64 in [0, num_classes] (conditional models only).
        # acts: an optional dict that receives "temb_sin" and "temb" (the embedding the ResBlocks see)
        temb_sin = timestep_embedding(t, self.tdim).to(z.dtype)
        emb = self.time_embed(temb_sin)
        if self.num_classes > 0:
            if labels is None:
                raise ValueError("a class-conditional U-Net needs labels (num_classes = no class)")
            emb = emb + self.class_embed(labels)
        if acts is not None:
            acts["temb_sin"], acts["temb"] = temb_sin, emb
        emb_silu = F.silu(emb)

        h = self.conv_in(z)
        skips = [h]
        for level, has_attn in zip(self.down, self.down_attn):
            for j, res in enumerate(level.res):
                h = res(h, emb_silu)
                if has_attn:
                    h = level.attn[j](h)
                skips.append(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
                skips.append(h)

        h = self.mid.res2(self.mid.attn(self.mid.res1(h, emb_silu)), emb_silu)

        for level in reversed(self.up):
            for j, res in enumerate(level.res):
                h = res(torch.cat([h, skips.pop()], dim=1), emb_silu)
                if len(level.attn) > 0:
                    h = level.attn[j](h)
            if hasattr(level, "upsample"):
                h = level.upsample.conv(F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


def unet_from_config(cfg):
    # cfg: the dict stored as the checkpoint's "config" metadata (SPEC section 7)
    try:
        return UNet(int(cfg["ch"]), tuple(int(m) for m in cfg["mult"]), int(cfg["nres"]),
                    num_classes=int(cfg["num_classes"]), tdim=int(cfg["tdim"]),
                    attn_res=tuple(int(r) for r in cfg["attn_res"]), heads=int(cfg["heads"]),
                    z_channels=int(cfg["z_channels"]))
    except KeyError as e:
        raise SystemExit(f"error: U-Net config {json.dumps(cfg)} lacks the key {e}; "
                         "it needs ch, mult, nres, z_channels, num_classes, attn_res, heads, tdim")


# --------------------------------------------------------------------------------------------------
# diffusion objective and EMA


def make_schedule(name):
    # abar_t for t = 0..T-1 in float64, abar_t = prod_{s<=t} (1 - beta_s)
    if name == "cosine":
        # Nichol & Dhariwal: beta_t = 1 - f((t+1)/T) / f(t/T), f(u) = cos((u + s)/(1 + s) pi/2)^2,
        # clipped at 0.999 (the last steps would otherwise reach beta = 1)
        s = 0.008
        u = np.arange(T_STEPS + 1, dtype=np.float64) / T_STEPS
        f = np.cos((u + s) / (1 + s) * math.pi / 2) ** 2
        betas = np.minimum(1.0 - f[1:] / f[:-1], 0.999)
    elif name == "linear":
        betas = np.linspace(1e-4, 0.02, T_STEPS, dtype=np.float64)
    else:
        raise SystemExit(f"error: unknown schedule '{name}'; use cosine or linear")
    return np.cumprod(1.0 - betas)


def diffusion_loss(model, z0, t, eps, abar, labels=None, drop_mask=None, acts=None):
    # z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps; loss = mean((unet(z_t, t, labels) - eps)^2).
    # drop_mask (B): 1 where CFG dropout replaces the label by the "no class" row num_classes.
    # abar: float64 numpy array of T values. acts, when given, also receives "zt" and "out".
    a = torch.as_tensor(abar, dtype=torch.float64)[t].to(z0.dtype)[:, None, None, None]
    zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
    if labels is not None and drop_mask is not None:
        labels = torch.where(drop_mask.bool(), torch.full_like(labels, model.num_classes), labels)
    eps_pred = model(zt, t, labels, acts)
    if acts is not None:
        acts["zt"], acts["out"] = zt, eps_pred
    return ((eps_pred - eps) ** 2).mean()


@torch.no_grad()
def ema_update(ema, params, n, decay):
    # after optimizer step n (0, 1, ...): ema = d ema + (1 - d) w, d = min(decay, (1 + n)/(10 + n)),
    # so the first steps follow the weights closely while the average is young
    d = min(decay, (1 + n) / (10 + n))
    for e, w in zip(ema, params):
        e.mul_(d).add_(w, alpha=1 - d)


# --------------------------------------------------------------------------------------------------
# safetensors: read with the `safetensors` package, the format's reference implementation (dev/'s only
# reader; ldm.c's own strict reader in ldmc/safetensors.h is the independent one, tested against files
# this package writes), and written here with reproducible bytes

DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32, "U8": np.uint8}


def read_safetensors(path):
    # returns ({name: numpy array}, {metadata}); the package refuses truncated files, offsets that
    # overlap, leave gaps or run past the data, and dtype/shape that disagree with the byte count.
    # Any problem is a SystemExit naming the file.
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(path, framework="np") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except (OSError, SafetensorError) as e:
        raise SystemExit(f"error: {path}: {e}; check the path, or rewrite the file with the program that made it")


def write_safetensors(path, tensors, metadata):
    # tensors {name: numpy array} in name order, metadata {str: str}; the header is padded with
    # spaces to a multiple of 8 bytes (as the safetensors package does) so the data stays aligned.
    # Unlike the package (whose metadata order varies between runs) the bytes are reproducible.
    codes = {np.dtype(v): k for k, v in DTYPES.items()}
    header, pos, chunks = {"__metadata__": dict(sorted(metadata.items()))}, 0, []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        a = a.astype(a.dtype.newbyteorder("<"))
        header[name] = {"dtype": codes[np.dtype(a.dtype.type)], "shape": list(a.shape),
                        "data_offsets": [pos, pos + a.nbytes]}
        chunks.append(a.tobytes())
        pos += a.nbytes
    # raw UTF-8 as the package writes it: ldm.c's reader refuses \u escapes of non-ASCII characters
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))


# --------------------------------------------------------------------------------------------------
# checkpoint check: our train_ldm's loss on its own eval batch vs the twin's, from the saved weights


def check_unet_checkpoint(checkpoint_path, eval_batch_path, rtol=1e-4):
    # checkpoint: checkpoint_final.safetensors (EMA weights); eval batch: train_ldm's eval_batch
    # with z0 (B,4,8,8) scaled latents, t (B), eps, labels (B, effective: dropped = num_classes;
    # absent when unconditional), loss (1, ours). Returns 0 when the losses agree within rtol.
    tensors, meta = read_safetensors(checkpoint_path)
    if meta.get("model") != "unet":
        raise SystemExit(f"error: {checkpoint_path} has metadata model = {meta.get('model')!r}, "
                         "not 'unet'; pass a train_ldm checkpoint")
    for key in ("config", "schedule"):
        if key not in meta:
            raise SystemExit(f"error: {checkpoint_path} lacks the metadata key '{key}'; "
                             "rewrite it with the current train_ldm")
    try:
        cfg = json.loads(meta["config"])
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: {checkpoint_path}: metadata config is not JSON ({e})")
    model = unet_from_config(cfg)
    not_f32 = [f"{k} ({v.dtype})" for k, v in tensors.items() if v.dtype != np.float32]
    if not_f32:
        raise SystemExit(f"error: {checkpoint_path}: ldm.c checkpoints hold float32 weights, but "
                         f"these are not: {', '.join(not_f32)}")
    state = {k: torch.from_numpy(v.copy()) for k, v in tensors.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise SystemExit(f"error: {checkpoint_path} does not match the U-Net of config "
                         f"{meta['config']}:\n{e}")
    model = model.double().eval()
    abar = make_schedule(meta["schedule"])

    if not os.path.exists(eval_batch_path):
        raise SystemExit(f"error: {eval_batch_path} not found: train_ldm writes it beside "
                         "checkpoint_final.safetensors at the end of a run; finish or rerun the run")
    batch, _ = read_safetensors(eval_batch_path)
    need = ["z0", "t", "eps", "loss"] + (["labels"] if model.num_classes > 0 else [])
    missing = [k for k in need if k not in batch]
    if missing:
        raise SystemExit(f"error: {eval_batch_path} lacks {', '.join(missing)}; "
                         "it should be the eval_batch.safetensors train_ldm wrote with this checkpoint")
    if model.num_classes == 0 and "labels" in batch:
        raise SystemExit(f"error: {eval_batch_path} has labels but {checkpoint_path} is an "
                         "unconditional U-Net; the two files come from different runs")
    z0 = torch.from_numpy(batch["z0"].astype(np.float64))
    eps = torch.from_numpy(batch["eps"].astype(np.float64))
    t = torch.from_numpy(batch["t"].astype(np.int64))
    B = z0.shape[0]
    if z0.shape != (B, model.z_channels, 8, 8) or eps.shape != z0.shape or t.shape != (B,):
        raise SystemExit(f"error: {eval_batch_path}: expected z0 and eps ({B},{model.z_channels},8,8) "
                         f"and t ({B}), got {tuple(z0.shape)}, {tuple(eps.shape)}, {tuple(t.shape)}")
    if t.min() < 0 or t.max() >= T_STEPS:
        raise SystemExit(f"error: {eval_batch_path}: timesteps outside [0, {T_STEPS})")
    labels = None
    if model.num_classes > 0:
        labels = torch.from_numpy(batch["labels"].astype(np.int64))
        if labels.shape != (B,) or labels.min() < 0 or labels.max() > model.num_classes:
            raise SystemExit(f"error: {eval_batch_path}: labels must be ({B}) values in "
                             f"[0, {model.num_classes}]")
    with torch.no_grad():
        twin = diffusion_loss(model, z0, t, eps, abar, labels).item()
    ours = float(batch["loss"].reshape(-1)[0])
    rel = abs(ours - twin) / max(abs(twin), 1e-12)
    ok = rel <= rtol
    print(f"unet checkpoint {checkpoint_path}: eval loss ours {ours:.7f} twin {twin:.7f} "
          f"rel diff {rel:.2e} (tolerance {rtol:.0e}) {'ok' if ok else 'MISMATCH'}")
    return 0 if ok else 1


# --------------------------------------------------------------------------------------------------
# self-checks: names/shapes against tensor-names.txt, and a round trip of the checkpoint check


def read_tensor_names(path):
    # {section title: [(name, shape), ...]} from tensor-names.txt
    sections, cur = {}, None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("#"):
                cur = sections.setdefault(line.lstrip("# "), [])
            elif line and cur is not None:
                name, shape = line.split()
                cur.append((name, tuple(int(s) for s in shape.split("x"))))
    return sections


def check_names(names_path):
    sections = read_tensor_names(names_path)
    failed = 0
    for preset in ("tiny", "base"):
        prefix = f"U-Net preset {preset}"
        title = next((s for s in sections if s.startswith(prefix)), None)
        if title is None:
            raise SystemExit(f"error: {names_path} has no section starting '{prefix}'")
        p = PRESETS[preset]
        model = UNet(p["ch"], p["mult"], p["nres"], num_classes=10)
        ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
        if ours == sections[title]:
            print(f"names ok: {prefix} ({len(ours)} tensors, "
                  f"{sum(v.numel() for v in model.parameters())} parameters)")
        else:
            failed = 1
            print(f"names MISMATCH: {prefix}")
            for a, b in zip(ours + [None] * len(sections[title]), sections[title] + [None] * len(ours)):
                if a != b:
                    print(f"  ours {a}  tensor-names.txt {b}")
                    break
    return failed


def roundtrip_checkpoint_check():
    # a checkpoint and eval batch written here with the safetensors package must pass, and must
    # fail once the recorded loss is off by 1e-3
    from safetensors.numpy import save_file
    cfg = {"preset": "test", "ch": 16, "mult": [1, 2], "nres": 1, "z_channels": 4,
           "num_classes": 10, "attn_res": [4], "heads": 4, "tdim": 32}
    torch.manual_seed(0)
    model = unet_from_config(cfg)
    g = torch.Generator().manual_seed(1)
    z0, eps = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    labels = torch.tensor([3, 10, 1, 9])
    with torch.no_grad():
        loss = diffusion_loss(model, z0, t, eps, make_schedule("cosine"), labels).reshape(1)
    results = []
    with tempfile.TemporaryDirectory() as d:
        ckpt, eb = os.path.join(d, "ckpt.safetensors"), os.path.join(d, "eval_batch.safetensors")
        save_file({k: v.numpy() for k, v in model.state_dict().items()}, ckpt,
                  metadata={"format": "ldm.c", "model": "unet", "config": json.dumps(cfg),
                            "schedule": "cosine", "ema": "1"})
        for scale in (1.0, 1.001):
            save_file({"z0": z0.numpy(), "t": t.numpy(), "eps": eps.numpy(), "labels": labels.numpy(),
                       "loss": (loss * scale).numpy()}, eb)
            results.append(check_unet_checkpoint(ckpt, eb))
    ok = results == [0, 1]
    print(f"checkpoint check round trip {'ok' if ok else 'FAILED'} (exact loss -> {results[0]}, "
          f"loss x 1.001 -> {results[1]})")
    return 0 if ok else 1


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = sys.argv[1:] or [os.path.join(here, "..", "docs", "tensor-names.txt"),
                                  os.path.join(here, "..", "..", "shared", "docs", "tensor-names.txt")]
    names_path = next((p for p in candidates if os.path.exists(p)), None)
    if names_path is None:
        raise SystemExit(f"error: tensor-names.txt not found (looked in {', '.join(candidates)}); "
                         "pass its path as the first argument")
    sys.exit(check_names(names_path) | roundtrip_checkpoint_check())
