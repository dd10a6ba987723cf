"""
dev/vae_twin.py - the PyTorch twin of ldm.c's VAE (SPEC section 3), module for module.

Defines PRESETS, ResBlock, Encoder, Decoder, VAE (with forward_loss, the training objective),
vae_from_config (builds the twin from a checkpoint's `config` metadata) and check_names (the
twin's state_dict against the VAE section of tensor-names.txt). The module tree is laid out so
that its state_dict keys and shapes are exactly the checkpoint names of tensor-names.txt, so
`model.load_state_dict(safetensors.torch.load_file(ckpt))` just works on our checkpoints.

Run it directly to check the tiny preset's parameter names and shapes against tensor-names.txt:
    /usr/bin/python3 dev/vae_twin.py [--names PATH/tensor-names.txt]
"""

import argparse
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# presets (SPEC section 3): network shape plus the training defaults of train_vae

PRESETS = {
    "tiny":  dict(ch=16,  mult=(1, 2, 4), nres=1, batch=64,  lr=1e-3, epochs=1),
    "small": dict(ch=64,  mult=(1, 2, 4), nres=2, batch=128, lr=1e-3, epochs=50),
    "fast":  dict(ch=128, mult=(1, 2, 4), nres=2, batch=512, lr=4e-3, epochs=200),
}

NUM_GROUPS = 8       # GroupNorm groups everywhere in the VAE
GN_EPS = 1e-5
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0

# -----------------------------------------------------------------------------
# modules


def group_norm(c):
    return nn.GroupNorm(NUM_GROUPS, c, eps=GN_EPS)


class ResBlock(nn.Module):
    """h = conv1(silu(norm1(x))); h = conv2(silu(norm2(h))); out = skip(x) + h.
    skip is a 1x1 conv only when cin != cout (otherwise the identity, and no parameters)."""

    def __init__(self, cin, cout):
        super().__init__()
        # registration order = state_dict order = tensor-names.txt order
        self.norm1 = group_norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = group_norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.skip is None else self.skip(x)) + h


class EncoderLevel(nn.Module):
    """encoder.down.<i>: `nres` ResBlocks, then (not on the last level) a stride-2 3x3 conv."""

    def __init__(self, cin, cout, nres, downsample):
        super().__init__()
        self.res = nn.ModuleList([ResBlock(cin if j == 0 else cout, cout) for j in range(nres)])
        self.downsample = nn.Conv2d(cout, cout, 3, stride=2, padding=1) if downsample else None


class Upsample(nn.Module):
    """decoder.up.<i>.upsample: nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class DecoderLevel(nn.Module):
    """decoder.up.<i>: `nres+1` ResBlocks, then (not on level 0) an Upsample."""

    def __init__(self, cin, cout, nres, upsample):
        super().__init__()
        self.res = nn.ModuleList([ResBlock(cin if j == 0 else cout, cout) for j in range(nres + 1)])
        self.upsample = Upsample(cout) if upsample else None


class Encoder(nn.Module):
    """(B, 3, 32, 32) -> moments (B, 2*z_channels, 32/2^(L-1), ...) = (mu, logvar), logvar not clamped."""

    def __init__(self, ch, mult, nres, z_channels):
        super().__init__()
        L = len(mult)
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        levels, cin = [], ch
        for i in range(L):
            cout = ch * mult[i]
            levels.append(EncoderLevel(cin, cout, nres, downsample=(i < L - 1)))
            cin = cout
        self.down = nn.ModuleList(levels)
        self.mid = nn.ModuleList([ResBlock(cin, cin), ResBlock(cin, cin)])
        self.norm_out = group_norm(cin)
        self.conv_out = nn.Conv2d(cin, 2 * z_channels, 3, padding=1)

    def forward(self, x, acts=None):
        h = self.conv_in(x)
        if acts is not None:
            acts["enc_conv_in"] = h
        for level in self.down:
            for block in level.res:
                h = block(h)
            if level.downsample is not None:
                h = level.downsample(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """z (B, z_channels, 8, 8) -> (B, 3, 32, 32); levels run from the deepest (up.<L-1>) to up.0."""

    def __init__(self, ch, mult, nres, z_channels):
        super().__init__()
        L = len(mult)
        cdeep = ch * mult[-1]
        self.conv_in = nn.Conv2d(z_channels, cdeep, 3, padding=1)
        self.mid = nn.ModuleList([ResBlock(cdeep, cdeep), ResBlock(cdeep, cdeep)])
        # up.<i> is numbered by level (0 = full resolution) but built deepest first, because the
        # first ResBlock of a level takes the channels of the level below it (deeper)
        levels, cin = [None] * L, cdeep
        for i in reversed(range(L)):
            cout = ch * mult[i]
            levels[i] = DecoderLevel(cin, cout, nres, upsample=(i > 0))
            cin = cout
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(cin)
        self.conv_out = nn.Conv2d(cin, 3, 3, padding=1)

    def forward(self, z, acts=None):
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        if acts is not None:
            acts["dec_mid"] = h
        for level in reversed(self.up):
            for block in level.res:
                h = block(h)
            if level.upsample is not None:
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VAE(nn.Module):
    def __init__(self, ch, mult, nres, z_channels=4):
        super().__init__()
        self.z_channels = z_channels
        self.encoder = Encoder(ch, mult, nres, z_channels)
        self.decoder = Decoder(ch, mult, nres, z_channels)

    def forward_loss(self, x, eps, kl_weight):
        """The training objective of train_vae for images x (B, 3, 32, 32) in [-1, 1] and noise
        eps (B, z_channels, 8, 8): z = mu + exp(logvar/2)*eps, loss = mse + kl_weight*kl with
        mse the mean over all B*3*32*32 values and kl = 0.5*sum(mu^2 + exp(logvar) - 1 - logvar)
        over the latent values, averaged over the batch.
        Returns (loss, mse, kl, acts) with acts = dict of enc_conv_in, moments (the encoder's
        conv_out, logvar NOT yet clamped), dec_mid, z, x_rec."""
        acts = {}
        moments = self.encoder(x, acts)
        acts["moments"] = moments
        mu = moments[:, :self.z_channels]
        logvar = moments[:, self.z_channels:].clamp(LOGVAR_MIN, LOGVAR_MAX)
        z = mu + torch.exp(0.5 * logvar) * eps
        acts["z"] = z
        x_rec = self.decoder(z, acts)
        acts["x_rec"] = x_rec
        mse = ((x_rec - x) ** 2).mean()
        kl = 0.5 * (mu ** 2 + torch.exp(logvar) - 1.0 - logvar).sum() / x.shape[0]
        loss = mse + kl_weight * kl
        return loss, mse, kl, acts


def vae_from_config(config):
    """The twin for a checkpoint's `config` metadata (a dict with ch, mult, nres, z_channels)."""
    missing = [k for k in ("ch", "mult", "nres", "z_channels") if k not in config]
    if missing:
        raise ValueError("VAE config lacks %s (has %s)" % (", ".join(missing), sorted(config)))
    return VAE(int(config["ch"]), tuple(int(m) for m in config["mult"]), int(config["nres"]),
               int(config["z_channels"]))

