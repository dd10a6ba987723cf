"""
dev/profile_gpu.py - where a CUDA program's GPU time goes, per kernel category (conv, cuBLAS GEMM,
norm, attention, optimizer, other), without Nsight Systems and without touching the program.

    python3 dev/profile_gpu.py [--tool cupti|ncu] [--lib gpu/libprofile_cupti.so] [--per N] [--top 15]
        -- ./train_ldm --preset fast --bench 10 --device cuda

--tool cupti (default): the program runs with CUDA_INJECTION64_PATH = --lib, the CUPTI injection
library of dev/profile_cupti.c (build it with `nvcc -shared -Xcompiler -fPIC -O2 dev/profile_cupti.c
-lcupti -o gpu/libprofile_cupti.so`), which records every kernel's GPU start and end without
serialising anything and writes launches and total nanoseconds per kernel name at exit.
--tool ncu: Nsight Compute profiles every kernel for gpu__time_duration.sum alone (no cache flush,
no clock control) and the report is read back as CSV. ncu serialises and replays kernel by kernel, so
give it a short run (`--bench 1`: 3 steps); its times are of kernels run one at a time.

The program's own output passes through. Then: per category the GPU milliseconds, the share of all
kernel time, the launches, and with --per N the milliseconds per step (total / N: a `--bench S` run
does 2 warm-up steps + S timed ones, so --per S+2; the setup's kernels count too, a small part);
then the --top kernels by time. Kernels are grouped by the first rule of CATEGORIES that matches
the kernel's own name (base_name: the identifiers of a mangled name, without its template and
parameter types, which could name another layer's struct). cuBLAS's GEMMs stand
apart: the convolutions (im2col + GEMM), the linears and attention's batched products all call
cuBLAS, and a kernel's name does not say which layer launched it.
"""

import argparse
import csv
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile

# category -> regex over the kernel name (first match wins, in this order)
CATEGORIES = [
    ("norm", r"norm"),
    ("attention", r"attention|softmax|flash|fmha|sdpa"),
    ("optimizer", r"adam|clip|ema_|multi_tensor|foreach"),
    ("conv", r"conv|im2col|col2im|implicit_gemm|wgrad|dgrad"),
    ("cuBLAS GEMM", r"gemm|gemv|cutlass|xmma|splitk|cublas|sm[0-9]+_"),
    ("other", r""),
]

TIME_UNITS_NS = {"nsecond": 1, "ns": 1, "usecond": 1e3, "us": 1e3, "msecond": 1e6, "ms": 1e6, "second": 1e9, "s": 1e9}


def base_name(name):
    """The identifiers of an Itanium-mangled name (_Z[L]<len><id> or _ZN<len><id>...E: "cutlass::Kernel"
    for _ZN7cutlass6KernelI...E), else the name up to its first '(' or '<'."""
    m = re.match(r"_ZL?(N?)", name)
    if not m:
        return re.split(r"[(<]", name, 1)[0]
    parts, i = [], m.end()
    while True:
        length = re.match(r"\d+", name[i:])
        if not length:
            break
        start = i + len(length.group())
        parts.append(name[start:start + int(length.group())])
        i = start + int(length.group())
        if not m.group(1):  # a plain _Z<len><id>: one identifier
            break
    return "::".join(parts) or name


def category_of(name):
    base = base_name(name)
    for cat, pattern in CATEGORIES:
        if re.search(pattern, base, re.IGNORECASE):
            return cat
    return "other"


def demangle(names):
    """Readable names through c++filt where it exists (else as given), template arguments dropped."""
    if shutil.which("c++filt"):
        out = subprocess.run(["c++filt"], input="\n".join(names), stdout=subprocess.PIPE, text=True).stdout
        names = out.splitlines() if len(out.splitlines()) == len(names) else names
    return [n if len(n) <= 100 else n[:97] + "..." for n in names]


# --------------------------------------------------------------------------------------------------
# the two tools: each returns {kernel name: [launches, total ns]}


def run_cupti(lib, cmd):
    if not os.path.isfile(lib):
        sys.exit("error: %s not found: build it with `nvcc -shared -Xcompiler -fPIC -O2 dev/profile_cupti.c -lcupti "
                 "-o %s`, or pass --lib PATH" % (lib, lib))
    with tempfile.TemporaryDirectory() as tmp:
        table = os.path.join(tmp, "kernels.tsv")
        env = dict(os.environ, CUDA_INJECTION64_PATH=os.path.abspath(lib), LDMC_PROFILE_OUT=table)
        rc = subprocess.run(cmd, env=env).returncode
        if rc != 0:
            sys.exit("error: `%s` exited with status %d under the profiler" % (" ".join(cmd), rc))
        if not os.path.isfile(table):
            sys.exit("error: the program ran but the CUPTI library wrote no %s: CUDA did not load %s "
                     "(check that CUDA_INJECTION64_PATH works here, or use --tool ncu)" % (table, lib))
        kernels = {}
        with open(table) as f:
            for line in f:
                if line.startswith("#"):
                    print("profile_cupti: %s" % line[1:].strip())
                    continue
                launches, ns, name = line.rstrip("\n").split("\t", 2)
                kernels[name] = [int(launches), int(ns)]
    return kernels


