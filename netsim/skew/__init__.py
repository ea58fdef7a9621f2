"""Clock skew for real, unmodified node processes: this directory goes first on a node's
``PYTHONPATH`` so Python runs its ``sitecustomize.py`` at start-up, which shifts wall time by
``NETSIM_CLOCK_SKEW_S`` seconds (``Cluster(clock_skew=...)``, ``Cluster.set_clock_skew``)."""

from pathlib import Path

__all__ = ["SKEW_DIR", "SKEW_ENV"]

SKEW_DIR = Path(__file__).resolve().parent
# Read by sitecustomize.py (which spells it out: it must not import netsim at start-up).
SKEW_ENV = "NETSIM_CLOCK_SKEW_S"
