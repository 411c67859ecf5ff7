"""Robust pooling: a point-cloud classifier whose global pooling is a declarative node.

Deep Declarative Networks (Gould, Hartley, Campbell 2019, §5.1 and Table III) observe that
mean pooling is the solution of an optimization problem,

    mean(x_1..x_N) = argmin_y  Σ_i ½ (y − x_i)²,

and generalize it to robust pooling by swapping the quadratic for a penalty φ that grows
more slowly far from the minimum, y*(x) = argmin_y Σ_i φ(y − x_i; α):

    quadratic            φ = ½z²                                   (the mean)
    pseudo-Huber         φ = α²(√(1 + (z/α)²) − 1)                  convex
    Huber                φ = ½z² if |z| ≤ α, else α(|z| − ½α)       convex
    Welsch               φ = α²(1 − exp(−z²/(2α²)))                 non-convex
    truncated quadratic  φ = ½z² if |z| ≤ α, else ½α²               non-convex

The pooled value ignores points far from the bulk, so outlier points can no longer drag it.
Each pooling is ``cvxlayers.declarative``'s ``RobustPool`` node: an exact batched forward
(safeguarded Newton for the convex penalties; exhaustive breakpoint search for the truncated
quadratic; multi-start mean-shift + Newton for Welsch) and the paper's closed-form gradient
dy/dx_i = φ''(y − x_i)/Σ_j φ''(y − x_j). The non-convex two cannot be CVXPY layers at all.

The network is a small PointNet (Qi et al. 2017): a shared per-point MLP, global pooling
over the points (max, or one of the five penalties; no parameters), then a classifier head.
Every pooling trains from the same random weights on clean clouds, then is tested with
0–60 % of each cloud's points replaced by outliers uniform in the box [-1, 1]³ around the
unit ball the clouds are normalized into (Table III's protocol: train without outliers,
test with them; the paper draws them from the unit ball).

Data: synthetic point clouds of simple shapes (sphere, cube surface, cylinder, cone, torus,
square sheet) with random rotation about the vertical axis, anisotropic scale and noise,
generated locally. ``--modelnet PATH`` uses ModelNet40 instead (the official
``modelnet40_ply_hdf5_2048`` HDF5 files, or the ModelNet40 OFF meshes; see
``load_modelnet40``).

Run:
    python examples/robust_pooling.py            # full version (a few minutes, 2 cores)
    python examples/robust_pooling.py --quick    # reduced version (under a minute)
    python examples/robust_pooling.py --modelnet ~/data/modelnet40_ply_hdf5_2048

Headline: test accuracy of each pooling with 30 % and 60 % outliers. The paper's trend: max
pooling collapses as outliers grow, robust pooling holds, Welsch and the truncated quadratic
hold best; beyond the 50 % breakdown point every pooling degrades.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from _common import example_parser, headline, progress, save_figure
from torch import nn

from cvxlayers.declarative.torch import RobustPool, robust_pool

SHAPES = ("sphere", "cube", "cylinder", "cone", "torus", "sheet")
POOLINGS = ("max", "mean", "pseudo_huber", "huber", "welsch", "truncated_quadratic")
ALPHA = 1.0   # the penalties' robustness parameter (the paper's α = 1): features are
              # batch-normalized, so "far" means more than about one standard deviation


@dataclass
class Config:
    points: int          # points per cloud
    channels: int        # global feature channels = pooling problems per cloud
    train_per_class: int
    test_per_class: int
    epochs: int          # every pooling trains this many epochs from the same weights
    batch: int
    outlier_rates: tuple


FULL = Config(points=64, channels=16, train_per_class=100, test_per_class=50, epochs=30,
              batch=32, outlier_rates=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6))
QUICK = Config(points=24, channels=12, train_per_class=50, test_per_class=20, epochs=12,
               batch=25, outlier_rates=(0.0, 0.3, 0.6))


# ---------------------------------------------------------------------------------------
# Data: synthetic shapes, ModelNet40, outliers


def _unit_vectors(rng, n):
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def sample_shape(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """n points on the surface of a canonical shape, shape (n, 3)."""
    u, v = rng.uniform(size=n), rng.uniform(size=n)
    if name == "sphere":
        return _unit_vectors(rng, n)
    if name == "cube":  # a random face, then a uniform point on it
        pts = rng.uniform(-1, 1, size=(n, 3))
        axis = rng.integers(0, 3, size=n)
        pts[np.arange(n), axis] = rng.choice([-1.0, 1.0], size=n)
        return pts
    if name == "cylinder":  # the side only
        t = 2 * np.pi * u
        return np.stack([np.cos(t), np.sin(t), 2 * v - 1], axis=1)
    if name == "cone":  # the side, area-uniform: radius grows linearly towards the base
        t, r = 2 * np.pi * u, np.sqrt(v)
        return np.stack([r * np.cos(t), r * np.sin(t), 1 - 2 * r], axis=1)
    if name == "torus":  # ring radius 1, tube radius 0.35 (angle sampling is not area-exact)
        t, p = 2 * np.pi * u, 2 * np.pi * v
        ring = 1 + 0.35 * np.cos(p)
        return np.stack([ring * np.cos(t), ring * np.sin(t), 0.35 * np.sin(p)], axis=1)
    if name == "sheet":
        return np.stack([2 * u - 1, 2 * v - 1, np.zeros(n)], axis=1)
    raise ValueError(f"unknown shape {name!r}; expected one of {SHAPES}")


def normalize_cloud(pts: np.ndarray) -> np.ndarray:
    """Centred and scaled into the unit ball (the ModelNet40 convention)."""
    pts = pts - pts.mean(axis=0)
    return pts / np.linalg.norm(pts, axis=1).max()


def _random_pose(rng) -> np.ndarray:
    """A rotation about the vertical axis, a small tilt, and anisotropic scaling."""
    a, b = rng.uniform(0, 2 * np.pi), rng.normal(scale=0.15)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return rz @ rx @ np.diag(rng.uniform(0.75, 1.25, size=3))


def synthetic_clouds(per_class: int, n_points: int, rng: np.random.Generator):
    """A balanced set of shape clouds: points (S, n_points, 3) float32, labels (S,) int64."""
    clouds, labels = [], []
    for label, name in enumerate(SHAPES):
        for _ in range(per_class):
            pts = sample_shape(name, n_points, rng) @ _random_pose(rng).T
            pts += rng.normal(scale=0.02, size=pts.shape)
            clouds.append(normalize_cloud(pts))
            labels.append(label)
    return np.asarray(clouds, dtype=np.float32), np.asarray(labels, dtype=np.int64)


def add_outliers(clouds: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Replaces round(rate·N) random points of each cloud by points uniform in [-1, 1]³."""
    out = clouds.copy()
    n_clouds, n_points, _ = clouds.shape
    k = int(round(rate * n_points))
    for i in range(n_clouds):
        idx = rng.choice(n_points, size=k, replace=False)
        out[i, idx] = rng.uniform(-1, 1, size=(k, 3))
    return out


