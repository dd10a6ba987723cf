"""
Trains the small CIFAR-10 classifier whose features eval_ldm.cu scores samples with, and writes
  dev/classifier/cifar10_classifier.safetensors   the weights (float32), what eval_ldm reads
  dev/ref/eval.safetensors                         a few test images -> features and logits, and two
                                                   Fréchet distances computed by numpy (tests/test_eval.h)

The network uses only layers ldm.c has on the CPU (3x3 convs with bias, stride 1 or 2, SiLU, a mean
over the pixels, a linear layer):
  stem     conv3x3 3 -> w1,                    SiLU            32x32
  stage1   2 x (conv3x3 w1 -> w1, SiLU)                        32x32
  down2    conv3x3 stride 2 w1 -> w2, SiLU                     16x16
  stage2   2 x (conv3x3 w2 -> w2, SiLU)                        16x16
  down3    conv3x3 stride 2 w2 -> w3, SiLU                     8x8
  stage3   2 x (conv3x3 w3 -> w3, SiLU)                        8x8
  pool     mean over the 8x8 pixels -> features (w3)           the Fréchet feature space
  head     linear w3 -> 10 logits
Training puts a BatchNorm after every conv (the usual choice for a short budget; not compared with
GroupNorm here); at export each BatchNorm is folded into its conv's weight and bias, exact in eval
mode, so the exported network is convs, SiLU, a pool and a linear layer and nothing else (the script
prints the folding's largest logit difference). Pixels are scaled to [-1, 1] as everywhere in ldm.c:
x = byte / 127.5 - 1.

Recipe: SGD with Nesterov momentum 0.9, weight decay 5e-4 (not on BatchNorm weights and biases), a
one-cycle LR (linear warm-up from peak/10 over the first 20%, linear decay to peak/1000; peak 0.2),
label smoothing 0.1, batch 256, random 32x32 crops of the image padded by 4 pixels of value 0 (mid
grey in [-1, 1]) and horizontal flips. The schedule runs over --epochs, or over --minutes of wall time
(the project's machine is shared, so a wall-time budget is the one that can be kept).

The committed weights: widths 24/48/96 (96-d features), trained on the shared 2-core machine with
nice -n 19 (other jobs running): 40 minutes of wall time at about 35 img/s = 1.90 epochs, test accuracy
0.6859; then 27 minutes fine-tuning the exported network (--init, no BatchNorm, peak LR 0.02) at about
60 img/s = 2 more epochs, test accuracy 0.7032 (10,000 test images). Far below what the architecture
reaches with more epochs (the ~85% aim); on a GPU (--device cuda) or an idle machine, run --epochs 30:
    nice -n 19 /usr/bin/python3 dev/train_classifier.py --minutes 40              # what was run, then
    cp dev/classifier/cifar10_classifier.safetensors /tmp/cls_v1.safetensors
    nice -n 19 /usr/bin/python3 dev/train_classifier.py --init /tmp/cls_v1.safetensors --lr 0.02 --minutes 27
    /usr/bin/python3 dev/train_classifier.py --epochs 30 --device cuda           # better, on a GPU
    /usr/bin/python3 dev/train_classifier.py --reference-only    # rewrite dev/ref/eval.safetensors from the weights
After retraining, rerun dev/eval_calibration.py: the scores are only comparable within one classifier.
"""
import argparse
import copy
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

DATA = "data/cifar-10-batches-bin"
OUT_WEIGHTS = "dev/classifier/cifar10_classifier.safetensors"
OUT_REF = "dev/ref/eval.safetensors"


# ----------------------------------------------------------------------------
# data: the binary layout, one record = label byte + 3072 pixel bytes (R plane, G plane, B plane)

def read_batches(names):
    raw = np.concatenate([np.fromfile(os.path.join(DATA, n), dtype=np.uint8) for n in names])
    assert raw.size % 3073 == 0, "CIFAR-10 binary files hold 3073-byte records"
    rec = raw.reshape(-1, 3073)
    labels = torch.from_numpy(rec[:, 0].astype(np.int64))
    images = torch.from_numpy(rec[:, 1:].reshape(-1, 3, 32, 32).copy())  # uint8 (N, 3, 32, 32)
    return images, labels


def to_float(images_u8):
    return images_u8.float() / 127.5 - 1.0


