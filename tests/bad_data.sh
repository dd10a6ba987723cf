#!/usr/bin/env bash
# tests/bad_data.sh — the data converter (data/cifar10_from_folders.c) and data/get_cifar10.sh on
# tiny image-folder trees made here: a good tree converts (records checked against the image bytes
# by Python, not by the converter), deterministically; the JPEG and PNG variants of data/testdata/
# decode to the pixels Pillow decoded (data/testdata/make_testdata.py); bad trees, damaged and
# crafted files (data/testdata/stb_dht_overflow.jpg and empty_idat.png, on which stb_image 2.27
# writes out of bounds / does NULL arithmetic) are refused with one message and exit status 1.
# Needs cc, stb_image.h, libjpeg (Debian: libstb-dev, libjpeg62-turbo-dev) and any python3 (standard
# library only: the PNGs here are written by hand). Ends with "N passed, M failed"; exit status
# non-zero on any failure. `make test` runs it after test_ldm.
# LDMC_BIN=DIR: test the converter DIR/cifar10_from_folders (a path relative to the repository root,
# e.g. build-sanitize from `make sanitize`) instead of building one here.
set -uo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
T="$(mktemp -d "${TMPDIR:-/tmp}/ldmc_bad_data.XXXXXX")"
trap 'rm -rf "$T"' EXIT
TESTDATA="$REPO_ROOT/data/testdata"
if [ -n "${LDMC_BIN:-}" ]; then
    CONV="$(cd "$REPO_ROOT" && cd "$LDMC_BIN" && pwd)/cifar10_from_folders"
    [ -x "$CONV" ] || { echo "no converter '$CONV' (LDMC_BIN=$LDMC_BIN)"; exit 1; }
else
    CONV="$T/cifar10_from_folders"
    cc -O2 -o "$CONV" "$REPO_ROOT/data/cifar10_from_folders.c" -ljpeg -lm || { echo "cannot build the converter"; exit 1; }
fi

passed=0; failed=0
ok()   { passed=$((passed + 1)); printf '  [ok]   %s\n' "$1"; }
fail() {  # NAME [FILE whose first lines explain]
    failed=$((failed + 1)); printf '  [FAIL] %s\n' "$1"
    if [ -n "${2:-}" ]; then sed 's/^/         /' "$2" | head -5; fi
}
# check NAME CMD...: passes when CMD exits 0 (its output is shown only on failure)
check() { local name="$1"; shift; if "$@" > "$T/check.txt" 2>&1; then ok "$name"; else fail "$name" "$T/check.txt"; fi; }

# expect_error NAME PATTERN CMD...: CMD must exit with status 1 (a refusal, not a crash or a hang:
# 60 s at most) and print PATTERN (grep -E) on stderr
expect_error() {
    local name="$1" pattern="$2" rc=0; shift 2
    timeout 60 "$@" > "$T/out.txt" 2> "$T/err.txt" || rc=$?
    if [ "$rc" -eq 0 ]; then fail "$name (exit 0)" "$T/out.txt"
    elif [ "$rc" -ne 1 ]; then fail "$name (exit status $rc, not 1: a crash or a hang)" "$T/err.txt"
    elif grep -Eq "$pattern" "$T/err.txt"; then ok "$name: $(grep -m1 . "$T/err.txt" | cut -c1-110)"
    else fail "$name (message lacks /$pattern/)" "$T/err.txt"; fi
}

