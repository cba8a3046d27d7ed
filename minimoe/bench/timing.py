"""Timing and the description of the machine a measurement came from.

Every implementation of one (shape, routing, T) point is timed in the same loop, one call of
each in turn per repeat, so that a burst of load from another process hits them all alike; the
median of the repeats is reported. On a GPU each sample is measured with CUDA events
(`torch.cuda.Event(enable_timing=True)`) and a synchronize; on a CPU with `time.perf_counter`.
A sample of a very fast call averages several calls, so that it lasts about `min_sample_ms`.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device, calls: int = 1) -> float:
    """Milliseconds per call of fn, averaged over `calls` back-to-back calls."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        _sync(device)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / calls
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) * 1e3 / calls


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    device: torch.device,
    repeats: int,
    warmup: int = 1,
    min_sample_ms: float = 5.0,
) -> dict[str, list[float]]:
    """Time each function `repeats` times, interleaved; returns the samples (ms) per name.

    Each function is first called `warmup` times (allocator, lazy initialisation, caches); the
    last warm-up time decides how many calls one sample averages.
    """
    calls: dict[str, int] = {}
    for name, fn in fns.items():
        ms = 0.0
        for _ in range(max(warmup, 1)):
            ms = time_once(fn, device)
        calls[name] = max(1, min(100, int(min_sample_ms / max(ms, 1e-3))))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(time_once(fn, device, calls[name]))
    return samples


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def cpu_model() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict:
    """What a result depends on: device, CPU, cores, threads, library versions."""
    import minimoe

    info = {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "minimoe": minimoe.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    return info
