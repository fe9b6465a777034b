"""``tritp show --mode gaunt``: a Gaunt product's paths and its four implementations side by side.

For each implementation: its grid (points, or the separable kernel's polar nodes), the forward
FLOPs per (sample, channel) of its algorithm, and the launch a GPU runs when nothing is tuned;
the one ``implementation="auto"`` picks untuned (the size rule) is marked.

Example (shell)::

    tritp show 32x0e+32x1o+32x2e 0e+1o+2e --mode gaunt --lmax-out 4
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .codegen.gaunt_problem import FORWARD, IMPLEMENTATIONS, GauntProblem, size_rule


def _launch(problem: GauntProblem) -> str:
    """The untuned GPU launch of the forward, as ``BLOCK_R:warps:BLOCK_P`` (separable:
    ``BLOCK_R:warps:passes`` and whether mirror nodes pair up)."""
    if problem.implementation == "sparse":
        return "CG kernels (their own configs)"
    if problem.implementation == "separable":
        from .gaunt_separable import LADDER, default_passes, use_pairs

        passes = default_passes(problem, FORWARD, "float32")
        pairs = ", mirror nodes paired" if use_pairs(problem, FORWARD, "float32", passes) else ""
        return f"{LADDER[0][0]}:{LADDER[0][1]}:{passes} (passes{pairs})"
    from .gaunt_kernels import launch_candidates

    return ":".join(map(str, launch_candidates(problem, "float32")[0]))


def _grid(problem: GauntProblem) -> str:
    if problem.implementation == "sparse":
        return "-"
    nb, na = problem.grid_size
    if problem.implementation == "separable":
        return f"{nb} polar nodes"
    return f"{nb} x {na} = {nb * na} points"


def gaunt_table(problem: GauntProblem) -> Table:
    """One row per implementation of ``problem`` (any implementation given).

    Example:
        >>> gaunt_table(GauntProblem("4x0e+4x1o", "0e+1o", lmax_out=2)).row_count
        4
    """
    auto = size_rule(problem)
    t = Table()
    for name, justify in (("implementation", "left"), ("grid", "left"), ("FLOPs / (sample, channel)", "right"),
                          ("GPU launch, untuned (fp32 forward)", "left")):
        t.add_column(name, justify=justify)
    for impl in IMPLEMENTATIONS:
        p = problem.replace(implementation=impl, grid=None)
        t.add_row(impl + (" (auto, untuned)" if impl == auto else ""), _grid(p), f"{p.flops():,}", _launch(p))
    return t


def show_gaunt(problem: GauntProblem, console: Console) -> None:
    """Print a one-line header (irreps, channels, even paths, normalization) and :func:`gaunt_table`."""
    p = problem
    console.print(f"{p.irreps_in1} [{p.irreps_in1.dim}] x {p.irreps_in2} [{p.irreps_in2.dim}] -> {p.irreps_out} "
                  f"[{p.irreps_out.dim}]; {p.channels} channels, {len(p.paths)} even paths, "
                  f"normalization={p.normalization}", markup=False, soft_wrap=True)
    console.print(gaunt_table(problem))
