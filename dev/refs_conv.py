"""
Reference tensors for ldmc/conv2d.cuh and ldmc/gemm.cuh, computed by PyTorch:
  conv3x3.*, conv3x3s2.*, conv1x1.*, conv3x3big.*, conv3x3deep.*   F.conv2d (pad K/2) forward and autograd backward:
      x, weight, bias, out, dout (a random upstream gradient), dx, dweight, dbias
  gemm_nn.*, gemm_tn.*, gemm_nt.*, gemm_tt.*          C = alpha * op(A) @ op(B) + beta * C for the four
      transpose combinations (M=37, N=29, K=53, alpha 0.7, beta 0.3): A, B, C (the input C), out
  gemm_beta0.*                                       beta = 0 (C is not read), gemm_big.*: M=131 N=20 K=257 (nt)
  gemm_batched.*                                     3 products at once (op(A) = A, op(B) = B^T): A, B, C, out
Everything is computed in float64 from float32-rounded inputs and stored as float32 in
dev/ref/conv.safetensors, which tests/test_conv.h reads (tests need no PyTorch).
Run from the repository root:
    python3 dev/refs_conv.py           # writes dev/ref/conv.safetensors
    python3 dev/refs_conv.py --bench   # PyTorch CPU timings of the layer shapes dev/cpu/conv2d.cu times
"""
import argparse
import os
import time

import torch
import torch.nn.functional as F

DT = torch.float64


def f32(t):
    # inputs are rounded to float32 before use, so the float64 reference is exact for the stored inputs
    return t.float().double()


def randn(*shape):
    return f32(torch.randn(*shape, dtype=DT))


# ----------------------------------------------------------------------------
# reference file