def _read_off(path: Path):
    """Vertices (V, 3) and triangles (F, 3) of an OFF mesh (polygons are fanned). Some
    ModelNet files glue the header to the counts ("OFF490 518 0"); both forms are read."""
    tokens = path.read_text().split()
    if not tokens or not tokens[0].startswith("OFF"):
        raise ValueError(f"{path} is not an OFF file")
    head = tokens[0][3:]
    rest = ([head] if head else []) + tokens[1:]
    n_v, n_f = int(rest[0]), int(rest[1])
    values = rest[3:]
    verts = np.asarray(values[:3 * n_v], dtype=np.float64).reshape(n_v, 3)
    faces, pos = [], 3 * n_v
    for _ in range(n_f):
        k = int(values[pos])
        poly = [int(t) for t in values[pos + 1:pos + 1 + k]]
        faces.extend([poly[0], poly[j], poly[j + 1]] for j in range(1, k - 1))
        pos += 1 + k
    return verts, np.asarray(faces, dtype=np.int64)


def _sample_mesh(verts, faces, n, rng) -> np.ndarray:
    """n points uniform on a triangle mesh's surface (triangles picked by area)."""
    a, b, c = (verts[faces[:, j]] for j in range(3))
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    tri = rng.choice(len(faces), size=n, p=area / area.sum())
    r1, r2 = np.sqrt(rng.uniform(size=(n, 1))), rng.uniform(size=(n, 1))
    return (1 - r1) * a[tri] + r1 * (1 - r2) * b[tri] + r1 * r2 * c[tri]


def load_modelnet40(path: Path, n_points: int, rng: np.random.Generator):
    """ModelNet40 from a local folder, as ((train_x, train_y), (test_x, test_y), classes).

    Two layouts are read:

    - the HDF5 release used by PointNet (``modelnet40_ply_hdf5_2048``): files
      ``ply_data_train*.h5`` and ``ply_data_test*.h5``, each with datasets ``data``
      (S, 2048, 3) float32 and ``label`` (S, 1); class names from ``shape_names.txt``
      if present. Needs ``h5py``.
    - the original meshes (``ModelNet40/<class>/{train,test}/<class>_NNNN.off``): points
      are sampled uniformly on each mesh's surface.

    Each cloud is subsampled to ``n_points`` points and normalized into the unit ball.
    Arrays: points (S, n_points, 3) float32, labels (S,) int64.
    """
    path = Path(path).expanduser()
    if sorted(path.glob("ply_data_train*.h5")):
        return _load_modelnet_h5(path, n_points, rng)
    if sorted(path.glob("*/train/*.off")):
        return _load_modelnet_off(path, n_points, rng)
    raise FileNotFoundError(f"{path} holds neither ply_data_train*.h5 files (the HDF5 release) "
                            "nor <class>/train/*.off meshes (the OFF release) of ModelNet40.")


