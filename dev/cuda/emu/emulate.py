"""
dev/cuda/emu/emulate.py — copies the sources a lab compiles (ldmc/, train_vae.cu, train_ldm.cu, dev/cuda/)
into OUT, rewritten so that g++ can build them against the CPU stand-ins of this folder
(cuda_runtime.h, cublas_v2.h):
  kernel<<<grid, block[, smem]>>>(args)   ->  emu_launch(dim3(grid), dim3(block), smem, [&]() { kernel(args); })
  extern __shared__ float name[];         ->  float* name = (float*)emu_dynamic_smem();
  asm volatile("mma.sync ...");           ->  emu_mma_bf16_16816(c, a, b);   (the one mma of conv2d.cu)
  preset_shapes() in a lab's main         ->  small_shapes() of small_shapes.h: the presets' batches of
                                              64..512 images are far too big to emulate
Usage (make -C dev/cuda emu runs it): python3 dev/cuda/emu/emulate.py REPO_ROOT OUT
"""
import os
import re
import shutil
import sys


def split_top_level(text):
    """the comma-separated parts of a launch configuration (commas inside brackets do not split)"""
    parts, depth, cur = [], 0, ''
    for ch in text:
        depth += ch in '([{'
        depth -= ch in ')]}'
        if ch == ',' and depth == 0:
            parts.append(cur.strip())
            cur = ''
        else:
            cur += ch
    return parts + [cur.strip()]


def matching(text, start, open_ch, close_ch, step):
    """index of the bracket matching text[start], scanning forward (step 1) or backward (step -1)"""
    depth, i = 0, start
    while True:
        if text[i] == open_ch:
            depth += 1
        elif text[i] == close_ch:
            depth -= 1
            if depth == 0:
                return i
        i += step


def rewrite_launches(text, path):
    out, pos = '', 0
    while True:
        i = text.find('<<<', pos)
        if i < 0:
            return out + text[pos:]
        j = i  # the kernel's name starts at k; template arguments, if any, end just before <<<
        if text[j - 1] == '>':
            j = matching(text, j - 1, '>', '<', -1)
        k = j
        while k > 0 and (text[k - 1].isalnum() or text[k - 1] == '_'):
            k -= 1
        e = text.find('>>>', i)
        cfg = split_top_level(text[i + 3:e])
        if len(cfg) not in (2, 3):
            sys.exit('%s: cannot read the launch configuration %r' % (path, text[i:e + 3]))
        p = text.index('(', e)
        q = matching(text, p, '(', ')', 1)
        smem = cfg[2] if len(cfg) == 3 else '0'
        out += text[pos:k] + 'emu_launch(dim3(%s), dim3(%s), (size_t)(%s), [&]() { %s(%s); })' % (
            cfg[0], cfg[1], smem, text[k:i], text[p + 1:q])
        pos = q + 1


def main():
    root, out = sys.argv[1], sys.argv[2]
    here = os.path.dirname(os.path.abspath(__file__))
    shutil.rmtree(out, ignore_errors=True)
    files = ['train_vae.cu', 'train_ldm.cu']
    for d in ('ldmc', 'dev/cuda'):
        files += [os.path.join(d, f) for f in sorted(os.listdir(os.path.join(root, d))) if f.endswith(('.cu', '.cuh', '.h'))]
    for f in files:
        with open(os.path.join(root, f)) as fh:
            text = fh.read()
        text = rewrite_launches(text, f)
        text = re.sub(r'extern __shared__ float (\w+)\[\];', r'float* \1 = (float*)emu_dynamic_smem();', text)
        text = re.sub(r'asm volatile\("mma\.sync.*?\);', 'emu_mma_bf16_16816(c, a, b);', text, flags=re.S)
        if f.startswith('dev/cuda/') and f.endswith('.cu'):
            text = text.replace('#include "shapes.h"', '#include "shapes.h"\n#include "small_shapes.h"')
            text = text.replace('preset_shapes()', 'small_shapes()')
        os.makedirs(os.path.dirname(os.path.join(out, f)) or out, exist_ok=True)
        with open(os.path.join(out, f), 'w') as fh:
            fh.write(text)
    shutil.copy(os.path.join(here, 'small_shapes.h'), os.path.join(out, 'dev/cuda/small_shapes.h'))


if __name__ == '__main__':
    main()
