"""The ``tritp`` command line: one entry point, one module per subcommand.

Each subcommand lives in its own module ``tritp/cli_<name>.py`` that exposes two functions:

- ``add_parser(subparsers)``: add its parser with ``subparsers.add_parser(name, ...)``;
- ``run(args) -> int``: do the work and return the exit status.

Adding a subcommand means writing that module and appending its name to :data:`SUBCOMMANDS`;
nothing else in this file changes. The modules are imported by name when :func:`main` runs,
never when this module is imported, so a slow or broken subcommand cannot slow down or break
``import tritp.cli``.

Errors a user can cause (a bad irreps string, an impossible mode, an out-of-range path
index) surface from the library as ``ValueError`` (``ProblemError`` is one) or ``TypeError``;
they are printed as one line ``tritp: error: <message>`` on stderr with exit status 2, like
argparse's own usage errors, and never as a traceback.

Example:
    >>> from tritp.cli import main
    >>> main(["show", "1x1o", "1x1o", "1x0e+1x1e+1x2e"])  # doctest: +SKIP
    0
    >>> main(["show", "1x1q", "1o", "0e"])  # prints one line on stderr  # doctest: +SKIP
    2
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__

PROG = "tritp"

#: Subcommand names, in the order ``tritp --help`` lists them; ``name`` is served by the
#: module ``tritp.cli_<name>``.
SUBCOMMANDS = ("show", "codegen", "bench", "autotune", "cache")

#: Exit status for errors in the user's arguments (argparse uses the same).
EXIT_USAGE = 2


def _subcommand_module(name: str):
    """Import ``tritp.cli_<name>`` and check that it follows the subcommand protocol."""
    mod = importlib.import_module(f"{__package__}.cli_{name}")
    for attr in ("add_parser", "run"):
        if not callable(getattr(mod, attr, None)):
            # A programming error in tritp, not a user error: let it raise with a clear message.
            raise AttributeError(f"{mod.__name__} must define {attr}() to be a tritp subcommand")
    return mod


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every subcommand of :data:`SUBCOMMANDS` attached.

    Each subparser gets ``_run`` as a default, so :func:`main` dispatches without a table.

    Example:
        >>> p = build_parser()
        >>> p.parse_args(["show", "1o", "1o", "1e"]).command
        'show'
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect and (soon) compile E(3)-equivariant tensor products.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        mod = _subcommand_module(name)
        before = set(sub.choices)
        mod.add_parser(sub)
        added = set(sub.choices) - before
        if name not in added:
            raise AttributeError(f"{mod.__name__}.add_parser() must add a parser named {name!r}")
        sub.choices[name].set_defaults(_run=mod.run)
    return parser


def _one_line(err: BaseException) -> str:
    # Multi-line messages would look like a traceback fragment; keep the contract of one line.
    text = " ".join(str(err).split()) or type(err).__name__
    return f"{PROG}: error: {text}"


def _silence_stdout() -> None:
    # Python flushes stdout again at exit and would report a second BrokenPipeError.
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # captured streams have no real fd
        pass


def interruptible() -> None:
    """Let SIGINT raise ``KeyboardInterrupt`` in a process that started with it ignored.

    A background job of a non-interactive shell starts with SIGINT ignored, and Python then
    leaves it ignored; ``benchmarks/gpu_check.sh`` stops every stage with SIGINT so that it
    writes what it measured, so the benchmarks and ``tritp bench``/``autotune`` call this first.
    A handler someone installed on purpose is left alone. Call it from the main thread.

    Example:
        >>> interruptible()
    """
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv=None) -> int:
    """Run the ``tritp`` command line on ``argv`` (default ``sys.argv[1:]``); returns the exit
    status instead of exiting, so tests and other programs can call it.

    Example:
        >>> main(["--version"])  # doctest: +SKIP
        tritp 0.1.0
        0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors: keep argparse's status
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_USAGE)
    interruptible()
    try:
        status = args._run(args)
    except (ValueError, TypeError) as e:  # ProblemError is a ValueError
        print(_one_line(e), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tritp show ... | head`: the reader left, nothing to report
        _silence_stdout()
        return 0
    return 0 if status is None else int(status)


if __name__ == "__main__":
    sys.exit(main())
