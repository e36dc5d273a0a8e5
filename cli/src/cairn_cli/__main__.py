"""`cairn`: the command line. Wiring only; each area's commands live in their own module and
register themselves on the sub-command parser."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from cairn_cli import control, local_system


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cairn",
        description="Cairn: event-triggered customer journeys you run yourself.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    local_system.register(sub)
    control.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args))
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        # `cairn stats | head`: the reader left; say nothing more (and nothing at interpreter exit).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)


if __name__ == "__main__":
    main()
