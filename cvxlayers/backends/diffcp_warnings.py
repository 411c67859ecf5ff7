"""diffcp's per-element "Solved/Inaccurate" warning, hidden while a batched call runs.

The status policy (:mod:`cvxlayers.status`) warns once per call with a count; diffcp would
also warn once per inaccurate element. This module hides diffcp's warning, and only it, for
the duration of a call, without leaving the process's warning filters changed.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from contextlib import contextmanager

__all__ = ["diffcp_inaccurate_ignored"]


# Why a reference-counted filter, and not ``warnings.catch_warnings``: the warning is
# emitted in the pool's threads, and Python's warning filters are one list for the whole
# process (until 3.14's context-aware warnings). ``catch_warnings`` saves that list on
# entry and puts the saved copy back on exit, so two batched calls overlapping in two
# threads restore each other's copies and can leave the "ignore" filter installed for
# good. The alternatives were worse: a filter installed once at import time is removed by
# any later ``catch_warnings`` block that happened to enclose the import (pytest wraps
# every test in one) and is outranked by a user's later ``simplefilter("error")``, which
# would turn diffcp's warning into an exception inside the solve and the element into a
# failure; not calling diffcp's ``solve_internal`` would mean copying its SCS/ECOS/
# Clarabel calls. So the filter is inserted by the first call to enter and removed, by
# identity, by the last to leave, under a lock: concurrent calls leave ``warnings.filters``
# exactly as they found it, including filters the user added meanwhile. It matches only
# diffcp's module and this message, so only diffcp's "Solved/Inaccurate" is hidden, and
# only while a call runs.
_FILTER_LOCK = threading.Lock()
_filter_users = 0
_filter_item = None


@contextmanager
def diffcp_inaccurate_ignored():
    """diffcp's "Solved/Inaccurate" warning ignored for the duration (see above)."""
    global _filter_users, _filter_item
    with _FILTER_LOCK:
        if _filter_users == 0:
            # The tuple warnings.filterwarnings would build; built here so that an equal
            # filter of the user's is neither moved nor, on exit, removed.
            _filter_item = ("ignore", re.compile(r"Solved/Inaccurate", re.I), Warning,
                            re.compile(r"diffcp"), 0)
            warnings.filters.insert(0, _filter_item)
            _filters_mutated()
        _filter_users += 1
    try:
        yield
    finally:
        with _FILTER_LOCK:
            _filter_users -= 1
            if _filter_users == 0:
                item, _filter_item = _filter_item, None
                for k, entry in enumerate(warnings.filters):
                    if entry is item:
                        del warnings.filters[k]
                        break
                _filters_mutated()


def _after_fork_in_child() -> None:
    """A child forked during a call inherits the filter with no call left to remove it,
    and possibly the lock held by a thread it does not have: both are reset."""
    global _FILTER_LOCK, _filter_users, _filter_item
    _FILTER_LOCK = threading.Lock()
    item, _filter_item, _filter_users = _filter_item, None, 0
    if item is not None:
        warnings.filters[:] = [entry for entry in warnings.filters if entry is not item]
        _filters_mutated()


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _filters_mutated() -> None:
    """Tells the warnings machinery that the filter list changed (it clears the per-module
    registries' caches), as ``warnings.filterwarnings`` does; a no-op where absent."""
    mutated = getattr(warnings, "_filters_mutated", None)
    if mutated is not None:
        mutated()
