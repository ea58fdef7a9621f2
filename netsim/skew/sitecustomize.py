"""Skews a process's wall clock when ``NETSIM_CLOCK_SKEW_S`` is set: ``time.time`` and
``time.time_ns`` return that many seconds more (or less), as on a machine whose clock is wrong.

Nothing else changes: monotonic clocks are untouched (real clock skew does not move them), and
``datetime.now``/``time.localtime()`` read the C clock directly (the node takes wall time only
from ``time.time``/``time.time_ns``). Python imports the first ``sitecustomize`` on its path, so
this one then runs whichever one it shadows (e.g. the distribution's).
"""

import importlib.machinery
import importlib.util
import os
import sys
import time


def _skew(offset_s: float) -> None:
    real_time, real_time_ns = time.time, time.time_ns
    offset_ns = round(offset_s * 1e9)

    def time_skewed() -> float:
        return real_time() + offset_s

    def time_ns_skewed() -> int:
        return real_time_ns() + offset_ns

    time.time = time_skewed
    time.time_ns = time_ns_skewed


def _run_shadowed() -> None:
    """Run the ``sitecustomize`` this one hides, if there is one further along the path."""
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


_offset = os.environ.get("NETSIM_CLOCK_SKEW_S")
if _offset:
    _skew(float(_offset))
_run_shadowed()
