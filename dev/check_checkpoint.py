"""
dev/check_checkpoint.py - checks a checkpoint written by our programs against the PyTorch twin.

    /usr/bin/python3 dev/check_checkpoint.py runs/<run-name>
    /usr/bin/python3 dev/check_checkpoint.py path/to/checkpoint_final.safetensors

1. Reads the safetensors file with the `safetensors` package (unet_twin.read_safetensors), as a PyTorch
   user would: it refuses truncated files, overlapping or gapped offsets and dtype/shape that disagree
   with the byte count. (The independent strict parse is ldm.c's own reader, ldmc/safetensors.h,
   which test_ldm checks against files this package writes; it also refuses repeated names, which
   the package lets pass.)
2. Reads __metadata__ (`format`, `model`, `config`), builds the twin from the config and loads the
   weights with load_state_dict(strict=True): every name and shape must be exactly the twin's.
3. Reads eval_batch.safetensors beside the checkpoint (train_vae writes it at the end of a run:
   x (B,3,32,32), eps (B,4,8,8), and our program's kl_weight, loss, mse, kl with the final
   weights), computes the twin's loss in float64 on that batch and prints ours vs the twin's.
Exit status 0 when loss, mse and kl agree within 1e-4 relative, 1 otherwise or on any bad input.
A U-Net checkpoint (metadata model = "unet") is handed to unet_twin.check_unet_checkpoint.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from unet_twin import read_safetensors  # noqa: E402

TOLERANCE = 1e-4


def fail(msg):
    print("error: " + msg, file=sys.stderr)
    sys.exit(1)

# -----------------------------------------------------------------------------
# the VAE check


def check_vae(ckpt_path, tensors, metadata, eval_path):
    import torch
    from vae_twin import vae_from_config

    try:
        config = json.loads(metadata["config"])
        model = vae_from_config(config)
    except KeyError:
        fail("%s: __metadata__ has no `config` (a JSON string with ch, mult, nres, z_channels)" % ckpt_path)
    except (ValueError, TypeError) as e:
        fail("%s: bad `config` metadata %r: %s" % (ckpt_path, metadata["config"], e))
    print("config: %s" % json.dumps(config))
    not_f32 = ["%s (%s)" % (k, v.dtype) for k, v in tensors.items() if v.dtype != np.float32]
    if not_f32:
        fail("%s: ldm.c checkpoints hold float32 weights, but these are not: %s" % (ckpt_path, ", ".join(not_f32)))
    state = {k: torch.from_numpy(v.copy()) for k, v in tensors.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        fail("%s does not match the twin built from its config:\n%s" % (ckpt_path, e))
    print("load_state_dict(strict=True): %d tensors, %d parameters, OK"
          % (len(state), sum(v.numel() for v in state.values())))

    if not os.path.exists(eval_path):
        fail("%s not found: train_vae writes it beside checkpoint_final.safetensors at the end of a "
             "run; rerun or finish the run to produce it" % eval_path)
    batch, _ = read_safetensors(eval_path)
    for key in ("x", "eps", "kl_weight", "loss", "mse", "kl"):
        if key not in batch:
            fail("%s has no tensor %r (expected x, eps, kl_weight, loss, mse, kl)" % (eval_path, key))
        if batch[key].dtype != np.float32:
            fail("%s: tensor %r is %s, expected F32" % (eval_path, key, batch[key].dtype))
    x, eps = batch["x"], batch["eps"]
    down = 2 ** (len(config["mult"]) - 1)
    if x.ndim != 4 or x.shape[1] != 3:
        fail("%s: x has shape %s, expected (B, 3, H, W)" % (eval_path, x.shape))
    want = (x.shape[0], model.z_channels, x.shape[2] // down, x.shape[3] // down)
    if eps.shape != want:
        fail("%s: eps has shape %s, expected %s for x %s" % (eval_path, eps.shape, want, x.shape))
    for key in ("kl_weight", "loss", "mse", "kl"):
        if batch[key].size != 1:
            fail("%s: %r has %d elements, expected 1" % (eval_path, key, batch[key].size))

    kl_weight = float(batch["kl_weight"].reshape(-1)[0])
    model = model.double()
    with torch.no_grad():
        loss, mse, kl, _ = model.forward_loss(torch.from_numpy(x.astype(np.float64)),
                                              torch.from_numpy(eps.astype(np.float64)), kl_weight)
    print("eval batch: %d images, kl_weight %g (twin in float64)" % (x.shape[0], kl_weight))
    print("%-6s %16s %16s %10s" % ("", "ours", "twin", "rel diff"))
    ok = True
    for key, twin in (("loss", loss.item()), ("mse", mse.item()), ("kl", kl.item())):
        ours = float(batch[key].reshape(-1)[0])
        rel = abs(ours - twin) / max(abs(twin), 1e-12)
        good = rel <= TOLERANCE
        ok = ok and good
        print("%-6s %16.8g %16.8g %10.2e %s" % (key, ours, twin, rel, "ok" if good else "MISMATCH"))
    print("%s (tolerance %.0e relative)" % ("OK: ours and the twin agree" if ok else "FAIL", TOLERANCE))
    return 0 if ok else 1

# -----------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", metavar="RUN_DIR_OR_CHECKPOINT",
                    help="a run directory (runs/<run-name>) or a checkpoint_final.safetensors")
    arg = ap.parse_args().path
    ckpt = os.path.join(arg, "checkpoint_final.safetensors") if os.path.isdir(arg) else arg
    if not os.path.exists(ckpt):
        fail("%s not found: pass a run directory (runs/<run-name>) or a checkpoint file" % ckpt)
    eval_path = os.path.join(os.path.dirname(ckpt), "eval_batch.safetensors")

    tensors, metadata = read_safetensors(ckpt)
    print("%s: %d tensors, metadata %s" % (ckpt, len(tensors), sorted(metadata)))
    if metadata.get("format") != "ldm.c":
        fail("%s: __metadata__ format is %r, expected \"ldm.c\" (not written by our programs?)"
             % (ckpt, metadata.get("format")))
    model = metadata.get("model")
    if model == "vae":
        sys.exit(check_vae(ckpt, tensors, metadata, eval_path))
    if model == "unet":
        from unet_twin import check_unet_checkpoint
        sys.exit(check_unet_checkpoint(ckpt, eval_path))  # its return value is the exit status
    fail("%s: __metadata__ model is %r, expected \"vae\" or \"unet\"" % (ckpt, model))


if __name__ == "__main__":
    main()
