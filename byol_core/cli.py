"""The ``byol`` command: ``byol ingest|pretrain|evaluate|export [--params PATH]``.

Each stage prints one summary line on stdout (progress goes to stderr). A user mistake
prints ``byol <stage>: error: ...`` and exits 1 without a traceback; a bug keeps its traceback.
When an orchestrator launched the stage through Dagster Pipes (``DAGSTER_PIPES_CONTEXT``
is set, and passes through ``dvc repro``), the summary and metrics are also sent back to
it; otherwise nothing is, and ``dagster_pipes`` is never imported.
"""

from __future__ import annotations

import argparse
import os
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


def report_to_orchestrator(stage: str, line: str, metrics: dict) -> None:
    """Send the stage's summary and metrics through Dagster Pipes, if Dagster launched us."""
    if "DAGSTER_PIPES_CONTEXT" not in os.environ:
        return
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        pipes.report_custom_message({"stage": stage, "summary": line, "metrics": metrics})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        params = load_params(args.params)
        if args.stage == "pretrain" and params.pretrain.processes > 1 and "LOCAL_RANK" not in os.environ:
            from byol_core import distributed  # only the pretrain stage imports torch.distributed

            return distributed.launch(params.pretrain.devices, params.pretrain.nodes,
                                      [args.stage, "--params", args.params])
        line, metrics = stages.run(args.stage, params)
    except ByolError as exc:
        print(f"byol {args.stage}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"byol {args.stage}: interrupted", file=sys.stderr)
        return 130
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
        print(line)
        report_to_orchestrator(args.stage, line, metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
