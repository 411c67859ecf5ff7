"""Time and peak memory of the derivative modes on a mid-sized layer, against cvxpylayers.

The layer is cvxpylayers' own "ReLU Layers" example: z = argmin ‖z − W̃x − b‖² s.t. z ≥ 0,
W̃ = W, with D_in = D_out = 20 (440 cone-program variables), called on a batch of 64 with
SCS at its default settings, forward and backward (upstream gradient of ones).

Each contender runs in its own subprocess, so that its peak resident memory
(``ru_maxrss``) is its own. Reported per contender: the median time per call over the
timed calls, the peak RSS, and the peak RSS above the process's baseline just before the
first call (what the calls themselves cost).

Usage:
    python benchmarks/derivative_memory.py [--batch 64] [--calls 3] [--modes lsqr,dense]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, statistics, sys, time, warnings
import cvxpy as cp, torch
warnings.filterwarnings("ignore")
which, mode, batch, calls = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if which == "cvxlayers":
    from cvxlayers.torch import CvxpyLayer
    kwargs = {} if mode == "default" else {"mode": mode}
else:
    from cvxpylayers.torch import CvxpyLayer
    kwargs = {}
d_in = d_out = 20
z, W_tilde = cp.Variable(d_out), cp.Variable((d_out, d_in))
W, b, x = cp.Parameter((d_out, d_in)), cp.Parameter(d_out), cp.Parameter(d_in)
problem = cp.Problem(cp.Minimize(cp.sum_squares(z - W_tilde @ x - b)), [z >= 0, W_tilde == W])
layer = CvxpyLayer(problem, [W, b, x], [z], **kwargs)
torch.manual_seed(0)
args = [(1e-1 * torch.randn(batch, d_out, d_in)).requires_grad_(),
        torch.randn(batch, d_out).requires_grad_(), torch.randn(batch, d_in)]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for _ in range(calls):
    start = time.perf_counter()
    out, = layer(*args)
    out.sum().backward()
    times.append(time.perf_counter() - start)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"median_s": statistics.median(times), "peak_mib": peak / 1024,
                  "calls_mib": (peak - base) / 1024}))
"""


def run(which: str, mode: str, batch: int, calls: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, which, mode, str(batch), str(calls)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--modes", default="default,dense",
                        help="cvxlayers modes, comma-separated ('default' = no mode given)")
    parser.add_argument("--no-peer", action="store_true")
    args = parser.parse_args()
    rows = [("cvxlayers", m) for m in args.modes.split(",")]
    if not args.no_peer:
        rows.append(("cvxpylayers", "default"))
    print(f"ReLU-layers example (20x20, 440 variables), batch {args.batch}, SCS defaults, "
          f"{args.calls} timed calls each; python {sys.version.split()[0]}")
    print(f"{'contender':28s} {'median/call':>12s} {'peak RSS':>10s} {'by calls':>10s}")
    for which, mode in rows:
        r = run(which, mode, args.batch, args.calls)
        print(f"{which + ' (' + mode + ')':28s} {r['median_s']:10.2f} s {r['peak_mib']:7.0f} MiB "
              f"{r['calls_mib']:7.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
