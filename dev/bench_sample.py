"""
dev/bench_sample.py - sampling images/s of our sample_ldm vs the PyTorch twin on one device (meant for
a GPU): DPM-Solver++(2M), classifier-free guidance, VAE decoding, from the same checkpoint.

    /usr/bin/python3 dev/bench_sample.py --checkpoint runs/X/checkpoint_final.safetensors
        [--vae-checkpoint PATH] [--n 1000] [--batch 500] [--steps 20] [--guidance 3] [--repeats 3]
        [--modes eager32,bf16] [--device cuda|cpu] [--binary ./sample_ldm] [--json PATH] [--threads N]
        [--twin-only]

Ours: `sample_ldm --checkpoint C --sampler dpm++2m --steps S --guidance-scale G --n N --batch-size B
--device D`, run REPEATS times; each run's last `sampled N/N | X img/s` line (its clock starts after
loading, and covers all batches with VAE decoding and the copy of the images to the host; it has
no warm-up, so a first batch's one-time costs count) gives one number, and the median is ours.
The twin: the U-Net (dev/unet_twin.py) with the checkpoint's weights, the VAE (dev/vae_twin.py)
from the path in the checkpoint's `vae_checkpoint` metadata (or --vae-checkpoint); per batch of B:
z_T ~ N(0, I) -> S steps of dev/refs_samplers.py's DPM-Solver++(2M) whose eps is ONE forward of 2B
rows (B conditional, B with the "no class" label; eps = eps_u + G (eps_c - eps_u)) -> divide by
latent_scale -> VAE decoder -> images to the host. Labels run through the classes. One warm-up
batch, then REPEATS timed runs of all N images; the median. Twin modes: eager32 (fp32, TF32 off),
tf32, bf16 (autocast around the U-Net and the decoder; the sampler's arithmetic stays fp32).
An unconditional checkpoint samples without guidance (one forward of B rows), as sample_ldm does.
ours/twin > 1 means ours is faster. Expect a few seconds a mode on an H100 with the defaults (not yet run there).
"""

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gpu import (MODES, autocast, check_binary, free_device_memory, mode_unavailable, parse_modes,  # noqa: E402
                       run_ours, set_tf32, setup_device, short_error, synchronize, write_json)
from refs_samplers import sample  # noqa: E402
from unet_twin import make_schedule, read_safetensors, unet_from_config  # noqa: E402
from vae_twin import vae_from_config  # noqa: E402

SAMPLED_LINE = re.compile(r"^sampled \d+/\d+ \| ([0-9.eE+-]+) img/s", re.MULTILINE)
SAMPLE_MODES = [m for m in MODES if m != "compile"]


def load_twin(path, kind, device):
    """(model on the device in eval mode, metadata) of an ldm.c checkpoint of `kind` (vae | unet)."""
    tensors, meta = read_safetensors(path)
    if meta.get("model") != kind:
        sys.exit("error: %s has metadata model = %r, not %r; pass a %s checkpoint"
                 % (path, meta.get("model"), kind, "train_ldm" if kind == "unet" else "train_vae"))
    try:
        cfg = json.loads(meta["config"])
    except (KeyError, json.JSONDecodeError) as e:
        sys.exit("error: %s has no readable `config` metadata (%s); rewrite it with the current program" % (path, e))
    model = unet_from_config(cfg) if kind == "unet" else vae_from_config(cfg)
    try:
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in tensors.items()}, strict=True)
    except RuntimeError as e:
        sys.exit("error: %s does not fit the %s of its config %s:\n%s" % (path, kind, meta["config"], e))
    return model.to(device).eval(), meta


def make_eps_fn(unet, labels, guidance, device, bf16):
    """eps(z, t) of refs_samplers.sample: with CFG, one U-Net forward of the 2B rows [z; z] with labels
    [labels; no class], then eps_u + s (eps_c - eps_u); unconditional, one plain forward."""
    conditional = unet.num_classes > 0
    rows = torch.cat([labels, torch.full_like(labels, unet.num_classes)]) if conditional else None

    def eps_fn(z, t):
        zz = torch.cat([z, z]) if conditional else z
        tt = torch.full((zz.shape[0],), t, dtype=torch.int64, device=device)
        with autocast(device, bf16):
            eps = unet(zz, tt, rows).float()
        if not conditional:
            return eps
        eps_c, eps_u = eps.chunk(2)
        return eps_u + guidance * (eps_c - eps_u)
    return eps_fn


