"""Keras end to end: task-based portfolio allocation with a Markowitz layer in model.fit.

A ``keras.Model`` maps market features x to an allocation w: a small Dense network predicts
the assets' returns μ̂(x), and a ``cvxlayers.tensorflow.CvxpyLayer`` turns the prediction
into the Markowitz portfolio

    w*(μ̂) = argmax_w  μ̂ᵀw − γ wᵀΣw   s.t.  1ᵀw = 1,  0 ≤ w ≤ w_max,

(a QP, solved by the native batched interior-point solver, ``solver="QP"``). Two ways of
training the same network are compared on held-out data:

- **two-stage (predict, then optimize):** fit μ̂ to the realized returns r by mean squared
  error, then allocate with the layer;
- **task-based (decision-focused, Donti, Amos & Kolter 2017):** train the whole model with
  ``model.fit`` on the loss −U(w*(μ̂(x)), r), the negative *realized* utility
  U(w, r) = rᵀw − γ wᵀΣw, back-propagating through the optimization layer.

The synthetic market makes MSE mis-specified for the decision: each return is a large
common factor (the same for every asset, so it cannot change an allocation with 1ᵀw = 1),
plus small asset-specific signals, plus noise whose scale depends on the features. A small
network trained by MSE spends its capacity on the large common factor and on the noisiest
samples; the task loss spends it only on what moves the allocation.

Run:
    python examples/keras_portfolio.py            # full version (a few minutes, 2 cores)
    python examples/keras_portfolio.py --quick    # reduced version (under a minute)

Headline: mean held-out realized utility U per period of the task-based and the two-stage
model (higher is better), beside the oracle (the true conditional mean in the same layer)
and the equal-weight portfolio. Figures: held-out utility over the epochs, and the
cumulative realized return over the held-out periods in excess of equal weights.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # quiet TensorFlow's start-up logs

import cvxpy as cp  # noqa: E402
import keras  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _common import example_parser, headline, progress, save_figure  # noqa: E402

from cvxlayers.tensorflow import CvxpyLayer  # noqa: E402

N_ASSETS, N_FEATURES = 8, 6
GAMMA = 1.0      # risk aversion γ
W_MAX = 0.4      # position limit: no asset above 40 % of the portfolio


@dataclass
class Config:
    n_train: int
    n_test: int
    epochs: int
    batch: int


FULL = Config(n_train=4000, n_test=4000, epochs=40, batch=64)
QUICK = Config(n_train=1500, n_test=1500, epochs=8, batch=64)


# ---------------------------------------------------------------------------------------
# The synthetic market


@dataclass
class Market:
    """Returns r = common(x)·1 + signal(x) + noise(x), with fixed random coefficients."""

    loadings: np.ndarray     # (N_FEATURES, N_ASSETS): the asset-specific signals' directions
    vol: np.ndarray          # (N_ASSETS,): each asset's base volatility
    sigma: np.ndarray        # (N_ASSETS, N_ASSETS): the risk model Σ the optimizer uses

    @classmethod
    def random(cls, rng):
        loadings = rng.normal(size=(N_FEATURES, N_ASSETS)) / np.sqrt(N_FEATURES)
        vol = rng.uniform(0.3, 0.9, size=N_ASSETS)
        # Σ: the noise's average covariance (its scale is 1 + E|x_2| ≈ 1.8 on average).
        sigma = np.diag((vol * (1 + np.sqrt(2 / np.pi))) ** 2)
        return cls(loadings, vol, sigma)

    def expected_returns(self, x):
        """E[r | x], shape (S, N_ASSETS)."""
        common = 3.0 * np.sin(2 * x[:, :1]) + x[:, 1:2] ** 2        # large, decision-irrelevant
        z = x @ self.loadings
        signal = 0.4 * np.tanh(2 * z) * (1 + 0.5 * np.cos(3 * x[:, 3:4]))  # small, relevant
        return common + signal

    def sample(self, n, rng):
        """Features (n, N_FEATURES) and realized returns (n, N_ASSETS), float32."""
        x = rng.normal(size=(n, N_FEATURES))
        scale = 1 + np.abs(x[:, 2:3])                     # heteroscedastic: |x_2| sets the noise
        noise = rng.standard_t(df=4, size=(n, N_ASSETS)) / np.sqrt(2) * self.vol * scale
        r = self.expected_returns(x) + noise
        return x.astype(np.float32), r.astype(np.float32)


def realized_utility(w, r, sigma):
    """U(w, r) = rᵀw − γ wᵀΣw per period (NumPy), shape (S,)."""
    return np.sum(r * w, axis=1) - GAMMA * np.einsum("si,ij,sj->s", w, sigma, w)


# ---------------------------------------------------------------------------------------
# The model


def markowitz_layer(sigma: np.ndarray) -> CvxpyLayer:
    """w*(μ̂) = argmax μ̂ᵀw − γ wᵀΣw s.t. 1ᵀw = 1, 0 ≤ w ≤ w_max, as a Keras layer.
    Σ is a constant (``quad_form`` with a fixed PSD matrix keeps the problem DPP and a QP
    the native solver takes as it is)."""
    mu = cp.Parameter(N_ASSETS)
    w = cp.Variable(N_ASSETS)
    objective = cp.Maximize(mu @ w - GAMMA * cp.quad_form(w, cp.psd_wrap(sigma)))
    problem = cp.Problem(objective, [cp.sum(w) == 1, w >= 0, w <= W_MAX])
    return CvxpyLayer(problem, parameters=[mu], variables=[w], solver="QP", name="markowitz")


def return_predictor(seed: int) -> keras.Model:
    """features → predicted returns μ̂: a deliberately small network (16 hidden units)."""
    init = keras.initializers.GlorotUniform(seed=seed)
    return keras.Sequential([
        keras.Input((N_FEATURES,)),
        keras.layers.Dense(16, activation="relu", kernel_initializer=init),
        keras.layers.Dense(N_ASSETS, kernel_initializer=init),
    ], name="return_predictor")


def allocator(predictor: keras.Model, markowitz: CvxpyLayer) -> keras.Model:
    """features → μ̂ → w*(μ̂): the optimization layer inside a functional keras.Model."""
    features = keras.Input((N_FEATURES,))
    w, = markowitz(predictor(features))
    return keras.Model(features, w, name="allocator")


def negative_utility_loss(sigma: np.ndarray):
    """Keras loss: −(rᵀw − γ wᵀΣw) per sample, with y_true = r and y_pred = w."""
    sigma_t = tf.constant(sigma, dtype=tf.float32)

    def loss(r, w):
        risk = tf.reduce_sum(w * tf.matmul(w, sigma_t), axis=-1)
        return -(tf.reduce_sum(r * w, axis=-1) - GAMMA * risk)

    return loss


# ---------------------------------------------------------------------------------------
# Callbacks: a progress bar, and the held-out utility after every epoch


class ProgressBar(keras.callbacks.Callback):
    """Drives a tqdm bar (from _common.progress) over the epochs of model.fit."""

    def __init__(self, epochs: int, desc: str):
        super().__init__()
        self.epochs, self.desc = epochs, desc

    def on_train_begin(self, logs=None):
        self.bar = progress(range(self.epochs), desc=self.desc, leave=False)
        self.bar_iter = iter(self.bar)

    def on_epoch_end(self, epoch, logs=None):
        next(self.bar_iter, None)
        self.bar.set_postfix(loss=f"{(logs or {}).get('loss', float('nan')):.4f}")

    def on_train_end(self, logs=None):
        self.bar.close()


class HeldOutUtility(keras.callbacks.Callback):
    """Records the mean held-out realized utility of the allocation after every epoch."""

    def __init__(self, allocate: keras.Model, x, r, sigma):
        super().__init__()
        self.allocate, self.x, self.r, self.sigma = allocate, x, r, sigma
        self.history = []

    def on_epoch_end(self, epoch, logs=None):
        w = self.allocate(self.x)   # eager and outside a tape: only the solves run
        self.history.append(float(realized_utility(np.asarray(w), self.r, self.sigma).mean()))


# ---------------------------------------------------------------------------------------


def train_two_stage(cfg, seed, markowitz, data, sigma):
    """MSE on returns, then the same Markowitz layer; held-out utility tracked per epoch."""
    (x_train, r_train), (x_test, r_test) = data
    predictor = return_predictor(seed)
    predictor.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    allocate = allocator(predictor, markowitz)   # shares the predictor's weights
    tracker = HeldOutUtility(allocate, x_test, r_test, sigma)
    predictor.fit(x_train, r_train, epochs=cfg.epochs, batch_size=cfg.batch, verbose=0,
                  callbacks=[ProgressBar(cfg.epochs, "two-stage (MSE)"), tracker])
    return allocate, tracker.history


def train_task_based(cfg, seed, markowitz, data, sigma):
    """The whole allocator trained by model.fit on the negative realized utility."""
    (x_train, r_train), (x_test, r_test) = data
    allocate = allocator(return_predictor(seed), markowitz)
    allocate.compile(optimizer=keras.optimizers.Adam(3e-3), loss=negative_utility_loss(sigma))
    tracker = HeldOutUtility(allocate, x_test, r_test, sigma)
    allocate.fit(x_train, r_train, epochs=cfg.epochs, batch_size=cfg.batch, verbose=0,
                 callbacks=[ProgressBar(cfg.epochs, "task-based"), tracker])
    return allocate, tracker.history


def plot_results(histories: dict, references: dict, cumulative: dict, out):
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, history in histories.items():
        ax.plot(np.arange(1, len(history) + 1), history, marker="o", markersize=3, label=name)
    for (name, value), style in zip(references.items(), ("--", ":")):
        ax.axhline(value, color="gray", linestyle=style, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("held-out realized utility per period")
    ax.set_title("Task-based vs two-stage (held out)")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, out, "keras_portfolio_utility")

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, returns in cumulative.items():
        ax.plot(np.cumsum(returns), label=name)
    ax.axhline(0.0, color="gray", linestyle=":", label="equal weights")
    ax.set_xlabel("held-out period")
    ax.set_ylabel("cumulative return in excess of equal weights")
    ax.set_title("Cumulative excess return over the held-out periods")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, out, "keras_portfolio_cumulative")


def main():
    args = example_parser(__doc__).parse_args()
    cfg = QUICK if args.quick else FULL
    rng = np.random.default_rng(args.seed)
    keras.utils.set_random_seed(args.seed)

    market = Market.random(rng)
    data = (market.sample(cfg.n_train, rng), market.sample(cfg.n_test, rng))
    (x_test, r_test) = data[1]
    markowitz = markowitz_layer(market.sigma)
    print(f"{N_ASSETS} assets, {N_FEATURES} features; {cfg.n_train} training and "
          f"{cfg.n_test} held-out periods; {cfg.epochs} epochs of batch {cfg.batch}")

    start = time.perf_counter()
    two_stage, two_stage_history = train_two_stage(cfg, args.seed, markowitz, data, market.sigma)
    print(f"two-stage: {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    task_based, task_history = train_task_based(cfg, args.seed, markowitz, data, market.sigma)
    print(f"task-based: {time.perf_counter() - start:.1f} s")

    # References: the oracle allocates with the true conditional mean; equal weights 1/n
    # (feasible, since 1/n ≤ w_max).
    w_oracle, = markowitz(market.expected_returns(x_test).astype(np.float32))
    allocations = {
        "task-based": np.asarray(task_based(x_test)),
        "two-stage": np.asarray(two_stage(x_test)),
        "oracle E[r|x]": np.asarray(w_oracle),
        "equal weights": np.full_like(r_test, 1.0 / N_ASSETS),
    }
    utilities = {k: float(realized_utility(w, r_test, market.sigma).mean())
                 for k, w in allocations.items()}
    for name, value in utilities.items():
        print(f"held-out realized utility, {name:14s}: {value:.4f}")

    plot_results({"task-based": task_history, "two-stage (MSE)": two_stage_history},
                 {k: utilities[k] for k in ("oracle E[r|x]", "equal weights")},
                 # In excess of equal weights, which removes the common factor (1ᵀw = 1)
                 # that every portfolio earns alike and that would hide the differences.
                 {k: np.sum((w - allocations["equal weights"]) * r_test, axis=1)
                  for k, w in allocations.items() if k != "equal weights"}, args.out)
    headline(f"headline: held-out realized utility: task-based {utilities['task-based']:.4f}, "
             f"two-stage {utilities['two-stage']:.4f}, oracle {utilities['oracle E[r|x]']:.4f}, "
             f"equal-weight {utilities['equal weights']:.4f}")


if __name__ == "__main__":
    main()
