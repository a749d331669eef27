"""The ``archc`` command line: a thin layer that calls the pipeline stages and prints.

Exit codes: 0 success; 2 a problem with the user's input (printed as
``FILE:LINE:COL: error: MESSAGE``); 1 an internal error (a bug: one line, no traceback
unless ``ARCHC_DEBUG=1``); 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from archc.cli.common import COMMANDS, EXIT_INTERNAL, EXIT_OK, EXIT_USER, TRAILING, Parser
from archc.errors import ArchcError
from runtime.errors import ArchcWarning
from runtime.train import distributed

# each module adds its commands to COMMANDS, in the order `archc --help` lists them
from archc.cli import network  # noqa: F401, I001 (isort: the order is the listing's)
from archc.cli import optimizing  # noqa: F401
from archc.cli import running  # noqa: F401
from archc.cli import interop  # noqa: F401
from archc.cli import training  # noqa: F401
from archc.cli import looking  # noqa: F401
from archc.cli import sweeping  # noqa: F401


def build_parser() -> argparse.ArgumentParser:
    from archc import __version__

    parser = Parser(
        prog="archc",
        description="archc: compile, check, analyse and run convolutional networks written in YAML.",
    )
    parser.add_argument("--version", action="version", version=f"archc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name, (help_text, setup, _) in COMMANDS.items():
        setup(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    trailing: list[str] = []
    if argv[:1] and argv[0] in TRAILING and "--" in argv:
        argv, trailing = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    args = parser.parse_args(argv)
    if argv[:1] and argv[0] in TRAILING:
        setattr(args, TRAILING[argv[0]], trailing)
    code = _dispatch(args)
    if code != EXIT_OK and getattr(args, "distributed", False):
        distributed.stop_job(code)  # the other ranks must not wait for this one forever
    return code


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


def _dispatch(args: argparse.Namespace) -> int:
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
