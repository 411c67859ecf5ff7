"""Scale-out (issue 15): a large batch of small SOCPs, forward + backward, on local threads,
a 2-worker Dask LocalCluster and Ray (num_cpus=2); then the same batch on 1, 2 and 4 Dask
workers (processes sharing this machine's cores), and the per-chunk overhead.

Every configuration runs in a fresh subprocess, so that the driver's peak resident memory
(``ru_maxrss``) is that configuration's alone. An engine's start-up and one small warm-up
call (workers importing cvxlayers, receiving the layer) are excluded from the timed call
and reported separately.

The per-chunk overhead ``o`` (worker-seconds per chunk: shipping a chunk's values and
results, scheduling, the worker's per-call setup) comes from the same batch cut into few
and many chunks on 2 workers:  ``o ≈ W · (T_many − T_few) / (n_many − n_few)``.
With ``t`` the per-element cost (forward + backward), a batch of ``N`` elements in ``n``
chunks on ``W`` workers then takes about ``(N·t + n·o) / W``.

    python benchmarks/scale_out.py --quick           # 2,000 elements, seconds
    python benchmarks/scale_out.py --n 20000         # what this loaded machine allows
    python benchmarks/scale_out.py                   # the target: 100,000 elements
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _problem():
    import cvxpy as cp

    x = cp.Variable(3)
    A, b = cp.Parameter((5, 3)), cp.Parameter(5)
    problem = cp.Problem(cp.Minimize(cp.norm(A @ x - b) + 0.1 * cp.norm(x, 1)), [x >= -1])
    return problem, [A, b], [x]


def _engine(name: str, workers: int):
    """The executor for ``name`` and a function that shuts it down."""
    if name == "threads":
        return None, lambda: None
    if name == "dask":
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=workers, processes=True, threads_per_worker=1,
                               dashboard_address=None)
        client = Client(cluster)
        return client, lambda: (client.close(), cluster.close())
    if name == "ray":
        import ray

        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        return "ray", ray.shutdown
    raise ValueError(name)


def child(args) -> dict:
    """One configuration, in this process: start the engine, warm up, time one call."""
    import numpy as np
    import torch

    from cvxlayers.torch import CvxpyLayer

    t0 = time.perf_counter()
    executor, close = _engine(args.engine, args.workers)
    startup = time.perf_counter() - t0
    problem, params, variables = _problem()
    layer = CvxpyLayer(problem, params, variables, executor=executor,
                       chunk_size=args.chunk_size)
    rng = np.random.default_rng(0)

    def call(n):
        A = torch.tensor(rng.standard_normal((n, 5, 3)), requires_grad=True)
        b = torch.tensor(rng.standard_normal((n, 5)), requires_grad=True)
        if args.forward_only:
            with torch.no_grad():
                return layer(A, b)
        (sol,) = layer(A, b)
        sol.sum().backward()
        return A.grad

    t0 = time.perf_counter()
    call(8 * max(1, args.workers))  # warm-up: imports on the workers, the layer shipped
    warmup = time.perf_counter() - t0
    t0 = time.perf_counter()
    call(args.n)
    seconds = time.perf_counter() - t0
    close()
    return {"forward_only": args.forward_only, "engine": args.engine, "workers": args.workers, "n": args.n,
            "chunk_size": args.chunk_size, "seconds": seconds, "startup_s": startup,
            "warmup_s": warmup,
            "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_child(engine, workers, n, chunk_size=None, forward_only=False) -> dict:
    cmd = [sys.executable, __file__, "--child", "--engine", engine, "--workers", str(workers),
           "--n", str(n)] + (["--forward-only"] if forward_only else [])
    if chunk_size:
        cmd += ["--chunk-size", str(chunk_size)]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {engine + (' fwd' if forward_only else ''):11s} W={workers} n={n:7d} chunk={chunk_size or 'auto':>6}: "
          f"{result['seconds']:8.2f} s  driver peak RSS {result['driver_peak_rss_mb']:7.0f} MB"
          f"  (start-up {result['startup_s']:.1f} s, warm-up {result['warmup_s']:.1f} s)",
          flush=True)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 elements")
    parser.add_argument("--n", type=int, default=None, help="batch size (default 100,000)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="threads", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--chunk-size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--forward-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    n = args.n or (2000 if args.quick else 100_000)
    print(f"scale-out: {n} SOCPs (3 variables, 5-row SOC, SCS), forward + backward; "
          f"{os.cpu_count()} CPUs")
    results = {"n": n, "main": [], "scaling": [], "chunks": []}
    print("engines (2 workers each):")
    for engine in ("threads", "dask", "ray"):
        try:
            results["main"].append(run_child(engine, 2, n))
        except (RuntimeError, json.JSONDecodeError) as exc:
            print(f"  {engine}: not run ({str(exc).splitlines()[-1]})")
    # What the backward's re-solve costs: a forward alone, on the same threads.
    forward = run_child("threads", 2, n, forward_only=True)
    results["threads_forward_only"] = forward
    base = results["main"][0]["seconds"]
    print(f"  threads, forward only (no gradient): {forward['seconds'] / base:.2f}x of forward"
          f" + backward; a backward that re-solves predicts "
          f"{(base + forward['seconds']) / base:.2f}x before any engine overhead")
    for r in results["main"][1:]:
        print(f"  {r['engine']}: {r['seconds'] / base:.2f}x local threads; driver memory "
              f"{r['driver_peak_rss_mb'] / results['main'][0]['driver_peak_rss_mb']:.2f}x")
    print("per-chunk overhead (dask, 2 workers; few vs many chunks):")
    few, many = 8, 8 * max(4, n // 500)
    t_few = run_child("dask", 2, n, chunk_size=-(-n // few))
    t_many = run_child("dask", 2, n, chunk_size=max(1, n // many))
    n_many = -(-n // max(1, n // many))
    overhead = 2 * (t_many["seconds"] - t_few["seconds"]) / (n_many - few)
    per_element = 2 * t_few["seconds"] / n
    results["chunks"] = [t_few, t_many]
    results["per_chunk_overhead_s"] = overhead
    results["per_element_s"] = per_element
    print(f"  per-chunk overhead o = {overhead * 1e3:.1f} ms (worker-seconds); per element "
          f"t = {per_element * 1e3:.2f} ms (forward + backward, incl. the backward's re-solve)")
    if not args.skip_scaling:
        print("simulated scale-up (dask LocalCluster, processes sharing the cores):")
        for workers in (1, 2, 4):
            results["scaling"].append(run_child("dask", workers, n))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
