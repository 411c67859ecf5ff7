"""Lp-ball and Lp-sphere projection layers (Deep Declarative Networks §5.2).

Gould, Hartley & Campbell (Deep Declarative Networks, §5.2, Table I) define Euclidean
projection onto an Lp-sphere or Lp-ball as a declarative node,

    y(x) = argmin_u ½‖u − x‖²   s.t.  ‖u‖_p = r   (sphere)   or   ‖u‖_p ≤ r   (ball),

and give its gradient by implicit differentiation. For a point outside the ball
(‖x‖_p > r) the closed forms of their Table I are, with s = sign(y),

    L2:  Dy = (‖y‖₂/‖x‖₂) (I − yyᵀ/‖y‖₂²)
    L1:  Dy = diag(|s|) − s sᵀ/(sᵀs)          (zero on the coordinates that y sets to 0)
    L∞:  Dy = I − diag(|h|),  h = s·[|yᵢ| = r] (zero on the coordinates clamped to ±r)

and inside the ball, where y = x, Dy = I (their rule for the ball: "the gradient of the
unconstrained problem if the input already lies inside the ball").

Here each ball projection is a cvxlayers layer, built from its CVXPY problem; the L1 and
L∞ balls are QPs (``solver="QP"``, the batched interior-point method), the L2 ball is a
second-order-cone program (Clarabel). The script

  1. checks each layer's values against the closed-form projections (L2: rescaling; L∞:
     clamping; L1: Duchi et al.'s sort-based algorithm) and its full Jacobians against the
     Table I formulas, at random points inside and outside the balls (float64);
  2. plots the projections of 2-D points onto the three unit balls;
  3. uses the layers as a feature-normalization layer in a small CNN classifying 12×12
     synthetic texture/shape images (six classes: horizontal, vertical and two diagonal
     gratings, a disc, a ring; random period, phase, position, contrast; heavy pixel
     noise; all generated locally). As in the paper (§7, Table IV), the projection follows
     a batch normalization without learnable parameters and precedes the final linear
     layer. It is compared with no normalization (the batch normalization alone) and with
     plain L2 normalization r·x/‖x‖₂, on held-out images.

The sphere. The sphere constraint ‖u‖_p = r is not convex, so it is not a CVXPY problem.
It needs no separate layer where it matters: for x outside the ball, the ball projection
lies on the sphere, and, the sphere being a subset of the ball, it is then also the
nearest point of the sphere. So the ball layer *is* the sphere projection for every x
with ‖x‖_p > r; the gradient check covers the sphere formulas on those points. For x
inside, the sphere projection pushes x outwards (for L1 and L∞ it is not even unique at
x = 0) and we do not compute it: the ball layer returns x with Dy = I. In the classifier
the radius is set to half the typical norm of the normalized features, so that nearly all
features lie outside and the layer acts as a sphere projection, as DDN's pre-scaling
intends ("the chosen scale ensures that the projection affects most features"); the
script prints the fraction of held-out features that lie outside. (For L2 alone the
sphere projection r·x/‖x‖₂ is scale-invariant and has a closed form everywhere; it is the
"L2 normalize" baseline.)

Run:  python examples/lp_projections.py            (full: 2 seeds, ~5 min on 2 cores)
      python examples/lp_projections.py --quick    (one seed, fewer steps: under a minute)

Headline: the largest entry of |layer Jacobian − Table I Jacobian| over the three balls,
then the held-out accuracy of each classifier variant (mean over seeds). Figures:
``lp_projections_2d.png`` and ``lp_projections_training.png``.
"""

from __future__ import annotations

import math
import time

import cvxpy as cp
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from _common import example_parser, headline, progress, save_figure

from cvxlayers.torch import CvxpyLayer

NORMS = {"L1": 1, "L2": 2, "L∞": np.inf}
NORM_SYMBOLS = {"L1": "‖y‖₁", "L2": "‖y‖₂", "L∞": "‖y‖∞"}
KINK_MARGIN = 1e-3  # points this close to a jump of the Jacobian are left out of the check
# For the checks the L2 ball is solved by ECOS at tight tolerances (switched per call):
# Clarabel, fast and used for training, solves these SOCPs to about 1e-5 at its defaults
# and warns of inaccuracy when pushed further. The QP backend's default (1e-9) is tight.
TIGHT_ECOS = {"solver": "ECOS", "abstol": 1e-10, "reltol": 1e-10, "feastol": 1e-10}


