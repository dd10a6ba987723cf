#!/usr/bin/env bash
# data/get_cifar10.sh [OUT_DIR] — CIFAR-10 in its official binary layout (what `make data` runs).
# OUT_DIR (default data/cifar-10-batches-bin under the repository) ends up holding
# data_batch_1..5.bin, test_batch.bin (10,000 records of 3,073 bytes each) and batches.meta.txt.
# Sources, first found wins:
#   1. OUT_DIR already holds the six files with the right sizes: nothing to do.
#   2. $CIFAR10_TARBALL: the official cifar-10-binary.tar.gz, or an image-folder tree
#      (train/<class>/*, test/<class>/*, 32x32 images) as a directory or a .tar.gz of one.
#   3. data/cifar-10-binary.tar.gz: the official tarball, put there by hand (sha256 checked).
#   4. ../shared/cifar10/cifar10-jpeg.tar.gz beside the repository (CIFAR-10 as JPEG folders).
#   5. a download of the official tarball from the dataset's site.
# Image folders go through data/cifar10_from_folders (built here with cc); the result is
# validated with that program's --check mode. A failed run leaves no partial files in OUT_DIR.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${1:-$REPO_ROOT/data/cifar-10-batches-bin}"
OFFICIAL_URL="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
OFFICIAL_SHA256="c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
OFFICIAL_LOCAL="$REPO_ROOT/data/cifar-10-binary.tar.gz"
SHARED_JPEG="$REPO_ROOT/../shared/cifar10/cifar10-jpeg.tar.gz"
CONVERTER="$REPO_ROOT/data/cifar10_from_folders"
FILES="data_batch_1.bin data_batch_2.bin data_batch_3.bin data_batch_4.bin data_batch_5.bin test_batch.bin"
FILE_BYTES=30730000

die() { echo "Error: $*" >&2; exit 1; }

file_size() { stat -c %s "$1" 2>/dev/null || wc -c < "$1"; }

have_all_files() {
    local f
    for f in $FILES; do
        [ -f "$1/$f" ] && [ "$(file_size "$1/$f")" -eq "$FILE_BYTES" ] || return 1
    done
}

