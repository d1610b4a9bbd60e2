#!/usr/bin/env bash
# Fetches what the VM tests boot: QEMU and a static busybox from Debian, and
# a Linux kernel (Debian's cloud kernel: small, serial built in) unpacked to
# target/vm-guest/vmlinuz, with the modules a virtio disk needs (that kernel
# builds virtio as modules) in target/vm-guest/modules/. The tests build the
# initramfs themselves. Safe to run again; skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v qemu-img >/dev/null || need+=(qemu-utils)
[ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

out=target/vm-guest
# In load order; actors/src/driver/vm/guest.rs (VIRTIO_BLK_MODULES) loads them.
modules=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk)
complete() {
    [ -s "$out/vmlinuz" ] || return 1
    for m in "${modules[@]}"; do [ -s "$out/modules/$m.ko" ] || return 1; done
}
if complete; then
    echo "kernel already at $out/vmlinuz"
    exit 0
fi
mkdir -p "$out/modules"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(
    cd "$work"
    apt-get download linux-image-cloud-amd64 2>/dev/null
    image=$(dpkg-deb -f linux-image-cloud-amd64_*.deb Depends | cut -d' ' -f1)
    apt-get download "$image" 2>/dev/null
    dpkg-deb -x "$image"_*.deb root
)
cp "$work"/root/boot/vmlinuz-* "$out/vmlinuz"
for m in "${modules[@]}"; do
    ko=$(find "$work"/root/lib/modules -name "$m.ko" | head -n 1)
    [ -n "$ko" ] || { echo "no $m.ko in the kernel package" >&2; exit 1; }
    cp "$ko" "$out/modules/$m.ko"
done
echo "kernel at $out/vmlinuz, virtio disk modules in $out/modules"
