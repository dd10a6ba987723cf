"""
Test images for the converter's decoder (data/image_decode.h), written by Pillow, not by our code.
tests/bad_data.sh converts them and compares our records with the pixels Pillow decoded here; the
fuzz harness dev/fuzz/fuzz_decode.c starts from them.

    /usr/bin/python3 data/testdata/make_testdata.py      (Debian's python3-pil)

Writes into data/testdata/, each image 32x32 with its decode as NAME.rgb: 3072 bytes, planar R, G, B
plane (a CIFAR-10 record's pixels), greyscale replicated into all three:
  color.jpg        baseline JPEG, 4:2:0 chroma subsampling, quality 90
  grey.jpg         one-component (greyscale) JPEG
  progressive.jpg  progressive JPEG, 4:4:4
  rgba.png         RGB + alpha (the alpha is dropped)
  palette.png      8-bit palette
and files that must be refused:
  cmyk.jpg         a four-component (CMYK) JPEG
  stb_dht_overflow.jpg  a JPEG whose DHT segment declares 16 x 20 = 320 Huffman codes, more than the
                   256 a table can hold. stb_image 2.27 (Debian's libstb) writes past its 257-byte
                   code-length table on it; libjpeg-turbo refuses it.
  empty_idat.png   rgba.png with an empty IDAT chunk (valid CRC) before its image data: stb_image
                   2.27 does arithmetic on a NULL pointer on it (undefined behaviour; found by
                   dev/fuzz/fuzz_decode); the converter refuses it before stb_image sees it.
`make -C dev/fuzz repro-stb` shows UBSan's reports of stb_image 2.27 on these two files.
Pixels are pseudo-random from a fixed seed, smoothed so JPEG keeps them recognisable.
"""
import os
import random
import struct
import zlib

from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))


def smooth_rgb(seed):
    rnd = random.Random(seed)
    base = [[rnd.randrange(256) for _ in range(3)] for _ in range(4)]
    px = []
    for y in range(32):
        for x in range(32):
            c = base[(y // 16) * 2 + x // 16]
            px.append(tuple((c[q] + 3 * x + 5 * y + rnd.randrange(8)) % 256 for q in range(3)))
    img = Image.new("RGB", (32, 32))
    img.putdata(px)
    return img


def planar(img):
    """Pillow's decode of a saved file as CIFAR-10's planar R, G, B bytes."""
    rgb = img.convert("RGB")
    return b"".join(bytes(p[q] for p in rgb.getdata()) for q in range(3))


def save(name, img, **kw):
    path = os.path.join(HERE, name)
    img.save(path, **kw)
    with Image.open(path) as back:
        open(os.path.splitext(path)[0] + ".rgb", "wb").write(planar(back))
    print(f"wrote {name} ({os.path.getsize(path)} bytes) and its decode")


def dht_overflow_jpeg():
    """SOI, one DHT segment (class 0, table 0) with code counts 20 for each of the 16 lengths, its
    320 symbol bytes, EOI. The counts alone overrun stb_image 2.27's tables; no frame is needed."""
    counts = bytes([20] * 16)
    symbols = bytes(range(256)) + bytes(64)
    dht = bytes([0x00]) + counts + symbols
    return b"\xff\xd8" + b"\xff\xc4" + struct.pack(">H", 2 + len(dht)) + dht + b"\xff\xd9"


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def with_empty_idat(png):
    """The same PNG with a zero-length IDAT chunk inserted before its first IDAT."""
    i = png.index(b"IDAT") - 4
    return png[:i] + png_chunk(b"IDAT", b"") + png[i:]


def main():
    save("color.jpg", smooth_rgb(1), quality=90, subsampling=2)
    save("grey.jpg", smooth_rgb(2).convert("L"), quality=90)
    save("progressive.jpg", smooth_rgb(3), quality=85, subsampling=0, progressive=True)
    rgba = smooth_rgb(4).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((32, 32)))
    save("rgba.png", rgba)
    save("palette.png", smooth_rgb(5).convert("P", palette=Image.ADAPTIVE, colors=64))
    smooth_rgb(6).convert("CMYK").save(os.path.join(HERE, "cmyk.jpg"), quality=90)
    print("wrote cmyk.jpg")
    with open(os.path.join(HERE, "stb_dht_overflow.jpg"), "wb") as f:
        f.write(dht_overflow_jpeg())
    print("wrote stb_dht_overflow.jpg")
    with open(os.path.join(HERE, "rgba.png"), "rb") as f:
        png = f.read()
    with open(os.path.join(HERE, "empty_idat.png"), "wb") as f:
        f.write(with_empty_idat(png))
    print("wrote empty_idat.png")


if __name__ == "__main__":
    main()
