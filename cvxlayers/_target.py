"""The solver targets cvxlayers compiles for: CVXPY's SCS interface, restricted to the
cones diffcp can differentiate (so that, e.g., power atoms compile to second-order cones),
and the same with the power cone added, for problems that cannot do without it.

A module of its own, imported only when a problem is compiled: it imports CVXPY, and
module-level classes keep compiled problems (which cache their solving chain) picklable.
"""

from cvxpy.constraints import PSD, SOC, ExpCone, NonNeg, PowCone3D, Zero
from cvxpy.reductions.solvers.conic_solvers.scs_conif import SCS

try:  # CVXPY ≥ 1.8 hands SCS vectorized PSD constraints
    from cvxpy.constraints.psd import SvecPSD
except ImportError:
    SvecPSD = PSD


class DiffcpConeTarget(SCS):
    """SCS's interface with only the cones diffcp differentiates."""

    SUPPORTED_CONSTRAINTS = [Zero, NonNeg, SOC, ExpCone, SvecPSD]

    def name(self):
        return "CVXLAYERS"


class PowerConeTarget(DiffcpConeTarget):
    """The same, plus the 3-D power cone (CVXPY rewrites PowConeND into it): the target
    of problems with explicit power-cone constraints, which are solved but not
    differentiated. Atoms such as ``cp.power`` compile to second-order cones under this
    target too (CVXPY gives them power cones only with ``approx=False``)."""

    SUPPORTED_CONSTRAINTS = DiffcpConeTarget.SUPPORTED_CONSTRAINTS + [PowCone3D]
