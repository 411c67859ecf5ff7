"""Learning a control policy: tune a convex approximate-dynamic-programming policy by
gradient descent through a QP layer, on the simulated closed-loop cost.

What it shows
    A control policy that solves a small convex problem at every time step is a
    differentiable function of its parameters, so its closed-loop performance can be
    tuned by backpropagating through a whole simulated rollout -- the "learning control
    policies" application of Agrawal, Amos, Barratt, Boyd, Diamond & Kolter (2019),
    "Differentiable Convex Optimization Layers" (§6; see
    ../shared/papers/implicit-layers-and-cvxpylayers.txt), who report a cost about 40 %
    lower than the LQR-derived starting point.

The system and the cost
    Linear dynamics with random disturbances and bounded inputs,

        x_{t+1} = A x_t + B u_t + w_t,     w_t ~ N(0, σ² I),    ‖u_t‖∞ ≤ 1,

    with the average stage cost over a horizon T = 30, from a random initial state,

        J = E[ (1/T) Σ_{t<T} ‖x_t‖² + ‖u_t‖² ].

    As in the paper's example, n = 2 states, m = 3 inputs, A = I + 0.01·N(0, 1) (close to
    marginally stable) and weak actuators B = 0.0033·N(0, 1); x_0 ~ N(0, I), σ = 0.1.

The policy (convex ADP)
    u = φ(x; P) = argmin_u  uᵀ R u + (Ax + Bu)ᵀ P (Ax + Bu)   subject to  ‖u‖∞ ≤ 1,

    a one-step look-ahead with a quadratic value function V(z) = zᵀPz (R = I). With P the
    LQR's Riccati solution and no input bound, φ is the optimal LQR controller; with the
    bound it is a sensible but suboptimal heuristic (saturated look-ahead), and a better P
    is not known in closed form. We learn the factor L = P^{1/2} (P = LᵀL stays PSD)
    starting from the LQR's, by Adam on the average cost of a batch of simulated rollouts,
    differentiating through every policy evaluation of the rollout.

    For DPP the objective is written ‖M u + d‖² with M = [R^{1/2}; L B] and d = [0; L A x]
    (both computed in PyTorch from L and x), so the CVXPY problem has parameters M and d
    only; a box constraint makes it a QP, solved with ``solver="QP"``: the whole batch of
    rollouts is one batched interior-point solve per time step, with gradients from the
    KKT system it already factored.

Headline
    ``headline: closed-loop cost <J_lqr> -> <J_tuned> (<change> %) on held-out rollouts
    (zero input: <J_0>)``: the average cost of the policy with the LQR's P and with the
    learned P, on rollouts (initial states and disturbances) never used in training, and,
    for reference, that of doing nothing (u = 0). Read it with that reference in mind:
    with such weak actuators, much of what the LQR-derived policy spends on inputs does
    not pay off within the horizon (the LQR's P values an infinite one), and most of the
    gain comes from learning to spend far less input.

Run
    python examples/control.py            # full version
    python examples/control.py --quick    # a reduced version (well under a minute)
"""

from __future__ import annotations

import time

import cvxpy as cp
import numpy as np
import scipy.linalg
import torch
from _common import example_parser, headline, progress, save_figure

from cvxlayers.torch import CvxpyLayer

N_STATES, N_INPUTS = 2, 3
NOISE = 0.1            # σ, the disturbance's standard deviation
X0_SCALE = 1.0         # initial states ~ N(0, X0_SCALE² I)
HORIZON = 30           # time steps per simulated rollout
LEARNING_RATE = 3.0    # Adam's first step size; P's entries are in the hundreds


# --------------------------------------------------------------------------- the system

def make_system(rng):
    """A random (A, B) of the paper's kind: A = I + 0.01 N(0, 1), close to marginally
    stable, and weak actuators B = 0.0033 N(0, 1)."""
    A = np.eye(N_STATES) + 1e-2 * rng.normal(size=(N_STATES, N_STATES))
    B = 1e-2 / 3 * rng.normal(size=(N_STATES, N_INPUTS))
    return A, B