def run_ncu(cmd):
    ncu = shutil.which("ncu")
    if ncu is None:
        sys.exit("error: ncu (Nsight Compute) is not on the PATH; use --tool cupti")
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "profile")
        rc = subprocess.run([ncu, "--metrics", "gpu__time_duration.sum", "--cache-control", "none",
                             "--clock-control", "none", "-f", "-o", report] + cmd).returncode
        if rc != 0:
            sys.exit("error: ncu exited with status %d" % rc)
        text = subprocess.run([ncu, "-i", report + ".ncu-rep", "--csv", "--page", "raw", "--print-units", "base",
                               "--metrics", "gpu__time_duration.sum"], stdout=subprocess.PIPE, text=True).stdout
    return parse_ncu_csv(text)


def parse_ncu_csv(text):
    """{kernel name: [launches, total ns]} from `ncu --csv --page raw` output: a header row naming
    "Kernel Name" and "gpu__time_duration.sum", a row of units, then one row per kernel launch."""
    rows = list(csv.reader(io.StringIO(text)))
    head = next((i for i, r in enumerate(rows) if "Kernel Name" in r and "gpu__time_duration.sum" in r), None)
    if head is None:
        sys.exit("error: ncu's CSV has no 'Kernel Name' and 'gpu__time_duration.sum' columns; it begins:\n%s"
                 % text[:2000])
    name_col, time_col = rows[head].index("Kernel Name"), rows[head].index("gpu__time_duration.sum")
    scale, kernels = 1.0, {}
    for r in rows[head + 1:]:
        if len(r) <= max(name_col, time_col):
            continue
        value = r[time_col].replace(",", "")
        try:
            ns = float(value) * scale
        except ValueError:
            scale = TIME_UNITS_NS.get(value.strip(), scale)  # the units row
            continue
        entry = kernels.setdefault(r[name_col], [0, 0])
        entry[0] += 1
        entry[1] += ns
    return kernels


# --------------------------------------------------------------------------------------------------
# the report


def report(kernels, per, top):
    total = sum(ns for _, ns in kernels.values())
    if total == 0:
        sys.exit("error: no kernel time was recorded")
    cats = {c: [0, 0] for c, _ in CATEGORIES}
    for name, (launches, ns) in kernels.items():
        cats[category_of(name)][0] += launches
        cats[category_of(name)][1] += ns
    print("\nGPU time per kernel category (%d kernels, %.1f ms in all%s)"
          % (len(kernels), total / 1e6, "; per step = total / %d" % per if per else ""))
    print("%-12s %10s %8s %10s %s" % ("category", "ms", "share", "launches", "ms/step" if per else ""))
    for cat, (launches, ns) in sorted(cats.items(), key=lambda kv: -kv[1][1]):
        if launches:
            print("%-12s %10.2f %7.1f%% %10d %s" % (cat, ns / 1e6, 100 * ns / total, launches,
                                                   "%.3f" % (ns / 1e6 / per) if per else ""))
    ranked = sorted(kernels.items(), key=lambda kv: -kv[1][1])[:top]
    print("\ntop %d kernels by GPU time" % len(ranked))
    print("%-12s %10s %8s %10s %9s  %s" % ("category", "ms", "share", "launches", "us/launch", "kernel"))
    for (name, (launches, ns)), readable in zip(ranked, demangle([n for n, _ in ranked])):
        print("%-12s %10.2f %7.1f%% %10d %9.1f  %s" % (category_of(name), ns / 1e6, 100 * ns / total, launches,
                                                       ns / 1e3 / launches, readable))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tool", default="cupti", choices=["cupti", "ncu"], help="how kernels are timed (default cupti)")
    ap.add_argument("--lib", default="gpu/libprofile_cupti.so", help="the built dev/profile_cupti.c (--tool cupti)")
    ap.add_argument("--per", type=int, default=0, help="also print each category's ms / N (e.g. steps)")
    ap.add_argument("--top", type=int, default=15, help="kernels listed by time (default 15)")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="-- the program and its arguments")
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("give the program to profile after --, e.g. -- ./train_ldm --preset fast --bench 10 --device cuda")
    if args.per < 0 or args.top < 0:
        ap.error("--per and --top must be >= 0")
    sys.stdout.flush()
    kernels = run_cupti(args.lib, cmd) if args.tool == "cupti" else run_ncu(cmd)
    report(kernels, args.per, args.top)


if __name__ == "__main__":
    main()
