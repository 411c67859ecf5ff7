"""The map from a cone-program solution to the requested outputs, and its adjoint.

Every output a layer can return — a primal variable, or a constraint's dual variable —
is, entry by entry, a scaled entry of z = [x; y] (the cone program's primal and dual
solutions): slicing, reshaping, the symmetric expansion of a matrix variable, the
unpacking of a scaled PSD dual, a sign flip. So all outputs together are one sparse
selection matrix S with one nonzero per row:

    out = S z,        dz = Sᵀ d_out.

For DGP problems the cone program solves for u = log v, so a primal output is
v = exp(S z) and its adjoint multiplies by v first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from cvxlayers.parameter_map import _unvec, _vec


@dataclass(frozen=True)
class OutputSpec:
    """One requested output.

    Attributes:
        label: how messages name it.
        name: its kind and CVXPY name, e.g. "Variable `x`".
        shape: its CVXPY shape.
        rows: its rows of S (a slice).
        exp: whether the output is exp of the selected entries (DGP variables).
    """

    label: str
    shape: tuple
    rows: slice
    exp: bool = False
    name: str = ""


@dataclass(frozen=True)
class SolutionMap:
    """out = S z for every output, with z = [x; y], stored as S's one nonzero per row:
    the column ``indices[k]`` and the value ``scales[k]`` of row k."""

    outputs: tuple
    indices: np.ndarray
    scales: np.ndarray
    n: int
    m: int

    @classmethod
    def build(cls, outputs: Sequence[OutputSpec], indices: np.ndarray, scales: np.ndarray,
              n: int, m: int) -> "SolutionMap":
        """Builds S from, for each output entry (column-major), the index into z and its scale."""
        return cls(tuple(outputs), np.asarray(indices, dtype=np.int64),
                   np.asarray(scales, dtype=float), n, m)

    @property
    def selection(self) -> sp.csr_matrix:
        """S as a sparse matrix."""
        rows = np.arange(self.indices.size)
        return sp.csr_matrix((self.scales, (rows, self.indices)),
                             shape=(self.indices.size, self.n + self.m))

    def forward(self, x: np.ndarray, y: np.ndarray) -> list:
        """Outputs for a batch of solutions.

        Args:
            x: ``(B, n)`` primal solutions; y: ``(B, m)`` dual solutions.

        Returns:
            One array of shape ``(B, *shape)`` per output.
        """
        z = np.concatenate([x, y], axis=1)
        flat = z[:, self.indices] * self.scales
        results = []
        for out in self.outputs:
            values = flat[:, out.rows]
            if out.exp:
                values = np.exp(values)
            results.append(_unvec(values, (z.shape[0],) + out.shape, batched=True))
        return results

    def adjoint(self, grads: Sequence, outputs: Sequence[np.ndarray]):
        """Adjoint of :meth:`forward`.

        Args:
            grads: per output, ``(B, *shape)`` or ``None`` (no gradient flows into it).
            outputs: the values :meth:`forward` returned (needed for the exp outputs).

        Returns:
            ``(dx, dy)`` of shapes ``(B, n)`` and ``(B, m)``.
        """
        batch = outputs[0].shape[0]
        d_flat = np.zeros((batch, self.indices.size))
        for out, grad, value in zip(self.outputs, grads, outputs):
            if grad is None:
                continue
            g = _vec(np.asarray(grad, dtype=np.float64), batched=True)
            if out.exp:
                g = g * _vec(value, batched=True)
            d_flat[:, out.rows] = g
        dz = np.zeros((batch, self.n + self.m))
        if self._distinct:  # each entry of z feeds one output entry: a plain scatter
            dz[:, self.indices] = d_flat * self.scales
        else:  # Sᵀ: scatter-add, one entry of z feeding several outputs (e.g. X and X.T)
            np.add.at(dz.T, self.indices, (d_flat * self.scales).T)
        return dz[:, :self.n], dz[:, self.n:]

    @property
    def _distinct(self) -> bool:
        """Whether no entry of z is selected twice (computed once; np.add.at costs several
        times a plain scatter)."""
        found = self.__dict__.get("_distinct_indices")
        if found is None:
            found = bool(np.unique(self.indices).size == self.indices.size)
            object.__setattr__(self, "_distinct_indices", found)  # frozen: a private memo
        return found
