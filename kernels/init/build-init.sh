#!/usr/bin/env bash
# Build the static guest init and its initramfs: OUT_DIR/initrd.cpio (newc,
# uncompressed: the kernel unpacks it without a decompressor).
#   kernels/init/build-init.sh [OUT_DIR]     (default: kernels/out)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../out}
mkdir -p "$out"
cc=musl-gcc
command -v "$cc" >/dev/null || { echo "musl-gcc is missing (apt install musl-tools)" >&2; exit 1; }
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{dev,proc,sys,run,tmp}
# Hardened: stack canaries, and fortify.h's checked calls (musl has no
# _FORTIFY_SOURCE of its own).
"$cc" -static -Os -std=gnu11 -Wall -Wextra -Werror -Wno-unused-parameter \
    -fstack-protector-strong -D_FORTIFY_SOURCE=2 -include "$here/fortify.h" \
    -o "$stage/init" "$here"/*.c
strip "$stage/init"
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc --owner=0:0 --reproducible) \
    > "$out/initrd.cpio.tmp"
mv "$out/initrd.cpio.tmp" "$out/initrd.cpio"
echo "$out/initrd.cpio"
