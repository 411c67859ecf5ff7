"""Activations as optimization layers: ReLU, sigmoid, softmax, sparsemax, constrained softmax.

Many activation functions are the solution of a small convex problem: Gould et al.
(Deep Declarative Networks §4.6, Proposition 4.10) show that any explicit layer can be
written as a declarative node and write the ReLU as one (§4.7.2); Amos & Kolter (OptNet)
note that a QP layer can represent such piecewise-linear maps; softmax and sparsemax are
entropy- and ℓ2-regularized argmax problems over the simplex. Written in CVXPY, each
becomes a cvxlayers layer whose output is the problem's solution and whose gradient comes
from implicit differentiation of its optimality conditions:

    ReLU                 y = argmin ‖y − x‖²                 s.t.  y ≥ 0
    sigmoid              y = argmin −xᵀy − Σᵢ H_b(yᵢ)                     (elementwise)
    softmax              y = argmin −xᵀy − H(y)              s.t.  1ᵀy = 1
    sparsemax            y = argmin ‖y − x‖²                 s.t.  1ᵀy = 1, y ≥ 0
    constrained softmax  y = argmin −xᵀy − H(y)              s.t.  1ᵀy = 1, y ≤ u

with H(y) = Σᵢ −yᵢ log yᵢ (``cp.entr``) and the binary entropy
H_b(y) = H(y) + H(1 − y). Setting the gradient of the Lagrangian to zero gives the closed
forms: max(x, 0); 1/(1 + e⁻ˣ); eˣ/1ᵀeˣ; max(x − τ, 0) with τ chosen so that 1ᵀy = 1
(Martins & Astudillo 2016); and min(u, eˣ/Z) with Z chosen so that 1ᵀy = 1 (Martins &
Kreutzer 2017; it has no closed form, so the reference is their active-set algorithm,
differentiated by autograd on the final active set).

The QPs (ReLU, sparsemax) use ``solver="QP"``, cvxlayers' batched interior-point method;
the entropy problems need the exponential cone and use Clarabel for training (ECOS at
tight tolerances for the checks).

The script
  1. checks each layer against its closed form (values, and vector-Jacobian products for
     random cotangents, against autograd on the closed form; float64, random inputs),
  2. plots the layers' activation curves and derivatives over the closed forms,
  3. trains a one-hidden-layer MLP on a synthetic 3-class 2-D task (three noisy concentric
     rings, generated locally) three ways: built-in ReLU + softmax (the baseline), the
     ReLU layer + softmax layer, and the ReLU layer + sparsemax layer, and compares their
     held-out accuracy.

Run:  python examples/activations.py            (full: ~2 min on 2 cores)
      python examples/activations.py --quick    (reduced: under a minute)

Headline: the largest discrepancy between a layer and its closed form over the five
activations (values and gradients, float64), then the held-out accuracy of the MLPs
trained with the optimization layers beside the built-in baseline's. Figures:
``activations_curves.png`` and ``activations_training.png``.
"""

from __future__ import annotations

import time

import cvxpy as cp
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from _common import example_parser, headline, progress, save_figure

from cvxlayers.torch import CvxpyLayer

# For the closed-form checks the entropy problems are solved by ECOS at tight tolerances
# (switched per call): Clarabel, fast and used for training, reaches about 1e-5 on these
# exponential-cone problems at its defaults and warns of inaccuracy when pushed below 1e-10.
TIGHT_ECOS = {"solver": "ECOS", "abstol": 1e-10, "reltol": 1e-10, "feastol": 1e-10}


# --------------------------------------------------------------------------------------
# The five activations as CVXPY problems, and their closed forms
# --------------------------------------------------------------------------------------

def relu_layer(n: int) -> CvxpyLayer:
    """ReLU as the projection onto the nonnegative orthant: a QP.

    ‖y‖² − 2xᵀy is ‖y − x‖² less a constant: the same minimizer, but CVXPY keeps it as
    one quadratic in y instead of introducing y − x as n auxiliary variables, which makes
    the QP backend's KKT systems half the size (2-9x faster, measured at batch 64-2000)."""
    x, y = cp.Parameter(n), cp.Variable(n)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(y) - 2 * x @ y), [y >= 0])
    return CvxpyLayer(problem, parameters=[x], variables=[y], solver="QP")


