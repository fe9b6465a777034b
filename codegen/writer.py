"""A small indenting writer for generated source.

Example:
    >>> w = SourceWriter()
    >>> with w.block("def f(x):"):
    ...     w("return x + 1")
    >>> print(w.text(), end="")
    def f(x):
        return x + 1
"""

from __future__ import annotations

from contextlib import contextmanager


class SourceWriter:
    """Collects lines at the current indentation; ``block`` opens a nested suite."""

    def __init__(self, indent: str = "    "):
        self._lines: list = []
        self._depth = 0
        self._indent = indent

    def __call__(self, line: str = "") -> None:
        for part in line.split("\n"):
            self._lines.append(f"{self._indent * self._depth}{part}" if part else "")

    @contextmanager
    def block(self, header: str):
        self(header)
        self._depth += 1
        try:
            yield self
        finally:
            self._depth -= 1

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"
