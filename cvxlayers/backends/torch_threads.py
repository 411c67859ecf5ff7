"""One PyTorch thread for the QP solver's small batched operations.

The interior-point method issues a few dozen batched array operations per iteration. When
each is small, PyTorch's OpenMP thread team costs more than it saves: every operation
becomes a synchronization, and on a shared or busy machine a thread that is descheduled
stalls the others. Measured on a 2-core VM under outside load (layer forward + backward,
``solver="QP"``): a batch of 64 QPs with n = 8 took 1.3–1.8 s on 2 threads and 11–12 ms on
one; n = 32 at batch 512, 0.9–1.0 s against 0.28 s; n = 64 at batch 512 was level.
"""

from __future__ import annotations

from contextlib import contextmanager

#: Below this many KKT rows per element, the solve runs on one PyTorch thread.
SMALL_KKT = 96


@contextmanager
def threads_for(kkt_rows: int, on_cpu: bool = True):
    """Runs the block on one PyTorch intra-op thread when the KKT matrices are small and
    the data are on the CPU; otherwise leaves PyTorch's setting alone. The setting is
    process-wide, so it is restored on exit."""
    if not on_cpu or kkt_rows >= SMALL_KKT:
        yield
        return
    import torch

    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
