"""
dev/benchlib.py - what the benchmarks share.

CPU training benchmarks (dev/bench_vae.py, dev/bench_unet.py: ours vs the PyTorch twin, same thread
count, interleaved rounds, medians and the ours/twin ratio): WARMUP (the warm-up steps of
`train_* --bench`, which the twins copy), BENCH_LINE (the regex of its `bench: <images/s> img/s`
line), cpu_name(), run_ours() (one --bench run of our trainer, parsed) and main(), which a benchmark
script calls with what is its own: its presets, its trainer and that trainer's extra flags, its
batch, and its twin's timed training run. main() parses the common command line (--presets --rounds
--steps --threads --binary --twin-only), checks it, prints the header, runs the rounds (ours, twin,
ours, twin, ...) and prints the median table.

GPU benchmarks (dev/bench_gpu.py, dev/bench_sample.py: one device, the twin in several PyTorch
modes): MODES and the helpers that apply one (set_tf32, autocast, maybe_compile, mode_unavailable,
parse_modes), the device helpers (setup_device, synchronize, free_device_memory), run_program() (our
program's figure parsed from its output), check_binary(), short_error(), write_json(), the model
FLOPs (forward_flops: torch's FlopCounterMode where it exists, and always an analytic count of the
convolutions, linears and attention products) and the report's last columns (add_peak_args,
Peaks: MFU against the H200's datasheet peaks; TARGETS and target_text: the issue's acceptance
ratios).
"""

import argparse
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import warnings

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


# --------------------------------------------------------------------------------------------------
# GPU benchmarks: the twin's modes and the acceptance targets

# mode -> (TF32 on, bf16 autocast, torch.compile, description)
MODES = {
    "eager32": (False, False, False, "fp32 eager"),
    "tf32": (True, False, False, "TF32 eager"),
    "bf16": (False, True, False, "bf16 autocast eager"),
    "compile32": (False, False, True, "fp32 torch.compile"),
    "compile_bf16": (False, True, True, "bf16 torch.compile"),
}
DEFAULT_MODES = "eager32,bf16,compile_bf16"

# the acceptance: (benchmark, twin mode) -> the least ours/twin that passes
TARGETS = {
    ("unet", "compile_bf16"): 1.3,
    ("sample", "bf16"): 2.0,
    ("sample", "compile_bf16"): 1.2,
    ("vae", "compile_bf16"): 1.0,
}

# PyTorch >= 2.9 warns that allow_tf32 will give way to fp32_precision. The old flags still work on
# every version these scripts meet (Debian's 1.13 included), and setting only them keeps both views
# consistent: mixing the two interfaces makes torch (and torch.compile, which reads allow_tf32) raise
# "you have used mix of the legacy and new APIs"
warnings.filterwarnings("ignore", message="Please use the new API settings to control TF32")


def target_text(bench, mode, ratio):
    """The acceptance verdict of one row: '>=1.3x met', '>=1.3x NOT MET', '>=1.3x unmeasured' (no
    ratio), or '' when the row has no target."""
    need = TARGETS.get((bench, mode))
    if need is None:
        return ""
    if ratio is None:
        return ">=%.1fx unmeasured" % need
    return ">=%.1fx %s" % (need, "met" if ratio >= need else "NOT MET")


def set_tf32(on):
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def autocast(device, bf16):
    # autocast(enabled=False) is a no-op context, so the fp32 modes share the code path
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16)


def maybe_compile(fn, mode):
    # torch.compile's default mode: max-autotune would add minutes of tuning to every measurement
    return torch.compile(fn) if MODES[mode][2] else fn


def reset_compiler(mode):
    # drops the compiled graphs (and their memory) of the last measurement
    if MODES[mode][2]:
        torch._dynamo.reset()


def mode_unavailable(mode, device):
    """Why `mode` cannot run here, or None."""
    tf32, bf16, compiled, _ = MODES[mode]
    if tf32 and device != "cuda":
        return "TF32 exists only on CUDA"
    if compiled and not hasattr(torch, "compile"):
        return "torch %s has no torch.compile (PyTorch 2.0 or later)" % torch.__version__
    if bf16 and device == "cpu":
        # older CPU autocast (Debian's torch 1.13) casts convs to bf16 but not GroupNorm back to fp32
        try:
            with autocast("cpu", True):
                torch.nn.GroupNorm(1, 2)(torch.nn.Conv2d(2, 2, 1)(torch.zeros(1, 2, 2, 2)))
        except RuntimeError:
            return "the CPU autocast of torch %s does not cover GroupNorm" % torch.__version__
    return None


def parse_modes(ap, text, allowed):
    modes = [m for m in text.split(",") if m]
    unknown = [m for m in modes if m not in allowed]
    if not modes or unknown:
        ap.error("unknown mode(s) %s in --modes; choose from %s"
                 % (", ".join(unknown) or "(none given)", ", ".join(allowed)))
    return modes


# --------------------------------------------------------------------------------------------------
# GPU benchmarks: the device, our programs, the results file


def setup_device(device, threads):
    """Checks the device, sets thread counts and cuDNN autotuning; returns a one-line description."""
    if device == "cuda":
        if not torch.cuda.is_available():
            sys.exit("error: --device cuda, but this PyTorch (%s) sees no CUDA device; run on a GPU "
                     "machine or pass --device cpu" % torch.__version__)
        torch.backends.cudnn.benchmark = True  # the shapes never change
        return "%s, torch %s (CUDA %s, cuDNN %s)" % (torch.cuda.get_device_name(), torch.__version__,
                                                      torch.version.cuda, torch.backends.cudnn.version())
    torch.set_num_threads(threads)
    return "%s, %d threads for both sides, torch %s" % (cpu_name(), threads, torch.__version__)


def synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def free_device_memory(device):
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def check_binary(ap, path, make_target, flag):
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        ap.error("%s is not an executable: build it with `make %s` (add GPU_ARCH=90 for an H100/H200), "
                 "point %s at it, or pass --twin-only to time only the PyTorch twin" % (path, make_target, flag))


def run_program(cmd, pattern, threads=None):
    """Every match of `pattern` in the output of `cmd` (re.findall's list), run with OMP_NUM_THREADS =
    threads unless None. Raises RuntimeError with the end of the output when the program fails or
    prints no matching line."""
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    found = pattern.findall(proc.stdout)
    if proc.returncode != 0 or not found:
        tail = "\n".join("    " + line for line in proc.stdout.strip().splitlines()[-15:])
        raise RuntimeError("`%s` %s; its output ends with:\n%s"
                           % (" ".join(cmd), "exited with status %d" % proc.returncode if proc.returncode
                              else "printed no line matching '%s'" % pattern.pattern, tail))
    return found


def short_error(e):
    lines = str(e).strip().splitlines() or [""]
    return "%s: %s" % (type(e).__name__, "\n".join(lines[:20]))


def write_json(path, header, rows):
    # rewritten after every row through a temporary file, so a run cut short leaves what it measured
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(dict(header, rows=rows), f, indent=1)
        os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# GPU benchmarks: model FLOPs and MFU


def analytic_forward_flops(model, run, attention_types=()):
    """FLOPs (2 per multiply-add) of the convolutions, linears and attention products that run()
    executes in `model`, from the shapes that pass through forward hooks. An attention module of
    `attention_types` takes x (B, C, H, W) with heads x head-dim = C: q^T k and att v are each
    B C (HW)^2 multiply-adds. Norms, activations and the loss are left out (as MFU counts go)."""
    total = [0]

    def conv(m, inputs, out):
        total[0] += 2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m, inputs, out):
        total[0] += 2 * out.numel() * m.in_features

    def attention(m, inputs, out):
        B, C, H, W = inputs[0].shape
        total[0] += 2 * 2 * B * C * (H * W) ** 2

    handles = []
    for mod in model.modules():
        hook = (conv if isinstance(mod, torch.nn.Conv2d) else linear if isinstance(mod, torch.nn.Linear)
                else attention if isinstance(mod, tuple(attention_types)) else None)
        if hook:
            handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return total[0]


def forward_flops(model, run, attention_types=()):
    """(FLOPs of run() by torch's FlopCounterMode, or None where this torch lacks it or it fails; the
    analytic count of analytic_forward_flops)."""
    analytic = analytic_forward_flops(model, run, attention_types)
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        return None, analytic
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            run()
    except Exception as e:  # noqa: BLE001 - the analytic count stands in: a benchmark must not stop here
        print("warning: torch's FlopCounterMode failed (%s); MFU uses the analytic count" % short_error(e))
        return None, analytic
    return counter.get_total_flops(), analytic


def flops_text(counted, analytic):
    """The FLOPs used for MFU (FlopCounterMode's where there, else the analytic count) and a phrase
    saying where it came from, with the other count beside it."""
    if counted is None:
        return analytic, "analytic count of convs, linears and attention products; torch %s's FlopCounterMode " \
            "not available" % torch.__version__
    return counted, "torch FlopCounterMode (analytic count: %.3f GFLOP)" % (analytic / 1e9)


def add_peak_args(ap):
    ap.add_argument("--peak-bf16", type=float, default=989.0,
                    help="dense bf16 tensor-core peak in TFLOP/s for MFU (default 989: H200/H100 SXM datasheet)")
    ap.add_argument("--peak-fp32", type=float, default=67.0,
                    help="fp32 (non-tensor-core) peak in TFLOP/s for MFU (default 67: H200/H100 SXM datasheet)")
    ap.add_argument("--ours-precision", default="fp32", choices=["fp32", "tf32", "bf16"],
                    help="the arithmetic of our kernels, which picks the peak of our MFU (default fp32: ldmc "
                         "runs fp32 with TF32 off today)")


class Peaks:
    """Each row's MFU is model FLOPs x img/s over the peak of the arithmetic it runs in: bf16 autocast
    modes the bf16 peak, TF32 modes half of it (Hopper's dense TF32 rate), fp32 modes the fp32 peak,
    ours the peak of --ours-precision."""

    def __init__(self, args):
        self.tflops = {"bf16": args.peak_bf16, "tf32": args.peak_bf16 / 2, "fp32": args.peak_fp32}
        self.ours = args.ours_precision

    def describe(self, device_desc):
        where = "H200 datasheet" if ("H200" in device_desc or "H100" in device_desc) else \
            "H200 datasheet figures, not this device's: pass --peak-bf16/--peak-fp32 for its own"
        return ("MFU = model FLOPs per image x img/s / peak; peaks (dense, %s): bf16 %g, tf32 %g, fp32 %g TFLOP/s; "
                "each row uses its arithmetic's peak (ours: %s)" % (where, self.tflops["bf16"], self.tflops["tf32"],
                                                                    self.tflops["fp32"], self.ours))

    def precision(self, mode):
        if mode == "ours":
            return self.ours
        tf32, bf16, _, _ = MODES[mode]
        return "bf16" if bf16 else "tf32" if tf32 else "fp32"

    def mfu(self, mode, flops_per_image, img_per_s):
        return flops_per_image * img_per_s / (self.tflops[self.precision(mode)] * 1e12)
