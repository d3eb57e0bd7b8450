#!/usr/bin/env bash
# Build a base image from Debian packages into an image archive.
#   images/build.sh busybox [OUT_DIR]     -> OUT_DIR/busybox.tar (busybox:latest)
# OUT_DIR defaults to images/out. Rebuilt only when the recipe changed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
name=${1:?usage: images/build.sh RECIPE [OUT_DIR]}
out=${2:-$here/out}
mkdir -p "$out"
python3 "$here/build.py" "$name" "$out"
