"""Peak resident memory of the process while a function runs (Linux's VmHWM, reset first).

Taught in: notebooks/07_gpu_and_scaling.ipynb.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Callable
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", _STATUS.read_text()).group(1))


def peak_rss_increase(fn: Callable[[], object]) -> int | None:
    """Bytes by which the process's peak resident memory rose above its current size during
    ``fn()``; None where Linux's /proc interface is missing.

    Writing 5 to /proc/self/clear_refs resets the high-water mark VmHWM to the current resident
    size (Linux >= 4.0), so the figure is this call's own peak: every tensor alive at once, plus
    what the C allocator kept. It is a measurement (allocator and machine dependent), not a
    count: show it, assert on ``OperatorAudit.allocated_bytes`` instead.
    """
    _trim_free_memory()
    try:
        _CLEAR_REFS.write_text("5")
        before = _status_kib("VmRSS")
    except OSError:
        return None
    fn()
    return max(0, _status_kib("VmHWM") - before) * 1024


def _trim_free_memory() -> None:
    """glibc's ``malloc_trim(0)``: give free heap memory back to the system (no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
