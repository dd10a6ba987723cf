"""
Shows that a resumed run's TensorBoard curve does not double back: TensorBoard's own loader
(EventAccumulator, the Python one `tensorboard --load_fast=false` uses) reads our event files and
drops the steps a resume repeats, because tb_open writes a SessionLog START record.

    /usr/bin/python3 dev/check_tensorboard_resume.py

Builds dev/tb_write_run.cu with nvcc (host code only, nothing runs on a GPU) into a temporary
directory and writes one run directory with it, as a trainer would:
  1. a run from step 0 logs train/loss = step at steps 10, 20, ..., 150 and "dies" there; its last
     checkpoint was at step 100;
  2. a second process resumes it at step 100 (tb_open(..., 100)) and logs train/loss = step + 0.5
     at 110, ..., 200, into a second event file of the same run directory.
Then checks with EventAccumulator that the series is 10, 20, ..., 200, strictly increasing, with
the values of run 1 up to step 100 and of run 2 after it. As a control it copies the two files
without their START records (re-framed with TensorBoard's RecordWriter) and checks that the same
loader then does show the doubled-back steps 110..150, so the START record is what makes the
difference. Exit status 0 when both hold.

Needs nvcc and `tensorboard`: /usr/bin/python3 -m pip install --break-system-packages tensorboard
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

from tensorboard.backend.event_processing import event_accumulator, event_file_loader
from tensorboard.compat.proto import event_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVERY, CHECKPOINT, DIED_AT, LAST = 10, 100, 150, 200


def build(tmp):
    exe = os.path.join(tmp, "tb_write_run")
    stb = os.environ.get("STB_INC", "/usr/include/stb")
    cmd = ["nvcc", "-O1", "-std=c++17", "-I" + REPO, "-I" + stb, os.path.join(REPO, "dev", "tb_write_run.cu"), "-o", exe]
    subprocess.run(cmd, check=True)
    return exe


def records(path):
    """The Event protos of one event file (framing as TensorBoard's reader sees it)."""
    return list(event_file_loader.LegacyEventFileLoader(path).Load())


def scalar_series(run_dir):
    guidance = {k: 0 for k in event_accumulator.DEFAULT_SIZE_GUIDANCE}  # keep every value
    acc = event_accumulator.EventAccumulator(run_dir, size_guidance=guidance)  # purge_orphaned_data on
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars("train/loss")]


def strip_start(src_dir, dst_dir):
    """Copies every event file of src_dir to dst_dir without its SessionLog START records."""
    os.makedirs(dst_dir)
    for name in sorted(os.listdir(src_dir)):
        with open(os.path.join(dst_dir, name), "wb") as f:
            w = RecordWriter(f)
            for ev in records(os.path.join(src_dir, name)):
                if not (ev.HasField("session_log") and ev.session_log.status == event_pb2.SessionLog.START):
                    w.write(ev.SerializeToString())


def main():
    if len(sys.argv) > 1:
        print(__doc__.strip())
        sys.exit(0 if sys.argv[1] in ("-h", "--help") else 2)
    tmp = tempfile.mkdtemp(prefix="ldmc_tb_resume_")
    try:
        exe = build(tmp)
        run = os.path.join(tmp, "runs", "resumed")
        subprocess.run([exe, run, "0", str(DIED_AT), str(EVERY), "0"], check=True)
        time.sleep(1.1)  # event file names carry the unix second, and TensorBoard reads them in name order
        subprocess.run([exe, run, str(CHECKPOINT), str(LAST), str(EVERY), "0.5"], check=True)
        files = sorted(os.listdir(run))
        for name in files:
            starts = [ev.step for ev in records(os.path.join(run, name)) if ev.HasField("session_log")]
            print(f"{name}: SessionLog START at step {starts}")

        problems = []
        got = scalar_series(run)
        steps = [s for s, _ in got]
        want = [(s, float(s) + (0.0 if s <= CHECKPOINT else 0.5)) for s in range(EVERY, LAST + 1, EVERY)]
        print(f"ours:    {len(got)} values, steps {steps}")
        if any(b <= a for a, b in zip(steps, steps[1:])):
            problems.append("the steps are not strictly increasing")
        if got != want:
            problems.append(f"expected steps 10..{LAST} with run 1's values up to {CHECKPOINT} and run 2's after")

        control = os.path.join(tmp, "runs", "no_start")
        strip_start(run, control)
        back = [s for s, _ in scalar_series(control)]
        print(f"control: {len(back)} values, steps {back} (the same files without START)")
        if not any(b <= a for a, b in zip(back, back[1:])):
            problems.append("the control without START records does not double back: the check proves nothing")
    finally:
        shutil.rmtree(tmp)
    if problems:
        print("FAILED: " + "; ".join(problems))
        sys.exit(1)
    print(f"ok: with START records TensorBoard drops steps {CHECKPOINT + EVERY}..{DIED_AT} of the first run; "
          "the curve is strictly increasing")


if __name__ == "__main__":
    main()
