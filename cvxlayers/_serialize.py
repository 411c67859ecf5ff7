"""A layer's CVXPY problem as a string, so that framework configs (Keras's ``get_config``)
can carry it.

The problem, its parameters and its output variables are pickled *together*: pickle's memo
then keeps them the same objects after loading (``parameters[0] is`` the parameter inside
``problem``), which the compiler relies on to find them. The pickle is base64-encoded so that
it sits in a JSON config.

Security: a plain unpickler can be made to call any importable function, so a saved model
would be code. Decoding therefore uses :class:`_ProblemUnpickler`, which resolves only what a
CVXPY problem is made of — CVXPY's expression, constraint and problem *classes*, NumPy's and
SciPy's array reconstruction, and plain builtin types — and refuses everything else. Building
CVXPY objects runs no I/O, so a crafted string can at worst give a wrong problem, which the
layer's compilation then checks like any other. That is why loading works under Keras's
``safe_mode`` (``load_model``'s default).
"""

from __future__ import annotations

import base64
import io
import pickle

__all__ = ["encode_problem", "decode_problem", "layer_config", "layer_from_config"]

#: Bumped if the pickled tuple's layout changes, so that old files fail with a clear error.
_FORMAT = 1


#: Module prefixes whose *classes* a problem's pickle may name.
_CLASS_PREFIXES = ("cvxpy.atoms.", "cvxpy.constraints.", "cvxpy.expressions.",
                   "cvxpy.problems.", "cvxpy.transforms.", "cvxpy.lin_ops.", "cvxpy.utilities.",
                   "scipy.sparse.")
#: The functions and types outside those that NumPy arrays, sparse matrices and CVXPY's
#: attributes need.
_ALLOWED = {
    ("numpy", "dtype"), ("numpy", "ndarray"),
    ("numpy._core.multiarray", "scalar"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.multiarray", "scalar"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("collections", "OrderedDict"), ("copyreg", "_reconstructor"),
    # Power atoms (cp.square, cp.power, p-norms) keep their exponents as Fractions.
    ("fractions", "Fraction"),
} | {("builtins", name) for name in ("slice", "complex", "set", "frozenset", "tuple", "list",
                                     "dict", "int", "float", "bool", "str", "bytes", "object",
                                     "range")}


class _ProblemUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the building blocks of a CVXPY problem."""

    def find_class(self, module, name):
        found = super().find_class(module, name)
        if (module, name) in _ALLOWED or (
                module.startswith(_CLASS_PREFIXES) and isinstance(found, type)):
            return found
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a CVXPY problem")


def encode_problem(problem, parameters, variables) -> str:
    """``(problem, parameters, variables)`` as one base64 string (ASCII).

    The problem is rebuilt from its objective and constraints first: a compiled problem's
    cache holds CVXPY's solving chain, which is not needed (the layer recompiles) and is
    made of objects the safe unpickler does not resolve."""
    import cvxpy as cp

    fresh = cp.Problem(problem.objective, problem.constraints)
    payload = (_FORMAT, fresh, list(parameters), list(variables))
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
        raw = base64.b64decode(text.encode("ascii"), validate=True)
        payload = _ProblemUnpickler(io.BytesIO(raw)).load()
    except Exception as exc:  # noqa: BLE001 - any corruption gets the same clear message
        raise ValueError(f"Could not decode the serialized CVXPY problem ({type(exc).__name__}: "
                         f"{exc}); it must come from the same cvxlayers/cvxpy versions' "
                         "get_config().") from exc
    if not (isinstance(payload, tuple) and len(payload) == 4 and payload[0] == _FORMAT):
        raise ValueError("The serialized CVXPY problem has an unknown format; it must come "
                         "from cvxlayers' get_config().")
    return payload[1], payload[2], payload[3]


def layer_config(layer, config: dict) -> dict:
    """A Keras CvxpyLayer's ``get_config``: the base layer's ``config`` (``autocast``
    dropped: it is always off), the problem under ``"problem"`` (:func:`encode_problem`)
    and the constructor's options as given (``layer._init_options``)."""
    config.pop("autocast", None)
    problem, parameters, variables, _ = layer.core._source
    config["problem"] = encode_problem(problem, parameters, variables)
    config.update(layer._init_options)
    return config


def layer_from_config(cls, config: dict):
    """The layer of class ``cls`` that :func:`layer_config` described."""
    config = dict(config)
    problem, parameters, variables = decode_problem(config.pop("problem"))
    return cls(problem, parameters, variables, **config)
