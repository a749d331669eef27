"""Running one parsed command: its checks first, its errors as one line and an exit code
(``archc`` itself, and a sweep's trials, which run ``archc train`` in their worker
process through :func:`run`)."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from archc.cli.common import COMMANDS, EXIT_INTERNAL, EXIT_OK, EXIT_USER, Parser
from archc.errors import ArchcError
from runtime.errors import ArchcWarning
from runtime.train import distributed


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """archc's own warnings as one ``warning:`` line; other libraries' (NumPy's
    RuntimeWarning on an overflow, ...) only with ARCHC_DEBUG: what went wrong is then
    archc's error that follows, not a line of NumPy's source."""
    if issubclass(category, ArchcWarning):
        print(f"{distributed.where()}warning: {message}", file=sys.stderr)
    elif os.environ.get("ARCHC_DEBUG"):
        print(warnings.formatwarning(message, category, filename, lineno, line),
              file=sys.stderr, end="")


def _prepare(args: argparse.Namespace) -> None:
    """What every command checks before it starts work: the memory limit, and that its
    output files can be written."""
    from runtime.files import writable
    from runtime.limits import set_memory_limit

    set_memory_limit(getattr(args, "max_memory", None))
    for key, what in (("output", "output file"), ("weights_out", "weights file")):
        if getattr(args, key, None):
            writable(getattr(args, key), what)


def dispatch(args: argparse.Namespace) -> int:
    """Run the command ``args`` were parsed for, its errors printed as one line: the
    exit code."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning
            _prepare(args)
            return COMMANDS[args.command][2](args)
    except ArchcError as exc:
        print(distributed.where() + exc.format(), file=sys.stderr)
        return EXIT_USER
    except MemoryError:  # what the estimates before allocating did not foresee
        print(f"{distributed.where()}error: out of memory (the machine could not give what "
              f"archc {args.command} asked for)\nhint: make the network, batch or data "
              f"smaller", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("archc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        sys.stderr.close()
        return EXIT_OK
    except Exception as exc:  # an archc bug: one line, not a traceback
        if os.environ.get("ARCHC_DEBUG"):
            raise
        print(
            f"{distributed.where()}archc: internal error: {type(exc).__name__}: {exc} "
            "(this is a bug in archc; rerun with ARCHC_DEBUG=1 for the traceback and report it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def run(command: str, argv: list[str]) -> int:
    """``archc COMMAND ARGV...`` in this process (the command's module imported), its
    exit code."""
    help_text, setup, _ = COMMANDS[command]
    parser = Parser(prog=f"archc {command}", description=help_text)
    setup(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a bad flag, said on stderr
        return int(exc.code or 0)
    args.command = command
    return dispatch(args)
