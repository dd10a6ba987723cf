"""
Reference files for tests/test_safetensors.h. The first and last are written by Python's `safetensors`
package (the format's reference implementation); tests compare ldmc/safetensors.h against them.

  dev/ref/safetensors_python.safetensors    F32 and I64 tensors (scalar, empty, 1-4 dims, inf/nan/-0/denormal,
                                            int64 extremes) and __metadata__ with a flat JSON `config` (escaped
                                            quotes and backslashes), non-ASCII text and control characters. The C
                                            test checks every value against the same formulas as python_set() below.
  dev/ref/safetensors_escapes.safetensors   written by hand (json + struct), then read back with `safetensors`
                                            to prove it valid: an indented header with the escapes Python's writer
                                            never emits but ldm.c reads (\\/, \\u001F in upper case, \\u007f),
                                            and a non-ASCII name as raw UTF-8.
  dev/ref/safetensors_writer.safetensors    writer_set(): what the C test hands to st_writer_write, whose output
                                            must equal these bytes exactly.

Notes on Python's safetensors (checked with 0.8.0): tensors are laid out by dtype (I64 before F32), then by
name; "__metadata__" comes first but its entries come in hash order, which changes from run to run, so only
a file with at most one metadata entry has reproducible bytes (writer_set has one); the header is padded
with spaces to a multiple of 8 bytes. Its JSON (serde_json) escapes only \\" \\\\ \\b \\f \\n \\r \\t and other
control bytes as \\u00XX; everything else, non-ASCII included, is raw UTF-8 (see the header of
safetensors_python). ldm.c's reader therefore refuses \\u escapes of non-ASCII characters, which only
ensure_ascii JSON writers (Python's json.dumps by default) produce.

Usage (pip install safetensors if it is missing):
  python3 dev/refs_safetensors.py               write the three files
  python3 dev/refs_safetensors.py --check FILE  load FILE, written by our st_writer_write from the C test's
                                                writer set, with safetensors.torch.load_file and check it:
    printf '#include "tests/test_safetensors.h"\\nint main(int c, char** v) { st_test_write_writer_set(v[1]); return 0; }\\n' > /tmp/st_write.cu
    nvcc -O3 -std=c++17 -I. /tmp/st_write.cu -lcublas -lgomp -o /tmp/st_write && /tmp/st_write /tmp/ours.safetensors
    python3 dev/refs_safetensors.py --check /tmp/ours.safetensors
"""
import json
import math
import os
import struct
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

REF_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ref")


def python_set():
    """Every value is a formula the C test recomputes exactly (one correctly rounded float64 operation, then
    rounding to float32, so no FMA contraction can change a bit)."""
    tensors = {
        "conv.weight": ((torch.arange(108, dtype=torch.float64) - 50) / 8).float().reshape(4, 3, 3, 3),
        "emb": ((torch.arange(24, dtype=torch.float64) % 7 - 3) / 3).float().reshape(2, 3, 4),
        "special": torch.tensor([math.inf, -math.inf, math.nan, -0.0, 2.0**-149, 3.4028234663852886e38],
                                dtype=torch.float32),
        "scale": torch.tensor(0.1, dtype=torch.float32),
        "empty": torch.zeros(0, 5, dtype=torch.float32),
        "step": torch.tensor(123456789012, dtype=torch.int64),
        "rng_state": torch.tensor([[-2**63, 2**63 - 1], [-1, 2**53 + 1]], dtype=torch.int64),
        "labels": torch.tensor([i * (i - 5) for i in range(10)], dtype=torch.int64),
    }
    config = {"preset": "tiny", "ch": 16, "mult": [1, 2, 4], "nres": 1, "z_channels": 4, "kl_weight": 0.001,
              "note": 'say "hi" \\ C:\\path\\n tab\t end', "lr": 3e-5}
    metadata = {
        "format": "ldm.c",
        "model": "vae",
        "config": json.dumps(config, separators=(",", ":")),
        "unicode": "café ☃ 𝄞 naïve",
        "controls": 'line1\nline2\r\n\t\b\f\x01\x1f\x7f /slash\\ "q"',
        "empty": "",
    }
    return tensors, metadata


