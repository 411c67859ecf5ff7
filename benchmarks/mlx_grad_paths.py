"""The MLX layer with and without a gradient, next to the PyTorch layer (issue 16).

MLX cannot tell a function whether a gradient will follow, so every MLX call keeps the
backward's state and the derivative work (linearizing the embedding) is deferred to the
first ``vjp`` (``DeferredAdjoint``). This measures what that costs each kind of call:
``mx.grad`` against the PyTorch layer's forward + backward, and a plain MLX call against the
PyTorch layer under ``torch.no_grad()``. Interleaved, medians of 550 rounds after 50 warm-up
rounds; same problem and SCS options as overhead.py.

Usage: python benchmarks/mlx_grad_paths.py
"""
import os
import sys
import time

import mlx.core as mx
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import N, SCS_KWARGS, build_problem  # noqa: E402

from cvxlayers.mlx import CvxpyLayer as MLXLayer  # noqa: E402
from cvxlayers.torch import CvxpyLayer as TorchLayer  # noqa: E402


def main():
    problem, x, y = build_problem()
    y_value = np.random.default_rng(0).standard_normal(N)
    mlx_layer, torch_layer = MLXLayer(problem, [y], [x]), TorchLayer(problem, [y], [x])
    y_mlx = mx.array(y_value, dtype=mx.float64)
    y_torch = torch.tensor(y_value, requires_grad=True)
    mlx_grad = mx.grad(lambda v: mlx_layer(v, solver_args=SCS_KWARGS)[0].sum())

    def torch_grad():
        y_torch.grad = None
        torch_layer(y_torch, solver_args=SCS_KWARGS)[0].sum().backward()

    def torch_plain():
        with torch.no_grad():
            torch_layer(y_torch, solver_args=SCS_KWARGS)

    calls = {"torch layer, forward + backward": torch_grad,
             "mlx layer, mx.grad": lambda: mx.eval(mlx_grad(y_mlx)),
             "torch layer, no_grad forward": torch_plain,
             "mlx layer, plain call": lambda: mx.eval(mlx_layer(y_mlx, solver_args=SCS_KWARGS))}
    torch_grad()
    gap = np.abs(np.array(mlx_grad(y_mlx)) - y_torch.grad.numpy()).max()
    print(f"max |mlx gradient - torch gradient|: {gap:.1e}")
    times = {name: [] for name in calls}
    for _ in range(600):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    medians = {name: np.median(t[50:]) for name, t in times.items()}
    for name, median in medians.items():
        print(f"{name:34s} {median * 1e6:7.1f} us")
    print(f"ratio with gradient:    {medians['mlx layer, mx.grad'] / medians['torch layer, forward + backward']:.2f}x")
    print(f"ratio without gradient: {medians['mlx layer, plain call'] / medians['torch layer, no_grad forward']:.2f}x")


if __name__ == "__main__":
    main()
