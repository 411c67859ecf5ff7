"""Parameter specifications and the validation and batching of the values a call receives.

A parameter of declared shape ``s`` accepts a value of shape ``s`` (unbatched, shared
by every batch element) or ``(B, *s)`` (batched). All batched values share ``B``.
Values are checked here, once, for every adapter: shape, dtype, finiteness, and the
attributes the problem's convexity relies on (symmetric, PSD, sign, positivity in GP).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import warnings

import numpy as np

from cvxlayers.errors import ParameterError, ParameterTypeError, ParameterWarning

# Relative tolerance of the symmetry and PSD checks. Loose enough for finite-difference
# perturbations of single entries (gradcheck), tight enough to catch real mistakes.
_ATTRIBUTE_RTOL = 1e-5

# Declared sign -> (entries that violate it, what is wanted). In a DCP problem a sign only
# feeds curvature analysis, which holds at the limit 0 too, so pos/neg admit 0 there
# (sweeping a weight from 0 is common); in a DGP problem the parameter's log is taken,
# so 0 stays an error.
_SIGN_CHECKS = {
    "pos": (lambda a: a <= 0, "positive (> 0)"),
    "neg": (lambda a: a >= 0, "negative (< 0)"),
    "pos_or_zero": (lambda a: a < 0, "positive or zero (>= 0; 0 is accepted in a DCP problem)"),
    "neg_or_zero": (lambda a: a > 0, "negative or zero (<= 0; 0 is accepted in a DCP problem)"),
    "nonneg": (lambda a: a < 0, "nonnegative (>= 0)"),
    "nonpos": (lambda a: a > 0, "nonpositive (<= 0)"),
}


@dataclass(frozen=True)
class ParameterSpec:
    """What the layer knows about one CVXPY parameter.

    Attributes:
        label: how messages name it (its CVXPY name, with its position).
        name: its CVXPY name, quoted.
        shape: its declared shape.
        symmetric: its value must be a symmetric matrix (``symmetric``, ``PSD`` or ``NSD``).
        psd: its value must be positive semidefinite; ``nsd``: negative semidefinite.
        sign: ``"nonneg"``, ``"nonpos"``, ``"pos"``, ``"neg"`` (strict: DGP), their DCP
            forms ``"pos_or_zero"``, ``"neg_or_zero"``, or ``None``.
        diag: its value must be a diagonal matrix.
    """

    label: str
    shape: tuple
    name: str = ""
    symmetric: bool = False
    psd: bool = False
    nsd: bool = False
    sign: str | None = None
    diag: bool = False

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=int))

    @classmethod
    def from_parameter(cls, parameter, position: int, gp: bool) -> "ParameterSpec":
        attrs = parameter.attributes
        sign = None
        for name in ("pos", "neg", "nonneg", "nonpos"):
            if attrs.get(name):
                sign = name
        if gp:
            sign = "pos"
        elif sign in ("pos", "neg"):
            sign += "_or_zero"
        return cls(
            label=f"`{parameter.name()}` (position {position})",
            name=f"`{parameter.name()}`",
            shape=tuple(parameter.shape),
            symmetric=bool(attrs.get("symmetric") or attrs.get("PSD") or attrs.get("NSD")),
            psd=bool(attrs.get("PSD")),
            nsd=bool(attrs.get("NSD")),
            sign=sign,
            diag=bool(attrs.get("diag")),
        )


@dataclass(frozen=True)
class Batch:
    """The validated values of one call.

    Attributes:
        values: one float64 array per parameter, of shape ``(B, *shape)`` if batched,
            else ``shape``.
        batched: which parameters carry a batch dimension.
        size: the batch size ``B`` (1 when nothing is batched).
        is_batched: whether any parameter is batched (outputs then carry the batch dimension).
    """

    values: tuple
    batched: tuple
    size: int
    is_batched: bool


def as_real_array(value, spec: ParameterSpec) -> np.ndarray:
    """``value`` as a float64 array; a ParameterTypeError naming the parameter otherwise."""
    try:
        array = np.asarray(value)
    except Exception as exc:  # e.g. ragged nested lists
        raise ParameterTypeError(
            f"Parameter {spec.label} expects a real numeric array of shape {spec.shape} or "
            f"(batch, *{spec.shape}); received {type(value).__name__} that is not array-like "
            f"({exc}).") from exc
    if array.dtype.kind == "c":
        raise ParameterTypeError(
            f"Parameter {spec.label} expects real values; received a complex array "
            f"(dtype {array.dtype}). Split real and imaginary parts into separate parameters.")
    if array.dtype.kind not in "biuf":
        raise ParameterTypeError(
            f"Parameter {spec.label} expects a real numeric array; received dtype "
            f"{array.dtype} ({type(value).__name__}).")
    return array.astype(np.float64, copy=False)


def _check_shape(array: np.ndarray, spec: ParameterSpec) -> bool:
    """Returns whether the value is batched; raises if its shape fits neither form."""
    ndim = len(spec.shape)
    if array.ndim == ndim and array.shape == spec.shape:
        return False
    if array.ndim == ndim + 1 and array.shape[1:] == spec.shape:
        if array.shape[0] == 0:
            raise ParameterError(
                f"Parameter {spec.label} received an empty batch (shape {array.shape}); "
                "the batch size must be at least 1.")
        return True
    if array.ndim > ndim + 1:
        raise ParameterError(
            f"Invalid parameter dimensionality: parameter {spec.label} expects shape "
            f"{spec.shape} or (batch, *{spec.shape}), i.e. at most {ndim + 1} dimensions; "
            f"received {array.ndim} dimensions, shape {array.shape}.")
    raise ParameterError(
        f"Invalid parameter shape: parameter {spec.label} expects shape {spec.shape} or "
        f"(batch, *{spec.shape}); "
        f"received {array.shape}.")


def _where(array: np.ndarray, bad: np.ndarray, batched: bool) -> str:
    if batched:
        elements = np.unique(np.nonzero(bad.reshape(bad.shape[0], -1).any(axis=1))[0])
        return f"in batch element(s) {elements[:10].tolist()}"
    return "in the (unbatched) value"


def _check_entries(array: np.ndarray, spec: ParameterSpec, batched: bool) -> None:
    if not np.isfinite(array).all():
        bad = ~np.isfinite(array)
        kind = "NaN" if np.isnan(array).any() else "inf"
        raise ParameterError(
            f"Parameter {spec.label} contains {kind} values {_where(array, bad, batched)}; "
            "every entry must be finite.")
    if spec.sign is not None:
        violates, wanted = _SIGN_CHECKS[spec.sign]
        bad = violates(array)
        if bad.any():
            raise ParameterError(
                f"Parameter {spec.label} is declared {wanted.split()[0]}, so every entry must be "
                f"{wanted}; received {array[bad].ravel()[:5].tolist()} "
                f"{_where(array, bad, batched)}.")
    if spec.symmetric:
        _check_symmetric(array, spec, batched)
    if spec.diag:
        off = array * (1 - np.eye(spec.shape[0]))
        if np.any(off != 0):
            raise ParameterError(
                f"Parameter {spec.label} is declared diagonal; received nonzero off-diagonal "
                f"entries {_where(array, off != 0, batched)}.")


def _check_symmetric(array: np.ndarray, spec: ParameterSpec, batched: bool) -> None:
    """A symmetric parameter is read as its symmetric part (A + Aᵀ)/2 (see the compiler's
    lowering), so an asymmetric value is usable; beyond rounding it is probably a mistake,
    and a warning says how it is read. The PSD/NSD check is on the symmetric part."""
    scale = 1.0 + np.abs(array).max()
    asym = np.abs(array - np.swapaxes(array, -1, -2))
    if asym.max() > _ATTRIBUTE_RTOL * scale:
        where = _where(array, asym > _ATTRIBUTE_RTOL * scale, batched)
        warnings.warn(
            f"Parameter {spec.label} is declared symmetric; received a matrix whose largest "
            f"|A - A^T| entry is {asym.max():.3g} {where}. "
            "It is read as its symmetric part (A + A^T) / 2 (cvxpylayers reads the upper "
            "triangle); symmetrize it yourself to silence this warning.",
            ParameterWarning, stacklevel=2)
    if spec.psd or spec.nsd:
        eigs = np.linalg.eigvalsh((array + np.swapaxes(array, -1, -2)) / 2)
        # The eigenvalue on the wrong side: the smallest for PSD, the largest for NSD.
        worst = eigs[..., 0] if spec.psd else eigs[..., -1]
        bad = worst < -_ATTRIBUTE_RTOL * scale if spec.psd else worst > _ATTRIBUTE_RTOL * scale
        if np.any(bad):
            kind = "positive" if spec.psd else "negative"
            value = np.min(worst) if spec.psd else np.max(worst)
            where = (f"in batch element(s) {np.nonzero(bad)[0][:10].tolist()}"
                     if batched else "in the (unbatched) value")
            raise ParameterError(
                f"Parameter {spec.label} is declared {kind} semidefinite; received a matrix with "
                f"eigenvalue {value:.3g} {where}.")


def validate_batch(specs: Sequence[ParameterSpec], values: Sequence) -> Batch:
    """Checks a call's parameter values and determines its batch size.

    Args:
        specs: the layer's parameter specifications, in order.
        values: one array-like per parameter.

    Returns:
        The validated :class:`Batch`.

    Raises:
        ParameterError, ParameterTypeError: on any invalid value, naming the parameter.
    """
    if len(values) != len(specs):
        names = ", ".join(spec.name for spec in specs)
        raise ParameterError(
            f"A tensor must be provided for each CVXPY parameter: the layer expects "
            f"{len(specs)} parameter value(s), one for each of [{names}] in "
            f"that order; received {len(values)}.")
    arrays, batched = [], []
    for spec, value in zip(specs, values):
        array = as_real_array(value, spec)
        is_batched = _check_shape(array, spec)
        _check_entries(array, spec, is_batched)
        arrays.append(array)
        batched.append(is_batched)
    sizes = {spec.label: array.shape[0]
             for spec, array, b in zip(specs, arrays, batched) if b}
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"{label}: {size}" for label, size in sizes.items())
        raise ParameterError(
            f"Inconsistent batch sizes: batched parameters must share one batch size; "
            f"received {listing}.")
    size = next(iter(sizes.values())) if sizes else 1
    return Batch(tuple(arrays), tuple(batched), size, bool(sizes))


def static_output_lead(specs: Sequence[ParameterSpec], shapes: Sequence) -> tuple | None:
    """The leading (batch) dimensions of the outputs, from static shapes at trace time.

    Graph frameworks know their inputs' shapes before any value exists; this applies the
    batching rule to them, so that traced outputs get static shapes and wrong ranks or
    sizes fail at trace time with the same messages as :func:`validate_batch`.

    Args:
        specs: the layer's parameter specifications.
        shapes: per parameter, a tuple whose entries may be ``None`` (unknown size), or
            ``None`` for an unknown rank.

    Returns:
        ``(B,)`` (``B`` may be ``None``) when some parameter is batched, ``()`` when none is,
        and ``None`` when unknown ranks leave this open.
    """
    if len(shapes) != len(specs):
        validate_batch(specs, shapes)  # raises the count error
    batched, unknown, sizes = False, False, {}
    for spec, shape in zip(specs, shapes):
        if shape is None:
            unknown = True
            continue
        ndim = len(spec.shape)
        tail = tuple(shape[-ndim:]) if ndim else ()
        fits = len(shape) in (ndim, ndim + 1) and all(
            got is None or got == want for got, want in zip(tail, spec.shape))
        if not fits:
            _check_shape(np.empty([0 if s is None else s for s in shape]), spec)
        if len(shape) == ndim + 1:
            batched = True
            if shape[0] is not None:
                sizes[spec.label] = shape[0]
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"{label}: {size}" for label, size in sizes.items())
        raise ParameterError(f"Inconsistent batch sizes: batched parameters must share one "
                             f"batch size; received {listing}.")
    if unknown and not batched:
        return None
    return (next(iter(sizes.values()), None),) if batched else ()
