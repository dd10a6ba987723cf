"""
Writes tests/bad_inputs/: the crafted files tests/bad_inputs.sh feeds to the real programs (train_vae,
train_ldm, sample_ldm). Each file is a small, valid ldm.c file with ONE thing wrong (or a good one, as the
battery's control); the battery checks that every bad one is refused with a message naming the problem.

  vae.safetensors, unet.safetensors        good checkpoints of tiny models (VAE ch 8, mult 1-1-1, nres 1;
                                           2-class U-Net ch 8, mult 1-1, nres 1, attention at 4, 2 heads,
                                           tdim 8) whose U-Net names vae.safetensors as its VAE
  vae_state.safetensors, unet_state.safetensors   good training states of the same models
  ckpt/<case>.safetensors                  damaged or lying checkpoints (config fields out of range, bad
                                           metadata, unused / missing / misshapen / mistyped / non-finite
                                           tensors, broken files)
  state/<case>.safetensors                 damaged or lying training states (settings out of range, bad step,
                                           tensors missing, extra, of the wrong size, non-finite)
  noise_*.bin                              --init-noise files (wrong size, NaN)

The parameter names and shapes follow the registration order of train_vae.cu / train_ldm.cu (the names of
../shared/docs/tensor-names.txt); the battery's controls prove they match (the good files load and sample).
Files are written by hand (json + numpy), so that the bytes are reproducible and so that broken headers can
be made; the well-formed ones are read back with the `safetensors` package to prove them valid.
Weights repeat a short random pattern, so the committed files compress to little.

Usage: python3 dev/make_bad_inputs.py     (numpy and safetensors; no PyTorch). Run from the repository root.
"""
import hashlib
import json
import os
import shutil
import struct

import numpy as np
from safetensors.numpy import load_file

OUT = "tests/bad_inputs"
VAE_PATH = "in/vae.safetensors"   # the path the U-Net files store: the battery runs in a folder holding in/

VAE_CFG = {"preset": "bad", "ch": 8, "mult": [1, 1, 1], "nres": 1, "z_channels": 4}
UNET_CFG = {"preset": "bad", "ch": 8, "mult": [1, 1], "nres": 1, "z_channels": 4, "num_classes": 2,
            "attn_res": [4], "heads": 2, "tdim": 8}


# ----------------------------------------------------------------------------
# parameter lists: (name, shape) in the order the C code registers them

def conv(p, name, cin, cout, k):
    p += [(name + ".weight", (cout, cin, k, k)), (name + ".bias", (cout,))]


def norm(p, name, c):
    p += [(name + ".weight", (c,)), (name + ".bias", (c,))]


def linear(p, name, fin, fout):
    p += [(name + ".weight", (fout, fin)), (name + ".bias", (fout,))]


def resblock(p, name, cin, cout):
    norm(p, name + ".norm1", cin)
    conv(p, name + ".conv1", cin, cout, 3)
    norm(p, name + ".norm2", cout)
    conv(p, name + ".conv2", cout, cout, 3)
    if cin != cout:
        conv(p, name + ".skip", cin, cout, 1)


def vae_params(cfg):
    p, ch, mult, nres, z = [], cfg["ch"], cfg["mult"], cfg["nres"], cfg["z_channels"]
    conv(p, "encoder.conv_in", 3, ch, 3)
    c = ch
    for i, m in enumerate(mult):
        for j in range(nres):
            resblock(p, "encoder.down.%d.res.%d" % (i, j), c, ch * m)
            c = ch * m
        if i < len(mult) - 1:
            conv(p, "encoder.down.%d.downsample" % i, c, c, 3)
    for j in range(2):
        resblock(p, "encoder.mid.%d" % j, c, c)
    norm(p, "encoder.norm_out", c)
    conv(p, "encoder.conv_out", c, 2 * z, 3)
    c = ch * mult[-1]
    conv(p, "decoder.conv_in", z, c, 3)
    for j in range(2):
        resblock(p, "decoder.mid.%d" % j, c, c)
    for i in reversed(range(len(mult))):
        for j in range(nres + 1):
            resblock(p, "decoder.up.%d.res.%d" % (i, j), c, ch * mult[i])
            c = ch * mult[i]
        if i > 0:
            conv(p, "decoder.up.%d.upsample.conv" % i, c, c, 3)
    norm(p, "decoder.norm_out", c)
    conv(p, "decoder.conv_out", c, 3, 3)
    return p


