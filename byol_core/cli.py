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

STAGES = {
    "ingest": (stages.run_ingest, "read the source dataset and write the prepared arrays, manifest and card"),
    "pretrain": (stages.run_pretrain, "train the BYOL encoder on the prepared train split"),
    "evaluate": (stages.run_evaluate, "linear probe and kNN on frozen features, with baselines"),
    "export": (stages.run_export, "export the encoder to ONNX and check parity with onnxruntime"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="byol", description="BYOL pipeline stages: ingest -> pretrain -> evaluate -> export.")
    commands = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, (_, help_text) in STAGES.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--params", default="params.yaml", help="params file (default: ./params.yaml)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run, _ = STAGES[args.stage]
    try:
        params = load_params(args.params)
        line, _ = run(params)
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
