"""
Reference files for tests/test_tensorboard.h (ldmc/tensorboard.h and ldmc/image.h).

Writes, with TensorBoard's and PyTorch's own code (not ours):
  dev/ref/tensorboard_ref.tfevents     an event file: the file_version record, a SessionLog START at
                                       step START_STEP + 1 (what tb_open writes for a run that starts
                                       after START_STEP steps), six scalars and one 8x16 RGB image,
                                       every record with the same fixed wall_time.
                                       Summaries come from torch.utils.tensorboard.summary (what
                                       SummaryWriter.add_scalar / add_image write, PNG by Pillow), the
                                       Event protos from tensorboard.compat.proto and the TFRecord
                                       framing from tensorboard's RecordWriter.
  dev/ref/tensorboard_ref.safetensors  float32 tensors (pixel values stored as exact floats 0..255):
      image_rgb     (8, 16, 3)        the pixels of the image record (HWC)
      grid_images   (5, 3, 4, 3)      NCHW floats in about [-2, 2] (out-of-range ones test the clamp)
      grid_rgb      (12, 6, 3)        their grid, 2 per row (metadata grid_cols), empty cells black
      raw_images    (2, 3, 32, 32)    two images ...
      raw_records   (2, 3073)         ... as CIFAR-10 binary records with labels 3 and 9
  Pixel mapping (numpy, float32 as the C code): v = (clamp(x, -1, 1) + 1) * 127.5, pixel = floor(v + 0.5).

The test writes the same records with ldmc/tensorboard.h; keep SCALARS / IMAGE_* / WALL_TIME /
START_STEP in step with the table in tests/test_tensorboard.h.

Needs the `tensorboard` package next to Debian's python3-torch:
    /usr/bin/python3 -m pip install --break-system-packages tensorboard
Run from the repository root:
    /usr/bin/python3 dev/refs_tensorboard.py
"""
import json
import os
import struct
import numpy as np
from tensorboard.compat.proto import event_pb2
from tensorboard.summary.writer.record_writer import RecordWriter
from torch.utils.tensorboard import summary

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ref")
WALL_TIME = 1712345678.125  # fixed, exactly representable: the C test uses the same number
# the run starts after 127 steps, so its START record says step 128: a two-byte varint
START_STEP = 127

# (tag, value, step): value 0 and step 0 (proto3 leaves a zero step out, a oneof keeps a zero value),
# multi-byte and 64-bit step varints, a NaN loss
SCALARS = [
    ("train/loss", 0.0, 0),
    ("train/loss", 0.123456789, 1),
    ("train/lr", 3e-4, 1),
    ("train/loss", -2.5e-3, 300000),
    ("train/grad_norm", float("nan"), 1 << 40),
    ("test/mse", 1234.5678, 2**31 + 5),
]
IMAGE_TAG, IMAGE_STEP, IMAGE_H, IMAGE_W = "samples/grid", 7, 8, 16


def to_pixels(x):
    """float images in [-1, 1] -> uint8, computed in float32 as ldmc/image.h does."""
    x = np.clip(x.astype(np.float32), np.float32(-1), np.float32(1))
    v = (x + np.float32(1)) * np.float32(127.5)
    return np.floor(v.astype(np.float64) + 0.5).astype(np.uint8)


def grid(images, cols):
    """(N, 3, H, W) -> (rows*H, cols*W, 3) uint8, row-major cells, no gaps, empty cells black."""
    n, c, h, w = images.shape
    rows = (n + cols - 1) // cols
    out = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    pix = to_pixels(images).transpose(0, 2, 3, 1)  # NHWC
    for i in range(n):
        r, q = divmod(i, cols)
        out[r * h:(r + 1) * h, q * w:(q + 1) * w, :] = pix[i]
    return out


def save_safetensors(path, tensors, metadata):
    """The safetensors layout written here rather than by the safetensors package, whose metadata
    order varies from run to run: the same inputs give the same bytes, so a regenerated file can be
    compared with the committed one. 8-byte little-endian header length, JSON header padded with
    spaces to a multiple of 8, then the float32 data in order."""
    header, offset = {"__metadata__": metadata}, 0
    for name, t in tensors.items():
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for t in tensors.values():
            f.write(np.ascontiguousarray(t, dtype="<f4").tobytes())


def main():
    rng = np.random.default_rng(1234)
    os.makedirs(OUT_DIR, exist_ok=True)

    # --- the event file
    image = rng.integers(0, 256, size=(IMAGE_H, IMAGE_W, 3), dtype=np.uint8)
    path = os.path.join(OUT_DIR, "tensorboard_ref.tfevents")
    with open(path, "wb") as f:
        rw = RecordWriter(f)
        rw.write(event_pb2.Event(wall_time=WALL_TIME, file_version="brain.Event:2").SerializeToString())
        start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
        rw.write(event_pb2.Event(wall_time=WALL_TIME, step=START_STEP + 1, session_log=start).SerializeToString())
        for tag, value, step in SCALARS:
            ev = event_pb2.Event(wall_time=WALL_TIME, step=step, summary=summary.scalar(tag, value))
            rw.write(ev.SerializeToString())
        img = summary.image(IMAGE_TAG, image, dataformats="HWC")
        assert img.value[0].image.height == IMAGE_H and img.value[0].image.width == IMAGE_W
        rw.write(event_pb2.Event(wall_time=WALL_TIME, step=IMAGE_STEP, summary=img).SerializeToString())
    print(f"wrote {path} ({os.path.getsize(path)} bytes, {3 + len(SCALARS)} records)")

    # --- grid layout and CIFAR-10 records
    grid_images = rng.normal(0.0, 0.8, size=(5, 3, 4, 3)).astype(np.float32)
    specials = np.array([-1.0, 1.0, 0.0, -1.5, 2.0, -0.5, 0.5, 1.0 / 255.0], dtype=np.float32)
    grid_images.reshape(-1)[: specials.size] = specials  # ends, the 127.5 half case, clamping
    cols = 2
    raw_images = rng.uniform(-1.2, 1.2, size=(2, 3, 32, 32)).astype(np.float32)
    labels = [3, 9]
    raw_records = np.stack([np.concatenate([[labels[i]], to_pixels(raw_images[i]).reshape(-1)])
                            for i in range(2)]).astype(np.float32)
    tensors = {
        "image_rgb": image.astype(np.float32),
        "grid_images": grid_images,
        "grid_rgb": grid(grid_images, cols).astype(np.float32),
        "raw_images": raw_images,
        "raw_records": raw_records,
    }
    meta = {"format": "ldm.c-ref", "version": "1", "grid_cols": str(cols), "wall_time": repr(WALL_TIME)}
    st_path = os.path.join(OUT_DIR, "tensorboard_ref.safetensors")
    save_safetensors(st_path, tensors, meta)
    print(f"wrote {st_path} ({os.path.getsize(st_path)} bytes): "
          + ", ".join(f"{k} {tuple(v.shape)}" for k, v in tensors.items()))


if __name__ == "__main__":
    main()
