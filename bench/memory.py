"""Peak memory of one call: RSS sampled from /proc on CPU, the allocator's peak on CUDA."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import torch


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def measure(fn: Callable[[], Any], device: str = "cpu") -> tuple[Any, float, int]:
    """Run ``fn`` once; return (result, seconds, peak extra bytes over the start)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize()
        return result, time.perf_counter() - start, torch.cuda.max_memory_allocated() - base
    base = _rss_bytes()
    peak = [base]
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.002)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    start = time.perf_counter()
    try:
        result = fn()
    finally:
        elapsed = time.perf_counter() - start
        done.set()
        watcher.join()
    return result, elapsed, max(peak[0], _rss_bytes()) - base
