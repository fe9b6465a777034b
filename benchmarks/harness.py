"""Side-by-side timing of tritp, e3nn, cuEquivariance and OpenEquivariance.

The same command as ``tritp bench`` (all logic lives in ``tritp/bench.py`` and
``tritp/cli_bench.py``), as a script that runs from a checkout. For each problem -- the presets
of ``tritp/presets.py`` (design notes, section 7) or one given as ``IN1 IN2 OUT --mode ...`` --
it checks every implementation against the float64 reference, then times forward,
forward+backward and double backward, measures the copy bandwidth in the same run, prints a
table (ms, tritp over the best peer, % of the I/O floor) and writes
``<date>-<gpu-slug>-<kind>.json`` under ``--out`` (default ``benchmarks/results/`` on a GPU, a
temporary folder on a CPU). Peers that do not import or cannot build a problem are recorded
with the reason. It reports; it never asserts a time.

Run::

    python benchmarks/harness.py --preset all --time-limit 270        # a GPU, about 5 minutes
    python benchmarks/harness.py --preset mace-medium --peers e3nn --directions fwd
    python benchmarks/harness.py --quick --out /tmp/bench   # CPU (sets TRITON_INTERPRET=1), under a minute
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402  (torch alone does not import triton)

if not torch.cuda.is_available():  # triton reads this when imported, so before tritp is
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tritp import cli_bench  # noqa: E402
from tritp.cli import interruptible  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/harness.py", description=__doc__.split("\n\n")[0])
    cli_bench.add_arguments(parser)
    args = parser.parse_args(argv)
    interruptible()  # gpu_check.sh stops it with SIGINT, maybe from a background job
    try:
        return cli_bench.run(args)
    except (ValueError, TypeError) as e:
        print(f"harness: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
