"""A stand-in benchmark module for the suite runner's tests: with ``--report-now`` it prints a
progress line and writes a one-figure report; without it, it waits for a signal forever (the
runner must kill it at its timeout)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from bench.figures import figure, progress, write_report


def main(argv: list[str]) -> int:
    path = Path(argv[argv.index("--json") + 1])
    if "--report-now" not in argv:
        signal.pause()
        return 1
    progress("reporting now")
    write_report(path, [figure("fake", group="g", name="seven", unit="x", runs=[7.0])])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
