"""
dev/benchlib.py - the shared part of the CPU training benchmarks dev/bench_vae.py and dev/bench_unet.py
(ours vs the PyTorch twin, same thread count, interleaved rounds, medians and the ours/twin ratio).

Defines WARMUP (the warm-up steps of `train_* --bench`, which the twins copy), BENCH_LINE (the
regex of its `bench: <images/s> img/s` line), cpu_name(), run_ours() (one --bench run of our
trainer, parsed) and main(), which a benchmark script calls with what is its own: its presets, its
trainer and that trainer's extra flags, its batch, and its twin's timed training run. main() parses
the common command line (--presets --rounds --steps --threads --binary --twin-only), checks it,
prints the header, runs the rounds (ours, twin, ours, twin, ...) and prints the median table.
dev/bench_gpu.py takes cpu_name and BENCH_LINE from here too.
"""

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys

import torch

WARMUP = 2
BENCH_LINE = re.compile(r"^bench:\s*([0-9.eE+-]+)\s*img/s", re.MULTILINE)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_ours(binary, preset, steps, threads, batch, extra_flags=()):
    """images/s from one run of our program; exits with its output when it fails."""
    cmd = ([binary, "--preset", preset, "--batch-size", str(batch)] + list(extra_flags)
           + ["--bench", str(steps), "--device", "cpu"])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    found = BENCH_LINE.search(proc.stdout)
    if proc.returncode != 0 or not found:
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        sys.exit("error: `%s` %s; its output ends with:\n%s"
                 % (" ".join(cmd), "exited with status %d" % proc.returncode if proc.returncode
                    else "printed no 'bench: <N> img/s' line", tail))
    return float(found.group(1))


def main(doc, presets, model, program, batch, twin, extra_flags=(), setting=None,
         default_presets="tiny,small", rounds=5, steps=10, threads=2):
    """The benchmark's command line and run.

    doc: the script's docstring (--help); presets: the twin's preset table (its keys are the names);
    model: the model's name in --presets' help ("VAE"); program: our trainer ("train_vae": the
    --binary default is ./program, and the `make` target); batch: images per step; twin(preset,
    steps): the twin's images/s over `steps` timed steps after WARMUP warm-up steps; extra_flags:
    our trainer's flags after --batch-size; setting: the header's description of the step
    ("batch 64, 10 classes"; default "batch <batch>"); the rest: the defaults of those flags."""
    binary = "./" + program
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default=default_presets, help="comma-separated %s presets (default %s)"
                    % (model, default_presets))
    ap.add_argument("--rounds", type=int, default=rounds, help="interleaved rounds per preset (default %d)" % rounds)
    ap.add_argument("--steps", type=int, default=steps,
                    help="timed steps per run, after %d warm-up steps (default %d)" % (WARMUP, steps))
    ap.add_argument("--threads", type=int, default=threads, help="CPU threads for both sides (default %d)" % threads)
    ap.add_argument("--binary", default=binary, help="our trainer (default %s)" % binary)
    ap.add_argument("--twin-only", action="store_true", help="time only the PyTorch twin (no binary needed)")
    args = ap.parse_args()

    names = [s for s in args.presets.split(",") if s]
    unknown = [s for s in names if s not in presets]
    if not names or unknown:
        ap.error("unknown preset(s) %s; choose from %s" % (", ".join(unknown) or "(none given)", ", ".join(presets)))
    if args.rounds < 1 or args.steps < 1 or args.threads < 1:
        ap.error("--rounds, --steps and --threads must be at least 1")
    if not args.twin_only and not (os.path.isfile(args.binary) and os.access(args.binary, os.X_OK)):
        ap.error("%s is not an executable: build it with `make %s`, point --binary at it, "
                 "or pass --twin-only to time only the PyTorch twin" % (args.binary, program))

    torch.set_num_threads(args.threads)
    print("CPU: %s (%d logical cores)" % (cpu_name(), os.cpu_count()))
    print("torch %s, oneDNN (mkldnn) available: %s, enabled: %s; torch threads: %d"
          % (torch.__version__, torch.backends.mkldnn.is_available(), torch.backends.mkldnn.enabled,
             torch.get_num_threads()))
    if not args.twin_only:
        print("ours: %s with OMP_NUM_THREADS=%d" % (args.binary, args.threads))
    print("%s, %d warm-up + %d timed steps per run, %d interleaved rounds\n"
          % (setting or "batch %d" % batch, WARMUP, args.steps, args.rounds))

    print("%-8s %6s %14s %14s" % ("preset", "round", "ours img/s", "twin img/s"))
    summary = []
    for preset in names:
        ours, twins = [], []
        for r in range(args.rounds):
            if not args.twin_only:
                ours.append(run_ours(args.binary, preset, args.steps, args.threads, batch, extra_flags))
            twins.append(twin(preset, args.steps))
            print("%-8s %6d %14s %14.1f" % (preset, r + 1, "%.1f" % ours[-1] if ours else "-", twins[-1]))
            sys.stdout.flush()
        summary.append((preset, statistics.median(ours) if ours else None, statistics.median(twins)))

    print("\n%-8s %14s %14s %10s" % ("preset", "ours (median)", "twin (median)", "ours/twin"))
    for preset, o, t in summary:
        print("%-8s %14s %14.1f %10s" % (preset, "%.1f" % o if o else "-", t, "%.2fx" % (o / t) if o else "-"))
