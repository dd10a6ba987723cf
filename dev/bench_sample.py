"""
dev/bench_sample.py - sampling images/s of our sample_ldm vs the PyTorch twin on one device (meant for
a GPU): DPM-Solver++(2M), classifier-free guidance, VAE decoding, from the same checkpoint, with the
twin in several PyTorch modes, the ratio ours/twin per mode beside the issue's acceptance target,
and each row's MFU.

    /usr/bin/python3 dev/bench_sample.py --checkpoint runs/X/checkpoint_final.safetensors
        [--vae-checkpoint PATH] [--n 1000] [--batch 500] [--steps 20] [--guidance 3] [--repeats 3]
        [--modes eager32,bf16,compile_bf16] [--device cuda|cpu] [--binary ./sample_ldm] [--json PATH]
        [--threads N] [--twin-only] [--peak-bf16 989] [--peak-fp32 67] [--ours-precision fp32|tf32|bf16]

Ours: `sample_ldm --checkpoint C --sampler dpm++2m --steps S --guidance-scale G --n N+B
--batch-size B --device D`, run REPEATS times. Its clock starts after loading and each batch prints
`sampled DONE/TOTAL | RATE img/s`, DONE/RATE being the seconds so far (VAE decoding and the copy of
the images to the host included): the first batch is the warm-up, and the N images after it give
one figure, N / (their seconds); the median of the runs is ours.
The twin: the U-Net (dev/unet_twin.py) with the checkpoint's weights, the VAE (dev/vae_twin.py)
from the path in the checkpoint's `vae_checkpoint` metadata (or --vae-checkpoint); per batch of B:
z_T ~ N(0, I) -> S steps of dev/refs_samplers.py's DPM-Solver++(2M) whose eps is ONE forward of 2B
rows (B conditional, B with the "no class" label; eps = eps_u + G (eps_c - eps_u)) -> divide by
latent_scale -> VAE decoder -> images to the host. Labels run through the classes. One warm-up
batch, then REPEATS timed runs of all N images; the median. Twin modes (benchlib.MODES): eager32
(fp32, TF32 off), tf32, bf16 (autocast around the U-Net and the decoder; the sampler's arithmetic
stays fp32), compile32 and compile_bf16 (the U-Net and the decoder each through torch.compile; the
warm-up batch compiles, its seconds are printed apart).
An unconditional checkpoint samples without guidance (one forward of B rows), as sample_ldm does.
B is at most N on both sides.

Model FLOPs per image: S x (2 rows with guidance, else 1) x the U-Net's forward FLOPs per row + the
decoder's per image, counted on the CPU by torch's FlopCounterMode where it exists, else by
benchlib's analytic count (both printed); MFU as in dev/bench_gpu.py (benchlib.Peaks).
Acceptance targets (benchlib.TARGETS), printed beside the ratios: ours >= 2x the bf16 eager twin
and >= 1.2x the bf16 torch.compile twin. ours/twin > 1 means ours is faster.
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
from benchlib import (DEFAULT_MODES, MODES, Peaks, add_peak_args, autocast, check_binary, flops_text,  # noqa: E402
                      forward_flops, free_device_memory, maybe_compile, mode_unavailable, parse_modes,
                      reset_compiler, run_program, set_tf32, setup_device, short_error, synchronize,
                      target_text, write_json)
from refs_samplers import sample  # noqa: E402
from unet_twin import Attn, make_schedule, read_safetensors, unet_from_config  # noqa: E402
from vae_twin import vae_from_config  # noqa: E402

SAMPLED_LINE = re.compile(r"^sampled (\d+)/\d+ \| ([0-9.eE+-]+) img/s", re.MULTILINE)


def load_twin(path, kind, device):
    """(model on the device in eval mode, metadata, config) of an ldm.c checkpoint of `kind` (vae | unet)."""
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
    return model.to(device).eval(), meta, cfg


def sampling_flops(unet_cfg, vae_cfg, steps):
    """(FLOPs per sampled image, where the count came from): `steps` U-Net forwards of 2 rows (CFG)
    or 1, and one decoder forward, counted on the CPU with fresh weights at batch 2."""
    unet, decoder = unet_from_config(unet_cfg), vae_from_config(vae_cfg).decoder
    rows = 2 if unet.num_classes > 0 else 1
    z = torch.randn(2, unet.z_channels, 8, 8)
    t = torch.full((2,), 500, dtype=torch.int64)
    labels = torch.zeros(2, dtype=torch.int64) if unet.num_classes > 0 else None
    u_counted, u_analytic = forward_flops(unet, lambda: unet(z, t, labels), (Attn,))
    d_counted, d_analytic = forward_flops(decoder, lambda: decoder(z), ())

    def per_image(u, d):
        return (steps * rows * u + d) / 2
    return flops_text(per_image(u_counted, d_counted) if u_counted is not None else None,
                      per_image(u_analytic, d_analytic))


def make_eps_fn(unet, num_classes, labels, guidance, device, bf16):
    """eps(z, t) of refs_samplers.sample: with CFG, one U-Net forward of the 2B rows [z; z] with labels
    [labels; no class], then eps_u + s (eps_c - eps_u); unconditional, one plain forward. `unet` may
    be the compiled module, so the class count comes apart."""
    conditional = num_classes > 0
    rows = torch.cat([labels, torch.full_like(labels, num_classes)]) if conditional else None

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
def sample_twin(twin, n, batch, bf16):
    """Seconds to sample n images in batches of `batch`, from noise to images on the host. twin: a
    dict of the (maybe compiled) unet and decoder and the sampling settings."""
    device = twin["device"]
    synchronize(device)
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        b = min(batch, n - start)
        z_T = torch.randn(b, twin["z_channels"], 8, 8, device=device)
        labels = torch.arange(start, start + b, device=device) % max(twin["num_classes"], 1)
        eps_fn = make_eps_fn(twin["unet"], twin["num_classes"], labels, twin["guidance"], device, bf16)
        z0 = sample(eps_fn, "dpm++2m", twin["steps"], 0.0, twin["abar"], z_T, None)[-1]  # no noise drawn
        with autocast(device, bf16):
            images = twin["decoder"](z0 / twin["latent_scale"])
        images.float().cpu()  # the copy to the host, as sample_ldm does; it also waits for the GPU
    return time.perf_counter() - t0


def warm_rate(found):
    """Images/s after the first batch, from sample_ldm's `sampled DONE/TOTAL | RATE img/s` lines
    (their cumulative DONE / RATE is the seconds since its clock started)."""
    points = [(int(done), int(done) / float(rate)) for done, rate in found]
    if len(points) < 2:
        raise RuntimeError("sample_ldm printed %d progress line(s); the warm-up batch needs 2 or more" % len(points))
    (n0, t0), (n1, t1) = points[0], points[-1]
    return (n1 - n0) / (t1 - t0)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="train_ldm's checkpoint_final.safetensors")
    ap.add_argument("--vae-checkpoint", default=None, help="overrides the VAE path stored in the checkpoint")
    ap.add_argument("--n", type=int, default=1000, help="images per timed run (default 1000)")
    ap.add_argument("--batch", type=int, default=500, help="images per batch (default 500)")
    ap.add_argument("--steps", type=int, default=20, help="DPM-Solver++(2M) steps (default 20)")
    ap.add_argument("--guidance", type=float, default=3.0, help="CFG scale (default 3)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per side and mode (default 3)")
    ap.add_argument("--modes", default=DEFAULT_MODES, help="twin modes, comma-separated: %s (default %s)"
                    % (", ".join(MODES), DEFAULT_MODES))
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="where both sides run (default cuda)")
    ap.add_argument("--binary", default="./sample_ldm", help="our sampler (default ./sample_ldm)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads, --device cpu only "
                    "(default: all cores)")
    ap.add_argument("--twin-only", action="store_true", help="time only the PyTorch twin (no binary needed)")
    add_peak_args(ap)
    args = ap.parse_args()

    args.mode_list = parse_modes(ap, args.modes, MODES)
    if min(args.n, args.batch, args.steps, args.threads, args.repeats) < 1:
        ap.error("--n, --batch, --steps, --threads and --repeats must be at least 1")
    args.batch = min(args.batch, args.n)
    if not os.path.isfile(args.checkpoint):
        ap.error("checkpoint %s not found: train one with `./train_ldm` or pass --checkpoint PATH" % args.checkpoint)
    if not args.twin_only:
        check_binary(ap, args.binary, "sample_ldm", "--binary")
    return args


def measure_ours(args, meta):
    """(median images/s after the warm-up batch, every run's figure) of our sample_ldm."""
    cmd = [args.binary, "--checkpoint", args.checkpoint, "--sampler", "dpm++2m", "--steps", str(args.steps),
           "--guidance-scale", str(args.guidance), "--n", str(args.n + args.batch), "--batch-size", str(args.batch),
           "--device", args.device] + (["--vae-checkpoint", args.vae_checkpoint] if args.vae_checkpoint else [])
    threads = args.threads if args.device == "cpu" else None
    with tempfile.TemporaryDirectory() as tmp:
        runs = [warm_rate(run_program(cmd + ["--out", os.path.join(tmp, "samples.png")], SAMPLED_LINE, threads))
                for _ in range(args.repeats)]
    return statistics.median(runs), runs


def measure_twin(args, twin, mode):
    """(median images/s, every run's figure, seconds of the warm-up batch) of the twin in `mode`."""
    tf32, bf16, _, _ = MODES[mode]
    set_tf32(tf32)
    run = dict(twin, unet=maybe_compile(twin["unet"], mode), decoder=maybe_compile(twin["decoder"], mode))
    warmup_s = sample_twin(run, args.batch, args.batch, bf16)  # cuDNN autotuning, allocator growth, compiling
    runs = [args.n / sample_twin(run, args.n, args.batch, bf16) for _ in range(args.repeats)]
    return statistics.median(runs), runs, warmup_s


def main():
    args = parse_args()
    desc = setup_device(args.device, args.threads)
    peaks = Peaks(args)
    unet, meta, unet_cfg = load_twin(args.checkpoint, "unet", args.device)
    vae_path = args.vae_checkpoint or meta.get("vae_checkpoint")
    if not vae_path or not os.path.isfile(vae_path):
        sys.exit("error: VAE checkpoint %r (%s) not found; pass --vae-checkpoint PATH"
                 % (vae_path, "--vae-checkpoint" if args.vae_checkpoint else "metadata of " + args.checkpoint))
    vae, _, vae_cfg = load_twin(vae_path, "vae", args.device)
    for key in ("latent_scale", "schedule"):
        if key not in meta:
            sys.exit("error: %s lacks the metadata key '%s'; rewrite it with the current train_ldm"
                     % (args.checkpoint, key))
    guidance = args.guidance if unet.num_classes > 0 else 0.0
    twin = {"device": args.device, "unet": unet, "decoder": vae.decoder, "num_classes": unet.num_classes,
            "z_channels": unet.z_channels, "guidance": guidance, "steps": args.steps,
            "abar": make_schedule(meta["schedule"]), "latent_scale": float(meta["latent_scale"])}
    flops, source = sampling_flops(unet_cfg, vae_cfg, args.steps)
    print("device: %s" % desc)
    print("%s (%s U-Net, %d classes) + %s (%s VAE); %d images in batches of %d, DPM-Solver++(2M) %d steps, %s"
          % (args.checkpoint, unet_cfg.get("preset", "?"), unet.num_classes, vae_path, vae_cfg.get("preset", "?"),
             args.n, args.batch, args.steps, "guidance %g (one forward of 2B rows)" % guidance if unet.num_classes
             else "unconditional (no guidance)"))
    print("median of %d runs per row, each after one warm-up batch; VAE decoding and the copy to the host included"
          % args.repeats)
    print("%.3f GFLOP per image (%s)" % (flops / 1e9, source))
    print(peaks.describe(desc) + "\n")
    header = {"device": desc, "torch": torch.__version__, "args": vars(args), "flops_per_image": flops,
              "peaks_tflops": peaks.tflops}
    rows, failed, ours = [], 0, None
    row_format = "%-12s %9s %9s %-17s %7s %5s %9s  %s"
    print(row_format % ("mode", "img/s", "ours/mode", "target", "MFU", "peak", "warm-up s", "runs (img/s)"))

    def report(row):
        # prints and keeps one row, and rewrites the JSON file
        mode = row["mode"]
        if "img_per_s" in row:
            ratio = row.get("ours_over_mode")
            print(row_format % (mode, "%.1f" % row["img_per_s"], "%.2fx" % ratio if ratio else "-",
                                target_text("sample", mode, ratio), "%.2f%%" % (100 * row["mfu"]),
                                peaks.precision(mode), "%.1f" % row["warmup_seconds"] if "warmup_seconds" in row
                                else "-", ", ".join("%.1f" % r for r in row["runs"])))
        else:
            target = target_text("sample", mode, None)
            print("%-12s %s: %s%s" % (mode, "skipped" if "skipped" in row else "FAILED",
                                      row.get("skipped") or row.get("error"), " (%s)" % target if target else ""))
        sys.stdout.flush()
        rows.append(row)
        write_json(args.json, header, rows)

    if not args.twin_only:
        row = {"mode": "ours"}
        try:
            ours, row["runs"] = measure_ours(args, meta)
            row.update(img_per_s=ours, mfu=peaks.mfu("ours", flops, ours))
        except RuntimeError as e:
            failed += 1
            row["error"] = short_error(e)
        report(row)

    for mode in args.mode_list:
        row = {"mode": mode}
        why = mode_unavailable(mode, args.device)
        if why:
            row["skipped"] = why
        else:
            try:
                row["img_per_s"], row["runs"], row["warmup_seconds"] = measure_twin(args, twin, mode)
                row["mfu"] = peaks.mfu(mode, flops, row["img_per_s"])
                if ours:
                    row["ours_over_mode"] = ours / row["img_per_s"]
            except Exception as e:  # noqa: BLE001 - one failed mode must not lose the others
                failed += 1
                row["error"] = short_error(e)
            reset_compiler(mode)
            free_device_memory(args.device)
        report(row)

    if args.json:
        print("wrote %s" % args.json)
    if failed:
        sys.exit("error: %d measurement(s) failed (see FAILED above)" % failed)


if __name__ == "__main__":
    main()
