"""Quick start: learn a constraint by training through a convex optimization layer.

The "unknown" system maps an input y to its projection onto the polytope
{x : G x <= h_true}. We observe (y, x*) pairs only, build the same projection as a
cvxlayers layer with h a learnable parameter, and fit h by gradient descent through
the solver. At the end the script prints the learned h beside the true one.

Run:  python examples/quickstart.py            (add --steps N to train longer)
"""

import argparse

import cvxpy as cp
import numpy as np
import torch

from cvxlayers.torch import CvxpyLayer


def projection_layer(G: np.ndarray) -> CvxpyLayer:
    n = G.shape[1]
    x = cp.Variable(n)
    y = cp.Parameter(n)
    h = cp.Parameter(G.shape[0])
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - y)), [G @ x <= h])
    return CvxpyLayer(problem, parameters=[y, h], variables=[x])


def main(steps: int, batch: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    n, m = 2, 4
    G = np.vstack([np.eye(n), -np.eye(n)])           # a box: -h[2:] <= x <= h[:2]
    h_true = np.array([1.0, 0.5, 0.8, 1.2])
    layer = projection_layer(G)

    h = torch.nn.Parameter(torch.full((m,), 2.0, dtype=torch.float64))
    optimizer = torch.optim.Adam([h], lr=0.1)
    for step in range(steps):
        y = torch.tensor(rng.normal(scale=2.0, size=(batch, n)))
        with torch.no_grad():                       # the "unknown" system's answers
            x_true, = layer(y, torch.tensor(h_true))
        x_pred, = layer(y, h)                       # h broadcasts over the batch
        loss = ((x_pred - x_true) ** 2).sum(dim=1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % max(1, steps // 5) == 0 or step == steps - 1:
            print(f"step {step:3d}  loss {loss.item():.2e}  h = {np.round(h.detach().numpy(), 3)}")
    error = np.abs(h.detach().numpy() - h_true).max()
    print(f"learned h = {np.round(h.detach().numpy(), 3)}, true h = {h_true}, max error {error:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.steps, args.batch, args.seed)
