"""
dev/refs_schedules.py - writes dev/ref/schedules.safetensors: abar_t (t = 0..999) of both noise
schedules of SPEC section 5 (cosine, s = 0.008, betas clipped at 0.999; linear betas 1e-4 -> 0.02),
as the PyTorch twin computes them (dev/unet_twin.make_schedule, float64), stored as float32.
test_ldm checks ldmc/diffusion.h's diffusion_schedule against it.

    /usr/bin/python3 dev/refs_schedules.py
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from unet_twin import make_schedule, write_safetensors  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    tensors = {"abar_" + name: make_schedule(name).astype(np.float32) for name in ("cosine", "linear")}
    path = os.path.join(HERE, "ref", "schedules.safetensors")
    write_safetensors(path, tensors, {"format": "ldm.c reference", "format_version": "1",
                                      "script": "dev/refs_schedules.py"})
    for name, v in tensors.items():
        print("%s: abar[0] %.9g, abar[499] %.9g, abar[999] %.9g" % (name, v[0], v[499], v[999]))
    print("wrote %s (%d bytes)" % (path, os.path.getsize(path)))


if __name__ == "__main__":
    main()