@torch.inference_mode()
def sample_twin(unet, vae, abar, latent_scale, n, batch, steps, guidance, device, bf16):
    """Seconds to sample n images in batches of `batch`, from noise to images on the host."""
    synchronize(device)
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        b = min(batch, n - start)
        z_T = torch.randn(b, unet.z_channels, 8, 8, device=device)
        labels = torch.arange(start, start + b, device=device) % max(unet.num_classes, 1)
        eps_fn = make_eps_fn(unet, labels, guidance, device, bf16)
        z0 = sample(eps_fn, "dpm++2m", steps, 0.0, abar, z_T, None)[-1]  # DPM-Solver++ draws no noise
        with autocast(device, bf16):
            images = vae.decoder(z0 / latent_scale)
        images.float().cpu()  # the copy to the host, as sample_ldm does; it also waits for the GPU
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="train_ldm's checkpoint_final.safetensors")
    ap.add_argument("--vae-checkpoint", default=None, help="overrides the VAE path stored in the checkpoint")
    ap.add_argument("--n", type=int, default=1000, help="images per timed run (default 1000)")
    ap.add_argument("--batch", type=int, default=500, help="images per batch (default 500)")
    ap.add_argument("--steps", type=int, default=20, help="DPM-Solver++(2M) steps (default 20)")
    ap.add_argument("--guidance", type=float, default=3.0, help="CFG scale (default 3)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per side and mode (default 3, at least 2)")
    ap.add_argument("--modes", default="eager32,bf16", help="twin modes, comma-separated: %s (default eager32,bf16)"
                    % ", ".join(SAMPLE_MODES))
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="where both sides run (default cuda)")
    ap.add_argument("--binary", default="./sample_ldm", help="our sampler (default ./sample_ldm)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads, --device cpu only "
                    "(default: all cores)")
    ap.add_argument("--twin-only", action="store_true", help="time only the PyTorch twin (no binary needed)")
    args = ap.parse_args()

    modes = parse_modes(ap, args.modes, SAMPLE_MODES)
    if min(args.n, args.batch, args.steps, args.threads) < 1 or args.repeats < 2:
        ap.error("--n, --batch, --steps and --threads must be at least 1, --repeats at least 2")
    if not os.path.isfile(args.checkpoint):
        ap.error("checkpoint %s not found: train one with `./train_ldm` or pass --checkpoint PATH" % args.checkpoint)
    if not args.twin_only:
        check_binary(ap, args.binary, "sample_ldm", "--binary")

    desc = setup_device(args.device, args.threads)
    unet, meta = load_twin(args.checkpoint, "unet", args.device)
    vae_path = args.vae_checkpoint or meta.get("vae_checkpoint")
    if not vae_path or not os.path.isfile(vae_path):
        sys.exit("error: VAE checkpoint %r (%s) not found; pass --vae-checkpoint PATH"
                 % (vae_path, "--vae-checkpoint" if args.vae_checkpoint else "metadata of " + args.checkpoint))
    vae, _ = load_twin(vae_path, "vae", args.device)
    for key in ("latent_scale", "schedule"):
        if key not in meta:
            sys.exit("error: %s lacks the metadata key '%s'; rewrite it with the current train_ldm"
                     % (args.checkpoint, key))
    abar, latent_scale = make_schedule(meta["schedule"]), float(meta["latent_scale"])
    guidance = args.guidance if unet.num_classes > 0 else 0.0
    print("device: %s" % desc)
    print("%s (%s U-Net, %d classes) + %s; %d images in batches of %d, DPM-Solver++(2M) %d steps, %s"
          % (args.checkpoint, json.loads(meta["config"]).get("preset", "?"), unet.num_classes, vae_path, args.n,
             args.batch, args.steps, "guidance %g (one forward of 2B rows)" % guidance if unet.num_classes
             else "unconditional (no guidance)"))
    print("median of %d runs per row; the twin after one warm-up batch\n" % args.repeats)
    header = {"device": desc, "torch": torch.__version__, "args": vars(args)}
    rows, failed = [], 0

    ours = None
    if not args.twin_only:
        cmd = [args.binary, "--checkpoint", args.checkpoint, "--sampler", "dpm++2m", "--steps", str(args.steps),
               "--guidance-scale", str(args.guidance), "--n", str(args.n), "--batch-size", str(args.batch),
               "--device", args.device] + (["--vae-checkpoint", args.vae_checkpoint] if args.vae_checkpoint else [])
        with tempfile.TemporaryDirectory() as tmp:
            try:
                threads = args.threads if args.device == "cpu" else None
                runs = [run_ours(cmd + ["--out", os.path.join(tmp, "samples.png")], SAMPLED_LINE, threads)
                        for _ in range(args.repeats)]
                ours = statistics.median(runs)
                rows.append({"mode": "ours", "img_per_s": ours, "runs": runs})
                print("%-8s %10.1f img/s   (runs: %s)" % ("ours", ours, ", ".join("%.1f" % r for r in runs)))
            except RuntimeError as e:
                failed += 1
                rows.append({"mode": "ours", "error": short_error(e)})
                print("ours     FAILED: %s" % short_error(e))
        write_json(args.json, header, rows)

    for mode in modes:
        tf32, bf16, _, what = MODES[mode]
        row = {"mode": mode}
        why = mode_unavailable(mode, args.device)
        if why:
            row["skipped"] = why
            print("%-8s    skipped: %s" % (mode, why))
        else:
            set_tf32(tf32)
            try:
                # warm-up: one full batch (cuDNN autotuning, allocator growth), then the timed runs
                sample_twin(unet, vae, abar, latent_scale, min(args.batch, args.n), args.batch, args.steps,
                            guidance, args.device, bf16)
                runs = [args.n / sample_twin(unet, vae, abar, latent_scale, args.n, args.batch, args.steps,
                                             guidance, args.device, bf16) for _ in range(args.repeats)]
                row.update(img_per_s=statistics.median(runs), runs=runs)
                if ours:
                    row["ours_over_mode"] = ours / row["img_per_s"]
                print("%-8s %10.1f img/s   ours/twin %s   (%s; runs: %s)"
                      % (mode, row["img_per_s"], "%.2fx" % row["ours_over_mode"] if ours else "-", what,
                         ", ".join("%.1f" % r for r in runs)))
            except Exception as e:  # noqa: BLE001 - one failed mode must not lose the others
                failed += 1
                row["error"] = short_error(e)
                print("%-8s FAILED: %s" % (mode, row["error"]))
            free_device_memory(args.device)
        sys.stdout.flush()
        rows.append(row)
        write_json(args.json, header, rows)

    if args.json:
        print("wrote %s" % args.json)
    if failed:
        sys.exit("error: %d measurement(s) failed (see FAILED above)" % failed)


if __name__ == "__main__":
    main()