def conv_case(out, prefix, B, Cin, H, W, Cout, K, stride):
    bound = 1.0 / (Cin * K * K) ** 0.5  # PyTorch's default init scale, so values look like the models'
    x = randn(B, Cin, H, W).requires_grad_()
    weight = f32((torch.rand(Cout, Cin, K, K, dtype=DT) * 2 - 1) * bound).requires_grad_()
    bias = f32((torch.rand(Cout, dtype=DT) * 2 - 1) * bound).requires_grad_()
    y = F.conv2d(x, weight, bias, stride=stride, padding=K // 2)
    dout = randn(*y.shape)
    y.backward(dout)
    for name, t in dict(x=x, weight=weight, bias=bias, out=y, dout=dout, dx=x.grad,
                        dweight=weight.grad, dbias=bias.grad).items():
        out[f"{prefix}.{name}"] = t.detach().float().contiguous()


def gemm_case(out, prefix, transA, transB, M, N, K, alpha, beta):
    A = randn(K, M) if transA else randn(M, K)
    B = randn(N, K) if transB else randn(K, N)
    C = randn(M, N)
    opA = A.t() if transA else A
    opB = B.t() if transB else B
    ref = alpha * (opA @ opB) + beta * C
    for name, t in dict(A=A, B=B, C=C, out=ref).items():
        out[f"{prefix}.{name}"] = t.float().contiguous()


def write_refs(path):
    from safetensors.torch import save_file
    torch.manual_seed(20240611)
    out = {}
    conv_case(out, "conv3x3", 2, 5, 6, 6, 7, 3, 1)
    conv_case(out, "conv3x3s2", 2, 5, 8, 8, 7, 3, 2)
    conv_case(out, "conv1x1", 2, 5, 6, 6, 7, 1, 1)
    conv_case(out, "conv3x3big", 3, 16, 8, 8, 24, 3, 1)
    # large enough for every blocking loop of the CPU code: Cin*9 = 261 taps > one 256-deep block,
    # 600 positions > one 256-column block and > one 512-position dweight chunk
    conv_case(out, "conv3x3deep", 6, 29, 10, 10, 8, 3, 1)
    for transA in (0, 1):
        for transB in (0, 1):
            name = "gemm_" + ("t" if transA else "n") + ("t" if transB else "n")
            gemm_case(out, name, transA, transB, 37, 29, 53, 0.7, 0.3)
    # beta = 0: C must not be read (the test fills it with NaN)
    gemm_case(out, "gemm_beta0", 0, 0, 37, 29, 53, 0.7, 0.0)
    # large enough for the blocked, multi-threaded CPU path: M > 128 rows, K > 256 deep
    gemm_case(out, "gemm_big", 0, 1, 131, 20, 257, 1.0, 0.5)
    # batched: 3 products of (5, 7) @ (7, 6) with B stored transposed (6, 7), as attention's q k^T
    A = randn(3, 5, 7)
    B = randn(3, 6, 7)
    C = randn(3, 5, 6)
    ref = 1.25 * torch.bmm(A, B.transpose(1, 2)) + 0.5 * C
    for name, t in dict(A=A, B=B, C=C, out=ref).items():
        out[f"gemm_batched.{name}"] = t.float().contiguous()
    meta = {"format": "ldm.c conv refs v1", "torch": torch.__version__,
            "gemm": "M=37 N=29 K=53 alpha=0.7 beta=0.3 (gemm_beta0: beta=0); gemm_big: transB=1 M=131 N=20 K=257 alpha=1 beta=0.5", "gemm_batched": "count=3 M=5 N=6 K=7 transB=1 alpha=1.25 beta=0.5"}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(out, path, metadata=meta)
    print(f"wrote {path}: {len(out)} tensors, {os.path.getsize(path)} bytes")


# ----------------------------------------------------------------------------
# benchmark: the layer shapes of dev/cpu/conv2d.cu's CPU timing table (keep the two lists in step)

BENCH_SHAPES = [  # B, Cin, H, W, Cout, K, stride
    (64, 16, 32, 32, 16, 3, 1), (64, 32, 16, 16, 32, 3, 1), (64, 64, 8, 8, 64, 3, 1),
    (64, 3, 32, 32, 16, 3, 1), (64, 16, 32, 32, 3, 3, 1), (64, 16, 32, 32, 16, 3, 2),
    (64, 32, 16, 16, 64, 1, 1), (64, 64, 32, 32, 64, 3, 1), (64, 128, 16, 16, 128, 3, 1),
    (64, 256, 8, 8, 256, 3, 1), (128, 128, 4, 4, 128, 3, 1),
]


def bench(threads, reps):
    torch.set_num_threads(threads)

    def best(f):
        f()
        b = 1e9
        for _ in range(reps):
            t = time.perf_counter()
            f()
            b = min(b, time.perf_counter() - t)
        return b

    print(f"PyTorch {torch.__version__}, {threads} threads, best of {reps}; GFLOP/s counts all K*K taps")
    total = 0.0
    for (B, Cin, H, W, Cout, K, s) in BENCH_SHAPES:
        x = torch.randn(B, Cin, H, W)
        w = torch.randn(Cout, Cin, K, K)
        bias = torch.randn(Cout)
        Ho, Wo = (H + 2 * (K // 2) - K) // s + 1, (W + 2 * (K // 2) - K) // s + 1
        g = torch.randn(B, Cout, Ho, Wo)
        flops = 2.0 * B * Cout * Cin * K * K * Ho * Wo

        def cb(mask):
            return torch.ops.aten.convolution_backward(g, x, w, [Cout], [s, s], [K // 2, K // 2], [1, 1],
                                                      False, [0, 0], 1, mask)
        tf = best(lambda: F.conv2d(x, w, bias, s, K // 2))
        tw = best(lambda: cb([False, True, True]))
        tx = best(lambda: cb([True, False, False]))
        total += tf + tw + tx
        print(f"B{B:3d} {Cin:3d}->{Cout:3d} {H:2d}x{W:2d} K{K} s{s}: fwd {tf * 1e3:7.2f} ms {flops / tf / 1e9:5.0f} GF/s"
              f" | dw+db {tw * 1e3:7.2f} ms {flops / tw / 1e9:5.0f} GF/s | dx {tx * 1e3:7.2f} ms {flops / tx / 1e9:5.0f} GF/s")
    print(f"total {total * 1e3:.1f} ms")
    for n in (256, 1024):
        a, b = torch.randn(n, n), torch.randn(n, n)
        t = best(lambda: a @ b)
        print(f"matmul {n}x{n}x{n}: {2.0 * n ** 3 / t / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--bench", action="store_true", help="time PyTorch's CPU convolutions instead of writing refs")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for --bench (default 2)")
    ap.add_argument("--reps", type=int, default=10, help="timed repetitions per op for --bench (best is printed)")
    ap.add_argument("--out", default="dev/ref/conv.safetensors", help="reference file to write")
    args = ap.parse_args()
    if args.bench:
        bench(args.threads, args.reps)
    else:
        write_refs(args.out)