def unet_params(cfg):
    p, ch, T = [], cfg["ch"], cfg["tdim"]
    linear(p, "time_embed.linear1", T, 4 * T)
    linear(p, "time_embed.linear2", 4 * T, T)
    if cfg["num_classes"] > 0:
        p.append(("class_embed.weight", (cfg["num_classes"] + 1, T)))
    conv(p, "conv_in", cfg["z_channels"], ch, 3)

    def tres(name, cin, cout):
        resblock(p, name, cin, cout)
        linear(p, name + ".temb", T, cout)

    def attn(name, c):
        norm(p, name + ".norm", c)
        conv(p, name + ".qkv", c, 3 * c, 1)
        conv(p, name + ".proj", c, c, 1)

    c, R, skips, has_attn = ch, 8, [ch], []
    for i, m in enumerate(cfg["mult"]):
        has_attn.append(R == cfg["attn_res"][0])
        for j in range(cfg["nres"]):
            tres("down.%d.res.%d" % (i, j), c, ch * m)
            c = ch * m
            if has_attn[i]:
                attn("down.%d.attn.%d" % (i, j), c)
            skips.append(c)
        if i < len(cfg["mult"]) - 1:
            conv(p, "down.%d.downsample" % i, c, c, 3)
            R //= 2
            skips.append(c)
    tres("mid.res1", c, c)
    attn("mid.attn", c)
    tres("mid.res2", c, c)
    for i in reversed(range(len(cfg["mult"]))):
        for j in range(cfg["nres"] + 1):
            tres("up.%d.res.%d" % (i, j), c + skips.pop(), ch * cfg["mult"][i])
            c = ch * cfg["mult"][i]
            if has_attn[i]:
                attn("up.%d.attn.%d" % (i, j), c)
        if i > 0:
            conv(p, "up.%d.upsample.conv" % i, c, c, 3)
    norm(p, "norm_out", c)
    conv(p, "conv_out", c, cfg["z_channels"], 3)
    return p


PATTERN = (np.random.default_rng(1234).standard_normal(97) * 0.05).astype(np.float32)


def weights(params):
    """name -> float32 array: GroupNorm weights 1, everything else the repeating pattern"""
    out = {}
    for name, shape in params:
        n = int(np.prod(shape))
        out[name] = np.ones(shape, np.float32) if ".norm" in name and name.endswith(".weight") and len(shape) == 1 \
            else np.resize(PATTERN, n).reshape(shape)
    return out


# ----------------------------------------------------------------------------
# safetensors, written by hand

def st_bytes(tensors, metadata, header_extra=None):
    """tensors: name -> numpy array (F32 / I64 / F16) or (dtype string, shape, raw bytes)"""
    items = []
    for name, t in tensors.items():
        if isinstance(t, tuple):
            items.append((name,) + t)
        else:
            dtype = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64", np.dtype(np.float16): "F16"}[t.dtype]
            items.append((name, dtype, list(t.shape), t.astype(t.dtype.newbyteorder("<")).tobytes()))
    items.sort(key=lambda it: (-{"I64": 8, "F32": 4, "F16": 2}.get(it[1], 1), it[0]))   # aligned, as Python's writer
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = dict(sorted(metadata.items()))
    for name, dtype, shape, raw in items:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if header_extra:
        header.update(header_extra)
    h = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def write(path, tensors, metadata, check=True):
    full = os.path.join(OUT, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "wb") as f:
        f.write(st_bytes(tensors, metadata))
    if check:
        load_file(full)   # the reference reader accepts it: only the contents are wrong
    return full


def write_raw(path, data):
    full = os.path.join(OUT, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "wb") as f:
        f.write(data)


def config_json(cfg):
    return json.dumps(cfg, separators=(",", ":"))


# ----------------------------------------------------------------------------
# the good files

def vae_meta(cfg=VAE_CFG, model="vae"):
    return {"format": "ldm.c", "model": model, "config": config_json(cfg) if isinstance(cfg, dict) else cfg}


