"""What ``tritp autotune`` tunes: problems from irreps arguments, ``--preset`` names and
``--problems`` files, and the ``--batch`` list.

Example:
    >>> parse_batches(["1000,2000", "50_000"])
    [1000, 2000, 50000]
"""

from __future__ import annotations

import json
from pathlib import Path

from .cli_show import problem_from_args
from .codegen import Problem
from .codegen.gaunt_problem import GauntProblem

PROBLEMS_HELP = """--problems FILE: a JSON list; each item a preset or irreps with a mode or instructions:
  [{"preset": "mace-large"},
   {"name": "layer0", "in1": "128x0e+128x1o", "in2": "0e+1o+2e+3o", "out": "0e+1o+2e",
    "mode": "channelwise", "batch": 20000},
   {"in1": "8x0e", "in2": "0e", "out": "8x0e", "instructions": [[0, 0, 0, "uvu", true]],
    "shared_weights": false},
   {"in1": "32x0e+32x1o+32x2e", "in2": "0e+1o+2e", "mode": "gaunt", "lmax_out": 4}]"""


def _problem_of(item: dict, where: str) -> tuple:
    """``(label, Problem, batch or None)`` of one ``--problems`` item."""
    from .presets import preset

    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected an object, got {type(item).__name__}")
    if "preset" in item:
        problem, batch = preset(item["preset"])
        return item.get("name", item["preset"]), problem, item.get("batch", batch)
    missing = [k for k in ("in1", "in2") if k not in item]
    if missing:
        raise ValueError(f"{where}: missing {missing[0]!r}")
    kw = {k: item[k] for k in ("irrep_normalization", "path_normalization") if k in item}
    if item.get("mode") == "gaunt":
        problem = gaunt_problem(item["in1"], item["in2"], item.get("out"), item.get("lmax_out"),
                                item.get("normalization", "orthonormal"))
        return item.get("name", f"{item['in1']} x {item['in2']} (gaunt)"), problem, item.get("batch")
    if "instructions" in item:
        ins = [tuple(i) for i in item["instructions"]]
        problem = Problem(item["in1"], item["in2"], item.get("out"), ins,
                          shared_weights=item.get("shared_weights", True), layout=item.get("layout", "mul_ir"), **kw)
    else:
        problem = problem_from_args(item["in1"], item["in2"], item.get("out", "all"), item.get("mode", "uvw"),
                                    item.get("shared_weights"), **kw)
    return item.get("name", f"{item['in1']} x {item['in2']}"), problem, item.get("batch")


def gaunt_problem(in1, in2, out=None, lmax_out=None, normalization="orthonormal") -> GauntProblem:
    """The Gaunt product ``compile(in1, in2, out, lmax_out=..., mode="gaunt")`` builds (its
    fp32 ``tl.dot`` precision following torch's, as there); GauntError (a ValueError) if bad.

    Example:
        >>> str(gaunt_problem("4x0e+4x1o", "0e+1o", lmax_out=2).irreps_out)
        '4x0e+4x1o+4x2e'
    """
    from .gaunt import default_precision

    return GauntProblem(in1, in2, out, lmax_out=lmax_out, normalization=normalization, precision=default_precision())


def collect_problems(args) -> list:
    """``[(label, Problem or GauntProblem, default batch or None)]`` from the arguments;
    ValueError if none."""
    from .presets import BENCH_PRESETS, preset

    out = []
    gaunt = getattr(args, "mode", None) == "gaunt"
    if getattr(args, "lmax_out", None) is not None and not gaunt:
        raise ValueError("--lmax-out is for --mode gaunt")
    if gaunt and any(x is not None for x in (args.in1, args.in2, args.out)):
        if None in (args.in1, args.in2):
            raise ValueError("give IN1 IN2 (and OUT or --lmax-out) for --mode gaunt")
        out.append((f"{args.in1} x {args.in2} (gaunt)",
                    gaunt_problem(args.in1, args.in2, args.out, args.lmax_out, args.normalization), None))
    elif any(x is not None for x in (args.in1, args.in2, args.out)):
        if None in (args.in1, args.in2, args.out):
            raise ValueError("give all three of IN1 IN2 OUT")
        out.append((f"{args.in1} x {args.in2} -> {args.out}",
                    problem_from_args(args.in1, args.in2, args.out, args.mode, args.shared), None))
    for name in args.preset:
        for n in BENCH_PRESETS if name == "all" else (name,):
            problem, batch = preset(n)
            out.append((n, problem, batch))
    if args.problems:
        try:
            items = json.loads(Path(args.problems).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"--problems {args.problems}: {e}") from None
        if not isinstance(items, list):
            raise ValueError(f"--problems {args.problems}: expected a JSON list of problems")
        out += [_problem_of(it, f"--problems {args.problems} item {k}") for k, it in enumerate(items)]
    if not out:
        raise ValueError("nothing to tune: give IN1 IN2 OUT, --preset NAME or --problems FILE")
    return out


def parse_batches(values) -> list:
    """``["1000,2000", "50000"]`` -> ``[1000, 2000, 50000]``; ValueError on a bad number."""
    out = []
    for v in values:
        for part in str(v).split(","):
            if part.strip():
                n = int(part.replace("_", ""))
                if n < 1:
                    raise ValueError(f"--batch must be positive, got {n}")
                out.append(n)
    return out
