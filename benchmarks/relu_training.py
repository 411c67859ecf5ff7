"""A short training run through cvxpylayers' own "ReLU Layers" example (issue 12).

The layer is z = argmin ‖z − W̃x − b‖² s.t. z ≥ 0, W̃ = W (a variable fixed to a parameter by
an equality, as cvxpylayers' example writes it), with D_in = D_out = 20 and a batch of 64
inputs x; W and b are learned by Adam (lr 0.05) to fit targets relu(x A + 0.1), 30 steps,
float64. Reported per contender: the run's wall time, the loss before and after, and at the
end the largest |z − relu(W x + b)| (the layer's closed form).

Contenders: ``CvxpyLayer(solver="QP")`` and ``CvxpyLayer(solver="SCS")`` (defaults), and
cvxpylayers 1.2 (SCS defaults) when importable (see ``benchmarks/README.md`` for its venv).

Usage::

    python benchmarks/relu_training.py [--steps 30]
"""

from __future__ import annotations

import argparse
import time
import warnings

import cvxpy as cp
import torch

warnings.filterwarnings("ignore")


def problem(d_in: int, d_out: int):
    z, W_tilde = cp.Variable(d_out), cp.Variable((d_out, d_in))
    W, b, x = cp.Parameter((d_out, d_in)), cp.Parameter(d_out), cp.Parameter(d_in)
    objective = cp.Minimize(cp.sum_squares(z - W_tilde @ x - b))
    return cp.Problem(objective, [z >= 0, W_tilde == W]), [W, b, x], [z]


def contenders(prob, params, variables):
    from cvxlayers.torch import CvxpyLayer

    found = {f"cvxlayers solver={s!r}": CvxpyLayer(prob, params, variables, solver=s)
             for s in ("QP", "SCS")}
    try:
        from cvxpylayers.torch import CvxpyLayer as PeerLayer

        found["cvxpylayers 1.2 (SCS defaults)"] = PeerLayer(prob, params, variables)
    except Exception as exc:  # noqa: BLE001 - not installed, or a CVXPY it cannot use
        print(f"note: cvxpylayers unavailable here ({type(exc).__name__}); skipped")
    return found


def train(layer, X, Y, steps: int):
    torch.manual_seed(1)
    d_out, d_in = Y.shape[1], X.shape[1]
    W = torch.nn.Parameter(0.1 * torch.randn(d_out, d_in, dtype=torch.float64))
    b = torch.nn.Parameter(torch.zeros(d_out, dtype=torch.float64))
    optimizer = torch.optim.Adam([W, b], lr=0.05)
    batch = X.shape[0]
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        (z,) = layer(W.expand(batch, -1, -1), b.expand(batch, -1), X)
        loss = ((z - Y) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    elapsed = time.perf_counter() - start
    with torch.no_grad():
        (z,) = layer(W.expand(batch, -1, -1), b.expand(batch, -1), X)
        error = float((z - torch.relu(X @ W.T + b)).abs().max())
    return elapsed, losses[0], losses[-1], error


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    d_in = d_out = 20
    torch.manual_seed(0)
    X = torch.randn(args.batch, d_in, dtype=torch.float64)
    Y = torch.relu(X @ torch.randn(d_in, d_out, dtype=torch.float64) * 0.3 + 0.1)
    prob, params, variables = problem(d_in, d_out)
    print(f"ReLU layer {d_in}x{d_out}, batch {args.batch}, {args.steps} Adam steps, float64")
    for name, layer in contenders(prob, params, variables).items():
        train(layer, X, Y, 1)  # warm-up: compilation of the derivative, caches
        elapsed, first, last, error = train(layer, X, Y, args.steps)
        print(f"  {name:34s} {elapsed:7.2f} s   loss {first:.4f} -> {last:.4f}   "
              f"max|z - relu(Wx + b)| {error:.1e}")


if __name__ == "__main__":
    main()
