"""The solver target cvxlayers compiles for: CVXPY's SCS interface, restricted to the
cones diffcp can differentiate (so that, e.g., power atoms compile to second-order cones).

A module of its own, imported only when a problem is compiled: it imports CVXPY, and a
module-level class keeps compiled problems (which cache their solving chain) picklable.
"""

from cvxpy.constraints import PSD, SOC, ExpCone, NonNeg, Zero
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
