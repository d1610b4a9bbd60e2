#!/usr/bin/env python3
"""A rate-limited live migration of a guest doing disk I/O, with QEMU alone.

No herd involved: two QEMUs on one host share one raw disk image (the target
opens it inactive, as for shared storage), the source's guest writes and
reads that disk every second, and the RAM migration is capped with
`max-bandwidth`. Under QEMU 7.2's TCG (Debian bookworm) the guest on the
target mostly stops printing its ticks or oopses in its timer code, while
the same move uncapped, or capped with a guest that does no disk I/O, runs
on. See docs/vm.md, "Known problems".

Usage: docs/repro/qemu_capped_migration.py GUEST_DIR [BYTES_PER_SEC] [RUNS]
GUEST_DIR holds `vmlinuz` and `initrd` from `herd vm guest GUEST_DIR`
(its guest uses the disk when the kernel command line has `herd.disk=`).
"""
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time


def qmp(path):
    sock = socket.socket(socket.AF_UNIX)
    for _ in range(2000):
        try:
            sock.connect(path)
            break
        except OSError:
            time.sleep(0.005)
    f = sock.makefile("rwb")
    f.readline()

    def execute(cmd, args=None):
        message = {"execute": cmd}
        if args is not None:
            message["arguments"] = args
        f.write((json.dumps(message) + "\n").encode())
        f.flush()
        while True:
            reply = json.loads(f.readline())
            if "return" in reply or "error" in reply:
                return reply

    execute("qmp_capabilities")
    return execute


def qemu(work, name, guest, disk, extra):
    console = open(os.path.join(work, f"{name}.console"), "w")
    args = [
        "qemu-system-x86_64", "-machine", "q35,accel=tcg", "-m", "128M", "-smp", "1",
        "-nodefaults", "-display", "none",
        "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
        "-qmp", f"unix:{work}/{name}.sock,server=on,wait=off", "-no-reboot",
        "-kernel", f"{guest}/vmlinuz", "-initrd", f"{guest}/initrd",
        "-append", "console=ttyS0 quiet panic=-1 herd.disk=repro",
        "-drive", f"file={disk},if=virtio,cache=none,aio=threads,format=raw",
    ] + extra
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=console,
                            stderr=subprocess.STDOUT)


def one_move(guest, cap):
    with tempfile.TemporaryDirectory() as work:
        disk = os.path.join(work, "disk.img")
        subprocess.run(["qemu-img", "create", "-f", "raw", disk, "64M"],
                       check=True, capture_output=True)
        source = qemu(work, "source", guest, disk, [])
        time.sleep(6)
        target = qemu(work, "target", guest, disk, ["-incoming", "defer", "-S"])
        src, dst = qmp(f"{work}/source.sock"), qmp(f"{work}/target.sock")
        port = 40000 + os.getpid() % 20000
        dst("migrate-incoming", {"uri": f"tcp:127.0.0.1:{port}"})
        src("migrate-set-capabilities",
            {"capabilities": [{"capability": "auto-converge", "state": True}]})
        src("migrate-set-parameters", {"downtime-limit": 300, "max-bandwidth": cap})
        src("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
        while True:
            info = src("query-migrate")["return"]
            if info.get("status") in ("completed", "failed"):
                break
            time.sleep(0.05)
        source.kill()
        while dst("query-migrate")["return"].get("status") != "completed":
            time.sleep(0.02)
        dst("cont")
        time.sleep(12)
        text = open(os.path.join(work, "target.console")).read()
        target.kill()
        ticks = len(re.findall("herd-guest: tick", text))
        oops = "BUG:" in text or "general protection" in text
        return info.get("status"), info.get("total-time"), ticks, oops


def main():
    guest = sys.argv[1]
    cap = int(sys.argv[2]) if len(sys.argv) > 2 else 16 << 20
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    for run in range(runs):
        status, total_ms, ticks, oops = one_move(guest, cap)
        health = "runs on" if ticks >= 5 and not oops else "BROKEN"
        print(f"run {run + 1}: migration {status} in {total_ms} ms; "
              f"target ticks in 12 s: {ticks}{' (oops)' if oops else ''}: {health}")


if __name__ == "__main__":
    main()