def lqr_value_matrix(A, B):
    """The LQR's P (Q = I, R = I): the discrete algebraic Riccati equation's solution."""
    return scipy.linalg.solve_discrete_are(A, B, np.eye(len(A)), np.eye(B.shape[1]))


# --------------------------------------------------------------------------- the policy

def adp_policy_layer() -> CvxpyLayer:
    """u = argmin ‖M u + d‖² s.t. ‖u‖∞ ≤ 1, as a layer with parameters M and d."""
    u = cp.Variable(N_INPUTS)
    M = cp.Parameter((N_INPUTS + N_STATES, N_INPUTS))
    d = cp.Parameter(N_INPUTS + N_STATES)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(M @ u + d)), [cp.norm(u, "inf") <= 1])
    return CvxpyLayer(problem, parameters=[M, d], variables=[u], solver="QP")


class ADPPolicy(torch.nn.Module):
    """φ(x) = argmin uᵀu + ‖L(Ax + Bu)‖² s.t. ‖u‖∞ ≤ 1, with L = P^{1/2} learned."""

    def __init__(self, A, B, P):
        super().__init__()
        self.register_buffer("A", torch.as_tensor(A))
        self.register_buffer("B", torch.as_tensor(B))
        self.L = torch.nn.Parameter(torch.as_tensor(np.linalg.cholesky(P).T.copy()))
        self.layer = adp_policy_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, n) states -> (batch, m) inputs."""
        M = torch.cat([torch.eye(N_INPUTS, dtype=x.dtype), self.L @ self.B])
        d = torch.cat([torch.zeros(len(x), N_INPUTS, dtype=x.dtype), x @ (self.L @ self.A).T],
                      dim=1)
        # Each time step starts from the same rollout's previous inputs (warm_start): the
        # answer is the same to the tolerance, in fewer Newton steps (benchmarks/warm_start.py).
        u, = self.layer(M, d, solver_args={"tol": 1e-7}, warm_start=True)
        return u


# --------------------------------------------------------------------------- simulation

def draw_scenarios(count: int, horizon: int, rng):
    """Initial states (count, n) and disturbances (horizon, count, n): one rollout each."""
    x0 = X0_SCALE * rng.normal(size=(count, N_STATES))
    w = NOISE * rng.normal(size=(horizon, count, N_STATES))
    return torch.as_tensor(x0), torch.as_tensor(w)


def rollout(policy, A, B, x0, w):
    """Closed-loop simulation; returns the average stage cost per rollout (count,), and the
    states (horizon + 1, count, n) and inputs (horizon, count, m)."""
    A, B = torch.as_tensor(A), torch.as_tensor(B)
    x, states, inputs, cost = x0, [x0], [], 0.0
    for w_t in w:
        u = policy(x)
        cost = cost + (x ** 2).sum(dim=1) + (u ** 2).sum(dim=1)
        x = x @ A.T + u @ B.T + w_t
        states.append(x)
        inputs.append(u)
    return cost / len(w), torch.stack(states), torch.stack(inputs)


def evaluate(policy, A, B, scenarios) -> float:
    with torch.no_grad():
        cost, _, _ = rollout(policy, A, B, *scenarios)
    return cost.mean().item()


def train(policy, A, B, iterations, batch, horizon, lr, held_out, rng):
    """Adam on the average closed-loop cost of fresh random rollouts, its step size decayed
    to 30 % over the run; returns the training cost per iteration and the held-out cost
    every few iterations."""
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.3 ** (1 / iterations))
    history = {"train": [], "held_out": [(0, evaluate(policy, A, B, held_out))]}
    every = max(1, iterations // 10)
    for it in progress(range(1, iterations + 1), desc="tuning P"):
        cost, _, _ = rollout(policy, A, B, *draw_scenarios(batch, horizon, rng))
        loss = cost.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        history["train"].append(loss.item())
        if it % every == 0 or it == iterations:
            history["held_out"].append((it, evaluate(policy, A, B, held_out)))
    return history


# --------------------------------------------------------------------------- figures

def plot_training(history, cost_zero, out):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    its = np.arange(1, len(history["train"]) + 1)
    ax.plot(its, history["train"], color="C0", alpha=0.5, label="training batch")
    held_its, held = zip(*history["held_out"])
    ax.plot(held_its, held, "o-", color="C1", label="held-out rollouts")
    ax.axhline(held[0], color="gray", ls=":", label="LQR-derived P (start)")
    ax.axhline(cost_zero, color="k", ls="--", lw=0.8, label="zero input (reference)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("average closed-loop cost")
    ax.set_title("Tuning a convex ADP policy through the QP layer")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, out, "control_training")


def plot_trajectories(before, after, out):
    """One held-out rollout with the LQR-derived and the tuned policy."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(6.4, 5), sharex=True)
    for (states, inputs), name, color in ((before, "LQR-derived P", "C0"),
                                          (after, "tuned P", "C1")):
        axes[0].plot((states ** 2).sum(axis=1), color=color, label=name)
        axes[1].step(np.arange(len(inputs)), np.abs(inputs).max(axis=1), where="post",
                     color=color, label=name)
    axes[0].set_ylabel("‖x_t‖²")
    axes[1].set_ylabel("‖u_t‖∞")
    axes[1].set_xlabel("time step t")
    axes[0].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].set_title("One held-out rollout")
    save_figure(fig, out, "control_trajectories")


