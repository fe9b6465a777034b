"""Integer helpers the generators and the tuner share: tile widths are powers of two.

Example:
    >>> p2(1), p2(17), p2(64), cdiv(10, 4)
    (1, 32, 64, 3)
"""

from __future__ import annotations


def p2(n: int) -> int:
    """Smallest power of two >= ``n`` (1 for ``n <= 1``): Triton tiles have power-of-two sizes."""
    return 1 << max(0, (int(n) - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for non-negative ints: the number of ``b``-sized blocks covering ``a``."""
    return (a + b - 1) // b
