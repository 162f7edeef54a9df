"""Command line: ``bncourse ...`` or ``python -m bncourse ...``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bncourse import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bncourse", description="Tools of the Batch Normalization and Dropout course."
    )
    parser.add_argument("--version", action="version", version=f"bncourse {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.func(args)
