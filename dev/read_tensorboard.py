"""
Reads ldm.c's TensorBoard event files back with the `tensorboard` package and checks them.

    /usr/bin/python3 dev/read_tensorboard.py RUN_DIR        (e.g. runs/vae, or runs for every run)

Every directory under RUN_DIR holding events.out.tfevents.* files is one TensorBoard run. For each:
  - every file's TFRecord framing and both CRCs of every record are verified here (CRC32C from
    tensorboard's own implementation, not ours), every record parses as a tensorboard.Event, the
    first record carries file_version "brain.Event:2"; the second one's SessionLog START step is
    shown (TensorBoard drops what earlier files of the run logged from that step on);
  - the run is loaded with TensorBoard's EventAccumulator, which lists scalar tags (number of
    values, steps, last value) and image tags (number of images, sizes, steps); each image's PNG
    header must agree with the height and width its record states.
Exits non-zero on any problem (and when there are no event files, or a run holds neither scalars nor images).

Needs `tensorboard`: /usr/bin/python3 -m pip install --break-system-packages tensorboard
"""
import os
import struct
import sys

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c


def check_file(path):
    """Verifies framing, CRCs and Event parsing; returns (number of records, START step or None,
    list of problems)."""
    problems = []
    with open(path, "rb") as f:
        data = f.read()
    pos, n, start = 0, 0, None
    while pos < len(data):
        if len(data) - pos < 16:
            problems.append(f"truncated record header at byte {pos} ({len(data) - pos} bytes left)")
            break
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (len_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        if len_crc != masked_crc32c(header):
            problems.append(f"record {n} at byte {pos}: length CRC mismatch")
            break  # the length itself cannot be trusted, so the rest of the file cannot be framed
        if pos + 16 + length > len(data):
            problems.append(f"record {n} at byte {pos}: {length} data bytes overrun the file")
            break
        payload = data[pos + 12:pos + 12 + length]
        (data_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
        if data_crc != masked_crc32c(payload):
            problems.append(f"record {n} at byte {pos}: data CRC mismatch")
        try:
            event = event_pb2.Event.FromString(payload)
        except Exception as e:  # protobuf's DecodeError and friends
            problems.append(f"record {n} at byte {pos}: not an Event ({e})")
            event = None
        if n == 0 and (event is None or event.file_version != "brain.Event:2"):
            problems.append("first record is not the file_version \"brain.Event:2\" record")
        if n == 1 and event is not None and event.session_log.status == event_pb2.SessionLog.START:
            start = event.step  # files written before tb_open wrote START have none
        pos += 16 + length
        n += 1
    if n == 0:
        problems.append("no records")
    return n, start, problems


def png_size(png):
    """(height, width) from a PNG's IHDR chunk, or None if it is not a PNG."""
    if len(png) < 24 or png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", png[16:24])
    return height, width


def check_run(run_dir, files):
    problems = []
    print(f"run {run_dir}")
    for name in files:
        n, start, file_problems = check_file(os.path.join(run_dir, name))
        print(f"  {name}: {n} records, START at step {start}, CRCs {'ok' if not file_problems else 'BAD'}")
        problems += [f"{name}: {p}" for p in file_problems]

    # everything kept (size 0 = no limit), and what a resume repeats purged, as TensorBoard shows it
    guidance = {k: 0 for k in event_accumulator.DEFAULT_SIZE_GUIDANCE}
    acc = event_accumulator.EventAccumulator(run_dir, size_guidance=guidance)
    acc.Reload()
    tags = acc.Tags()
    for tag in sorted(tags.get("scalars", [])):
        ev = acc.Scalars(tag)
        steps = [e.step for e in ev]
        print(f"  scalar {tag}: {len(ev)} values, steps {steps[0]}..{steps[-1]}"
              f" ({len(set(steps))} distinct), last {ev[-1].value:.6g}")
        if any(b <= a for a, b in zip(steps, steps[1:])):
            problems.append(f"scalar {tag}: the steps do not increase: the curve doubles back")
    for tag in sorted(tags.get("images", [])):
        ev = acc.Images(tag)
        sizes = sorted({(e.height, e.width) for e in ev})
        for e in ev:
            if png_size(e.encoded_image_string) != (e.height, e.width):
                problems.append(f"image {tag} step {e.step}: PNG header says {png_size(e.encoded_image_string)}"
                                f", record says {(e.height, e.width)}")
        print(f"  image {tag}: {len(ev)} images, sizes {', '.join(f'{h}x{w}' for h, w in sizes)}"
              f", steps {ev[0].step}..{ev[-1].step}")
    if not tags.get("scalars") and not tags.get("images"):
        problems.append("TensorBoard finds neither scalars nor images")
    return problems


def main():
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0 if len(sys.argv) == 2 else 2)
    root = sys.argv[1]
    if not os.path.isdir(root):
        print(f"Error: {root} is not a directory (expected a run directory such as runs/vae)")
        sys.exit(1)
    runs = {}
    for dirpath, _, filenames in os.walk(root):
        events = sorted(f for f in filenames if "tfevents" in f)
        if events:
            runs[dirpath] = events
    if not runs:
        print(f"Error: no events.out.tfevents.* files under {root}")
        sys.exit(1)
    problems = []
    for run_dir in sorted(runs):
        problems += [f"{run_dir}: {p}" for p in check_run(run_dir, runs[run_dir])]
    if problems:
        print(f"{len(problems)} problem(s):")
        for p in problems:
            print(f"  {p}")
        sys.exit(1)
    print(f"ok: {len(runs)} run(s), every record's CRCs verified")


if __name__ == "__main__":
    main()
