"""The ``byol`` command: ``byol ingest|pretrain|evaluate|export [--params PATH]``.

Each stage prints one summary line on stdout (progress goes to stderr). A user mistake
prints ``byol <stage>: error: ...`` and exits 1 without a traceback; a bug keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from byol_core import stages
from byol_core.config import load_params
from byol_core.errors import ByolError

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="byol", description="BYOL pipeline stages: ingest -> pretrain -> evaluate -> export.")
    commands = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, help_text in stages.STAGES.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--params", default="params.yaml", help="params file (default: ./params.yaml)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        params = load_params(args.params)
        line, _ = stages.run(args.stage, params)
    except ByolError as exc:
        print(f"byol {args.stage}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"byol {args.stage}: interrupted", file=sys.stderr)
        return 130
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