def sigmoid_layer(n: int) -> CvxpyLayer:
    """Sigmoid as an entropy-regularized linear problem on the box [0, 1]ⁿ (the entropies'
    domain enforces the box)."""
    x, y = cp.Parameter(n), cp.Variable(n)
    binary_entropy = cp.entr(y) + cp.entr(1 - y)
    problem = cp.Problem(cp.Minimize(-x @ y - cp.sum(binary_entropy)))
    return CvxpyLayer(problem, parameters=[x], variables=[y], solver="CLARABEL")


def softmax_layer(n: int) -> CvxpyLayer:
    """Softmax as the entropy-regularized maximizer of xᵀy over the probability simplex."""
    x, y = cp.Parameter(n), cp.Variable(n)
    problem = cp.Problem(cp.Minimize(-x @ y - cp.sum(cp.entr(y))), [cp.sum(y) == 1])
    return CvxpyLayer(problem, parameters=[x], variables=[y], solver="CLARABEL")


def sparsemax_layer(n: int) -> CvxpyLayer:
    """Sparsemax as the Euclidean projection onto the probability simplex: a QP (the
    objective is ‖y − x‖² less a constant, as in :func:`relu_layer`)."""
    x, y = cp.Parameter(n), cp.Variable(n)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(y) - 2 * x @ y),
                         [cp.sum(y) == 1, y >= 0])
    return CvxpyLayer(problem, parameters=[x], variables=[y], solver="QP")


def constrained_softmax_layer(n: int) -> CvxpyLayer:
    """Softmax with per-class upper bounds u (a second parameter, so it is learnable too)."""
    x, u, y = cp.Parameter(n), cp.Parameter(n), cp.Variable(n)
    problem = cp.Problem(cp.Minimize(-x @ y - cp.sum(cp.entr(y))), [cp.sum(y) == 1, y <= u])
    return CvxpyLayer(problem, parameters=[x, u], variables=[y], solver="CLARABEL")


def sparsemax(x: torch.Tensor) -> torch.Tensor:
    """Closed form: y = max(x − τ, 0), τ = (Σ_{i∈S} xᵢ − 1)/|S| over the support S, which
    holds the k largest entries for the largest k with 1 + k·x₍ₖ₎ > Σ_{j≤k} x₍ⱼ₎."""
    z, _ = torch.sort(x, dim=-1, descending=True)
    k = torch.arange(1, x.shape[-1] + 1, dtype=x.dtype)
    cumulative = z.cumsum(-1)
    support = (1 + k * z > cumulative).sum(-1, keepdim=True)
    tau = (cumulative.gather(-1, support - 1) - 1) / support.to(x.dtype)
    return torch.clamp(x - tau, min=0)


