"""Scale-out: a layer's batch solved in chunks on Dask, Ray or any
``concurrent.futures.Executor`` (``CvxpyLayer(..., executor=...)``).

:mod:`.engines` talks to the engines (shipping the compiled problem once, retries,
unreachable engines); :mod:`.chunks` splits a batch, runs the forward and backward of
each chunk on a worker, and joins the results. The core calls :mod:`.chunks` when a layer
or a call has an executor; the adapters only pass ``executor=`` through.
"""

from cvxlayers.distributed.engines import DaskEngine, FuturesEngine, RayEngine, resolve

__all__ = ["DaskEngine", "FuturesEngine", "RayEngine", "resolve"]
