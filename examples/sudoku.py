"""OptNet mini-Sudoku: learn the rules of 4x4 Sudoku with a QP layer, from games alone.

What it shows
    A quadratic-programming layer whose constraints are *learned* can pick up the hard rules
    of a puzzle (each cell holds one digit; each row, column and 2x2 box holds each digit
    once) from input/output pairs only, with no a-priori knowledge of the game. This is the
    mini-Sudoku experiment of Amos & Kolter (2017), "OptNet: Differentiable Optimization as a
    Layer in Neural Networks" (../shared/papers/optnet-abstract.txt), reproduced locally
    with ``cvxlayers.torch.qp``, and compared with a convolutional network trained on the
    same games for the same number of epochs.

The data
    The 288 complete 4x4 grids are enumerated by backtracking. A puzzle is a grid with
    cells removed one at a time, in random order, as long as the solution stays unique,
    down to a random number of clues (see ``CLUES``). A board is one-hot encoded as a
    4x4x4 = 64 vector z (z[r, c, d] = 1 when cell (r, c) holds digit d; a blank cell is all
    zeros). Both models see the puzzle's 64 numbers and must output the solution's.

The OptNet model
    For a puzzle x (64 numbers), the layer outputs

        z*(x) = argmin_z  ½ ε ‖z‖²  −  xᵀ z    subject to  A z = b,   z ≥ 0,

    with ε = 0.1 fixed, and A (n_eq x 64, n_eq = 40 as in OptNet: the true rules are 64
    equations of rank 40) learned from random initial values. The right-hand side is
    parametrized as b = A z0 with z0 = exp(w) > 0 learned too: z0 is then a strictly
    feasible point of {A z = b, z ≥ 0} whatever A is, so every QP met during training is
    feasible (and bounded, since ε > 0) -- a free b would soon make some of them
    infeasible. For the true rules, z0 = ¼·1 (every cell a quarter of each digit) works.
    The loss is the mean squared error between z* and the solution's one-hot vector; the
    gradient with respect to A and w comes from implicit differentiation of the KKT
    conditions (no unrolling).

    Why ``cvxlayers.torch.qp`` rather than ``CvxpyLayer(..., solver="QP")``: the problem is
    already in OptNet's standard form (Q, q, G, h, A, b), the learned matrix A enters it
    directly, and the functional form skips CVXPY's canonicalization and parameter map
    (for A, a 2,560-entry parameter) on every call; both run the same batched
    interior-point solver.

The baseline
    A fully convolutional network (3x3 convolutions with padding on the 4x4 board, digits
    as channels, ReLU) trained with the per-cell cross-entropy, same epochs, batch size and
    optimizer (Adam); its parameter count is printed beside the QP layer's.

Headline
    ``headline: held-out puzzles solved: OptNet QP <a>, CNN <b> (blank cells right: <c>, <d>)``
    the fraction of held-out puzzles whose whole solution (argmax digit in every cell) is
    right, and the fraction of blank cells filled in correctly, after training.

Run
    python examples/sudoku.py            # 9,000 training / 1,000 held-out puzzles
    python examples/sudoku.py --quick    # a reduced version (about a minute)
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from _common import example_parser, headline, progress, save_figure

from cvxlayers.torch import qp

SIZE, BOX = 4, 2                   # 4x4 board, 2x2 boxes, digits 1..4
N_VARS = SIZE ** 3                 # one-hot board: 64 numbers
CLUES = (4, 10)                    # a puzzle keeps between 4 and 10 of the 16 cells
EPSILON = 0.1                      # OptNet's fixed quadratic term, ½ε‖z‖²


# --------------------------------------------------------------------------- data

def all_grids() -> np.ndarray:
    """Every complete 4x4 Sudoku grid (288 of them), as (288, 4, 4) digits 0..3."""
    grids, board = [], np.full((SIZE, SIZE), -1)

    def allowed(r, c, d):
        r0, c0 = BOX * (r // BOX), BOX * (c // BOX)
        return (d not in board[r] and d not in board[:, c]
                and d not in board[r0:r0 + BOX, c0:c0 + BOX])

    def fill(cell):
        if cell == SIZE * SIZE:
            grids.append(board.copy())
            return
        r, c = divmod(cell, SIZE)
        for d in range(SIZE):
            if allowed(r, c, d):
                board[r, c] = d
                fill(cell + 1)
                board[r, c] = -1

    fill(0)
    return np.stack(grids)


def make_puzzle(grid: np.ndarray, grids: np.ndarray, rng) -> np.ndarray:
    """``grid`` with cells removed (-1) while its solution stays unique among ``grids``."""
    puzzle = grid.copy()
    target_clues = rng.integers(CLUES[0], CLUES[1] + 1)
    for cell in rng.permutation(SIZE * SIZE):
        if (puzzle >= 0).sum() <= target_clues:
            break
        r, c = divmod(cell, SIZE)
        trial = puzzle.copy()
        trial[r, c] = -1
        given = trial >= 0
        matches = (grids[:, given] == trial[given]).all(axis=1).sum()
        if matches == 1:            # still a unique solution: keep the cell removed
            puzzle = trial
    return puzzle


def one_hot(boards: np.ndarray) -> torch.Tensor:
    """(N, 4, 4) digits in -1..3 -> (N, 64) one-hot, blank cells all zero."""
    eye = np.vstack([np.eye(SIZE), np.zeros((1, SIZE))])  # index -1 picks the zero row
    return torch.tensor(eye[boards].reshape(len(boards), N_VARS), dtype=torch.float32)


def make_dataset(count: int, grids: np.ndarray, rng):
    """``count`` (puzzle, solution) pairs as (count, 64) float32 tensors."""
    solutions = grids[rng.integers(len(grids), size=count)]
    puzzles = np.stack([make_puzzle(g, grids, rng) for g in solutions])
    return one_hot(puzzles), one_hot(solutions)


# --------------------------------------------------------------------------- models

class OptNetSudoku(torch.nn.Module):
    """z*(x) = argmin ½ε‖z‖² − xᵀz  s.t.  Az = A·exp(w),  z ≥ 0, with A and w learned."""

    def __init__(self, n_eq: int = 40, tol: float = 1e-4):
        super().__init__()
        self.A = torch.nn.Parameter(torch.rand(n_eq, N_VARS, dtype=torch.float64))
        self.log_z0 = torch.nn.Parameter(torch.zeros(N_VARS, dtype=torch.float64))
        self.register_buffer("Q", EPSILON * torch.eye(N_VARS, dtype=torch.float64))
        self.register_buffer("G", -torch.eye(N_VARS, dtype=torch.float64))
        self.register_buffer("h", torch.zeros(N_VARS, dtype=torch.float64))
        self.tol = tol   # the loss needs ~1e-3 accuracy; a loose tolerance saves iterations

    def forward(self, puzzles: torch.Tensor) -> torch.Tensor:
        b = self.A @ self.log_z0.exp()
        z = qp(self.Q, -puzzles.double(), self.G, self.h, self.A, b, tol=self.tol)
        return z.float()


class ConvSudoku(torch.nn.Module):
    """A fully convolutional baseline: digits as channels, 3x3 convolutions, per-cell logits."""

    def __init__(self, channels: int = 32, layers: int = 4):
        super().__init__()
        widths = [SIZE] + [channels] * layers
        self.body = torch.nn.ModuleList(
            torch.nn.Conv2d(a, b, 3, padding=1) for a, b in zip(widths[:-1], widths[1:]))
        self.head = torch.nn.Conv2d(channels, SIZE, 1)

    def logits(self, puzzles: torch.Tensor) -> torch.Tensor:
        """(B, 64) one-hot boards -> (B, 4 digits, 4, 4) logits."""
        h = puzzles.view(-1, SIZE, SIZE, SIZE).permute(0, 3, 1, 2)
        for conv in self.body:
            h = F.relu(conv(h))
        return self.head(h)

    def forward(self, puzzles: torch.Tensor) -> torch.Tensor:
        """(B, 64) boards as per-cell digit probabilities, in the one-hot layout."""
        return self.logits(puzzles).softmax(dim=1).permute(0, 2, 3, 1).reshape(-1, N_VARS)


def optnet_loss(model, puzzles, solutions):
    return F.mse_loss(model(puzzles), solutions)


def conv_loss(model, puzzles, solutions):
    targets = solutions.view(-1, SIZE, SIZE, SIZE).argmax(dim=-1)
    return F.cross_entropy(model.logits(puzzles), targets)


def n_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- evaluation

def accuracy(model, puzzles, solutions, batch: int = 500):
    """(fraction of puzzles solved, fraction of blank cells right), argmax digit per cell."""
    with torch.no_grad():
        outputs = torch.cat([model(puzzles[i:i + batch]) for i in range(0, len(puzzles), batch)])
    predicted = outputs.view(-1, SIZE * SIZE, SIZE).argmax(dim=-1)
    truth = solutions.view(-1, SIZE * SIZE, SIZE).argmax(dim=-1)
    blank = puzzles.view(-1, SIZE * SIZE, SIZE).sum(dim=-1) == 0
    right = predicted == truth
    return right.all(dim=1).float().mean().item(), right[blank].float().mean().item()


def train(name, model, loss_fn, data, epochs, batch, lr, rng, n_monitor=1000):
    """Adam on ``loss_fn``, its step size decayed to a fifth over the run (at a constant
    0.1 the QP layer's training, once converged, was seen to blow up late in a long run);
    returns the per-epoch puzzle error on (the first ``n_monitor`` of) the training
    puzzles and on the held-out ones, and the held-out cell accuracy."""
    (x_train, y_train), (x_test, y_test) = data
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(x_train) // batch)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.2 ** (1 / steps))
    history = {"train": [], "test": [], "cells": []}
    for _ in progress(range(epochs), desc=name):
        order = rng.permutation(len(x_train))
        for i in range(0, len(order), batch):
            idx = torch.as_tensor(order[i:i + batch])
            loss = loss_fn(model, x_train[idx], y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        solved_train, _ = accuracy(model, x_train[:n_monitor], y_train[:n_monitor])
        solved_test, cells_test = accuracy(model, x_test, y_test)
        history["train"].append(1 - solved_train)
        history["test"].append(1 - solved_test)
        history["cells"].append(cells_test)
    return history


# --------------------------------------------------------------------------- figures

def plot_errors(histories, out):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    colors = {"OptNet QP": "C0", "CNN": "C1"}
    for name, hist in histories.items():
        epochs = np.arange(1, len(hist["train"]) + 1)
        ax.plot(epochs, hist["train"], "--", color=colors[name], label=f"{name}, training")
        ax.plot(epochs, hist["test"], "-", color=colors[name], label=f"{name}, held out")
    ax.set_xlabel("epoch")
    ax.set_ylabel("puzzle error (fraction not fully solved)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("4x4 Sudoku: OptNet QP layer vs convolutional network")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, out, "sudoku_error_curves")


def plot_learned_constraints(model, out):
    """The learned A, to look at: its rows span the learned constraints in some basis, so
    they need not look like the rules one by one."""
    import matplotlib.pyplot as plt

    A = model.A.detach().numpy()
    fig, ax = plt.subplots(figsize=(8, 4))
    image = ax.imshow(A, aspect="auto", cmap="RdBu_r", vmin=-np.abs(A).max(),
                      vmax=np.abs(A).max())
    ax.set_xlabel("one-hot variable (row, column, digit)")
    ax.set_ylabel("learned equality")
    ax.set_title("Learned constraint matrix A of the OptNet layer")
    fig.colorbar(image, ax=ax)
    save_figure(fig, out, "sudoku_learned_A")


# --------------------------------------------------------------------------- main

def main() -> None:
    args = example_parser(__doc__).parse_args()
    torch.set_num_threads(1)  # small batched factorizations: threads only add contention
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    n_train, n_test, epochs = (1500, 300, 5) if args.quick else (9000, 1000, 8)
    batch = 50

    grids = all_grids()
    data = make_dataset(n_train, grids, rng), make_dataset(n_test, grids, rng)
    print(f"{len(grids)} complete grids; {n_train} training and {n_test} held-out puzzles, "
          f"{CLUES[0]}-{CLUES[1]} clues each")

    models = {"OptNet QP": (OptNetSudoku(), optnet_loss, 0.1),
              "CNN": (ConvSudoku(), conv_loss, 1e-3)}
    histories, results = {}, {}
    for name, (model, loss_fn, lr) in models.items():
        start = time.perf_counter()
        histories[name] = train(name, model, loss_fn, data, epochs, batch, lr, rng,
                                n_monitor=n_test)
        results[name] = accuracy(model, *data[1])
        print(f"{name:9s}: {n_parameters(model):6d} parameters, {epochs} epochs in "
              f"{time.perf_counter() - start:5.1f} s; held out: puzzles solved "
              f"{results[name][0]:.3f}, blank cells right {results[name][1]:.3f}")

    plot_errors(histories, args.out)
    plot_learned_constraints(models["OptNet QP"][0], args.out)
    (qp_solved, qp_cells), (cnn_solved, cnn_cells) = results["OptNet QP"], results["CNN"]
    headline(f"headline: held-out puzzles solved: OptNet QP {qp_solved:.3f}, "
             f"CNN {cnn_solved:.3f} (blank cells right: {qp_cells:.3f}, {cnn_cells:.3f})")


if __name__ == "__main__":
    main()
