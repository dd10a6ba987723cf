"""
The calibration table of eval_ldm (dev/README.md, "Evaluating samples"): what its scores are for
images of known quality. Writes sets of CIFAR-10 records into runs/eval_calibration/ and scores them
with ./eval_ldm (build it first: make eval_ldm), printing one markdown table row each:
  real train images     the first n of data_batch_1.bin (labels kept): the floor, real vs real
  blurred test images   the first n test images through a k x k box blur (edges replicated; labels kept),
                        k = 3 and 5: scored against the same n test images unblurred, which is also how
                        eval_ldm scores a VAE's reconstructions (against their originals)
  uniform noise         every pixel byte uniform in 0..255 (label 255: unconditional)
Every FD is against the first n test images, n as the set's. Run from the repository root:
    nice -n 19 python3 dev/eval_calibration.py            # n = 2000, and real train at n = 10000
"""
import os
import re
import subprocess
import sys

import numpy as np

DATA = "data/cifar-10-batches-bin"
OUT = "runs/eval_calibration"


def read_records(path, n):
    rec = np.fromfile(path, dtype=np.uint8, count=n * 3073).reshape(n, 3073)
    return rec[:, 0].copy(), rec[:, 1:].reshape(n, 3, 32, 32).copy()


def write_records(path, labels, pixels):
    rec = np.concatenate([labels[:, None], pixels.reshape(len(labels), 3072)], axis=1).astype(np.uint8)
    rec.tofile(path)


def box_blur(pixels, k):
    # mean over a k x k window, edges replicated, rounded back to bytes
    p = k // 2
    x = np.pad(pixels.astype(np.float64), ((0, 0), (0, 0), (p, p), (p, p)), mode="edge")
    out = np.zeros(pixels.shape, dtype=np.float64)
    for dy in range(k):
        for dx in range(k):
            out += x[:, :, dy:dy + 32, dx:dx + 32]
    return np.clip(np.rint(out / (k * k)), 0, 255).astype(np.uint8)


def eval_files(paths):
    # one eval_ldm run for files of equal n (the reference features are computed once); per file: FD, agreement
    out = subprocess.run(["./eval_ldm", *paths], check=True, capture_output=True, text=True).stdout
    print(out, file=sys.stderr)
    scores = {}
    for path in paths:
        line = [l for l in out.splitlines() if l.startswith(path + ":")][0]
        fd = float(re.search(r"FD ([-0-9.e+]+)", line).group(1))
        agree = re.search(r"class agreement ([0-9.]+)", line)
        scores[path] = (fd, agree.group(1) if agree else "-")
    return scores


def main():
    os.makedirs(OUT, exist_ok=True)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    train_labels, train_pixels = read_records(f"{DATA}/data_batch_1.bin", n)
    test_labels, test_pixels = read_records(f"{DATA}/test_batch.bin", n)
    rng = np.random.default_rng(0)
    sets = [
        ("real train images (data_batch_1)", "real_train", train_labels, train_pixels),
        ("test images, 3x3 box blur", "test_blur3", test_labels, box_blur(test_pixels, 3)),
        ("test images, 5x5 box blur", "test_blur5", test_labels, box_blur(test_pixels, 5)),
        ("uniform noise", "noise", np.full(n, 255, np.uint8), rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)),
    ]
    paths = []
    for _, tag, labels, pixels in sets:
        paths.append(f"{OUT}/{tag}_{n}.bin")
        write_records(paths[-1], labels, pixels)
    scores = eval_files(paths)
    if len(sys.argv) <= 1:
        scores.update(eval_files([f"{DATA}/data_batch_1.bin"]))
    print("| images | n | FD (vs the first n test images) | class agreement |")
    print("|---|---|---|---|")
    for (title, _, _, _), path in zip(sets, paths):
        print(f"| {title} | {n} | {scores[path][0]:.4f} | {scores[path][1]} |")
    if len(sys.argv) <= 1:
        fd, agree = scores[f"{DATA}/data_batch_1.bin"]
        print(f"| real train images (data_batch_1) | 10000 | {fd:.4f} | {agree} |")


if __name__ == "__main__":
    main()
