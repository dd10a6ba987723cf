"""
Standard Inception FID / IS for files of CIFAR-10 records (sample_ldm --out-raw, or CIFAR-10's own
binary files), for comparing ldm.c with published numbers. eval_ldm's classifier FD is not on that
scale: it uses a small CIFAR-10 classifier's features, not InceptionV3's.

THIS CANNOT RUN ON THE PROJECT'S MACHINE: both tools download InceptionV3 weights (and clean-fid its
CIFAR-10 statistics) on first use, and that machine has no internet. On a machine that has it:
    pip install torch-fidelity            # and/or: pip install clean-fid
    python3 dev/inception_fid.py runs/quickstart_samples.bin                       # torch-fidelity, vs CIFAR-10 train
    python3 dev/inception_fid.py runs/quickstart_samples.bin --tool clean-fid
    python3 dev/inception_fid.py samples.bin --ref data/cifar-10-batches-bin/test_batch.bin   # vs a records file
    python3 dev/inception_fid.py samples.bin --convert-only --png-dir /tmp/samples_png       # only the PNGs
Steps: the records become a folder of 32x32 PNGs (what both tools read), then
  torch-fidelity: torch_fidelity.calculate_metrics(input1=<folder>, input2="cifar10-train" or a folder,
                  isc=True, fid=True): Inception Score of the samples and FID against the reference
                  (same as the CLI: fidelity --gpu 0 --isc --fid --input1 <folder> --input2 cifar10-train)
  clean-fid:      cleanfid.fid.compute_fid(<folder>, dataset_name="cifar10", dataset_res=32,
                  dataset_split="train", mode="clean"), or compute_fid(<folder>, <reference folder>)
As with eval_ldm, FID is biased at small n: the published CIFAR-10 numbers use 50,000 samples; say n.
The conversion needs only numpy and Python's zlib (no PIL), and is checked here with --convert-only.
"""
import argparse
import os
import struct
import sys
import zlib

import numpy as np


def read_records(path):
    size = os.path.getsize(path)
    if size == 0 or size % 3073:
        sys.exit(f"Error: '{path}' is {size} bytes, not a whole number of 3073-byte CIFAR-10 records.")
    rec = np.fromfile(path, dtype=np.uint8).reshape(-1, 3073)
    return rec[:, 0], rec[:, 1:].reshape(-1, 3, 32, 32)


def png_bytes(rgb):
    # rgb (H, W, 3) uint8 -> a PNG file: signature, IHDR, one IDAT of filter-0 rows, IEND
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def records_to_pngs(path, out_dir):
    labels, pixels = read_records(path)
    os.makedirs(out_dir, exist_ok=True)
    for i in range(len(labels)):
        with open(os.path.join(out_dir, f"{i:06d}_label{labels[i]}.png"), "wb") as f:
            f.write(png_bytes(np.ascontiguousarray(pixels[i].transpose(1, 2, 0))))
    print(f"{path}: {len(labels)} images -> {out_dir}/")
    return len(labels)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("samples", help="a file of CIFAR-10 records")
    p.add_argument("--ref", default="cifar10-train",
                   help="cifar10-train (the tools' own CIFAR-10 statistics) or a file of CIFAR-10 records")
    p.add_argument("--tool", choices=["torch-fidelity", "clean-fid"], default="torch-fidelity")
    p.add_argument("--png-dir", default=None, help="where the PNGs go (default: beside the file, <file>_png/)")
    p.add_argument("--convert-only", action="store_true", help="write the PNG folder(s) and stop")
    args = p.parse_args()

    sample_dir = args.png_dir or os.path.splitext(args.samples)[0] + "_png"
    n = records_to_pngs(args.samples, sample_dir)
    ref_dir = None
    if args.ref != "cifar10-train":
        ref_dir = os.path.splitext(args.ref)[0] + "_png"
        records_to_pngs(args.ref, ref_dir)
    if args.convert_only:
        return
    print(f"n = {n} samples; reference: {args.ref}")
    if args.tool == "torch-fidelity":
        import torch
        import torch_fidelity
        metrics = torch_fidelity.calculate_metrics(input1=sample_dir, input2=ref_dir or "cifar10-train",
                                                   cuda=torch.cuda.is_available(), isc=True, fid=True, verbose=False)
        print(f"Inception Score {metrics['inception_score_mean']:.3f} +- {metrics['inception_score_std']:.3f}, "
              f"FID {metrics['frechet_inception_distance']:.3f} (torch-fidelity, n = {n})")
    else:
        from cleanfid import fid
        if ref_dir is None:
            score = fid.compute_fid(sample_dir, dataset_name="cifar10", dataset_res=32, dataset_split="train",
                                    mode="clean")
        else:
            score = fid.compute_fid(sample_dir, ref_dir, mode="clean")
        print(f"clean-fid FID {score:.3f} (n = {n}; clean-fid computes no Inception Score)")


if __name__ == "__main__":
    main()
