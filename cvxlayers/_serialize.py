"""A layer's CVXPY problem as a string, so that framework configs (Keras's ``get_config``)
can carry it.

The problem, its parameters and its output variables are pickled *together*: pickle's memo
then keeps them the same objects after loading (``parameters[0] is`` the parameter inside
``problem``), which the compiler relies on to find them. The pickle is base64-encoded so that
it sits in a JSON config.

Security: decoding unpickles, and unpickling can run arbitrary code. Decode only strings from
sources you trust, exactly as with any pickle.
"""

from __future__ import annotations

import base64
import pickle

__all__ = ["encode_problem", "decode_problem"]

#: Bumped if the pickled tuple's layout changes, so that old files fail with a clear error.
_FORMAT = 1


def encode_problem(problem, parameters, variables) -> str:
    """``(problem, parameters, variables)`` as one base64 string (ASCII)."""
    payload = (_FORMAT, problem, list(parameters), list(variables))
    return base64.b64encode(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)).decode(
        "ascii")


def decode_problem(text: str):
    """The ``(problem, parameters, variables)`` that :func:`encode_problem` encoded.

    Raises:
        ValueError: if ``text`` is not such a string.
    """
    if not isinstance(text, str):
        raise ValueError(f"The serialized problem must be a string; received "
                         f"{type(text).__name__}.")
    try:
        payload = pickle.loads(base64.b64decode(text.encode("ascii"), validate=True))
    except Exception as exc:  # noqa: BLE001 - any corruption gets the same clear message
        raise ValueError(f"Could not decode the serialized CVXPY problem ({type(exc).__name__}: "
                         f"{exc}); it must come from the same cvxlayers/cvxpy versions' "
                         "get_config().") from exc
    if not (isinstance(payload, tuple) and len(payload) == 4 and payload[0] == _FORMAT):
        raise ValueError("The serialized CVXPY problem has an unknown format; it must come "
                         "from cvxlayers' get_config().")
    return payload[1], payload[2], payload[3]
