#!/usr/bin/env bash
# The QP benchmarks of issue 12 against every peer, rerunnable after changes land:
#   bash benchmarks/run_qp.sh [LABEL] [qp.py options]      # LABEL defaults to "after"
# writes benchmarks/results/qp_{paper,box,sparse}_LABEL.{txt,json}; QP_EXTRA=1 also reruns
# the older sections (headline, scaling, flops) into qp_{headline,scaling,flops}_LABEL.*.
# One venv holds every peer now (it is made once, under /tmp, seeing the system packages):
# proxsuite 0.8's wheels run on NumPy 2; qpth is installed with --no-deps because its
# metadata would pull CVXPY 1.7 and NumPy < 2 into the venv, shadowing the system's.
# The checkout this script is in is measured (PYTHONPATH), not the installed cvxlayers.
set -euo pipefail
cd "$(dirname "$0")/.."
label="${1:-after}"
shift || true
venv=${QP_PEERS_VENV:-/tmp/cvxlayers-qp-peers}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv --system-site-packages "$venv"
  "$venv/bin/pip" install -q 'cvxpylayers==1.2.*' 'proxsuite==0.8.*' 'moreau==0.4.*' 'moreau-cpu==0.4.*'
  "$venv/bin/pip" install -q --no-deps 'qpth==0.0.18'
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out=benchmarks/results
mkdir -p "$out"
sections="paper box sparse"
if [ "${QP_EXTRA:-0}" = 1 ]; then sections="$sections headline scaling flops"; fi
for section in $sections; do
  "$venv/bin/python" benchmarks/qp.py --only "$section" --json "$out/qp_${section}_${label}.json" "$@" \
    2>&1 | tee "$out/qp_${section}_${label}.txt"
done
