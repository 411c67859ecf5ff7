"""Decision-focused learning of an LP's cost vector: implicit, LPGD and smoothed gradients.

A decision maker picks K of n items at least cost, x*(c) = argmin cᵀx s.t. 0 ≤ x ≤ 1,
Σx = K, with costs c = W* z + noise that depend on features z it observes. We see the
features and the decisions only — never the costs — and fit a linear cost model ĉ = W z so
that the layer's decisions x*(ĉ) reproduce the observed ones, minimizing ‖x*(Wz) − x_obs‖²
by SGD with momentum. The metric is the held-out normalized regret

    regret = Σ c_trueᵀ(x*(ĉ) − x_obs) / Σ c_trueᵀ(x_rand − x_obs),   x_rand = (K/n)·1,

0 for perfect decisions and 1 for the uniform (random) choice.

x*(c) is a vertex and piecewise constant in c, so its implicit gradient is zero almost
everywhere: the model cannot learn from it. The same layer with ``gradient="lpgd"``
(perturbed re-solves along the loss gradient; Paulus et al., 2024) or, on the QP backend,
``gradient="smoothed"`` (the derivative at a point of the interior-point method's central
path, s∘λ = μ) passes an informative gradient, and the regret falls. The forward pass is the
same exact LP solve in every variant; only the backward differs.

Run:  python examples/decision_focused.py            (full: ~4 min on 2 cores)
      python examples/decision_focused.py --quick    (fewer steps: under a minute)

Headline: each variant's held-out regret after training, and the median gradient norm of
the implicit variants. Figure: ``decision_focused_regret.png`` (regret and loss curves).
"""

from __future__ import annotations

import time

import cvxpy as cp
import matplotlib.pyplot as plt
import numpy as np
import torch
from _common import example_parser, headline, progress, save_figure

from cvxlayers.torch import CvxpyLayer

N_ITEMS, K, N_FEATURES = 20, 5, 5
NOISE = 0.5
LEARNING_RATE = 0.02
#: (label, solver, gradient, gradient_args): each gradient at its defaults (τ = 1, ρ = 0;
#: μ = 1e-2), as a user gets them.
VARIANTS = [("implicit (SCS)", "SCS", "implicit", None),
            ("implicit (QP)", "QP", "implicit", None),
            ("LPGD (SCS, τ=1)", "SCS", "lpgd", None),
            ("LPGD (QP, τ=1)", "QP", "lpgd", None),
            ("smoothed (QP, μ=0.01)", "QP", "smoothed", None)]


def selection_problem():
    """The K-of-n selection LP with its cost as the parameter."""
    c, x = cp.Parameter(N_ITEMS), cp.Variable(N_ITEMS)
    problem = cp.Problem(cp.Minimize(c @ x), [x >= 0, x <= 1, cp.sum(x) == K])
    return problem, c, x


def optimal_decisions(costs: np.ndarray) -> np.ndarray:
    """The selection LP's vertex solution in closed form: the K cheapest items."""
    x = np.zeros_like(costs)
    np.put_along_axis(x, np.argsort(costs, axis=1)[:, :K], 1.0, axis=1)
    return x


def make_data(rng, n_samples: int, W_true: np.ndarray):
    z = rng.normal(size=(n_samples, N_FEATURES))
    costs = z @ W_true.T + NOISE * rng.normal(size=(n_samples, N_ITEMS))
    return z, costs, optimal_decisions(costs)


def regret(costs, decisions, observed) -> float:
    """Normalized regret of the module docstring."""
    uniform = np.full_like(observed, K / N_ITEMS)
    return float(np.sum(costs * (decisions - observed))
                 / np.sum(costs * (uniform - observed)))


def train(label, solver, gradient, gradient_args, data, steps, batch, seed):
    """SGD on ‖x*(Wz) − x_obs‖²; returns the curves and the median gradient norm."""
    problem, c, x = selection_problem()
    layer = CvxpyLayer(problem, [c], [x], solver=solver, gradient=gradient,
                       gradient_args=gradient_args)
    (z_train, _, x_train), (z_test, c_test, x_test) = data
    generator = torch.Generator().manual_seed(seed)
    W = torch.nn.Parameter(0.1 * torch.randn(N_ITEMS, N_FEATURES, dtype=torch.float64,
                                             generator=generator))
    optimizer = torch.optim.SGD([W], lr=LEARNING_RATE, momentum=0.9)
    z_train, x_train = torch.from_numpy(z_train), torch.from_numpy(x_train)
    history = {"step": [], "regret": [], "loss": []}
    grad_norms = []

    def evaluate(step, loss):
        with torch.no_grad():
            decisions = optimal_decisions((torch.from_numpy(z_test) @ W.T).numpy())
        history["step"].append(step)
        history["regret"].append(regret(c_test, decisions, x_test))
        history["loss"].append(loss)

    evaluate(0, float("nan"))
    for step in progress(range(1, steps + 1), desc=label, leave=False):
        rows = torch.randint(0, z_train.shape[0], (batch,), generator=generator)
        decisions, = layer(z_train[rows] @ W.T)
        loss = ((decisions - x_train[rows]) ** 2).sum(dim=1).mean()
        optimizer.zero_grad()
        loss.backward()
        grad_norms.append(float(W.grad.norm()))
        optimizer.step()
        if step % max(1, steps // 20) == 0 or step == steps:
            evaluate(step, float(loss.detach()))
    return history, float(np.median(grad_norms))


def plot(results, out):
    fig, (ax_regret, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, (history, _) in results.items():
        ax_regret.plot(history["step"], history["regret"], label=label)
        ax_loss.plot(history["step"][1:], history["loss"][1:], label=label)
    ax_regret.set(xlabel="SGD step", ylabel="held-out normalized regret",
                  title="Regret (1 = uniform choice, 0 = optimal)", ylim=(0, None))
    ax_loss.set(xlabel="SGD step", ylabel="‖x*(Wz) − x_obs‖² (minibatch)",
                title="Training loss")
    ax_regret.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out, "decision_focused_regret")


def main() -> None:
    args = example_parser(__doc__).parse_args()
    torch.set_num_threads(1)  # tiny solves: threads only add contention
    rng = np.random.default_rng(args.seed)
    steps, batch = (40, 32) if args.quick else (300, 32)
    W_true = rng.normal(size=(N_ITEMS, N_FEATURES))
    data = (make_data(rng, 1000, W_true), make_data(rng, 500, W_true))
    results = {}
    for label, solver, gradient, gradient_args in VARIANTS:
        start = time.perf_counter()
        results[label] = train(label, solver, gradient, gradient_args, data, steps, batch,
                               args.seed)
        history, median = results[label]
        print(f"{label:22s} regret {history['regret'][0]:.3f} -> {history['regret'][-1]:.3f}"
              f"  (median ‖∇W‖ {median:.1e}; {time.perf_counter() - start:.1f} s)")
    plot(results, args.out)
    finals = ", ".join(f"{label} {history['regret'][-1]:.3f}"
                       for label, (history, _) in results.items())
    medians = ", ".join(f"{label} {median:.1e}" for label, (_, median) in results.items()
                        if label.startswith("implicit"))
    headline(f"headline: held-out regret after {steps} steps (start "
             f"{results[VARIANTS[0][0]][0]['regret'][0]:.3f}): {finals}; median gradient "
             f"norm {medians}")


if __name__ == "__main__":
    main()
