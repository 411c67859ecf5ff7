"""Keras on the torch backend (issue 16): the layer through Keras's Layer.__call__ against its
own .call (cvxlayers' code only) and the PyTorch layer; forward + backward, interleaved,
medians of 550 rounds. Same problem and SCS options as overhead.py.

Usage: python benchmarks/keras_call_overhead.py
"""
import os; os.environ["KERAS_BACKEND"]="torch"
import numpy as np, sys, time, torch, warnings
warnings.simplefilter("ignore")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import build_problem, SCS_KWARGS, N
from cvxlayers.keras import CvxpyLayer as K
from cvxlayers.torch import CvxpyLayer as T
problem,x,y=build_problem(); yv=np.random.default_rng(0).standard_normal(N)
kl=K(problem,[y],[x]); tl=T(problem,[y],[x])
yk=torch.tensor(yv,requires_grad=True)
def run(f):
    def g():
        yk.grad=None; f(yk)[0].sum().backward()
    return g
fns = {'torch layer': run(lambda v: tl(v, solver_args=SCS_KWARGS)),
       'keras __call__': run(lambda v: kl(v, solver_args=SCS_KWARGS)),
       'keras .call': run(lambda v: kl.call(v, solver_args=SCS_KWARGS))}
ts={k:[] for k in fns}
for r in range(600):
    for k,f in fns.items():
        a=time.perf_counter(); f(); ts[k].append(time.perf_counter()-a)
for k,v in ts.items(): print(f"{k:20s} {np.median(v[50:])*1e6:7.1f} us")