# make_tree ROOT SPLIT CLASS COUNT [W H]: COUNT PNG images of WxH (default 32x32), RGB for even i,
# RGB + alpha for odd i (the converter drops the alpha), grey for i == 2 (the converter must expand
# it to RGB); pseudo-random pixels seeded by (split, class, i), so every image is distinct
make_tree() {
    python3 - "$@" <<'EOF'
import hashlib, os, struct, sys, zlib
root, split, cls, count = sys.argv[1:5]
w, h = (int(sys.argv[5]), int(sys.argv[6])) if len(sys.argv) > 6 else (32, 32)
d = os.path.join(root, split, cls); os.makedirs(d, exist_ok=True)
def png(path, rows, ctype):  # ctype 2 = RGB, 0 = grey, 6 = RGBA; 8 bits, no filter
    raw = b"".join(b"\0" + bytes(r) for r in rows)
    chunk = lambda t, b: struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b))
    open(path, "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, ctype, 0, 0, 0))
                           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
def noise(n, tag):  # n pseudo-random bytes, different for every (split, class, image)
    out = b""
    while len(out) < n: out += hashlib.sha256(("%s/%s/%d/%d" % (split, cls, i, len(out))).encode() + tag).digest()
    return out[:n]
for i in range(int(count)):
    b = noise(w * h * 3, b"rgb")
    rgb = [b[y * w * 3:(y + 1) * w * 3] for y in range(h)]
    if i == 2:
        g = noise(w * h, b"grey")
        png(os.path.join(d, "%04d.png" % i), [g[y * w:(y + 1) * w] for y in range(h)], 0)
    elif i % 2 == 0:
        png(os.path.join(d, "%04d.png" % i), rgb, 2)
    else:
        a = noise(w * h, b"alpha")
        rgba = [bytes(v for x in range(w) for v in r[3 * x:3 * x + 3] + a[y * w + x:y * w + x + 1]) for y, r in enumerate(rgb)]
        png(os.path.join(d, "%04d.png" % i), rgba, 6)
EOF
}

# every output record must be one of the input images (decoded here from the files written above)
# with its class's label, each image repeated equally often (+-1); batches.meta.txt as expected
verify_records() {  # ROOT OUT "class names in label order"
    python3 - "$@" <<'EOF'
import os, sys, zlib, collections
root, out, names = sys.argv[1], sys.argv[2], sys.argv[3].split()
def load(path):  # the PNGs make_tree writes: one IDAT, filter 0; planar RGB out
    b = open(path, "rb").read()
    w, h, ctype = int.from_bytes(b[16:20], "big"), int.from_bytes(b[20:24], "big"), b[25]
    idat = zlib.decompress(b[b.index(b"IDAT") + 4:b.index(b"IEND") - 8])
    ch = {0: 1, 2: 3, 6: 4}[ctype]; stride = 1 + w * ch
    px = lambda y, x, c: idat[y * stride + 1 + x * ch + (c if ch >= 3 else 0)]
    return bytes(px(y, x, c) for c in range(3) for y in range(h) for x in range(w))
errors = []
meta = open(os.path.join(out, "batches.meta.txt")).read().split()
if meta != names: errors.append("batches.meta.txt %s, expected %s" % (meta, names))
for split, files in [("train", ["data_batch_%d.bin" % i for i in range(1, 6)]), ("test", ["test_batch.bin"])]:
    images = {}
    for label, cls in enumerate(names):
        d = os.path.join(root, split, cls)
        for f in os.listdir(d): images[load(os.path.join(d, f))] = label
    uses = collections.Counter()
    for f in files:
        data = open(os.path.join(out, f), "rb").read()
        for r in range(10000):
            rec = data[r * 3073:(r + 1) * 3073]
            if images.get(rec[1:]) != rec[0]:
                errors.append("%s record %d (label %d) is not an input image of that class" % (f, r, rec[0])); break
            uses[rec[1:]] += 1
    if len(uses) != len(images) or max(uses.values()) - min(uses.values()) > 1:
        errors.append("%s: %d of %d images used, %d..%d times" % (split, len(uses), len(images), min(uses.values()), max(uses.values())))
print("; ".join(errors) if errors else "all records match their images and labels")
sys.exit(1 if errors else 0)
EOF
}

echo "data converter and get_cifar10.sh on tiny image-folder trees"

