"""Shared helpers for the benchmarks: interleaved timing, summaries, environment info.

Not part of the package; imported by the scripts in this folder only.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone


def load_peer():
    """cvxpylayers' torch layer class, or ``None`` (with a note) if it is not importable.

    cvxpylayers is not a dependency of cvxlayers; install it in a separate virtual
    environment (see benchmarks/README.md) and run the scripts with that interpreter.
    """
    try:
        import cvxpylayers
        from cvxpylayers.torch import CvxpyLayer as PeerLayer
    except Exception as exc:  # noqa: BLE001 - any import failure just skips the peer
        print(f"note: cvxpylayers is not importable ({type(exc).__name__}: {exc}); "
              "skipping the cvxpylayers comparison. See benchmarks/README.md for the venv.")
        return None, None
    return PeerLayer, getattr(cvxpylayers, "__version__", "?")


def environment() -> dict:
    """Versions and machine facts recorded next to every figure."""
    import cvxpy
    import diffcp
    import numpy
    import scipy
    import scs
    import torch

    import cvxlayers

    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cvxlayers": getattr(cvxlayers, "__version__", "?"),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cvxpy": cvxpy.__version__,
        "diffcp": getattr(diffcp, "__version__", "?"),
        "scs": scs.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "interpreter": sys.executable,
    }
    try:
        import clarabel
        info["clarabel"] = getattr(clarabel, "__version__", "?")
    except ImportError:
        pass
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def print_environment(info: dict) -> None:
    print("environment: " + ", ".join(f"{k}={v}" for k, v in info.items()))


def time_interleaved(contenders: dict, repeats: int, warmup: int, disable_gc: bool = True) -> dict:
    """Per-call wall times (seconds) of each contender, calls interleaved round-robin.

    Each round calls every contender once, in an order rotated every round, so slow
    drifts of a shared machine hit all contenders alike. Like ``timeit``, the garbage
    collector is off while timing (and run between rounds' batches of 100).

    Args:
        contenders: name -> zero-argument callable doing one full call.
        repeats: timed rounds.
        warmup: untimed rounds first.

    Returns:
        name -> list of per-call times.
    """
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    times = {name: [] for name in names}
    clock = time.perf_counter
    gc.collect()
    was_enabled = gc.isenabled()
    if disable_gc:
        gc.disable()
    try:
        for r in range(repeats):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                fn = contenders[name]
                t0 = clock()
                fn()
                times[name].append(clock() - t0)
            if disable_gc and r % 100 == 99:
                gc.collect()
    finally:
        if was_enabled:
            gc.enable()
    return times


def summarize(samples) -> dict:
    return {
        "median": statistics.median(samples),
        "mean": statistics.fmean(samples),
        "p10": _quantile(samples, 0.10),
        "p90": _quantile(samples, 0.90),
        "min": min(samples),
        "n": len(samples),
    }


def _quantile(samples, q):
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:8.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:8.2f} ms"
    return f"{seconds:8.3f} s "


def dump_json(path: str | None, payload: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(payload, f, indent=2, default=str)
        print(f"wrote {path}")
