from graphscale.nn.conv import GCNConv, GENConv, SAGEConv
from graphscale.nn.deq import DEQBlock, DEQConvergenceWarning
from graphscale.nn.reversible import GroupRevBlock, RevStack, SeededRNG, run_reversible
from graphscale.nn.solvers import SOLVERS, get_solver, register_solver
from graphscale.nn.weight_tied import WeightTiedResidual, WeightTiedReversible

__all__ = ["GCNConv", "GENConv", "SAGEConv", "DEQBlock", "DEQConvergenceWarning", "GroupRevBlock", "RevStack",
           "SeededRNG", "run_reversible", "SOLVERS", "get_solver", "register_solver", "WeightTiedResidual",
           "WeightTiedReversible"]