def unet_meta(vae_sha, cfg=UNET_CFG, model="unet", **over):
    m = {"format": "ldm.c", "model": model, "config": config_json(cfg) if isinstance(cfg, dict) else cfg,
         "latent_scale": "1.5", "schedule": "cosine", "vae_checkpoint": VAE_PATH, "vae_sha256": vae_sha, "ema": "1"}
    m.update(over)
    return {k: v for k, v in m.items() if v is not None}


VAE_ARGS = {"batch_size": 4, "lr": 0.001, "kl_weight": 0.001, "kl_warmup_steps": 0, "total_steps": 20, "seed": 7}
UNET_ARGS = {"batch_size": 4, "lr": 0.0003, "warmup_steps": 0, "cfg_dropout": 0.1, "ema_decay": 0.999,
             "total_steps": 20, "seed": 7}
STEP = 5


def state_tensors(n, ema, step=STEP):
    flat = np.resize(PATTERN, n)
    t = {"params": flat.copy(), "adam_m": (flat * 0.01).astype(np.float32),
         "adam_v": np.full(n, 1e-6, np.float32), "step": np.array([step], np.int64)}
    if ema:
        t["ema"] = flat.copy()
    return t


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    vae_w = weights(vae_params(VAE_CFG))
    vae_file = write("vae.safetensors", vae_w, vae_meta())
    vae_sha = hashlib.sha256(open(vae_file, "rb").read()).hexdigest()
    unet_w = weights(unet_params(UNET_CFG))
    write("unet.safetensors", unet_w, unet_meta(vae_sha))
    n_vae = sum(int(np.prod(s)) for _, s in vae_params(VAE_CFG))
    n_unet = sum(int(np.prod(s)) for _, s in unet_params(UNET_CFG))
    vae_state_meta = dict(vae_meta(model="vae-train-state"), train_args=config_json(VAE_ARGS))
    unet_state_meta = dict(unet_meta(vae_sha, model="unet-train-state"), train_args=config_json(UNET_ARGS))
    write("vae_state.safetensors", state_tensors(n_vae, False), vae_state_meta)
    write("unet_state.safetensors", state_tensors(n_unet, True), unet_state_meta)

    # --- U-Net checkpoints whose config lies (each one field out of what the model code supports)
    def unet_cfg(**over):
        c = dict(UNET_CFG)
        c.update(over)
        return c
    bad_unet_cfgs = {
        "unet_nres9": unet_cfg(nres=9), "unet_nres0": unet_cfg(nres=0), "unet_ch12": unet_cfg(ch=12),
        "unet_ch0": unet_cfg(ch=0), "unet_ch4096": unet_cfg(ch=4096), "unet_mult5": unet_cfg(mult=[1, 1, 1, 1, 1]),
        "unet_mult_empty": unet_cfg(mult=[]), "unet_mult0": unet_cfg(mult=[1, 0]),
        "unet_z0": unet_cfg(z_channels=0), "unet_classes_neg": unet_cfg(num_classes=-1),
        "unet_attn3": unet_cfg(attn_res=[3]), "unet_attn2": unet_cfg(attn_res=[8, 4]),
        "unet_attn_none": unet_cfg(attn_res=[]), "unet_heads3": unet_cfg(heads=3), "unet_heads0": unet_cfg(heads=0),
        "unet_tdim7": unet_cfg(tdim=7), "unet_tdim0": unet_cfg(tdim=0),
        "unet_ch_string": unet_cfg(ch="8"), "unet_ch_float": unet_cfg(ch=8.5),
    }
    for name, cfg in bad_unet_cfgs.items():
        write("ckpt/%s.safetensors" % name, unet_w, unet_meta(vae_sha, cfg))
    no_heads = dict(UNET_CFG)
    del no_heads["heads"]
    write("ckpt/unet_no_heads.safetensors", unet_w, unet_meta(vae_sha, no_heads))
    write("ckpt/unet_config_garbage.safetensors", unet_w, unet_meta(vae_sha, "not json at all"))
    # a complete checkpoint of a model with more res blocks than the arrays hold: every tensor there
    nres5 = unet_cfg(nres=5)
    write("ckpt/unet_nres5_complete.safetensors", weights(unet_params(nres5)), unet_meta(vae_sha, nres5))

    # --- U-Net metadata besides the config
    for name, over in {"scale_nan": {"latent_scale": "nan"}, "scale_zero": {"latent_scale": "0"},
                       "scale_text": {"latent_scale": "abc"}, "scale_neg": {"latent_scale": "-1.5"},
                       "scale_inf": {"latent_scale": "inf"}, "scale_huge": {"latent_scale": "1e99"},
                       "scale_missing": {"latent_scale": None}, "schedule_bad": {"schedule": "quadratic"},
                       "sha_bad": {"vae_sha256": "xyz"}, "vae_path_empty": {"vae_checkpoint": ""},
                       "vae_path_fifo": {"vae_checkpoint": "in/fifo"}, "format_missing": {"format": None}}.items():
        write("ckpt/unet_%s.safetensors" % name, unet_w, unet_meta(vae_sha, **over))

    # --- U-Net tensors
    extra = dict(unet_w, **{"extra.weight": np.zeros(4, np.float32)})
    write("ckpt/unet_unused_tensor.safetensors", extra, unet_meta(vae_sha))
    missing = dict(unet_w)
    del missing["conv_out.bias"]
    write("ckpt/unet_missing_tensor.safetensors", missing, unet_meta(vae_sha))
    write("ckpt/unet_wrong_shape.safetensors", dict(unet_w, **{"conv_in.weight": np.zeros((8, 4, 3, 2), np.float32)}),
          unet_meta(vae_sha))
    write("ckpt/unet_f16.safetensors", dict(unet_w, **{"conv_in.bias": np.zeros(8, np.float16)}), unet_meta(vae_sha))
    write("ckpt/unet_i64.safetensors", dict(unet_w, **{"conv_in.bias": np.zeros(8, np.int64)}), unet_meta(vae_sha))
    for name, v in {"nan": np.nan, "inf": np.inf}.items():
        w = dict(unet_w)
        w["mid.attn.qkv.weight"] = w["mid.attn.qkv.weight"].copy()
        w["mid.attn.qkv.weight"].flat[3] = v
        write("ckpt/unet_%s_weight.safetensors" % name, w, unet_meta(vae_sha))
    # --- broken files
    good = open(os.path.join(OUT, "unet.safetensors"), "rb").read()
    write_raw("ckpt/truncated.safetensors", good[:len(good) // 2])
    write_raw("ckpt/empty.safetensors", b"")
    write_raw("ckpt/header_too_long.safetensors", struct.pack("<Q", 1 << 40) + b"{}")
    write_raw("ckpt/header_garbage.safetensors", struct.pack("<Q", 16) + b"this is no json!")

    # --- VAE checkpoints (read through --vae-checkpoint and train_ldm)
    def vae_cfg(**over):
        c = dict(VAE_CFG)
        c.update(over)
        return c
    for name, cfg in {"vae_nres9": vae_cfg(nres=9), "vae_ch12": vae_cfg(ch=12), "vae_mult2": vae_cfg(mult=[1, 1]),
                      "vae_z0": vae_cfg(z_channels=0), "vae_mult0": vae_cfg(mult=[1, 0, 1])}.items():
        write("ckpt/%s.safetensors" % name, vae_w, vae_meta(cfg))
    z8 = vae_cfg(z_channels=8)
    write("ckpt/vae_z8_complete.safetensors", weights(vae_params(z8)), vae_meta(z8))
    write("ckpt/vae_unused_tensor.safetensors", dict(vae_w, **{"decoder.extra": np.zeros(2, np.float32)}), vae_meta())
    w = dict(vae_w)
    w["decoder.conv_out.weight"] = w["decoder.conv_out.weight"].copy()
    w["decoder.conv_out.weight"].flat[0] = np.nan
    write("ckpt/vae_nan_weight.safetensors", w, vae_meta())

    # --- VAE training states (train_vae --resume)
    def vae_state(name, args=None, tensors=None, meta=None):
        a = dict(VAE_ARGS)
        a.update(args or {})
        m = dict(vae_state_meta, train_args=config_json(a))
        m.update(meta or {})
        write("state/%s.safetensors" % name, tensors if tensors is not None else state_tensors(n_vae, False),
              {k: v for k, v in m.items() if v is not None})
    vae_state("vae_nres9", meta={"config": config_json(vae_cfg(nres=9))})
    vae_state("vae_step_neg", tensors=state_tensors(n_vae, False, step=-1))
    vae_state("vae_step_past_end", tensors=state_tensors(n_vae, False, step=999))
    vae_state("vae_batch0", {"batch_size": 0})
    vae_state("vae_lr_neg", {"lr": -0.001})
    vae_state("vae_lr_inf", meta={"train_args": config_json(VAE_ARGS).replace('"lr":0.001', '"lr":1e999')})
    vae_state("vae_lr_nan", meta={"train_args": config_json(VAE_ARGS).replace('"lr":0.001', '"lr":NaN')})
    vae_state("vae_kl_neg", {"kl_weight": -1})
    vae_state("vae_warmup_neg", {"kl_warmup_steps": -5})
    vae_state("vae_total0", {"total_steps": 0})
    vae_state("vae_seed_neg", {"seed": -1})
    no_lr = dict(VAE_ARGS)
    del no_lr["lr"]
    vae_state("vae_no_lr", meta={"train_args": config_json(no_lr)})
    vae_state("vae_no_train_args", meta={"train_args": None})
    t = state_tensors(n_vae, False)
    t["params"] = t["params"][:10]
    vae_state("vae_params_short", tensors=t)
    t = state_tensors(n_vae, False)
    t["params"][3] = np.nan
    vae_state("vae_params_nan", tensors=t)
    t = state_tensors(n_vae, False)
    t["adam_v"][0] = -1
    vae_state("vae_adam_v_neg", tensors=t)
    t = state_tensors(n_vae, False)
    del t["adam_m"]
    vae_state("vae_no_adam_m", tensors=t)
    vae_state("vae_extra_ema", tensors=state_tensors(n_vae, True))
    t = state_tensors(n_vae, False)
    t["step"] = np.array([5.0], np.float32)
    vae_state("vae_step_f32", tensors=t)
    vae_state("vae_is_unet_state", meta={"model": "unet-train-state"})
    # finite everywhere, but AdamW's first moment is so large that the next update overflows: the loss of
    # that step is finite (it is computed before the update), the weights after it are not
    t = state_tensors(n_vae, False)
    t["adam_m"][:] = 3e38
    t["adam_v"][:] = 0
    vae_state("vae_update_overflows", tensors=t)

    # --- U-Net training states (train_ldm --resume)
    def unet_state(name, args=None, tensors=None, meta=None):
        a = dict(UNET_ARGS)
        a.update(args or {})
        m = dict(unet_state_meta, train_args=config_json(a))
        m.update(meta or {})
        write("state/%s.safetensors" % name, tensors if tensors is not None else state_tensors(n_unet, True),
              {k: v for k, v in m.items() if v is not None})
    unet_state("unet_nres9", meta={"config": config_json(unet_cfg(nres=9))})
    unet_state("unet_scale_nan", meta={"latent_scale": "nan"})
    unet_state("unet_step_neg", tensors=state_tensors(n_unet, True, step=-1))
    unet_state("unet_cfg_dropout", {"cfg_dropout": 1.5})
    unet_state("unet_ema_decay", {"ema_decay": -0.5})
    unet_state("unet_lr_inf", meta={"train_args": config_json(UNET_ARGS).replace('"lr":0.0003', '"lr":1e999')})
    unet_state("unet_batch0", {"batch_size": 0})
    unet_state("unet_warmup_neg", {"warmup_steps": -1})
    t = state_tensors(n_unet, True)
    del t["ema"]
    unet_state("unet_no_ema", tensors=t)
    t = state_tensors(n_unet, True)
    t["ema"][7] = np.inf
    unet_state("unet_ema_inf", tensors=t)
    unet_state("unet_vae_fifo", meta={"vae_checkpoint": "in/fifo"})
    unet_state("unet_vae_other", meta={"vae_sha256": "0" * 64})

    # --- --init-noise files for the 2-class model (--n 2: 2 x 4 x 8 x 8 float32)
    write_raw("noise_short.bin", np.zeros(3, np.float32).tobytes())
    noise = np.zeros((2, 4, 8, 8), np.float32)
    noise.flat[0] = np.nan
    write_raw("noise_nan.bin", noise.tobytes())

    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
    count = sum(len(fs) for _, _, fs in os.walk(OUT))
    print("wrote %d files (%.1f MB) under %s" % (count, total / 1e6, OUT))


if __name__ == "__main__":
    main()
