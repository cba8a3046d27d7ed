"""Timing and the description of the machine a measurement came from.

Every implementation of one (shape, routing, T) point is timed in the same loop, one call of
each in turn per repeat, so that a burst of load from another process hits them all alike; the
median of the repeats is reported. `compare` is the same loop for a lesson: it reports the fastest
repeat, which load from other processes moves least, and warns when the repeats spread. On a GPU each sample is measured with CUDA events
(`torch.cuda.Event(enable_timing=True)`) and a synchronize; on a CPU with `time.perf_counter`.
A sample of a very fast call averages several calls, so that it lasts about `min_sample_ms`.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(
    fn: Callable[[], object],
    device: torch.device,
    calls: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Milliseconds per call of fn, averaged over `calls` back-to-back calls.

    On a CPU `clock` is the clock read before and after (seconds): `time.perf_counter`, the wall
    clock, or `time.process_time`, the CPU time of this process, which does not run while other
    processes hold the cores.
    """
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        _sync(device)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / calls
    t0 = clock()
    for _ in range(calls):
        fn()
    return (clock() - t0) * 1e3 / calls


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    device: torch.device,
    repeats: int,
    warmup: int = 1,
    min_sample_ms: float = 5.0,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Time each function `repeats` times, interleaved; returns the samples (ms) per name.

    Each function is first called `warmup` times (allocator, lazy initialisation, caches); the
    last warm-up time decides how many calls one sample averages.
    """
    calls: dict[str, int] = {}
    for name, fn in fns.items():
        ms = 0.0
        for _ in range(max(warmup, 1)):
            ms = time_once(fn, device, clock=clock)
        calls[name] = max(1, min(100, int(min_sample_ms / max(ms, 1e-3))))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(time_once(fn, device, calls[name], clock))
    return samples


def median(samples: list[float]) -> float:
    return statistics.median(samples)


SPREAD_WARNING = 0.3  # a median more than 30 % above the minimum: the machine was busy


@dataclass(frozen=True)
class Comparison:
    """Interleaved timings of several functions, summarised for a reader on a busy machine.

    Noise from other processes only ever adds time, so the fastest of the repeats (`best_ms`) is
    the estimate that moves least when the machine is busy; the median says how busy it was.
    `spread(name)` = median / minimum - 1: 0.05 on an idle machine, 0.5 or more under load.
    """

    samples_ms: dict[str, list[float]]
    spread_warning: float = SPREAD_WARNING

    def best_ms(self, name: str) -> float:
        return min(self.samples_ms[name])

    def median_ms(self, name: str) -> float:
        return statistics.median(self.samples_ms[name])

    def spread(self, name: str) -> float:
        return self.median_ms(name) / max(self.best_ms(name), 1e-9) - 1.0

    def speedup(self, name: str, over: str) -> float:
        """How many times faster `name` is than `over`, from the best repeats."""
        return self.best_ms(over) / max(self.best_ms(name), 1e-9)

    def noisy(self) -> list[str]:
        """The functions whose repeats spread more than `spread_warning`."""
        return [n for n in self.samples_ms if self.spread(n) > self.spread_warning]

    def warning(self) -> str | None:
        """A sentence for the reader when the repeats disagree, else None."""
        noisy = self.noisy()
        if not noisy:
            return None
        worst = max(noisy, key=self.spread)
        return (
            f"warning: the repeats of {', '.join(noisy)} spread widely (the median of {worst} is "
            f"{self.spread(worst):.0%} above its best): the machine was busy. The ratios use the "
            "best repeat of each, which moves least; run the cell again when the machine is "
            "quieter, and trust only differences larger than that spread."
        )


def compare(
    fns: dict[str, Callable[[], object]],
    device: torch.device | str = "cpu",
    repeats: int = 7,
    warmup: int = 1,
    min_sample_ms: float = 5.0,
    spread_warning: float = SPREAD_WARNING,
    threads: int | None = 1,
    cpu_time: bool = True,
) -> Comparison:
    """Time each function `repeats` times, interleaved (`time_interleaved`), for a comparison.

    Interleaving makes a burst of load hit every function alike; the minimum of the repeats is
    the estimate (`Comparison.best_ms`), and `Comparison.warning()` speaks up when the repeats
    spread widely. Used by the lessons, where a learner's machine may be running anything.

    `threads` (default 1) sets torch's CPU threads while timing, and puts the setting back. On a
    busy CPU a second OpenMP thread waits for a free core at every operation, which slows many
    small operations (a loop over experts) far more than a few large ones: on a 2-core machine
    under load, two threads measured the loop 4x slower than one thread did, and inverted the
    ranking. One thread measures the work itself. None keeps the current setting.

    `cpu_time` (default True; CPU only) reads `time.process_time`, the CPU time this process
    used, instead of the wall clock: time spent waiting while other programs hold the cores is
    not counted, so a busy machine changes the result far less. (It counts every thread of the
    process, so it suits one thread; a GPU is timed with CUDA events either way.)
    """
    if not fns:
        raise ValueError("compare needs at least one function to time")
    if repeats < 2:
        raise ValueError(f"repeats must be >= 2 to see the spread, got {repeats}")
    if spread_warning <= 0:
        raise ValueError(f"spread_warning must be > 0, got {spread_warning}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {threads}")
    for name, fn in fns.items():
        if not callable(fn):
            raise TypeError(f"{name!r} is not callable")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        clock = time.process_time if cpu_time else time.perf_counter
        samples = time_interleaved(fns, torch.device(device), repeats, warmup, min_sample_ms, clock)
    finally:
        torch.set_num_threads(before)
    return Comparison(samples, spread_warning)


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