# --------------------------------------------------------------------------------------
# The layers and the closed forms of DDN Table I
# --------------------------------------------------------------------------------------

def ball_projection_layer(n: int, p, radius: float) -> CvxpyLayer:
    """argmin_y ‖y − x‖² s.t. ‖y‖_p ≤ radius, as a layer in x.

    The objective is written ‖y‖² − 2xᵀy (‖y − x‖² less a constant): the same minimizer,
    without the n auxiliary variables CVXPY would introduce for y − x."""
    x, y = cp.Parameter(n), cp.Variable(n)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(y) - 2 * x @ y),
                         [cp.norm(y, p) <= radius])
    # L1 and L∞ constraints are polyhedral: a QP. The L2 ball needs a second-order cone.
    solver = "CLARABEL" if p == 2 else "QP"
    return CvxpyLayer(problem, parameters=[x], variables=[y], solver=solver)


def l1_threshold(x: torch.Tensor, radius: float) -> torch.Tensor:
    """Duchi et al. (2008): the θ with Σᵢ max(|xᵢ| − θ, 0) = radius, found by sorting |x|:
    the support holds the k largest |xᵢ| for the largest k with k·|x|₍ₖ₎ > Σ_{j≤k}|x|₍ⱼ₎ − r.
    (B, n) -> (B, 1); meaningful for x outside the ball."""
    z, _ = torch.sort(x.abs(), dim=-1, descending=True)
    k = torch.arange(1, x.shape[-1] + 1, dtype=x.dtype)
    cumulative = z.cumsum(-1)
    support = (k * z > cumulative - radius).sum(-1, keepdim=True)
    return (cumulative.gather(-1, support - 1) - radius) / support.to(x.dtype)


def project_l1(x: torch.Tensor, radius: float) -> torch.Tensor:
    """Outside the ball, soft thresholding y = sign(x)·max(|x| − θ, 0); inside, y = x."""
    outside = x.abs().sum(-1, keepdim=True) > radius
    soft = torch.sign(x) * torch.clamp(x.abs() - l1_threshold(x, radius), min=0)
    return torch.where(outside, soft, x)


def project_ball(x: torch.Tensor, p, radius: float) -> torch.Tensor:
    """The closed-form ball projections."""
    if p == 1:
        return project_l1(x, radius)
    if p == 2:
        return x * torch.clamp(radius / x.norm(dim=-1, keepdim=True), max=1.0)
    return torch.clamp(x, -radius, radius)


def ddn_jacobian(x: torch.Tensor, p, radius: float) -> torch.Tensor:
    """DDN Table I: the Jacobian Dy(x) of the sphere projection for x outside the ball,
    and I inside it, evaluated at the closed-form projection y (whose zeros and bound
    coordinates are exact, unlike a solver's). x: (B, n) -> (B, n, n)."""
    n = x.shape[-1]
    y = project_ball(x, p, radius)
    eye = torch.eye(n, dtype=x.dtype).expand(x.shape[0], n, n)
    s = torch.sign(y)
    if p == 2:
        ratio = (y.norm(dim=-1) / x.norm(dim=-1))[:, None, None]
        outer = y[:, :, None] * y[:, None, :] / (y * y).sum(-1)[:, None, None]
        sphere = ratio * (eye - outer)
    elif p == 1:
        outer = s[:, :, None] * s[:, None, :] / (s * s).sum(-1)[:, None, None]
        sphere = torch.diag_embed(s.abs()) - outer
    else:
        h = s * (y.abs() == radius)  # the coordinates clamped to the sphere's bound
        sphere = eye - torch.diag_embed(h.abs())
    outside = (torch.linalg.vector_norm(x, ord=p, dim=-1) > radius)[:, None, None]
    return torch.where(outside, sphere, eye)


def kink_distance(x: torch.Tensor, p, radius: float) -> torch.Tensor:
    """How far each point is from where the projection's Jacobian jumps: the sphere
    ‖x‖_p = r; for L1, outside, |xᵢ| = θ (a coordinate enters or leaves the support); for
    L∞, outside, |xᵢ| = r (a coordinate starts being clamped). (B, n) -> (B,)."""
    distance = (torch.linalg.vector_norm(x, ord=p, dim=-1) - radius).abs()
    outside = torch.linalg.vector_norm(x, ord=p, dim=-1) > radius
    if p == 1:
        to_support = (x.abs() - l1_threshold(x, radius)).abs().min(-1).values
        distance = torch.where(outside, torch.minimum(distance, to_support), distance)
    elif p == np.inf:
        to_clamp = (x.abs() - radius).abs().min(-1).values
        distance = torch.where(outside, torch.minimum(distance, to_clamp), distance)
    return distance


