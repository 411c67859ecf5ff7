"""Jacobian accuracy at default settings (no tolerances, no mode), against closed forms.

Three projections with known Jacobians, 512 random y (size 5; size 4 for the ball) from a
fixed seed, points within 1e-2 of a kink left out:

- ``x>=0``:    argmin ‖x − y‖² s.t. x ≥ 0,          dx/dy = diag(y > 0);
- ``box``:     argmin ‖x − y‖² s.t. 0 ≤ x ≤ 1,      dx/dy = diag(0 < y < 1);
- ``ball``:    argmin ‖x − y‖² s.t. ‖x‖₂ ≤ 1 (an active second-order cone for |y| > 1),
               dx/dy = (I − x xᵀ)/|y| there, I inside.

For each solver (and, with ``--modes``, each derivative mode) it prints the largest entrywise
error of the full Jacobian and how many entries are off by more than 1e-2; cvxpylayers 1.2
at its defaults (SCS) is measured on the same data when it is importable.

Usage:
    python benchmarks/default_gradients.py [--solvers SCS,CLARABEL,ECOS,QP] [--modes default,dense]
        [--batch 512] [--no-peer]
"""

from __future__ import annotations

import argparse
import warnings

import cvxpy as cp
import numpy as np
import torch

MARGIN = 1e-2


def cases(batch: int):
    rng = np.random.default_rng(0)
    Y = rng.standard_normal((batch, 5))
    far = (np.abs(Y) > MARGIN).all(axis=1)
    yield "x>=0", 5, [lambda x: x >= 0], Y, np.stack([np.diag(d) for d in (Y > 0) * 1.0]), far
    far_box = far & (np.abs(Y - 1) > MARGIN).all(axis=1)
    inside = ((Y > 0) & (Y < 1)) * 1.0
    yield "box", 5, [lambda x: x >= 0, lambda x: x <= 1], Y, \
        np.stack([np.diag(d) for d in inside]), far_box
    Yb = 1.5 * rng.standard_normal((batch, 4))
    r = np.linalg.norm(Yb, axis=1)
    J = np.stack([np.eye(4) if ri <= 1 else (np.eye(4) - np.outer(v, v) / ri**2) / ri
                  for v, ri in zip(Yb, r)])
    yield "ball", 4, [lambda x: cp.norm(x, 2) <= 1], Yb, J, np.abs(r - 1) > MARGIN


def jacobians(layer, Y):
    y = torch.tensor(Y, requires_grad=True)
    x, = layer(y)
    rows = [torch.autograd.grad(x[:, i].sum(), y, retain_graph=True)[0] for i in range(Y.shape[1])]
    return torch.stack(rows, dim=1).numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solvers", default="SCS,CLARABEL,ECOS,QP")
    parser.add_argument("--modes", default="default", help="'default' = no mode given")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--no-peer", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from cvxlayers.torch import CvxpyLayer
    contenders = []
    for solver in args.solvers.split(","):
        for mode in args.modes.split(","):
            kwargs = {"solver": solver} | ({} if mode == "default" else {"mode": mode})
            contenders.append((f"cvxlayers {solver} {mode}", CvxpyLayer, kwargs))
    if not args.no_peer:
        try:
            from cvxpylayers.torch import CvxpyLayer as PeerLayer
            contenders.append(("cvxpylayers 1.2 default", PeerLayer, {}))
        except ImportError:
            pass
    print(f"{'contender':30s} {'case':6s} {'max error':>10s} {'entries > 1e-2':>15s}")
    for name, n, constraints, Y, exact, keep in cases(args.batch):
        x, y = cp.Variable(n), cp.Parameter(n)
        problem = cp.Problem(cp.Minimize(cp.sum_squares(x - y)), [c(x) for c in constraints])
        for label, Layer, kwargs in contenders:
            if kwargs.get("solver") == "QP" and name == "ball":
                continue  # not a QP
            layer = Layer(problem, parameters=[y], variables=[x], **kwargs)
            error = np.abs(jacobians(layer, Y) - exact)[keep]
            print(f"{label:30s} {name:6s} {error.max():10.2e} {int((error > 1e-2).sum()):>7d}/"
                  f"{error.size}", flush=True)


if __name__ == "__main__":
    main()
