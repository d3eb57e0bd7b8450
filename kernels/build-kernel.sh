#!/usr/bin/env bash
# Build the hbd guest kernel (uncompressed vmlinux, booted by QEMU microvm via PVH)
# from Debian's kernel source: linux-source-6.1 on Debian 12, linux-source-6.12
# on Debian 13 (the newest linux-source-X.Y installed, if there are several),
# once per (source version, config, this script).
#
#   kernels/build-kernel.sh [CACHE_DIR]      prints the path of the cached vmlinux
#
# Why the patches below:
#  * free_init_pages() poisons every freed init page (memset 0xcc). Under TCG this
#    costs 0.15-0.3 s of a 0.6 s boot and buys nothing in a throwaway guest.
#  * hbd.apic_hz=N: the local APIC timer's input clock, told by the host, as
#    KVM's and VMware's paravirt code tell it. Without it the guest has two bad
#    choices under TCG (no TSC-deadline timer there): calibrate the APIC timer
#    (100 ms of spinning per boot) or boot with noapictimer and take the PIT as
#    its clock event device, whose 16-bit counter cannot be set further than
#    27 ms ahead: an idle guest then wakes 37 times a second, 1.2 % of a host
#    core per idle container. The APIC timer sleeps as long as it is told.
#  * A network device's transmit watchdog is a deferrable timer: it checks for a
#    stuck transmit queue every 5 s, which only matters while the guest sends,
#    that is while it is awake anyway; as a plain timer it woke every idle
#    guest with a NIC up every 5 s.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${1:-${HBD_CACHE:-/var/cache/hbd}}
src_tar=$(find /usr/src -maxdepth 1 -name 'linux-source-*.tar.xz' | sort -V | tail -n 1)
[ -n "$src_tar" ] || { echo "missing /usr/src/linux-source-*.tar.xz (apt install linux-source)" >&2; exit 1; }
src_name=$(basename "$src_tar" .tar.xz)   # linux-source-X.Y: the package and the tree's top directory

src_version=$(dpkg-query -W -f='${Version}' "$src_name" 2>/dev/null || stat -c %s "$src_tar")
hash=$( { echo "$src_name $src_version"; cat "$here/config/guest.config" "$here/build-kernel.sh"; } | sha256sum | cut -c1-16)
out="$cache/kernel/$hash"
if [ -f "$out/vmlinux" ]; then
    echo "$out/vmlinux"
    exit 0
fi

work="$cache/kernel/build-$hash"
rm -rf "$work"
mkdir -p "$work"
echo "hbd: building guest kernel $hash in $work (several minutes, once)" >&2
tar -xJf "$src_tar" -C "$work"
cd "$work/$src_name"

# free_init_pages() passes POISON_FREE_INITMEM to free_reserved_area() on a line
# of its own in both 6.1 and 6.12; a poison value above 0xff skips the memset.
# Should a later source differ, build unpatched (only the boot gets slower) and say so.
sed -i 's/POISON_FREE_INITMEM, what);/-1, what); \/* hbd: no init poisoning *\//' arch/x86/mm/init.c
grep -q 'hbd: no init poisoning' arch/x86/mm/init.c ||
    echo "hbd: warning: init poisoning not patched out in $src_name (arch/x86/mm/init.c differs)" >&2

apic=arch/x86/kernel/apic/apic.c
cat >> "$apic" <<'PATCH'

/* hbd: the APIC timer's input clock in Hz, from the host: no calibration. */
static int __init hbd_apic_hz(char *arg)
{
	unsigned long hz;

	if (!arg || kstrtoul(arg, 0, &hz) || hz < HZ)
		return -EINVAL;
	lapic_timer_period = hz / HZ;
	return 0;
}
early_param("hbd.apic_hz", hbd_apic_hz);
PATCH
grep -q '^unsigned int lapic_timer_period' "$apic" ||
    { echo "hbd: $src_name has no lapic_timer_period in $apic: hbd.apic_hz cannot be added" >&2; exit 1; }

sed -i 's/timer_setup(&dev->watchdog_timer, dev_watchdog, 0);/timer_setup(\&dev->watchdog_timer, dev_watchdog, TIMER_DEFERRABLE); \/* hbd *\//' \
    net/sched/sch_generic.c
grep -q 'dev_watchdog, TIMER_DEFERRABLE); /\* hbd' net/sched/sch_generic.c ||
    echo "hbd: warning: the transmit watchdog stays a plain timer in $src_name (net/sched/sch_generic.c differs)" >&2

make -s ARCH=x86_64 tinyconfig >&2
./scripts/kconfig/merge_config.sh -m .config "$here/config/guest.config" >&2
make -s ARCH=x86_64 olddefconfig >&2

# Fail loudly when a requested option did not survive dependency resolution.
missing=0
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=n) opt=${line%%=*}; grep -q "^$opt=" .config && { echo "kept unwanted: $opt" >&2; missing=1; } ;;
        CONFIG_*=*) grep -qxF "$line" .config || { echo "not applied: $line" >&2; missing=1; } ;;
    esac
done < "$here/config/guest.config"
[ "$missing" = 0 ] || { echo "hbd: kernel config fragment did not apply" >&2; exit 1; }

make -s ARCH=x86_64 -j"$(nproc)" vmlinux >&2
mkdir -p "$out.tmp"
cp vmlinux "$out.tmp/vmlinux"
cp .config "$out.tmp/config"
make -s kernelrelease > "$out.tmp/release"
rm -rf "$out"
mv "$out.tmp" "$out"
cd /
rm -rf "$work"
echo "$out/vmlinux"
