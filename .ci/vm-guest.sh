#!/usr/bin/env bash
# Fetches what the VM tests boot: QEMU and a static busybox from Debian, and
# a Linux kernel (Debian's cloud kernel: small, virtio and serial built in)
# unpacked to target/vm-guest/vmlinuz. The tests build the initramfs
# themselves. Safe to run again; skips what is there.
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
if [ -s "$out/vmlinuz" ]; then
    echo "kernel already at $out/vmlinuz"
    exit 0
fi
mkdir -p "$out"
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
echo "kernel at $out/vmlinuz"
