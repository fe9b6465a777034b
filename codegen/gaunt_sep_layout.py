"""The separable Gaunt kernel's layout and arithmetic helpers (:mod:`~tritp.codegen.gaunt_sep`):
the order its tables are read in and their 16-byte quads, the target's split into passes, and
sums written as interleaved FMA chains.

Example:
    >>> from tritp.codegen.gaunt_problem import GauntProblem
    >>> p = GauntProblem("0e+1o", "0e+1o", lmax_out=1, implementation="separable")
    >>> table_columns(p, "x1"), table_width(p, "x1")
    ([(0, 0), (1, 0), (1, -1), (1, 1)], 4)
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .gaunt_problem import GauntProblem
from .gaunt_tables import lm_list, node_tables

QUAD = 4  # table entries one vector load reads


def chains(n: int, chain: int = 6) -> int:
    """How many interleaved chains :func:`tree_sum` splits ``n`` terms into (1 to 4)."""
    return max(1, min(4, -(-n // chain)))


def tree_sum(terms: list, chain: int = 6) -> str:
    """The sum of signed terms (``"+ x * y"``, ``"- x * y"``) as at most four interleaved
    chains of FMAs added at the end: Triton keeps the written order (no reassociation), and
    one chain of 25 dependent FMAs (an azimuthal product at L = 8) would leave the unit idle
    for its latency.

    Example:
        >>> tree_sum(["+ a * b", "- c * d"])
        'a * b - c * d'
        >>> tree_sum([f"+ x{i} * y" for i in range(8)], chain=4)
        '(x0 * y + x2 * y + x4 * y + x6 * y) + (x1 * y + x3 * y + x5 * y + x7 * y)'
    """
    if not terms:
        return ""
    ways = chains(len(terms), chain)

    def joined(ts):
        s = " ".join(ts)
        return s[2:] if s.startswith("+ ") else "-" + s[2:]

    if ways == 1:
        return joined(terms)
    return " + ".join(f"({joined(terms[i::ways])})" for i in range(ways))


def sum_ops(n: int, chain: int = 6) -> int:
    """Operations of :func:`tree_sum` over ``n`` products: one each, plus the joining adds."""
    return n + chains(n, chain) - 1 if n else 0


@lru_cache(maxsize=4096)  # pure, and asked on every launch
def target_groups(problem: GauntProblem, target: str, passes: int) -> list:
    """The target's active ``m`` values split into ``passes`` groups of about equal coefficient
    counts (a group: the ``m`` whose accumulators one walk over the nodes keeps)."""
    ls = sorted(problem.active(target))
    ms = m_order({m for l in ls for m in range(-l, l + 1)})
    weight = {m: sum(1 for l in ls if l >= abs(m)) for m in ms}
    passes = max(1, min(passes, len(ms)))
    total, groups, cur, acc = sum(weight.values()), [], [], 0
    for m in ms:
        cur.append(m)
        acc += weight[m]
        if acc >= total * (len(groups) + 1) / passes and len(groups) < passes - 1:
            groups.append(cur)
            cur = []
    return groups + [cur] if cur else groups


def m_order(ms) -> list:
    """The order the kernel visits azimuthal orders in: by ``|m|``, then ``m``."""
    return sorted(ms, key=lambda m: (abs(m), m))


def table_columns(problem: GauntProblem, role: str) -> list:
    """``(l, m)`` of the role's active coefficients in the order the kernel reads their table
    entries: by ``m`` (:func:`m_order`), then ``l``. A synthesis and a projection of one ``m``
    read consecutive entries, so the kernel loads them four at a time."""
    ls = sorted(problem.active(role))
    return [(l, m) for m in m_order({m for l in ls for m in range(-l, l + 1)}) for l in ls if l >= abs(m)]


def table_width(problem: GauntProblem, role: str) -> int:
    """The row length of the role's kernel table: its active coefficients, padded to a multiple of 4."""
    return -(-len(table_columns(problem, role)) // QUAD) * QUAD


def kernel_tables(problem: GauntProblem) -> dict:
    """``{role: float64 [n_b, K4]}``: :func:`~tritp.codegen.gaunt_tables.node_tables` in
    :func:`table_columns` order, each row padded with zeros to a multiple of 4 (16-byte vector
    loads of fp32 entries: the row stride and every quad's offset are multiples of 4).

    Example:
        >>> p = GauntProblem("0e+1o", "0e+1o", lmax_out=2, implementation="separable")
        >>> {r: t.shape for r, t in kernel_tables(p).items()}
        {'x1': (3, 4), 'x2': (3, 4), 'out': (3, 12)}
    """
    out = {}
    for role, t in node_tables(problem).items():
        col = {lm: i for i, lm in enumerate(lm_list(problem.degrees(role)))}
        cols = [col[lm] for lm in table_columns(problem, role)]
        out[role] = np.zeros((t.shape[0], table_width(problem, role)))
        out[role][:, : len(cols)] = t[:, cols]
    return out