sha256_of() {
    if command -v sha256sum > /dev/null; then sha256sum "$1" | cut -d' ' -f1
    else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

# the converter is also the validator; rebuilt when its sources are newer
build_converter() {
    if [ ! -x "$CONVERTER" ] || [ "$REPO_ROOT/data/cifar10_from_folders.c" -nt "$CONVERTER" ] \
       || [ "$REPO_ROOT/data/image_decode.h" -nt "$CONVERTER" ]; then
        echo "building $CONVERTER"
        "${CC:-cc}" -O2 -o "$CONVERTER" "$REPO_ROOT/data/cifar10_from_folders.c" -ljpeg -lm \
            || die "could not build the converter (needs a C compiler, stb_image.h and libjpeg: apt install libstb-dev libjpeg62-turbo-dev)."
    fi
}

# every file is written into a scratch directory beside OUT_DIR and moved into place at the end
WORK=""
cleanup() { if [ -n "$WORK" ]; then rm -rf "$WORK"; fi; }  # an if: a false test must not become the exit status
trap cleanup EXIT
make_work_dir() {
    mkdir -p "$(dirname "$OUT_DIR")"
    WORK="$(mktemp -d "$(dirname "$OUT_DIR")/.cifar10-work.XXXXXX")"
}

install_files() {  # $1: directory holding the six files and batches.meta.txt
    mkdir -p "$OUT_DIR"
    local f
    for f in $FILES batches.meta.txt; do
        if [ -f "$1/$f" ]; then mv -f "$1/$f" "$OUT_DIR/$f"; fi
    done
}

from_official() {  # $1: cifar-10-binary.tar.gz
    local sum
    echo "verifying the sha256 of $1"
    sum="$(sha256_of "$1")"
    [ "$sum" = "$OFFICIAL_SHA256" ] || die "'$1' has sha256 $sum, expected $OFFICIAL_SHA256:
  the file is damaged or not CIFAR-10's cifar-10-binary.tar.gz. Delete it and run \`make data\` again."
    make_work_dir
    tar xzf "$1" -C "$WORK" || die "could not unpack '$1'; delete it and run \`make data\` again."
    [ -d "$WORK/cifar-10-batches-bin" ] || die "'$1' holds no cifar-10-batches-bin/ folder."
    build_converter
    "$CONVERTER" --check-cifar10 "$WORK/cifar-10-batches-bin" || exit 1
    install_files "$WORK/cifar-10-batches-bin"
}

from_folders() {  # $1: image-folder tree, directory or .tar.gz; $2: 1 if it is CIFAR-10 (strict counts)
    local src="$1" sums want got
    make_work_dir
    build_converter
    if [ ! -d "$src" ]; then
        # a SHA256SUMS beside the tarball ("<hash>  <name>" lines) is checked when it lists it
        sums="$(dirname "$src")/SHA256SUMS"
        want=""
        if [ -f "$sums" ]; then
            want="$(awk -v n="$(basename "$src")" '{f = $2; sub(/^\*/, "", f)} f == n {print $1}' "$sums")"
        fi
        if [ -n "$want" ]; then
            echo "verifying the sha256 of $src against $sums"
            got="$(sha256_of "$src")"
            [ "$got" = "$want" ] || die "'$src' has sha256 $got but $sums says $want: the copy is damaged."
        fi
        echo "unpacking $src"
        mkdir "$WORK/images"
        tar xzf "$src" -C "$WORK/images" || die "could not unpack '$src' (expected a .tar.gz of train/<class>/ and test/<class>/ folders)."
        # a tarball may wrap the tree in one top folder
        local top=("$WORK/images"/*)
        if [ ! -d "$WORK/images/train" ] && [ ${#top[@]} -eq 1 ] && [ -d "${top[0]}" ]; then
            src="${top[0]}"
        else
            src="$WORK/images"
        fi
    fi
    if [ ! -d "$src/train" ] || [ ! -d "$src/test" ]; then die "'$1' holds no train/ and test/ folders; an image-folder tree is train/<class>/* and test/<class>/*."; fi
    "$CONVERTER" "$src" "$WORK/out" || exit 1
    if [ "$2" = 1 ]; then
        "$CONVERTER" --check-cifar10 "$WORK/out" || exit 1
    else
        "$CONVERTER" --check "$WORK/out" || exit 1
    fi
    install_files "$WORK/out"
}

is_official_tarball() {
    [ "$(basename "$1")" = "cifar-10-binary.tar.gz" ] || tar tzf "$1" 2>/dev/null | grep '^cifar-10-batches-bin/data_batch_1.bin$' > /dev/null
}

# ----------------------------------------------------------------------------

start=$(date +%s)
if have_all_files "$OUT_DIR"; then
    echo "$OUT_DIR already holds CIFAR-10 (6 files of $FILE_BYTES bytes); nothing to do."
    echo "(to rebuild it, delete that directory and run \`make data\` again)"
    exit 0
fi

if [ -n "${CIFAR10_TARBALL:-}" ]; then
    [ -e "$CIFAR10_TARBALL" ] || die "CIFAR10_TARBALL='$CIFAR10_TARBALL' does not exist."
    if [ -f "$CIFAR10_TARBALL" ] && is_official_tarball "$CIFAR10_TARBALL"; then
        from_official "$CIFAR10_TARBALL"
    else
        echo "converting the image folders in $CIFAR10_TARBALL"
        from_folders "$CIFAR10_TARBALL" 0
    fi
elif [ -f "$OFFICIAL_LOCAL" ]; then
    from_official "$OFFICIAL_LOCAL"
elif [ -f "$SHARED_JPEG" ]; then
    echo "converting CIFAR-10 from the JPEG folders in $SHARED_JPEG"
    from_folders "$(cd "$(dirname "$SHARED_JPEG")" && pwd)/$(basename "$SHARED_JPEG")" 1
else
    echo "downloading $OFFICIAL_URL"
    tmp="$OFFICIAL_LOCAL.part"
    if { command -v curl > /dev/null && curl -fL --connect-timeout 15 -o "$tmp" "$OFFICIAL_URL"; } ||
       { command -v wget > /dev/null && wget --timeout=15 --tries=2 -O "$tmp" "$OFFICIAL_URL"; }; then
        mv -f "$tmp" "$OFFICIAL_LOCAL"
        from_official "$OFFICIAL_LOCAL"
    else
        rm -f "$tmp"
        die "no CIFAR-10 found and the download failed. Any one of these works:
  - put the official cifar-10-binary.tar.gz (from $OFFICIAL_URL) at $OFFICIAL_LOCAL
  - put CIFAR-10's six .bin files in $OUT_DIR (or point --data / \$CIFAR10_DIR at them)
  - CIFAR10_TARBALL=/path/to/images.tar.gz make data   (or a directory: train/<class>/*, test/<class>/*, 32x32 images)
then run \`make data\` again."
    fi
fi

have_all_files "$OUT_DIR" || die "internal: $OUT_DIR is incomplete after preparation."
echo "CIFAR-10 ready in $OUT_DIR ($(( $(date +%s) - start ))s)"
