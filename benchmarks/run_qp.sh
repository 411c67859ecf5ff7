#!/usr/bin/env bash
# The QP benchmark against every peer: proxsuite and qpth need NumPy < 2 (and so CVXPY 1.7),
# cvxpylayers 1.2 needs CVXPY >= 1.8 (and so NumPy >= 2), so each group runs in its own venv,
# one after the other, with cvxlayers measured in both. Venvs are made once under /tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
peers_np1=/tmp/cvxlayers-qp-peers-np1   # proxsuite, qpth (NumPy < 2)
peers_np2=/tmp/cvxlayers-qp-peers-np2   # cvxpylayers 1.2 (NumPy >= 2)
if [ ! -x "$peers_np1/bin/python" ]; then
  python3 -m venv --system-site-packages "$peers_np1"
  "$peers_np1/bin/pip" install -q proxsuite
  "$peers_np1/bin/pip" install -q --no-build-isolation qpth
fi
if [ ! -x "$peers_np2/bin/python" ]; then
  python3 -m venv --system-site-packages "$peers_np2"
  "$peers_np2/bin/pip" install -q 'cvxpylayers==1.2.*'
fi
mkdir -p benchmarks/results
"$peers_np1/bin/python" benchmarks/qp.py --only headline --contenders cvxlayers,proxsuite,qpth \
  --json benchmarks/results/qp_headline_numpy1.json "$@"
"$peers_np2/bin/python" benchmarks/qp.py --only headline --contenders cvxlayers,cvxpylayers \
  --json benchmarks/results/qp_headline_numpy2.json "$@"
python3 benchmarks/qp.py --only scaling --json benchmarks/results/qp_scaling.json "$@"
python3 benchmarks/qp.py --only flops --json benchmarks/results/qp_flops.json "$@"
