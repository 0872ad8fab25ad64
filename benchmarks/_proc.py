"""Resident memory from /proc (Linux), without importing torch: what every benchmark's peak
memory figure is read with (``VmHWM`` minus ``VmRSS`` after resetting the high-water mark)."""

from __future__ import annotations


def status_kib(field: str, pid: int | str = "self") -> int:
    """A ``kB`` field of /proc/PID/status (``VmRSS``, ``VmHWM``...; default this process)."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> int:
    """Reset the kernel's resident high-water mark (``echo 5 > /proc/self/clear_refs``);
    return the resident KiB now, the baseline of the next ``status_kib("VmHWM")``."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return status_kib("VmRSS")