# --- a good tree: 3 classes, not CIFAR-10's names, so alphabetical labels
G="$T/good"
for c in zebra apple mango; do make_tree "$G" train "$c" 4; make_tree "$G" test "$c" 2; done
if "$CONV" "$G" "$T/out1" > "$T/conv.txt" 2>&1; then ok "converts a 3-class tree of RGB/RGBA/grey PNGs"; else fail "converts a 3-class tree" "$T/conv.txt"; fi
check "says how the 12 train images fill 50,000 records" grep -q "each image is written 4166 or 4167 times" "$T/conv.txt"
sizes="$(for f in "$T"/out1/*.bin; do stat -c %s "$f"; done | sort | uniq -c | tr -s ' ')"
check "six files of 30,730,000 bytes (got:$sizes)" test "$sizes" = " 6 30730000"
if verify_records "$G" "$T/out1" "apple mango zebra" > "$T/v.txt" 2>&1; then ok "records vs images (python): $(cat "$T/v.txt")"
else fail "records vs images" "$T/v.txt"; fi
check "no temporary files left behind" test -z "$(find "$T/out1" -name '*.tmp')"
"$CONV" "$G" "$T/out2" > /dev/null 2>&1
check "deterministic: a second conversion is byte-identical" diff -rq "$T/out1" "$T/out2"
check "--check accepts it" "$CONV" --check "$T/out1"
expect_error "--check-cifar10 rejects non-CIFAR-10 counts" "CIFAR-10 has 5000 and 1000" "$CONV" --check-cifar10 "$T/out1"

# --- damaged binary files
cp -r "$T/out1" "$T/dmg"
truncate -s 30726927 "$T/dmg/data_batch_3.bin"
expect_error "--check: truncated data_batch_3.bin" "data_batch_3.bin' is 30726927 bytes.*truncated" "$CONV" --check "$T/dmg"
cp "$T/out1/data_batch_3.bin" "$T/dmg/"
printf '\x0b' | dd of="$T/dmg/test_batch.bin" bs=1 seek=$((3073 * 42)) conv=notrunc status=none
expect_error "--check: label 11" "test_batch.bin' record 42 has label 11" "$CONV" --check "$T/dmg"

# --- bad trees: each an error naming the problem, and nothing written
B="$T/big"; cp -r "$G" "$B"; make_tree "$B" train apple 1 33 32   # 0000.png becomes 33x32
expect_error "33x32 image" "apple/0000.png' is a 33x32 PNG; every image must be 32x32" "$CONV" "$B" "$T/out_big"
check "nothing written after an error" test ! -e "$T/out_big"
N="$T/notimg"; cp -r "$G" "$N"; echo "hello" > "$N/test/mango/notes.txt"
expect_error "a non-image file" "mango/notes.txt' is neither a JPEG nor a PNG file" "$CONV" "$N" "$T/out_n"
M="$T/many"; for i in 0 1 2 3 4 5 6 7 8 9 10; do make_tree "$M" train "c$i" 1; make_tree "$M" test "c$i" 1; done
expect_error "11 classes" "11 class folders.*at most 10" "$CONV" "$M" "$T/out_m"
D="$T/differ"; cp -r "$G" "$D"; mv "$D/test/zebra" "$D/test/zebu"
expect_error "train/ and test/ classes differ" "class folders of .* differ" "$CONV" "$D" "$T/out_d"
O="$T/trainonly"; mkdir -p "$O"; cp -r "$G/train" "$O/"
expect_error "no test/ folder" "cannot open directory .*trainonly/test'" "$CONV" "$O" "$T/out_o"