# -----------------------------------------------------------------------------
# the state_dict against tensor-names.txt


def find_tensor_names():
    """tensor-names.txt: docs/ in the repository, else ../shared/docs/ beside it (where SPEC.md lives)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for path in (os.path.join(root, "docs", "tensor-names.txt"),
                 os.path.join(os.path.dirname(root), "shared", "docs", "tensor-names.txt")):
        if os.path.exists(path):
            return path
    return None


def read_names_section(path, title_prefix):
    """[(name, shape tuple)] of the section whose '# ' title line starts with title_prefix."""
    entries, inside = [], False
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("#"):
                if inside:
                    break
                inside = line[1:].strip().startswith(title_prefix)
            elif inside and line:
                name, shape = line.split()
                entries.append((name, tuple(int(s) for s in shape.split("x"))))
    if not entries:
        raise ValueError("%s has no section titled '# %s...'" % (path, title_prefix))
    return entries


def check_names(path):
    """True when the tiny preset's state_dict has exactly the names, order and shapes of the
    VAE section of tensor-names.txt; prints every difference."""
    p = PRESETS["tiny"]
    model = VAE(p["ch"], p["mult"], p["nres"], 4)
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    ref = read_names_section(path, "VAE preset tiny")
    ok = True
    ref_d, ours_d = dict(ref), dict(ours)
    for name, shape in ref:
        if name not in ours_d:
            print("  missing in the twin: %s %s" % (name, shape)); ok = False
        elif ours_d[name] != shape:
            print("  shape of %s: twin %s, tensor-names %s" % (name, ours_d[name], shape)); ok = False
    for name, shape in ours:
        if name not in ref_d:
            print("  not in tensor-names: %s %s" % (name, shape)); ok = False
    if ok and [n for n, _ in ours] != [n for n, _ in ref]:
        print("  same names and shapes, but in a different order"); ok = False
    nparams = sum(v.numel() for v in model.state_dict().values())
    print("%s: twin VAE tiny state_dict vs %s: %d tensors, %d parameters"
          % ("OK" if ok else "MISMATCH", path, len(ours), nparams))
    return ok


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="check the VAE twin's parameter names and shapes "
                                             "against tensor-names.txt")
    ap.add_argument("--names", default=None, help="path of tensor-names.txt "
                    "(default: docs/tensor-names.txt, else ../shared/docs/tensor-names.txt)")
    args = ap.parse_args()
    path = args.names or find_tensor_names()
    if path is None or not os.path.exists(path):
        sys.exit("error: tensor-names.txt not found (looked in docs/ and ../shared/docs/); "
                 "pass its path with --names")
    sys.exit(0 if check_names(path) else 1)
