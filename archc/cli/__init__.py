"""The ``archc`` command line: a thin layer that calls the pipeline stages and prints.

Exit codes: 0 success; 2 a problem with the user's input (printed as
``FILE:LINE:COL: error: MESSAGE``); 1 an internal error (a bug: one line, no traceback
unless ``ARCHC_DEBUG=1``); 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

from archc.cli.common import COMMANDS, EXIT_OK, TRAILING, Parser
from archc.cli.dispatch import dispatch
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
    code = dispatch(args)
    if code != EXIT_OK and getattr(args, "distributed", False):
        distributed.stop_job(code)  # the other ranks must not wait for this one forever
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
