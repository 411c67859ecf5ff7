"""Forward states awaiting their backward pass, for adapters that run the core as a
callback inside a traced graph (TensorFlow's ``tf.numpy_function``, JAX's
``pure_callback``): the callback cannot return a Python object, so the forward returns an
integer token and the backward looks the state up by it.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict

import numpy as np

__all__ = ["StateStore"]


class StateStore:
    """Forward states awaiting their backward pass, keyed by an integer token.

    Keeps the ``capacity`` most recently used states and evicts the oldest: a graph-mode
    call cannot know whether its gradient will ever be asked for.
    """

    def __init__(self, capacity: int):
        if not isinstance(capacity, (int, np.integer)) or isinstance(capacity, bool) \
                or capacity < 1:
            raise ValueError(f"`state_capacity` must be a positive integer; received "
                             f"{capacity!r}.")
        self.capacity = int(capacity)
        self._states = OrderedDict()
        self._tokens = itertools.count()
        self._lock = threading.Lock()

    def put(self, state) -> int:
        with self._lock:
            token = next(self._tokens)
            self._states[token] = state
            while len(self._states) > self.capacity:
                self._states.popitem(last=False)
        return token

    def get(self, token: int):
        with self._lock:
            if token not in self._states:
                raise RuntimeError(
                    f"The forward state needed for this gradient (call #{token}) was evicted: "
                    f"the layer keeps the states of its {self.capacity} most recent calls, and "
                    "more calls ran before the gradient was computed. Compute the gradient "
                    "sooner, or construct the layer with a larger `state_capacity`.")
            self._states.move_to_end(token)
            return self._states[token]

    def __len__(self) -> int:
        return len(self._states)