def augment(x, gen):
    # x (B, 3, 32, 32) in [-1, 1]: random 32x32 crop of the 4-pixel zero-padded image, random flip
    B = x.shape[0]
    padded = F.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (B,), generator=gen)
    dx = torch.randint(0, 9, (B,), generator=gen)
    rows = (dy[:, None] + torch.arange(32)[None, :])  # (B, 32)
    cols = (dx[:, None] + torch.arange(32)[None, :])  # (B, 32)
    out = padded[torch.arange(B)[:, None, None, None], torch.arange(3)[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]
    flip = torch.rand(B, generator=gen) < 0.5
    out[flip] = out[flip].flip(3)
    return out


# ----------------------------------------------------------------------------
# model

LAYERS = ["stem", "stage1.0", "stage1.1", "down2", "stage2.0", "stage2.1", "down3", "stage3.0", "stage3.1"]


def layer_shapes(w1, w2, w3):
    # (name, cin, cout, stride) of each conv, in order
    return [("stem", 3, w1, 1), ("stage1.0", w1, w1, 1), ("stage1.1", w1, w1, 1),
            ("down2", w1, w2, 2), ("stage2.0", w2, w2, 1), ("stage2.1", w2, w2, 1),
            ("down3", w2, w3, 2), ("stage3.0", w3, w3, 1), ("stage3.1", w3, w3, 1)]


class Classifier(nn.Module):
    def __init__(self, w1, w2, w3, batchnorm=True):
        super().__init__()
        self.shapes = layer_shapes(w1, w2, w3)
        self.convs = nn.ModuleList([nn.Conv2d(ci, co, 3, s, 1, bias=not batchnorm) for _, ci, co, s in self.shapes])
        self.norms = nn.ModuleList([nn.BatchNorm2d(co) if batchnorm else nn.Identity() for _, _, co, _ in self.shapes])
        self.head = nn.Linear(w3, 10)

    def features(self, x):
        for conv, norm in zip(self.convs, self.norms):
            x = F.silu(norm(conv(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x):
        return self.head(self.features(x))


def export(model, fine_tuned):
    # the network as eval_ldm runs it: BatchNorm folded, or a fine-tuned exported network as it is
    return copy.deepcopy(model).cpu().eval() if fine_tuned else fold_batchnorm(model)


def fold_batchnorm(model):
    # eval-mode BatchNorm y = (z - mean) * g / sqrt(var + eps) + b after a bias-free conv z = W x:
    # the same as a conv with weight W * s and bias b - mean * s, s = g / sqrt(var + eps)
    w1, w2, w3 = model.shapes[0][2], model.shapes[3][2], model.shapes[6][2]
    folded = Classifier(w1, w2, w3, batchnorm=False)
    with torch.no_grad():
        for conv, bn, fc in zip(model.convs, model.norms, folded.convs):
            s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            fc.weight.copy_(conv.weight * s[:, None, None, None])
            fc.bias.copy_(bn.bias - bn.running_mean * s)
        folded.head.load_state_dict(model.head.state_dict())
    return folded.eval()


def state_for_ldmc(folded):
    out = {}
    for (name, _, _, _), conv in zip(folded.shapes, folded.convs):
        out[f"{name}.weight"] = conv.weight.detach().float().contiguous()
        out[f"{name}.bias"] = conv.bias.detach().float().contiguous()
    out["head.weight"] = folded.head.weight.detach().float().contiguous()
    out["head.bias"] = folded.head.bias.detach().float().contiguous()
    return out


@torch.no_grad()
def accuracy(model, images, labels, batch=1000):
    model.eval()
    correct = 0
    device = next(model.parameters()).device
    for i in range(0, images.shape[0], batch):
        logits = model(to_float(images[i:i + batch]).to(device))
        correct += (logits.argmax(1).cpu() == labels[i:i + batch]).sum().item()
    return correct / images.shape[0]


# ----------------------------------------------------------------------------
# the Fréchet distance as numpy computes it (eigh of sqrt(S1) S2 sqrt(S1)), for the test's reference

def frechet_numpy(f1, f2):
    f1 = f1.astype(np.float64)
    f2 = f2.astype(np.float64)
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1 = np.cov(f1, rowvar=False)  # unbiased (n - 1), as eval_ldm
    s2 = np.cov(f2, rowvar=False)
    e, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(e, 0, None))) @ v.T
    m = r1 @ s2 @ r1
    em = np.linalg.eigvalsh((m + m.T) / 2)
    tr_sqrt = np.sqrt(np.clip(em, 0, None)).sum()
    # the same trace another way: S1 S2 (not symmetric) has the same eigenvalues as M
    other = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    assert abs(other - tr_sqrt) <= 1e-8 * max(1.0, tr_sqrt), (other, tr_sqrt)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def write_reference(folded, test_images):
    # the forward of 4 test images in float64 (weights as stored, float32), and the numpy Fréchet
    # distances of two small feature sets
    x = to_float(test_images[:4])
    model64 = copy.deepcopy(folded).double()
    with torch.no_grad():
        feats = model64.features(x.double())
        logits = model64.head(feats)
    rng = np.random.default_rng(10)
    ref = {"x": x.contiguous(), "features": feats.float().contiguous(), "logits": logits.float().contiguous()}
    # two sets of 7-d features with different means and correlated, differently scaled covariances;
    # a second pair with n = 5, 6 < d = 7 (singular covariances, as at small n in practice)
    for tag, n1, n2, d in (("fd", 50, 40, 7), ("fd_singular", 5, 6, 7)):
        a = rng.standard_normal((n1, d)) @ rng.standard_normal((d, d)) + 0.5
        b = rng.standard_normal((n2, d)) @ (0.7 * rng.standard_normal((d, d))) - 0.2
        a, b = a.astype(np.float32), b.astype(np.float32)
        ref[f"{tag}.a"] = torch.from_numpy(a)
        ref[f"{tag}.b"] = torch.from_numpy(b)
        ref[f"{tag}.value"] = torch.tensor([frechet_numpy(a, b)], dtype=torch.float32)
    os.makedirs(os.path.dirname(OUT_REF), exist_ok=True)
    save_file(ref, OUT_REF, metadata={"format": "ldm.c", "classifier": OUT_WEIGHTS})


def load_folded(path):
    # the exported network back from its file (for --reference-only)
    d = load_file(path)
    folded = Classifier(d["stem.weight"].shape[0], d["down2.weight"].shape[0], d["down3.weight"].shape[0],
                        batchnorm=False)
    with torch.no_grad():
        for (name, _, _, _), conv in zip(folded.shapes, folded.convs):
            conv.weight.copy_(d[f"{name}.weight"])
            conv.bias.copy_(d[f"{name}.bias"])
        folded.head.weight.copy_(d["head.weight"])
        folded.head.bias.copy_(d["head.bias"])
    return folded.eval()


# ----------------------------------------------------------------------------
# training

def one_cycle_lr(progress, peak):
    # linear warm-up from peak/10 over the first 20%, then linear decay to peak/1000
    if progress < 0.2:
        return peak * (0.1 + 0.9 * progress / 0.2)
    return peak * (1 - (progress - 0.2) / 0.8 * 0.999)


def save_weights(folded, epochs, acc, test_images):
    # the weights eval_ldm reads, and the test's reference computed with exactly these weights
    os.makedirs(os.path.dirname(OUT_WEIGHTS), exist_ok=True)
    w1, w2, w3 = folded.shapes[0][2], folded.shapes[3][2], folded.shapes[6][2]
    meta = {"format": "ldm.c", "model": "classifier", "config": f'{{"widths":[{w1},{w2},{w3}]}}',
            "epochs": f"{epochs:.2f}"}
    if acc is not None:
        meta["test_accuracy"] = f"{acc:.4f}"
    save_file(state_for_ldmc(folded), OUT_WEIGHTS, metadata=meta)
    write_reference(folded, test_images)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--widths", type=str, default="24,48,96")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, or cuda where there is a GPU (same recipe, minutes)")
    p.add_argument("--minutes", type=float, default=0, help="train for this wall time instead of --epochs")
    p.add_argument("--measure", action="store_true", help="time 20 training batches and exit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", default=None,
                   help="fine-tune the exported network in this weights file (no BatchNorm) instead of a fresh one")
    p.add_argument("--reference-only", action="store_true",
                   help="no training: rewrite the weights' metadata and the test reference from the weights file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    w1, w2, w3 = (int(v) for v in args.widths.split(","))

    train_x, train_y = read_batches([f"data_batch_{i}.bin" for i in range(1, 6)])
    test_x, test_y = read_batches(["test_batch.bin"])
    if args.reference_only:
        folded = load_folded(OUT_WEIGHTS)
        with safe_open(OUT_WEIGHTS, "pt") as f:
            epochs = float(f.metadata().get("epochs", "0"))
        acc = accuracy(folded, test_x, test_y)
        print(f"{OUT_WEIGHTS}: test accuracy {acc:.4f}")
        save_weights(folded, epochs, acc, test_x)
        print(f"wrote {OUT_WEIGHTS} and {OUT_REF}")
        return
    if args.init:
        # fine-tuning an exported network: no BatchNorm to fold, the weights go out as they are
        model = load_folded(args.init).train().to(args.device)
        w1, w2, w3 = model.shapes[0][2], model.shapes[3][2], model.shapes[6][2]
        with safe_open(args.init, "pt") as f:
            base_epochs = float(f.metadata().get("epochs", "0"))
    else:
        base_epochs = 0.0
        model = Classifier(w1, w2, w3).to(args.device)
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0}],
                          lr=args.lr, momentum=0.9, nesterov=True)
    steps_per_epoch = train_x.shape[0] // args.batch
    nparams = sum(p.numel() for p in model.parameters())
    budget = f"{args.minutes} minutes" if args.minutes else f"{args.epochs} epochs"
    print(f"classifier widths {w1}/{w2}/{w3}, {nparams} parameters, batch {args.batch}, budget {budget}")
    t0 = time.time()
    step = 0
    epoch = 0
    done = False
    while not done:
        model.train()
        perm = torch.randperm(train_x.shape[0], generator=gen)
        for i in range(steps_per_epoch):
            # progress through the one-cycle schedule: by steps, or by wall time with --minutes
            # (the machine is shared, so a wall-time budget is the one that can be kept)
            if args.minutes:
                progress = (time.time() - t0) / (60 * args.minutes)
            else:
                progress = step / (args.epochs * steps_per_epoch)
            if progress >= 1:
                done = True
                break
            for g in opt.param_groups:
                g["lr"] = one_cycle_lr(progress, args.lr)
            idx = perm[i * args.batch:(i + 1) * args.batch]
            x = augment(to_float(train_x[idx]), gen).to(args.device)
            loss = F.cross_entropy(model(x), train_y[idx].to(args.device), label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            dt = time.time() - t0
            if args.measure and step == 20:
                print(f"20 steps {dt:.1f} s: {20 * args.batch / dt:.0f} img/s, "
                      f"epoch ~{steps_per_epoch * dt / 20 / 60:.1f} min")
                return
            if step % 20 == 0:
                eta = dt / progress - dt if progress > 0 else 0
                print(f"epoch {epoch + 1} step {step} progress {progress:.3f} lr {opt.param_groups[0]['lr']:.4f} "
                      f"loss {loss.item():.4f} {step * args.batch / dt:.0f} img/s ETA {eta / 60:.1f} min", flush=True)
        else:
            epoch += 1
            print(f"epoch {epoch} done ({(time.time() - t0) / 60:.1f} min)", flush=True)
            save_weights(export(model, args.init), epoch, None, test_x)  # usable weights while training goes on
            if not args.minutes and epoch == args.epochs:
                done = True

    train_minutes = (time.time() - t0) / 60
    print(f"trained {step} steps = {step * args.batch / train_x.shape[0]:.2f} epochs in {train_minutes:.1f} min")
    model = model.cpu()
    folded = export(model, args.init)
    model.eval()
    with torch.no_grad():
        x = to_float(test_x[:256])
        fold_err = (model(x) - folded(x)).abs().max().item()
    print(f"BatchNorm folding: max |logit difference| {fold_err:.2e} on 256 test images")
    acc = accuracy(folded, test_x, test_y)
    print(f"folded (exported) network: test accuracy {acc:.4f} on the 10000 test images")
    save_weights(folded, base_epochs + step * args.batch / train_x.shape[0], acc, test_x)
    print(f"wrote {OUT_WEIGHTS} and {OUT_REF}")


if __name__ == "__main__":
    main()