# --------------------------------------------------------------------------- main

def zero_input(x: torch.Tensor) -> torch.Tensor:
    """The do-nothing policy u = 0: a reference point for the costs."""
    return torch.zeros(len(x), N_INPUTS, dtype=x.dtype)


def main() -> None:
    args = example_parser(__doc__).parse_args()
    torch.set_num_threads(1)  # tiny batched solves: threads only add contention
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    if args.quick:
        iterations, batch, n_held_out = 20, 32, 200
    else:
        iterations, batch, n_held_out = 100, 64, 1000

    A, B = make_system(rng)
    P_lqr = lqr_value_matrix(A, B)
    policy = ADPPolicy(A, B, P_lqr)
    held_out = draw_scenarios(n_held_out, HORIZON, np.random.default_rng(args.seed + 1))
    cost_zero = evaluate(zero_input, A, B, held_out)

    start = time.perf_counter()
    with torch.no_grad():
        _, states0, inputs0 = rollout(policy, A, B, held_out[0][:1], held_out[1][:, :1])
    history = train(policy, A, B, iterations, batch, HORIZON, LEARNING_RATE, held_out, rng)
    with torch.no_grad():
        _, states1, inputs1 = rollout(policy, A, B, held_out[0][:1], held_out[1][:, :1])
    cost_lqr, cost_tuned = history["held_out"][0][1], history["held_out"][-1][1]
    print(f"{iterations} iterations x {batch} rollouts of {HORIZON} steps in "
          f"{time.perf_counter() - start:.1f} s")
    print("LQR P =", np.round(P_lqr, 1).tolist())
    print("learned P =", np.round((policy.L.T @ policy.L).detach().numpy(), 1).tolist())
    print(f"held-out average cost: LQR-derived ADP {cost_lqr:.3f}, tuned ADP {cost_tuned:.3f}, "
          f"zero input (reference) {cost_zero:.3f}")

    plot_training(history, cost_zero, args.out)
    plot_trajectories((states0[:, 0].numpy(), inputs0[:, 0].numpy()),
                      (states1[:, 0].numpy(), inputs1[:, 0].numpy()), args.out)
    change = 100 * (cost_tuned - cost_lqr) / cost_lqr
    headline(f"headline: closed-loop cost {cost_lqr:.3f} -> {cost_tuned:.3f} "
             f"({change:+.1f} %) on held-out rollouts (zero input: {cost_zero:.3f})")


if __name__ == "__main__":
    main()