# --- JPEG and PNG variants (data/testdata): every record is one of them, as Pillow decoded it
V="$T/variants"; mkdir -p "$V/train/only" "$V/test/only"
for f in color.jpg grey.jpg progressive.jpg rgba.png palette.png; do cp "$TESTDATA/$f" "$V/train/only/"; done
cp "$TESTDATA/color.jpg" "$TESTDATA/palette.png" "$V/test/only/"
if "$CONV" "$V" "$T/out_v" > "$T/conv.txt" 2>&1; then ok "converts baseline, grey, progressive JPEG and RGBA, palette PNG"
else fail "converts the JPEG/PNG variants" "$T/conv.txt"; fi
if python3 - "$TESTDATA" "$T/out_v" > "$T/v.txt" 2>&1 <<'EOF'
import os, sys
testdata, out = sys.argv[1:3]
want = {open(os.path.join(testdata, n + ".rgb"), "rb").read(): n for n in ["color", "grey", "progressive", "rgba", "palette"]}
for split, files, names in [("train", ["data_batch_%d.bin" % i for i in range(1, 6)], set(want.values())),
                            ("test", ["test_batch.bin"], {"color", "palette"})]:
    seen = set()
    for f in files:
        data = open(os.path.join(out, f), "rb").read()
        for r in range(10000):
            px = data[r * 3073 + 1:(r + 1) * 3073]
            if px not in want: sys.exit("%s record %d matches none of Pillow's decodes" % (f, r))
            seen.add(want[px])
    if seen != names: sys.exit("%s: records of %s, expected %s" % (split, sorted(seen), sorted(names)))
print("every record is Pillow's decode of its file, all 5 files used")
EOF
then ok "variants vs Pillow's pixels: $(cat "$T/v.txt")"; else fail "variants vs Pillow's pixels" "$T/v.txt"; fi

# --- files the decoder must refuse: one message naming the file, status 1, nothing written
# bad_tree FILE NAME: a copy of the good tree with FILE put into test/apple/ as NAME
bad_tree() { rm -rf "$T/bad"; cp -r "$G" "$T/bad"; cp "$1" "$T/bad/test/apple/$2"; }
bad_tree "$TESTDATA/stb_dht_overflow.jpg" evil.jpg
expect_error "crafted JPEG (stb_image 2.27 overflow)" "apple/evil.jpg' is not a valid JPEG \(Bogus Huffman table" "$CONV" "$T/bad" "$T/out_bad"
check "nothing written after the crafted JPEG" test ! -e "$T/out_bad"
bad_tree "$TESTDATA/cmyk.jpg" cmyk.jpg
expect_error "CMYK JPEG" "apple/cmyk.jpg' is a 32x32 JPEG with 4 components.*CMYK" "$CONV" "$T/bad" "$T/out_bad"
head -c 500 "$TESTDATA/color.jpg" > "$T/half.jpg"; bad_tree "$T/half.jpg" half.jpg
expect_error "truncated JPEG" "apple/half.jpg' is not a valid JPEG \(Premature end of JPEG file" "$CONV" "$T/bad" "$T/out_bad"
head -c 300 "$TESTDATA/rgba.png" > "$T/half.png"; bad_tree "$T/half.png" half.png
expect_error "truncated PNG" "apple/half.png' is not a valid PNG \(chunk 1, .* runs past the end" "$CONV" "$T/bad" "$T/out_bad"
python3 -c "
import sys; b = bytearray(open(sys.argv[1], 'rb').read()); b[200] ^= 0x40; sys.stdout.buffer.write(bytes(b))" \
    "$TESTDATA/rgba.png" > "$T/flip.png"   # one bit of the image data
bad_tree "$T/flip.png" flip.png
expect_error "PNG with a damaged byte" "apple/flip.png' is not a valid PNG \(chunk 1 'IDAT' fails its CRC" "$CONV" "$T/bad" "$T/out_bad"
bad_tree "$TESTDATA/empty_idat.png" empty_idat.png
expect_error "PNG with an empty first IDAT (stb_image 2.27 UB)" "apple/empty_idat.png' is not a valid PNG \(an empty IDAT chunk" "$CONV" "$T/bad" "$T/out_bad"
# PNG headers claiming 100000x100000 (more than stb_image takes) and 10000x10000: refused from the
# header, nothing decoded or allocated
for n in 100000 10000; do
    python3 -c "