def layer_jacobian(layer: CvxpyLayer, x: torch.Tensor,
                   solver_args: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """y(x) and the full Jacobian Dy(x) from the layer, with one batched forward and
    backward: each point is repeated n times, and copy i is back-propagated with the
    cotangent eᵢ, which returns row i of its Jacobian."""
    batch, n = x.shape
    copies = x[:, None, :].expand(batch, n, n).reshape(batch * n, n).clone().requires_grad_()
    y, = layer(copies, solver_args=solver_args)
    cotangents = torch.eye(n, dtype=x.dtype).repeat(batch, 1)
    rows, = torch.autograd.grad((y * cotangents).sum(), copies)
    return y.detach().reshape(batch, n, n)[:, 0], rows.reshape(batch, n, n)


def random_points(batch: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """Gaussian directions with log-uniform scales, so that each ball has points inside
    and outside."""
    scale = torch.exp(math.log(0.05) + math.log(2 / 0.05) * torch.rand(batch, 1,
                                                                       generator=generator,
                                                                       dtype=torch.float64))
    return scale * torch.randn(batch, n, generator=generator, dtype=torch.float64)


def check_projection(name: str, batch: int, n: int, generator: torch.Generator) -> float:
    """Max |layer − closed form| over the values and the full Jacobians.

    The Jacobian jumps at kinks (see :func:`kink_distance`), and within about 1e-3 of
    one the interior-point solution, still slightly inside the feasible set, returns a
    blend of the one-sided Jacobians (a valid generalized gradient, but not the closed form
    of either side); the few random points that close to a kink are left out and counted."""
    p = NORMS[name]
    layer = ball_projection_layer(n, p, radius=1.0)
    x = random_points(batch, n, generator)
    y, jacobian = layer_jacobian(layer, x, TIGHT_ECOS if p == 2 else None)
    away = kink_distance(x, p, 1.0) > KINK_MARGIN
    value_error = (y - project_ball(x, p, 1.0))[away].abs().max().item()
    jacobian_error = (jacobian - ddn_jacobian(x, p, 1.0))[away].abs().max().item()
    outside = (torch.linalg.vector_norm(x, ord=p, dim=-1) > 1.0).double().mean().item()
    print(f"  {name:3s} ball: values {value_error:.1e}   Jacobians {jacobian_error:.1e}   "
          f"({outside:.0%} of the points outside the ball, where it is the sphere projection; "
          f"{(~away).sum().item()} within {KINK_MARGIN:g} of a kink left out)")
    return max(value_error, jacobian_error)


# --------------------------------------------------------------------------------------
# 2. Projections of 2-D points
# --------------------------------------------------------------------------------------

def unit_sphere_outline(p, points: int = 400) -> np.ndarray:
    angle = np.linspace(0, 2 * np.pi, points)
    circle = np.stack([np.cos(angle), np.sin(angle)], 1)
    norm = np.linalg.norm(circle, ord=p, axis=1, keepdims=True)
    return circle / norm


def plot_2d(generator: torch.Generator, count: int):
    x = 6 * torch.rand(count, 2, generator=generator, dtype=torch.float64) - 3
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    for ax, (name, p) in zip(axes, NORMS.items()):
        y, = ball_projection_layer(2, p, radius=1.0)(x)
        outline = unit_sphere_outline(p)
        ax.fill(outline[:, 0], outline[:, 1], color="C0", alpha=0.12)
        ax.plot(outline[:, 0], outline[:, 1], color="C0", lw=1.5)
        for a, b in zip(x.numpy(), y.numpy()):
            ax.plot([a[0], b[0]], [a[1], b[1]], color="0.6", lw=0.7)
        ax.plot(x[:, 0], x[:, 1], ".", color="0.35", ms=4, label="input x")
        ax.plot(y[:, 0], y[:, 1], "o", color="C3", ms=3.5, label="layer output y")
        ax.set(aspect="equal", xlim=(-3.2, 3.2), ylim=(-3.2, 3.2),
               title=f"{name} ball: argmin ½‖y−x‖² s.t. {NORM_SYMBOLS[name]} ≤ 1")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------
# 3. Feature normalization in a small image classifier
# --------------------------------------------------------------------------------------

CLASSES = ["horizontal", "vertical", "diagonal /", "diagonal \\", "disc", "ring"]
NOISE = 1.2  # pixel noise σ against patterns of amplitude 0.5-1.5: hard, not hopeless


def pattern(label: int, u: torch.Tensor, size: int) -> torch.Tensor:
    """One clean size×size pattern in [−1, 1]; u (6 uniforms) sets its period, phase,
    centre and radius."""
    grid = torch.arange(size, dtype=torch.float32)
    rows, cols = torch.meshgrid(grid, grid, indexing="ij")
    period, phase = 3 + 2 * u[0], 2 * math.pi * u[1]
    if label < 4:  # gratings: along rows, columns, and the two diagonals
        direction = [rows, cols, (rows + cols) / 2 ** 0.5, (rows - cols) / 2 ** 0.5][label]
        return torch.cos(2 * math.pi * direction / period + phase)
    centre = size / 2 + (u[2:4] - 0.5) * size / 3
    radius = size / 5 + u[4] * size / 8
    distance = ((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2).sqrt()
    inside = distance < radius if label == 4 else (distance - radius).abs() < 1  # disc, ring
    return 2 * inside.float() - 1


def texture_images(count: int, size: int, noise: float, generator: torch.Generator,
                   labels: torch.Tensor | None = None):
    """(count, 1, size, size) images: a pattern at random contrast 0.5-1.5 plus Gaussian
    pixel noise of standard deviation ``noise``; the label is the pattern type."""
    if labels is None:
        labels = torch.randint(0, len(CLASSES), (count,), generator=generator)
    u = torch.rand(count, 6, generator=generator)
    images = torch.stack([(0.5 + u[i, 5]) * pattern(label, u[i], size)
                          for i, label in enumerate(labels.tolist())])
    images += noise * torch.randn(count, size, size, generator=generator)
    return images[:, None], labels


def feature_radius(p, n: int) -> float:
    """Half the typical Lp norm of n standard-normal features (the output of the batch
    normalization): E|z| = 0.8 per coordinate for L1, √n for L2; for L∞ the maximum of 16
    normals is about 2. So most features lie outside and get projected."""
    return {1: 0.4 * n, 2: 0.5 * math.sqrt(n)}.get(p, 1.0)


class TextureNet(torch.nn.Module):
    """conv(8) → pool → conv(16) → global average → batch norm (no parameters) →
    normalization → linear(6). The normalization is the variant under test."""

    def __init__(self, normalize, features: int = 16):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, features, 3, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
            torch.nn.BatchNorm1d(features, affine=False))
        self.normalize = normalize
        self.head = torch.nn.Linear(features, len(CLASSES))

    def features(self, images):
        return self.body(images)

    def forward(self, images):
        return self.head(self.normalize(self.features(images)))


def normalizations(n: int) -> dict:
    """The variants: name -> function of the (B, n) features."""
    variants = {
        "none": lambda z: z,
        "L2 normalize": lambda z: feature_radius(2, n) * F.normalize(z, dim=-1),
    }
    for name, p in NORMS.items():
        layer = ball_projection_layer(n, p, feature_radius(p, n))
        variants[f"{name} ball layer"] = lambda z, layer=layer: layer(z)[0]
    return variants


def evaluate(model: TextureNet, images, labels) -> tuple[float, float]:
    """Held-out accuracy and cross-entropy (the latter a proxy for calibration, where the
    paper saw projection help most)."""
    model.eval()
    with torch.no_grad():
        logits = model(images)
    model.train()
    correct = (logits.argmax(-1) == labels).float().mean().item()
    return correct, F.cross_entropy(logits, labels).item()


def fraction_outside(model: TextureNet, images, name: str, n: int) -> float | None:
    """The fraction of held-out features outside the variant's ball (where the ball
    projection is the sphere projection)."""
    p = {f"{k} ball layer": v for k, v in NORMS.items()}.get(name)
    if p is None:
        return None
    model.eval()
    with torch.no_grad():
        z = model.features(images)
    model.train()
    return (torch.linalg.vector_norm(z, ord=p, dim=-1) > feature_radius(p, n)).float().mean()


def train(model: TextureNet, data, steps: int, seed: int, desc: str) -> dict:
    """Adam with cosine decay (a stable final accuracy), minibatches of 64."""
    x_train, y_train, x_test, y_test = data
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    history = {"step": [], "accuracy": [], "cross-entropy": []}
    evaluate_every = max(1, steps // 10)
    for step in progress(range(steps), desc=desc, leave=False):
        index = torch.randint(0, len(x_train), (64,), generator=generator)
        loss = F.cross_entropy(model(x_train[index]), y_train[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % evaluate_every == 0 or step == steps - 1:
            history["step"].append(step + 1)
            accuracy, cross_entropy = evaluate(model, x_test, y_test)
            history["accuracy"].append(accuracy)
            history["cross-entropy"].append(cross_entropy)
    return history


def plot_training(histories: dict, noise: float, seed: int):
    """One image per class, clean and as the classifier sees it, beside the held-out
    accuracy during training (mean over seeds)."""
    fig = plt.figure(figsize=(13, 3.8))
    columns = len(CLASSES)
    grid = fig.add_gridspec(2, columns + 2, width_ratios=[1] * columns + [0.3, 5.5])
    labels = torch.arange(columns)
    clean, _ = texture_images(columns, 12, 0.0, torch.Generator().manual_seed(seed), labels)
    noisy = clean + noise * torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))
    for k in range(columns):
        for row, images in enumerate([clean, noisy]):
            ax = fig.add_subplot(grid[row, k])
            ax.imshow(images[k, 0], cmap="gray", vmin=-3, vmax=3)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(CLASSES[k], fontsize=8)
        if k == 0:
            fig.axes[-2].set_ylabel("clean", fontsize=8)
            fig.axes[-1].set_ylabel(f"noise σ={noise}", fontsize=8)
    ax = fig.add_subplot(grid[:, columns + 1])
    for name, runs in histories.items():
        steps = runs[0]["step"]
        mean = np.mean([run["accuracy"] for run in runs], axis=0)
        ax.plot(steps, mean, marker="o", ms=3, label=name)
    ax.set(xlabel="training step", ylabel="held-out accuracy",
           title="Feature normalization before the last layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def main() -> None:
    args = example_parser(__doc__).parse_args()
    # The problems are tiny; one intra-op thread avoids oversubscribing a shared CPU, which
    # makes the batched QP solver's many small products much slower, not faster.
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(args.seed)
    started = time.perf_counter()

    check_batch = 16 if args.quick else 96
    print(f"1. Ball projection layers against closed forms and DDN Table I Jacobians "
          f"(float64, {check_batch} points, n = 8):")
    check_error = max(check_projection(name, check_batch, 8, generator) for name in NORMS)

    print("2. Projections of 2-D points")
    save_figure(plot_2d(generator, 40), args.out, "lp_projections_2d")

    seeds = [args.seed] if args.quick else [args.seed, args.seed + 1]
    steps = 100 if args.quick else 600
    train_size = 2000 if args.quick else 6000
    features = 16
    print(f"3. 12x12 texture classifier, {len(CLASSES)} classes: {train_size} training and "
          f"1000 held-out images, {steps} Adam steps of batch 64, {len(seeds)} seed(s)")
    histories = {name: [] for name in normalizations(features)}
    for seed in seeds:
        data_generator = torch.Generator().manual_seed(1000 + seed)
        data = (*texture_images(train_size, 12, NOISE, data_generator),
                *texture_images(1000, 12, NOISE, data_generator))
        for name, normalize in normalizations(features).items():
            torch.manual_seed(seed)  # the same initial weights for every variant
            model = TextureNet(normalize, features)
            tic = time.perf_counter()
            histories[name].append(train(model, data, steps, seed, f"{name} (seed {seed})"))
            outside = fraction_outside(model, data[2], name, features)
            note = "" if outside is None else f", {outside:.0%} of features outside the ball"
            print(f"  seed {seed}  {name:15s} held-out accuracy "
                  f"{histories[name][-1]['accuracy'][-1]:.3f}, cross-entropy "
                  f"{histories[name][-1]['cross-entropy'][-1]:.3f}   "
                  f"({time.perf_counter() - tic:.1f} s{note})")
    save_figure(plot_training(histories, NOISE, args.seed), args.out, "lp_projections_training")
    print(f"total {time.perf_counter() - started:.1f} s")

    final = {name: np.mean([run["accuracy"][-1] for run in runs])
             for name, runs in histories.items()}
    accuracies = ", ".join(f"{name} {value:.3f}" for name, value in final.items())
    headline(f"headline: max |layer Jacobian - DDN closed form| = {check_error:.1e} over "
             f"L1/L2/Linf balls; held-out accuracy: {accuracies}".replace("L∞", "Linf"))


if __name__ == "__main__":
    main()
