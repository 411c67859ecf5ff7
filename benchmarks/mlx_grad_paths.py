"""Where the MLX layer's extra time goes (issue 16): the layer as shipped (the forward does no
derivative work, the vjp re-solves) against a variant, defined here only, whose forward
linearizes and keeps the state for its vjp, with and without a gradient, next to the PyTorch
layer; interleaved, medians of 550 rounds. Same problem and SCS options as overhead.py.

Usage: python benchmarks/mlx_grad_paths.py
"""
import numpy as np, sys, time, torch
sys.path.insert(0, __import__('os').path.dirname(__import__('os').path.abspath(__file__)))
from overhead import build_problem, SCS_KWARGS, N
import mlx.core as mx
import cvxlayers.mlx as M
from cvxlayers.torch import CvxpyLayer as T
problem,x,y=build_problem(); yv=np.random.default_rng(0).standard_normal(N)
L=M.CvxpyLayer(problem,[y],[x])
class V(M.CvxpyLayer):
    def _solve_function(self, solver_args, dtype):
        core=self.core; host={}
        @mx.custom_function
        def solve(*params):
            outs, host['state'] = core.forward(M._host_values(params), solver_args, need_grad=True)
            return tuple(M._to_mlx(o, dtype) for o in outs)
        @solve.vjp
        def vjp(primals, cot, outs):
            cot = (cot,) if isinstance(cot, mx.array) else cot
            g, = core.backward(host['state'], [M._to_numpy(c) for c in cot])
            return (M._to_mlx(g, mx.float64),)
        return solve
Vl=V(problem,[y],[x]); Tl=T(problem,[y],[x])
ym=mx.array(yv,dtype=mx.float64); yt=torch.tensor(yv,requires_grad=True)
gL = mx.grad(lambda v: L(v, solver_args=SCS_KWARGS)[0].sum())
gV = mx.grad(lambda v: Vl(v, solver_args=SCS_KWARGS)[0].sum())
def tcall():
    yt.grad=None; Tl(yt, solver_args=SCS_KWARGS)[0].sum().backward()
def tplain():
    with torch.no_grad(): Tl(yt, solver_args=SCS_KWARGS)
fns = {'torch grad': tcall,
       'mlx grad (as is)': lambda: mx.eval(gL(ym)),
       'mlx grad (linearize in fwd)': lambda: mx.eval(gV(ym)),
       'torch no_grad': tplain,
       'mlx plain (as is)': lambda: mx.eval(L(ym, solver_args=SCS_KWARGS)),
       'mlx plain (linearize in fwd)': lambda: mx.eval(Vl(ym, solver_args=SCS_KWARGS))}
print('max gradient gap, as is vs variant:', np.abs(np.array(gL(ym)) - np.array(gV(ym))).max())
ts={k:[] for k in fns}
for r in range(600):
    for k,f in fns.items():
        a=time.perf_counter(); f(); ts[k].append(time.perf_counter()-a)
for k,v in ts.items(): print(f"{k:30s} {np.median(v[50:])*1e6:7.1f} us")