def constrained_softmax(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Reference by Martins & Kreutzer's active-set algorithm: yᵢ = min(uᵢ, e^{xᵢ}/Z).

    Start with no saturated class; give the free classes the mass 1 − Σ_sat uᵢ in softmax
    proportions; saturate every free class that exceeds its bound; repeat. The saturated set
    only grows and stays inside the optimal one, so at most n rounds are needed. Autograd
    through the last round gives the Jacobian (the active set is locally constant)."""
    saturated = torch.zeros_like(x, dtype=torch.bool)
    weights = torch.exp(x - x.max(-1, keepdim=True).values)
    for _ in range(x.shape[-1]):
        free_weights = torch.where(saturated, 0.0, weights)
        mass = 1 - torch.where(saturated, u, 0.0).sum(-1, keepdim=True)
        y = torch.where(saturated, u, mass * free_weights / free_weights.sum(-1, keepdim=True))
        violated = ~saturated & (y > u)
        if not violated.any():
            break
        saturated = saturated | violated
    return y


ACTIVATIONS = {
    # name: (layer builder, closed form, needs the bound u, solver_args for the checks);
    # the QP backend's default tolerance (1e-9) is already tight.
    "ReLU": (relu_layer, torch.relu, False, None),
    "sigmoid": (sigmoid_layer, torch.sigmoid, False, TIGHT_ECOS),
    "softmax": (softmax_layer, lambda x: torch.softmax(x, dim=-1), False, TIGHT_ECOS),
    "sparsemax": (sparsemax_layer, sparsemax, False, None),
    "constrained softmax": (constrained_softmax_layer, constrained_softmax, True,
                            TIGHT_ECOS),
}


# --------------------------------------------------------------------------------------
# 1. The check against the closed forms
# --------------------------------------------------------------------------------------

def random_bounds(batch: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """Upper bounds in [1.2/n, 2.5/n]: feasible (Σu ≥ 1.2) and tight enough to saturate."""
    return (1.2 + 1.3 * torch.rand(batch, n, generator=generator, dtype=torch.float64)) / n


def check_activation(name: str, batch: int, n: int, generator: torch.Generator) -> tuple:
    """Max |layer − closed form| for the values and for vector-Jacobian products vᵀ∂y/∂x
    (and vᵀ∂y/∂u for the constrained softmax), with random x and cotangents v."""
    build, closed_form, needs_bound, check_args = ACTIVATIONS[name]
    layer = build(n)
    x = 2.0 * torch.randn(batch, n, generator=generator, dtype=torch.float64)
    inputs = [x] + ([random_bounds(batch, n, generator)] if needs_bound else [])
    v = torch.randn(batch, n, generator=generator, dtype=torch.float64)

    layer_inputs = [t.clone().requires_grad_() for t in inputs]
    y_layer, = layer(*layer_inputs, solver_args=check_args)
    grads_layer = torch.autograd.grad((y_layer * v).sum(), layer_inputs)

    ref_inputs = [t.clone().requires_grad_() for t in inputs]
    y_ref = closed_form(*ref_inputs)
    grads_ref = torch.autograd.grad((y_ref * v).sum(), ref_inputs)

    value_error = (y_layer - y_ref).abs().max().item()
    grad_error = max((a - b).abs().max().item() for a, b in zip(grads_layer, grads_ref))
    detail = ""
    if needs_bound:  # say how often a bound binds, so the check is seen to test it
        detail = f"  ({(y_ref >= inputs[1] - 1e-12).any(-1).float().mean():.0%} rows saturated)"
    elif name == "sparsemax":
        detail = f"  ({(y_ref == 0).double().mean():.0%} entries exactly zero)"
    print(f"  {name:20s} values {value_error:.1e}   gradients {grad_error:.1e}{detail}")
    return value_error, grad_error


# --------------------------------------------------------------------------------------
# 2. Activation curves
# --------------------------------------------------------------------------------------

def curve_inputs(name: str, t: torch.Tensor) -> tuple[list[torch.Tensor], int]:
    """The 1-D sweep fed to each activation: x = t for the elementwise ones; x = (t, 0)
    for softmax and sparsemax (so y₁ is a sigmoid and a clipped ramp); x = (t, 0, 0) with
    u = 0.6 for the constrained softmax (so y₁ = min(0.6, eᵗ/(eᵗ + 2)))."""
    batch = t.shape[0]
    if name in ("ReLU", "sigmoid"):
        return [t[:, None]], 1
    if name in ("softmax", "sparsemax"):
        return [torch.stack([t, torch.zeros_like(t)], dim=1)], 2
    x = torch.cat([t[:, None], torch.zeros(batch, 2, dtype=t.dtype)], dim=1)
    return [x, torch.full((batch, 3), 0.6, dtype=t.dtype)], 3


def first_output_and_slope(fn, inputs: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """y₁(t) and dy₁/dt along the sweep (t enters only x₁, so dy₁/dt = ∂y₁/∂x₁)."""
    inputs = [inputs[0].clone().requires_grad_()] + inputs[1:]
    y1 = fn(*inputs)[:, 0]
    slope, = torch.autograd.grad(y1.sum(), inputs[0])
    return y1.detach().numpy(), slope[:, 0].numpy()


def plot_curves(points: int):
    t = torch.linspace(-4, 4, points, dtype=torch.float64)
    fig, axes = plt.subplots(2, len(ACTIVATIONS), figsize=(3.2 * len(ACTIVATIONS), 5.6),
                             sharex=True)
    for col, (name, (build, closed_form, _, check_args)) in enumerate(ACTIVATIONS.items()):
        inputs, n = curve_inputs(name, t)
        layer = build(n)

        def solve(*args, layer=layer, check_args=check_args):
            return layer(*args, solver_args=check_args)[0]

        y_ref, dy_ref = first_output_and_slope(closed_form, inputs)
        y_lay, dy_lay = first_output_and_slope(solve, inputs)
        every = max(1, points // 30)  # markers sparse enough to see the line beneath
        for row, (ref, lay, label) in enumerate([(y_ref, y_lay, "y₁"),
                                                 (dy_ref, dy_lay, "dy₁/dx₁")]):
            ax = axes[row, col]
            ax.plot(t, ref, color="0.3", lw=2, label="closed form")
            ax.plot(t[::every], lay[::every], "o", ms=4, color="C1", label="cvxlayers layer")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axes[0, col].set_title(name)
        axes[1, col].set_xlabel("x₁")
    axes[0, 0].legend(loc="upper left", fontsize=8)
    fig.suptitle("Activations solved as convex problems (dots) over their closed forms (lines)")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------
# 3. A small network trained with them
# --------------------------------------------------------------------------------------

def rings(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes on concentric rings of radii 1, 2, 3 with radial noise 0.35: not
    linearly separable, and the noise makes the rings overlap a little."""
    labels = torch.randint(0, 3, (count,), generator=generator)
    angle = 2 * np.pi * torch.rand(count, generator=generator)
    radius = 1.0 + labels + 0.35 * torch.randn(count, generator=generator)
    points = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    return points.float(), labels


class RingsMLP(torch.nn.Module):
    """2 → width → 3 with a chosen hidden activation and output map.

    ``hidden`` and ``output`` are either built-in functions or cvxlayers layers; the
    output map turns logits into class probabilities."""

    def __init__(self, hidden, output, width: int):
        super().__init__()
        self.inp = torch.nn.Linear(2, width)
        self.out = torch.nn.Linear(width, 3)
        self.hidden, self.output = hidden, output

    def logits(self, x):
        return self.out(self.hidden(self.inp(x)))

    def forward(self, x):
        return self.output(self.logits(x))


def layer_fn(layer: CvxpyLayer):
    """A layer with one input and one output as a plain function."""
    return lambda x: layer(x)[0]


def nll_on_probabilities(p, labels):
    # The probabilities come from the layer; clamp guards log(0) from solver round-off.
    return F.nll_loss(torch.log(p.clamp(min=1e-9)), labels)


def brier(p, labels):
    """Squared error to the one-hot label: defined on sparse outputs, unlike the log loss."""
    return ((p - F.one_hot(labels, 3).to(p.dtype)) ** 2).sum(-1).mean()


def make_models(width: int) -> dict:
    relu = layer_fn(relu_layer(width))
    return {
        # name: (hidden activation, output map, loss on the output)
        "built-in ReLU + softmax": (torch.relu, lambda z: torch.softmax(z, -1),
                                    nll_on_probabilities),
        "ReLU layer + softmax layer": (relu, layer_fn(softmax_layer(3)), nll_on_probabilities),
        "ReLU layer + sparsemax layer": (relu, layer_fn(sparsemax_layer(3)), brier),
    }


def accuracy(model: RingsMLP, x, labels) -> float:
    # Softmax and sparsemax keep the order of the logits, so the class is their argmax:
    # evaluation needs the hidden layer's solve only.
    with torch.no_grad():
        return (model.logits(x).argmax(-1) == labels).float().mean().item()


def train(model: RingsMLP, loss_fn, data, steps: int, batch: int, seed: int, desc: str):
    """Adam on minibatches; the curve's accuracy is on the first 500 held-out points (each
    evaluation solves the hidden layer's QPs), the final one on all of them."""
    x_train, y_train, x_test, y_test = data
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    history = {"step": [], "loss": [], "test accuracy": []}
    evaluate_every = max(1, steps // 12)
    for step in progress(range(steps), desc=desc, leave=False):
        index = torch.randint(0, len(x_train), (batch,), generator=generator)
        loss = loss_fn(model(x_train[index]), y_train[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % evaluate_every == 0 or step == steps - 1:
            history["step"].append(step + 1)
            history["loss"].append(loss.item())
            history["test accuracy"].append(accuracy(model, x_test[:500], y_test[:500]))
    history["final accuracy"] = accuracy(model, x_test, y_test)
    return history


def plot_training(histories: dict, model: RingsMLP, data, grid_points: int):
    x_train, y_train, x_test, y_test = data
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    for name, history in histories.items():
        # The built-in baseline drawn wide and pale: with the same initial weights and
        # minibatches, the layer network's curve starts on it (and drifts off later, as
        # training amplifies the solvers' 1e-5 differences).
        style = {"lw": 4, "alpha": 0.45} if name.startswith("built-in") else {"lw": 1.5}
        axes[0].plot(history["step"], history["loss"], label=name, **style)
        axes[1].plot(history["step"], history["test accuracy"], label=name, **style)
    axes[0].set(xlabel="training step", ylabel="training loss (minibatch)", yscale="log",
                title="Training loss (NLL; Brier for sparsemax)")
    axes[1].set(xlabel="training step", ylabel="held-out accuracy (500 points)",
                title="Held-out accuracy")
    axes[1].legend(fontsize=8, loc="lower right")
    for ax in axes[:2]:
        ax.grid(alpha=0.3)

    # Decision regions of a model trained through the layers, evaluated with the layer.
    lim = 4.5
    g = torch.linspace(-lim, lim, grid_points)
    gx, gy = torch.meshgrid(g, g, indexing="xy")
    with torch.no_grad():
        regions = model.logits(torch.stack([gx.ravel(), gy.ravel()], 1)).argmax(-1)
    axes[2].contourf(gx, gy, regions.reshape(gx.shape), levels=[-0.5, 0.5, 1.5, 2.5],
                     colors=["C0", "C1", "C2"], alpha=0.25)
    shown = slice(0, 400)
    axes[2].scatter(x_test[shown, 0], x_test[shown, 1], c=[f"C{k}" for k in y_test[shown]],
                    s=6)
    axes[2].set(aspect="equal", xlim=(-lim, lim), ylim=(-lim, lim),
                title="ReLU layer + softmax layer: decision regions")
    fig.tight_layout()
    return fig


def main() -> None:
    args = example_parser(__doc__).parse_args()
    # The problems are tiny; one intra-op thread avoids oversubscribing a shared CPU, which
    # makes the batched QP solver's many small products much slower, not faster.
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    started = time.perf_counter()

    check_batch = 32 if args.quick else 128
    print(f"1. Layers against closed forms (float64, batch {check_batch}, n = 5):")
    errors = {name: check_activation(name, check_batch, 5, generator) for name in ACTIVATIONS}
    value_error = max(e[0] for e in errors.values())
    grad_error = max(e[1] for e in errors.values())

    print("2. Activation curves")
    # An even number of points keeps the sweep off the kinks (x₁ = 0, ±1), where the
    # derivative jumps and a closed form's autograd picks one side arbitrarily.
    save_figure(plot_curves(40 if args.quick else 120), args.out, "activations_curves")

    steps = 120 if args.quick else 600
    train_size = 600 if args.quick else 2000
    data = (*rings(train_size, generator), *rings(2000, generator))
    print(f"3. MLP (width 16) on three noisy rings: {train_size} training points, "
          f"{steps} Adam steps of batch 64, 2000 held-out points")
    histories, models = {}, {}
    for name, (hidden, output, loss_fn) in make_models(16).items():
        torch.manual_seed(args.seed)  # the same initial weights for every variant
        models[name] = RingsMLP(hidden, output, width=16)
        tic = time.perf_counter()
        histories[name] = train(models[name], loss_fn, data, steps, 64, args.seed, name)
        print(f"  {name:30s} held-out accuracy {histories[name]['final accuracy']:.3f}"
              f"   ({time.perf_counter() - tic:.1f} s)")
    fig = plot_training(histories, models["ReLU layer + softmax layer"], data,
                        60 if args.quick else 150)
    save_figure(fig, args.out, "activations_training")
    print(f"total {time.perf_counter() - started:.1f} s")

    final = {name: h["final accuracy"] for name, h in histories.items()}
    headline(f"headline: max |layer - closed form| = {max(value_error, grad_error):.1e} "
             f"(values {value_error:.1e}, gradients {grad_error:.1e}) over 5 activations; "
             f"test accuracy {final['ReLU layer + softmax layer']:.3f} with ReLU+softmax layers, "
             f"{final['ReLU layer + sparsemax layer']:.3f} with ReLU+sparsemax layers "
             f"(built-in ReLU+softmax {final['built-in ReLU + softmax']:.3f})")


if __name__ == "__main__":
    main()
