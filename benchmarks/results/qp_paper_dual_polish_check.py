import cProfile, pstats, sys, time
import numpy as np, cvxpy as cp, torch
from cvxlayers.torch import CvxpyLayer, qp
rng = np.random.default_rng(0)
n = m = 128; batch = 128
L0 = rng.standard_normal((n, n)); Q = L0 @ L0.T / n + 0.1 * np.eye(n); L = np.linalg.cholesky(Q).T
q = rng.standard_normal((batch, n)); G = rng.standard_normal((batch, m, n))
h = np.einsum("bmn,bn->bm", G, rng.standard_normal((batch, n))) + rng.uniform(0.1, 1.0, (batch, m))
w = torch.tensor(rng.standard_normal((batch, n)))
xv = cp.Variable(n); qp_, Gp, hp = cp.Parameter(n), cp.Parameter((m, n)), cp.Parameter(m)
prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(L @ xv) + qp_ @ xv), [Gp @ xv <= hp])
layer = CvxpyLayer(prob, [qp_, Gp, hp], [xv], solver="QP")
Qt = torch.tensor(Q)
def mk(): return [torch.tensor(a, requires_grad=True) for a in (q, G, h)]
def lay(): t = mk(); (layer(*t)[0] * w).sum().backward()
def tqp(): t = mk(); (qp(Qt, *t) * w).sum().backward()
lay(); tqp()
for r in range(3):
    for f in (lay, tqp):
        s = time.perf_counter(); f(); print(f.__name__, round(time.perf_counter() - s, 3))
import os; sys.exit(0)
pr = cProfile.Profile(); pr.enable(); (lay if which == "lay" else tqp)(); pr.disable()
pstats.Stats(pr).sort_stats("cumulative").print_stats(45)
