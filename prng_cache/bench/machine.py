"""What machine the figures were measured on."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import tempfile
import time


def mount_of(path: str) -> tuple[str, str, str]:
    """(device, mount point, fs type) of the file system holding ``path``."""
    path = os.path.realpath(path)
    best = ("?", "/", "?")
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                dev, mnt, fs = parts[0], parts[1].replace("\\040", " "), parts[2]
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[1]):
                    best = (dev, mnt, fs)
    except OSError:
        pass
    return best


RAM_FS = ("tmpfs", "ramfs")


def choose_workdir(requested: str | None) -> tuple[str, str | None]:
    """A fresh directory on a real disk for the SSD side; (path, warning)."""
    warn = None
    if requested:
        base = requested
        os.makedirs(base, exist_ok=True)
    else:
        # /var/tmp is on a disk almost everywhere (unlike /tmp) and keeps the
        # scratch files out of the user's tree; else the current directory
        base = "/var/tmp"
        if not os.path.isdir(base) or mount_of(base)[2] in RAM_FS or not os.access(base, os.W_OK):
            base = os.getcwd()
    if mount_of(base)[2] in RAM_FS:
        warn = f"{base} is on {mount_of(base)[2]}: the 'SSD' side is in RAM too; pass --workdir on a disk"
    return tempfile.mkdtemp(prefix="prng-bench-", dir=base), warn


def _rotational(dev: str) -> int | None:
    name = os.path.basename(os.path.realpath(dev)) if dev.startswith("/dev/") else None
    if not name:
        return None
    for cand in (f"/sys/class/block/{name}/queue/rotational", f"/sys/class/block/{name}/../queue/rotational"):
        try:
            with open(cand) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            continue
    return None


def _meminfo() -> dict[str, int]:
    out = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return out


def mem_available() -> int | None:
    return _meminfo().get("MemAvailable")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _virt() -> str | None:
    try:
        r = subprocess.run(["systemd-detect-virt"], capture_output=True, text=True, timeout=5)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def describe(workdir: str) -> dict:
    dev, mnt, fs = mount_of(workdir)
    sdev, smnt, sfs = mount_of("/dev/shm")
    mem = _meminfo()
    try:
        st = os.statvfs("/dev/shm")
        shm_size = st.f_blocks * st.f_frsize
    except OSError:
        shm_size = None
    try:
        import numpy

        npv = numpy.__version__
    except ImportError:
        npv = None
    return {
        "hostname": socket.gethostname(),
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "mem_total_gb": round(mem.get("MemTotal", 0) / 1e9, 2),
        "mem_available_gb": round(mem.get("MemAvailable", 0) / 1e9, 2),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "numpy": npv,
        "virtualization": _virt(),
        "ssd": {"workdir": workdir, "device": dev, "mount": mnt, "fs": fs, "rotational": _rotational(dev)},
        "shm": {"fs": sfs, "size_gb": round(shm_size / 1e9, 2) if shm_size else None},
        "root": os.geteuid() == 0,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_start": loadavg(),
    }