import struct, sys, zlib
c = lambda t, b: struct.pack('>I', len(b)) + t + b + struct.pack('>I', zlib.crc32(t + b))
sys.stdout.buffer.write(b'\x89PNG\r\n\x1a\n' + c(b'IHDR', struct.pack('>IIBBBBB', $n, $n, 8, 2, 0, 0, 0))
                        + c(b'IDAT', zlib.compress(b'')) + c(b'IEND', b''))" > "$T/huge.png"
    bad_tree "$T/huge.png" huge.png
    expect_error "PNG header of ${n}x$n" "apple/huge.png' is a ${n}x$n PNG" "$CONV" "$T/bad" "$T/out_bad"
done
: > "$T/empty.png"; bad_tree "$T/empty.png" empty.png
expect_error "empty file" "apple/empty.png' is empty" "$CONV" "$T/bad" "$T/out_bad"
rm -rf "$T/bad"; cp -r "$G" "$T/bad"; mkfifo "$T/bad/test/apple/pipe.png"
expect_error "a FIFO in a class folder (no hang)" "apple/pipe.png' is a FIFO \(named pipe\), not an image file" "$CONV" "$T/bad" "$T/out_bad"
rm -rf "$T/bad"; cp -r "$G" "$T/bad"; mkdir "$T/bad/test/apple/more"
expect_error "a folder in a class folder" "apple/more' is a directory, not an image file" "$CONV" "$T/bad" "$T/out_bad"
rm -rf "$T/bad"; cp -r "$G" "$T/bad"; ln -s /dev/zero "$T/bad/test/apple/zero.png"
expect_error "a link to /dev/zero" "apple/zero.png' is a character device, not an image file" "$CONV" "$T/bad" "$T/out_bad"
rm -rf "$T/bad"

# --- get_cifar10.sh with CIFAR10_TARBALL: a directory, then a .tar.gz wrapping the tree in a folder
if CIFAR10_TARBALL="$G" bash "$REPO_ROOT/data/get_cifar10.sh" "$T/gs1" > "$T/gs.txt" 2>&1 \
   && cmp -s "$T/gs1/data_batch_1.bin" "$T/out1/data_batch_1.bin"; then ok "get_cifar10.sh: CIFAR10_TARBALL=<directory>"
else fail "get_cifar10.sh with a directory" "$T/gs.txt"; fi
bash "$REPO_ROOT/data/get_cifar10.sh" "$T/gs1" > "$T/gs.txt" 2>&1
check "get_cifar10.sh: a complete OUT_DIR is left alone" grep -q "nothing to do" "$T/gs.txt"
tar czf "$T/mine.tar.gz" -C "$T" good
if CIFAR10_TARBALL="$T/mine.tar.gz" bash "$REPO_ROOT/data/get_cifar10.sh" "$T/gs2" > "$T/gs.txt" 2>&1 \
   && cmp -s "$T/gs2/test_batch.bin" "$T/out1/test_batch.bin"; then ok "get_cifar10.sh: CIFAR10_TARBALL=<.tar.gz>"
else fail "get_cifar10.sh with a tarball" "$T/gs.txt"; fi
check "get_cifar10.sh cleans up its work directory" test -z "$(find "$T" -maxdepth 1 -name '.cifar10-work*')"
expect_error "get_cifar10.sh: CIFAR10_TARBALL missing" "does not exist" env CIFAR10_TARBALL="$T/nope.tar.gz" bash "$REPO_ROOT/data/get_cifar10.sh" "$T/gs3"
expect_error "get_cifar10.sh: a bad tree" "33x32" env CIFAR10_TARBALL="$B" bash "$REPO_ROOT/data/get_cifar10.sh" "$T/gs4"
check "get_cifar10.sh: OUT_DIR untouched after an error" test ! -e "$T/gs4"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
