#!/usr/bin/env bash
# Build everything a guest boots from and put it in kernels/out/:
#   vmlinux      the guest kernel (cached per config under $HBD_CACHE, default /var/cache/hbd)
#   initrd.cpio  the initramfs holding only the guest init
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out="$here/out"
mkdir -p "$out"
vmlinux=$("$here/build-kernel.sh")
ln -sf "$vmlinux" "$out/vmlinux"
"$here/init/build-init.sh" "$out"
echo "guest kernel: $(readlink -f "$out/vmlinux")"
echo "guest initrd: $out/initrd.cpio"