def _load_modelnet_h5(path, n_points, rng):
    import h5py  # optional dependency, needed only for this layout

    def read(split):
        xs, ys = [], []
        for file in sorted(path.glob(f"ply_data_{split}*.h5")):
            with h5py.File(file, "r") as f:
                xs.append(np.asarray(f["data"], dtype=np.float64))
                ys.append(np.asarray(f["label"], dtype=np.int64).reshape(-1))
        x, y = np.concatenate(xs), np.concatenate(ys)
        pick = np.stack([rng.choice(x.shape[1], size=n_points, replace=False) for _ in x])
        x = np.stack([normalize_cloud(c[i]) for c, i in zip(x, pick)])
        return x.astype(np.float32), y

    names_file = path / "shape_names.txt"
    classes = names_file.read_text().split() if names_file.exists() else None
    train, test = read("train"), read("test")
    if classes is None:
        classes = [str(i) for i in range(int(train[1].max()) + 1)]
    return train, test, classes


def _load_modelnet_off(path, n_points, rng):
    classes = sorted(p.parent.parent.name for p in path.glob("*/train"))

    def read(split):
        xs, ys = [], []
        for label, name in enumerate(classes):
            for file in sorted((path / name / split).glob("*.off")):
                verts, faces = _read_off(file)
                xs.append(normalize_cloud(_sample_mesh(verts, faces, n_points, rng)))
                ys.append(label)
        return np.asarray(xs, dtype=np.float32), np.asarray(ys, dtype=np.int64)

    return read("train"), read("test"), classes


# ---------------------------------------------------------------------------------------
# Pooling layers


class MaxPooling(nn.Module):
    def forward(self, features):
        return features.max(dim=1).values


def make_pooling(name: str, alpha: float = ALPHA) -> nn.Module:
    """Max pooling, or the robust-pooling node with penalty ``name`` ("mean" is the quadratic
    penalty), pooling (B, N, C) features over the N points."""
    if name == "max":
        return MaxPooling()
    if name not in POOLINGS:
        raise ValueError(f"unknown pooling {name!r}; expected one of {POOLINGS}")
    return RobustPool("quadratic" if name == "mean" else name, alpha=alpha, dim=1)


def check_quadratic_is_mean(rng) -> float:
    """The declarative view's starting point: the quadratic-penalty node returns the mean."""
    values = torch.tensor(rng.normal(size=(4, 8, 3)))
    return float((robust_pool(values, "quadratic", dim=1) - values.mean(dim=1)).abs().max())


# ---------------------------------------------------------------------------------------
# The network


class PointNetClassifier(nn.Module):
    """Shared per-point MLP 3 → 32 → 32 → C, global pooling over the points, then a head
    C → 32 → classes.

    The last per-point layer is batch-normalized but, unlike PointNet's, has no ReLU: a
    robust location estimate of a channel that is zero on most points would be zero, so
    the features are left signed and of unit scale, which also gives α = 1 its meaning.
    """

    def __init__(self, channels: int, n_classes: int, pooling: nn.Module):
        super().__init__()
        self.point_mlp = nn.Sequential(
            nn.Linear(3, 32), nn.BatchNorm1d(32), nn.ReLU(),
            nn.Linear(32, 32), nn.BatchNorm1d(32), nn.ReLU(),
            nn.Linear(32, channels), nn.BatchNorm1d(channels))
        self.pooling = pooling
        self.head = nn.Sequential(nn.Linear(channels, 32), nn.ReLU(), nn.Dropout(0.2),
                                  nn.Linear(32, n_classes))

    def forward(self, clouds):                                   # (B, N, 3)
        b, n, _ = clouds.shape
        features = self.point_mlp(clouds.reshape(b * n, 3)).reshape(b, n, -1)
        return self.head(self.pooling(features))


def train(model, x, y, epochs: int, batch: int, lr: float, seed: int, label: str) -> float:
    """Adam with a cosine schedule on clean clouds, with small jitter; returns the wall
    time in seconds."""
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(x) / batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    start = time.perf_counter()
    model.train()
    bar = progress(range(epochs * steps_per_epoch), desc=f"train {label}", leave=False)
    order = torch.randperm(len(x), generator=gen)
    for step in bar:
        if step % steps_per_epoch == 0:
            order = torch.randperm(len(x), generator=gen)
        idx = order[(step % steps_per_epoch) * batch:][:batch]
        clouds = x[idx] + 0.01 * torch.randn(x[idx].shape, generator=gen)
        loss = nn.functional.cross_entropy(model(clouds), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return time.perf_counter() - start


@torch.no_grad()
def accuracy(model, x, y, chunk: int = 128) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), chunk):
        logits = model(torch.from_numpy(x[i:i + chunk]))
        correct += int((logits.argmax(dim=1) == torch.from_numpy(y[i:i + chunk])).sum())
    return correct / len(x)