def escapes_header():
    """The header of safetensors_escapes, as a dict (what any JSON reader must decode the file's text to)."""
    meta = {"slash": "a/b", "ctl": "\x01\x1f\x7f\n"}
    tensors = {'wéight "q"': {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    return meta, tensors


def writer_set():
    tensors = {
        "b.weight": (torch.arange(6, dtype=torch.float64) * 0.25 - 1).float().reshape(3, 2),
        "a.bias": torch.tensor([0.5, -1.5, 2.25], dtype=torch.float32),
        "A": torch.tensor([3.0, -0.125], dtype=torch.float32).reshape(1, 1, 1, 2),
        "scalar": torch.tensor(7.5, dtype=torch.float32),
        "empty": torch.zeros(0, dtype=torch.float32),
        "step": torch.tensor(42, dtype=torch.int64),
        "rng": torch.tensor([-5, 2**40 + 3], dtype=torch.int64),
    }
    metadata = {"note": 'quote " backslash \\ slash / newline \n tab \t cr \r bs \b ff \f ctl \x01\x1f del \x7f é☃𝄞'}
    return tensors, metadata


def write_escapes(path):
    meta, tensors = escapes_header()
    text = json.dumps({"__metadata__": meta, **tensors}, ensure_ascii=False, indent=1)
    text = text.replace("a/b", "a\\/b").replace("\\u001f\x7f", "\\u001F\\u007f")
    assert "\\/" in text and "\\u001F\\u007f" in text and "é" in text
    header = text.encode("utf-8")
    header += b" " * (-len(header) % 8)   # keep the data 8-byte aligned, as Python's writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + struct.pack("<2f", 1.5, -2.0))
    # the reference reader must accept it and decode the same strings
    with safe_open(path, framework="pt") as f:
        assert f.metadata() == meta, f.metadata()
        assert list(f.keys()) == list(tensors)
        assert f.get_tensor('wéight "q"').tolist() == [1.5, -2.0]


def same(a, b):
    """same dtype, shape and bytes (so -0.0 and NaN payloads count too)"""
    return a.dtype == b.dtype and a.shape == b.shape and a.numpy().tobytes() == b.numpy().tobytes()


def check(path):
    tensors, metadata = writer_set()
    got = load_file(path)
    assert sorted(got) == sorted(tensors), f"tensor names differ: {sorted(got)}"
    for name, t in tensors.items():
        assert same(got[name], t), f"{name}: {got[name]} != {t}"
    with safe_open(path, framework="pt") as f:
        assert f.metadata() == metadata, f"metadata differs: {f.metadata()}"
    with open(path, "rb") as f, open(os.path.join(REF_DIR, "safetensors_writer.safetensors"), "rb") as g:
        identical = f.read() == g.read()
    print(f"{path}: safetensors.torch.load_file reads all {len(tensors)} tensors and the metadata correctly; "
          f"bytes {'identical to' if identical else 'DIFFER from'} dev/ref/safetensors_writer.safetensors")
    return identical


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        sys.exit(0 if check(sys.argv[2]) else 1)
    if len(sys.argv) != 1:
        sys.exit(__doc__)
    os.makedirs(REF_DIR, exist_ok=True)
    tensors, metadata = python_set()
    save_file(tensors, os.path.join(REF_DIR, "safetensors_python.safetensors"), metadata=metadata)
    write_escapes(os.path.join(REF_DIR, "safetensors_escapes.safetensors"))
    tensors, metadata = writer_set()
    save_file(tensors, os.path.join(REF_DIR, "safetensors_writer.safetensors"), metadata=metadata)
    for name in ("python", "escapes", "writer"):
        path = os.path.join(REF_DIR, f"safetensors_{name}.safetensors")
        print(f"wrote {os.path.relpath(path)} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
