"""``tritp show``: the coupling paths of a tensor product, as a table.

For each path: its segments, its irreps, its mode, how many coupling coefficients are nonzero
(what a sparse kernel unrolls) against the dense ``(2l1+1)(2l2+1)(2l3+1)`` block, its weight
shape and e3nn's normalization factor; then totals. ``--path K`` lists the coefficients of one
path, ``--exact`` as exact sympy expressions.

Example (shell)::

    tritp show 128x0e+128x1o 0e+1o+2e+3o 0e+1o+2e --mode channelwise
    tritp show 1x1o 1x1o 1x0e+1x1e+1x2e --path 2 --exact
    tritp show 2x1o 1x1o all --mode full        # OUT "all": keep every output irrep
    tritp show 32x0e+32x1o+32x2e 0e+1o+2e --mode gaunt --lmax-out 4   # its implementations

:func:`show_problem` is the same summary for any :class:`~tritp.codegen.Problem`, for scripts.
"""

from __future__ import annotations

import argparse
import os

from rich.console import Console
from rich.table import Table

from .codegen import MODES, Problem
from .codegen.coupling import sparse_coupling, sympy_coupling
from .codegen.problem import IRREP_NORMALIZATIONS, PATH_NORMALIZATIONS

#: Modes that are constructors rather than one e3nn connection mode.
FORMS = ("channelwise", "full")
#: The OUT spelling that means "no filter" for ``--mode full``.
ALL_OUTPUTS = "all"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Attach ``show`` to the ``tritp`` parser (the protocol of :mod:`tritp.cli`)."""
    p = subparsers.add_parser(
        "show",
        help="print the coupling paths of a tensor product",
        description="Print the coupling paths of IN1 x IN2 -> OUT: nonzeros, sizes, weights.",
        epilog=(
            "modes: uvw (default) is e3nn's FullyConnectedTensorProduct; channelwise is uvu "
            "with one output per path, OUT being the irreps to keep (MACE, NequIP); full is "
            f"e3nn's FullTensorProduct, OUT filters the outputs ('{ALL_OUTPUTS}' keeps all); "
            "the other modes take every path of that mode that fits the multiplicities."
        ),
    )
    p.add_argument("in1", metavar="IN1", help="irreps of input 1, e.g. 128x0e+128x1o")
    p.add_argument("in2", metavar="IN2", help="irreps of input 2, e.g. 0e+1o+2e")
    p.add_argument("out", metavar="OUT", nargs="?",
                   help="irreps of the output (a filter for channelwise/full; gaunt: or --lmax-out)")
    add_problem_options(p, extra_modes=("gaunt",))
    p.add_argument("--lmax-out", type=int, metavar="N", help="gaunt: output degrees 0..N (instead of OUT)")
    p.add_argument("--irrep-normalization", default="component", choices=IRREP_NORMALIZATIONS)
    p.add_argument("--path-normalization", default="element", choices=PATH_NORMALIZATIONS)
    p.add_argument("--path", type=int, metavar="K", help="list the coupling coefficients of path K")
    p.add_argument("--exact", action="store_true", help="with --path: exact sympy expressions")
    return p


def add_problem_options(p: argparse.ArgumentParser, default_mode: str = "uvw", extra_modes: tuple = ()) -> None:
    """``--mode`` and ``--shared``/``--per-sample``: the options of every subcommand that builds
    its problem from three irreps with :func:`problem_from_args`; ``extra_modes`` are further
    ``--mode`` choices the subcommand handles itself (``autotune``: ``gaunt``).

    Example:
        >>> p = argparse.ArgumentParser()
        >>> add_problem_options(p, default_mode="channelwise")
        >>> vars(p.parse_args(["--per-sample"]))
        {'mode': 'channelwise', 'shared': False}
    """
    p.add_argument("--mode", default=default_mode, choices=MODES + FORMS + tuple(extra_modes),
                   help=f"connection mode (default {default_mode})")
    w = p.add_mutually_exclusive_group()
    # None: each constructor keeps its own default (channelwise is per-sample, uvw shared).
    w.add_argument("--shared", dest="shared", action="store_const", const=True, default=None,
                   help="one weight vector for the whole batch")
    w.add_argument("--per-sample", dest="shared", action="store_const", const=False,
                   help="one weight vector per batch row")


def problem_from_args(in1: str, in2: str, out: str, mode: str = "uvw", shared=None,
                      irrep_normalization: str = "component", path_normalization: str = "element") -> Problem:
    """The Problem ``tritp show`` describes; raises ValueError on bad irreps or modes.

    Example:
        >>> problem_from_args("1x1o", "1x1o", "1x0e+1x1e+1x2e").weight_numel
        3
    """
    kw = dict(irrep_normalization=irrep_normalization, path_normalization=path_normalization)
    if shared is not None:
        kw["shared_weights"] = shared
    if mode == "channelwise":
        return Problem.channelwise(in1, in2, out, **kw)
    if mode == "full":
        return Problem.full(in1, in2, None if out.strip() == ALL_OUTPUTS else out, **kw)
    if mode == "uvw":
        return Problem.fully_connected(in1, in2, out, **kw)
    if mode in MODES:
        return Problem.all_paths(in1, in2, out, mode, **kw)
    raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES + FORMS)}")


def _dense(l1: int, l2: int, l3: int) -> int:
    return (2 * l1 + 1) * (2 * l2 + 1) * (2 * l3 + 1)


def path_table(problem: Problem) -> Table:
    """A rich Table with one row per path of ``problem`` and a totals row.

    Example:
        >>> t = path_table(problem_from_args("1x1o", "1x1o", "1x0e+1x1e+1x2e"))
        >>> t.row_count  # three paths and the totals
        4
    """
    p = problem
    t = Table(show_footer=False)
    for name, justify in (("#", "right"), ("segments", "center"), ("irreps", "left"), ("mode", "left"),
                          ("nonzeros", "right"), ("dense", "right"), ("weights", "right"),
                          ("norm. factor", "right")):
        t.add_column(name, justify=justify)
    nnz_total = dense_total = 0
    for k, ins in enumerate(p.instructions):
        r1, r2, ro = p.irreps_in1[ins.i_in1].ir, p.irreps_in2[ins.i_in2].ir, p.irreps_out[ins.i_out].ir
        nnz, dense = len(sparse_coupling(r1.l, r2.l, ro.l)), _dense(r1.l, r2.l, ro.l)
        nnz_total += nnz
        dense_total += dense
        shape = str(ins.path_shape) if ins.has_weight else "-"
        t.add_row(str(k), f"({ins.i_in1},{ins.i_in2},{ins.i_out})", f"{r1} x {r2} -> {ro}", ins.mode,
                  str(nnz), str(dense), shape, f"{ins.coefficient:.6g}")
    t.add_section()
    t.add_row("total", "", "", "", str(nnz_total), str(dense_total), str(p.weight_numel), "")
    return t


def header(problem: Problem) -> str:
    """One line: the irreps with their dimensions, paths, weights and normalizations."""
    p = problem
    weights = "shared" if p.shared_weights else "per-sample"
    return (f"{p.irreps_in1} [{p.irreps_in1.dim}] x {p.irreps_in2} [{p.irreps_in2.dim}] -> "
            f"{p.irreps_out} [{p.irreps_out.dim}]; {len(p.instructions)} path{'s' * (len(p.instructions) != 1)}, {p.weight_numel} "
            f"{weights} weights; irrep_normalization={p.irrep_normalization}, "
            f"path_normalization={p.path_normalization}")


def make_console() -> Console:
    """A Console for plain output: no syntax highlighting; when writing to a pipe or file
    (no colour then, rich decides), wide enough that tables never wrap."""
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 240
    return console


def show_problem(problem: Problem, console: Console | None = None) -> None:
    """Print the one-line header and the path table of ``problem``.

    Example:
        >>> show_problem(Problem.channelwise("8x0e+8x1o", "0e+1o", "0e+1o"))  # doctest: +SKIP
    """
    console = console or make_console()
    console.print(header(problem), markup=False, soft_wrap=True)
    console.print(path_table(problem))


def show_path(problem: Problem, k: int, exact: bool = False, console: Console | None = None) -> None:
    """Print the nonzero coupling coefficients of path ``k``, one line each, as
    ``(i1, i2, i3)  m=(m1, m2, m3): value`` with ``i = m + l``; ``exact`` gives sympy
    expressions (``sqrt(6)/6``), otherwise float64 values. Raises ValueError for a bad ``k``.
    """
    n = len(problem.instructions)
    if not 0 <= k < n:
        raise ValueError(f"--path {k} is out of range: this problem has {n} path{'s' * (n != 1)} (0..{n - 1})")
    console = console or make_console()
    ins = problem.instructions[k]
    l1 = problem.irreps_in1[ins.i_in1].ir.l
    l2 = problem.irreps_in2[ins.i_in2].ir.l
    l3 = problem.irreps_out[ins.i_out].ir.l
    if exact:
        values = {key: str(v) for key, v in sympy_coupling(l1, l2, l3).items()}
    else:
        values = {(a, b, c): repr(v) for a, b, c, v in sparse_coupling(l1, l2, l3)}
    console.print(
        f"path {k}: {problem.irreps_in1[ins.i_in1].ir} x {problem.irreps_in2[ins.i_in2].ir} -> "
        f"{problem.irreps_out[ins.i_out].ir} ({ins.mode}), {len(values)} nonzeros of "
        f"wigner_3j({l1}, {l2}, {l3}); the path scales them by {ins.coefficient:.6g}",
        markup=False, soft_wrap=True)
    for (a, b, c), v in sorted(values.items()):
        m = ", ".join(f"{x:+d}" for x in (a - l1, b - l2, c - l3))
        console.print(f"({a}, {b}, {c})  m=({m}): {v}", markup=False, soft_wrap=True)


def run(args) -> int:
    """Execute ``tritp show`` (the protocol of :mod:`tritp.cli`)."""
    if args.mode == "gaunt":  # the product of two spherical functions: its implementations
        from .cli_problems import gaunt_problem
        from .cli_show_gaunt import show_gaunt

        if args.path is not None:
            raise ValueError("--path lists CG coupling coefficients; a Gaunt product has no --path")
        show_gaunt(gaunt_problem(args.in1, args.in2, args.out, args.lmax_out), make_console())
        return 0
    if args.out is None:
        raise ValueError(f"OUT (the output irreps) is required for --mode {args.mode}")
    if args.exact and args.path is None:
        raise ValueError("--exact needs --path K")
    problem = problem_from_args(args.in1, args.in2, args.out, args.mode, args.shared,
                                args.irrep_normalization, args.path_normalization)
    console = make_console()
    if args.path is not None:
        show_path(problem, args.path, args.exact, console)
    else:
        show_problem(problem, console)
    return 0