# ---------------------------------------------------------------------------------------
# Figures


def plot_accuracy(rates, results: dict, n_classes: int, out: Path, title: str):
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, accs in results.items():
        ax.plot(100 * np.asarray(rates), 100 * np.asarray(accs), marker="o", label=name)
    ax.axhline(100 / n_classes, color="gray", linestyle=":", label="chance")
    ax.set_xlabel("outlier points at test time (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, out, "robust_pooling_accuracy")


def plot_examples(clouds, labels, classes, rate, rng, out: Path):
    """One cloud per class, clean (top) and with outliers (bottom)."""
    picks = [int(np.flatnonzero(labels == k)[0]) for k in range(min(len(classes), 6))]
    noisy = add_outliers(clouds[picks], rate, rng)
    fig = plt.figure(figsize=(2.2 * len(picks), 4.4))
    for j, i in enumerate(picks):
        for row, data in enumerate((clouds[i], noisy[j])):
            ax = fig.add_subplot(2, len(picks), row * len(picks) + j + 1, projection="3d")
            ax.scatter(*data.T, s=4, c=data[:, 2], cmap="viridis")
            ax.set_axis_off()
            ax.set_xlim(-1, 1), ax.set_ylim(-1, 1), ax.set_zlim(-1, 1)
            ax.set_title(classes[labels[i]] if row == 0 else f"{rate:.0%} outliers", fontsize=9)
    save_figure(fig, out, "robust_pooling_clouds")


# ---------------------------------------------------------------------------------------


def main():
    parser = example_parser(__doc__)
    parser.add_argument("--modelnet", type=Path, default=None,
                        help="ModelNet40 folder (HDF5 or OFF release) instead of synthetic shapes")
    parser.add_argument("--alpha", type=float, default=ALPHA,
                        help=f"robustness parameter α of the penalties (default {ALPHA})")
    args = parser.parse_args()
    cfg = QUICK if args.quick else FULL
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # tiny tensors: extra threads only contend on a 2-core machine

    if args.modelnet is not None:
        (x_train, y_train), (x_test, y_test), classes = load_modelnet40(
            args.modelnet, cfg.points, rng)
    else:
        classes = list(SHAPES)
        x_train, y_train = synthetic_clouds(cfg.train_per_class, cfg.points, rng)
        x_test, y_test = synthetic_clouds(cfg.test_per_class, cfg.points, rng)
    print(f"{len(x_train)} training and {len(x_test)} test clouds of {cfg.points} points, "
          f"{len(classes)} classes; {cfg.channels} pooled channels")
    print(f"quadratic-penalty node vs mean: max difference {check_quadratic_is_mean(rng):.1e}")

    # One outlier draw per rate, shared by every model, so that they see the same test sets.
    test_sets = {r: add_outliers(x_test, r, np.random.default_rng(args.seed + 1000 + i))
                 for i, r in enumerate(cfg.outlier_rates)}
    results = {}
    for name in POOLINGS:
        torch.manual_seed(args.seed)  # same initial weights for every pooling
        model = PointNetClassifier(cfg.channels, len(classes), make_pooling(name, args.alpha))
        seconds = train(model, x_train, y_train, cfg.epochs, cfg.batch, 1e-2, args.seed + 1, name)
        start = time.perf_counter()
        results[name] = [accuracy(model, test_sets[r], y_test) for r in cfg.outlier_rates]
        accs = " ".join(f"{a:.2f}" for a in results[name])
        print(f"{name:20s} train {seconds:6.1f} s, test {time.perf_counter() - start:5.1f} s;"
              f" accuracy at {[f'{r:.0%}' for r in cfg.outlier_rates]}: {accs}", flush=True)

    source = "ModelNet40" if args.modelnet is not None else "synthetic shapes"
    plot_accuracy(cfg.outlier_rates, results, len(classes), args.out,
                  f"Trained clean, tested with outliers ({source})")
    plot_examples(x_test, y_test, classes, 0.4, np.random.default_rng(args.seed), args.out)
    def accuracies_at(rate):
        i = cfg.outlier_rates.index(rate)
        return ", ".join(f"{n} {results[n][i]:.2f}" for n in POOLINGS)

    print(f"clean accuracy: {accuracies_at(0.0)}")
    # 30 %: below the robust estimators' 50 % breakdown point; 60 %: beyond it (Table III).
    headline(f"headline: accuracy at 30% outliers: {accuracies_at(0.3)}; "
             f"at 60%: {accuracies_at(0.6)}")

if __name__ == "__main__":
    main()
